"""From a request body to a decoding plan, with every check done before anything is queued.

A plan holds the tokenized prompt(s), the compiled constraint (tool calls, `response_format`,
`structured_outputs` or `guided_*`: at most one of them), the search spec, the stopping rule and
what the response must report (log-probabilities, usage). Each refusal is an `APIError` naming the
request field.

Prompts for tools: when the model's chat template renders `tools` itself, messages go to it in
OpenAI's shape; when it ignores them (SmolLM2's does), the tools and the call format are described
in the system message and earlier tool calls are written in that format. Either way the calls the
model makes are enforced by `sd.tool_calls`, not merely requested.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

from searchdec.errors import ConstraintError, PromptTooLongError
from searchdec.grammars import ToolCalls, choice, json_schema, lark, regex, tool_calls
from searchdec.grammars.specs import _forbid_extra_properties
from searchdec.grammars.state import Constraint
from searchdec.search.rows import Stopping
from searchdec.search.sampling import Greedy, Sample
from searchdec.server import searches
from searchdec.server.errors import APIError, bad_request, context_overflow, from_constraint_error
from searchdec.server.protocol import ChatCompletionRequest, CompletionRequest, ImagePart, Message, _Sampling

_PROBE_TOOL = "searchdec_template_probe"


@dataclass
class ServedModel:
    """The model behind the server and how requests are turned into its prompts."""

    model: object
    name: str
    tool_format: str = "auto"  # "hermes" | "json" | "auto": hermes when the template renders tools, else json
    default_max_tokens: int | None = None  # None: up to the context window
    max_n: int = 16

    def __post_init__(self) -> None:
        self.compile_lock = threading.Lock()  # the grammar compiler's cache is not thread-safe
        self.native_tools = self._template_renders_tools()
        if self.tool_format == "auto":
            # Templates that render tools expect Hermes blocks; otherwise a bare JSON list, which a
            # model closes with "]" (measured on SmolLM2: Hermes blocks ran on into more calls).
            self.tool_format = "hermes" if self.native_tools else "json"

    def _template_renders_tools(self) -> bool:
        if not getattr(self.model.tokenizer, "chat_template", None):
            return False
        probe = [{"type": "function", "function": {"name": _PROBE_TOOL, "parameters": {"type": "object"}}}]
        try:
            text = self.model.decode(self.model.apply_chat_template([{"role": "user", "content": "x"}], tools=probe))
        except Exception:  # a template that chokes on tools does not render them
            return False
        return _PROBE_TOOL in text

    def compile(self, spec, param: str) -> Constraint:
        try:
            with self.compile_lock:
                return spec.compile(self.model)
        except ConstraintError as error:
            raise from_constraint_error(error, param) from None


@dataclass
class Plan:
    prompts: list[list[int]]
    search: object  # Greedy | Sample (decoded in the batch) or a whole search (Beam, BestOfN, ...)
    n: int
    stopping: Stopping
    stops: tuple[str, ...]
    constraint: Constraint | None = None
    tools: ToolCalls | None = None  # outputs are read back as tool calls
    named_tool: bool = False  # OpenAI answers finish_reason "stop" for a named tool_choice
    top_logprobs: int | None = None
    stream: bool = False
    include_usage: bool = False


# --- chat -----------------------------------------------------------------------------------


def chat_plan(served: ServedModel, req: ChatCompletionRequest) -> Plan:
    _check_model(served, req.model)
    _refuse_unsupported(req)
    tools = [tool.model_dump(exclude_none=True) for tool in req.tools] if req.tools else None
    tool_spec, named = _tool_spec(served, req, tools)
    spec, param = _constraint_spec(req, tool_spec, served)
    messages = _render(served, req.messages, tools)
    if not getattr(served.model.tokenizer, "chat_template", None):
        raise bad_request(f"model {served.name!r} has no chat template; use /v1/completions", "messages")
    try:
        prompt = served.model.apply_chat_template(messages, tools=tools if served.native_tools else None)
    except Exception as error:  # the template's own complaint (e.g. roles out of order)
        raise bad_request(f"the model's chat template cannot render these messages: {error}", "messages") from None
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs=true", "top_logprobs")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    param_max = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    plan = _plan(served, req, [prompt], max_tokens, param_max, "messages")
    plan.constraint = served.compile(spec, param) if spec is not None else None
    plan.tools = spec if isinstance(spec, ToolCalls) else None
    plan.named_tool = named
    plan.top_logprobs = (req.top_logprobs or 0) if req.logprobs else None
    _check_search_logprobs(plan, "top_logprobs")
    return plan


def _check_search_logprobs(plan: Plan, param: str) -> None:
    if plan.top_logprobs and not searches.is_stepwise(plan.search):
        raise bad_request(
            f"{param} > 0 is not available with search {type(plan.search).__name__}: a whole search keeps each "
            "token's log-probability, not its alternatives (logprobs without top alternatives works)",
            param,
        )


def _tool_spec(served: ServedModel, req: ChatCompletionRequest, tools: list[dict] | None):
    if not tools:
        if req.tool_choice is not None:
            raise bad_request("tool_choice is only allowed when tools are given", "tool_choice")
        if req.parallel_tool_calls is not None:
            raise bad_request("parallel_tool_calls is only allowed when tools are given", "parallel_tool_calls")
        return None, False
    tool_choice = req.tool_choice or "auto"
    named = not isinstance(tool_choice, str)
    if named:
        tool_choice = tool_choice.function.name
        names = [tool["function"]["name"] for tool in tools]
        if tool_choice not in names:
            raise bad_request(
                f"tool_choice names function {tool_choice!r}, which is not among the tools: {', '.join(names)}",
                "tool_choice",
            )
    parallel = True if req.parallel_tool_calls is None else req.parallel_tool_calls
    # Arguments hold only the properties a tool declares unless its schema says otherwise (as
    # OpenAI's strict mode): without this a small model pads calls with invented keys.
    tools = [
        {**tool, "function": {**tool["function"], "parameters": _forbid_extra_properties(_parameters(tool))}}
        for tool in tools
    ]
    try:
        spec = tool_calls(tools, tool_choice={"name": tool_choice} if named else tool_choice, parallel=parallel,
                          format=served.tool_format)  # fmt: skip
    except ConstraintError as error:
        raise from_constraint_error(error, "tools") from None
    return spec, named


def _parameters(tool: dict) -> dict:
    return tool["function"].get("parameters") or {"type": "object", "properties": {}}


def _constraint_spec(req, tool_spec: ToolCalls | None, served: ServedModel):
    """The one constraint a request asks for, and the field that asked (None, None when free).

    `tools` with `response_format`, as OpenAI takes them: with tool_choice "auto" the output is a
    call or an answer in the format (one grammar holds both branches); "none": an answer in the
    format; "required" or a named tool: a call, which the format does not apply to."""
    found = []
    response_format = getattr(req, "response_format", None)
    answer = None
    if response_format is not None and response_format.type != "text":
        answer = _response_format_spec(response_format)
        if tool_spec is not None:
            served.compile(*answer)  # the schema's own errors name response_format
            if tool_spec.choice == "auto":
                try:
                    tool_spec = tool_spec.with_answer(answer[0])
                except ConstraintError as error:
                    raise from_constraint_error(error, answer[1]) from None
                answer = None
            elif tool_spec.choice == "none":
                tool_spec = None
            else:
                answer = None
    if tool_spec is not None and tool_spec.choice != "none":
        found.append((tool_spec, "tools"))
    if answer is not None:
        found.append(answer)
    if req.structured_outputs is not None:
        found.append(_structured_outputs_spec(req.structured_outputs))
    legacy = {
        "guided_json": req.guided_json,
        "guided_regex": req.guided_regex,
        "guided_choice": req.guided_choice,
        "guided_grammar": req.guided_grammar,
    }
    for name, value in legacy.items():
        if value is not None:
            found.append(_one_constraint(name.removeprefix("guided_"), value, name))
    if len(found) > 1:
        fields = ", ".join(param.split(".")[0] for _, param in found)
        if found[0][1] == "tools":
            raise bad_request(
                f"tools (tool_choice={tool_spec.choice!r}) cannot be combined with another output constraint "
                f"({fields}); response_format can shape a plain answer beside tools, or set tool_choice='none' to "
                "constrain a plain answer",
                found[1][1],
            )
        raise bad_request(f"at most one output constraint per request; got {fields}", found[1][1])
    if found:
        return found[0]
    if tool_spec is not None:  # tool_choice="none": a plain answer that does not begin like a call
        return tool_spec, "tools"
    return None, None


def _response_format_spec(response_format):
    if response_format.type == "json_object":
        if response_format.json_schema is not None:
            raise bad_request("response_format json_object takes no json_schema", "response_format.json_schema")
        return json_schema({"type": "object"}), "response_format"
    if response_format.json_schema is None:
        raise bad_request("response_format type json_schema needs a json_schema object", "response_format.json_schema")
    schema = response_format.json_schema.schema_
    if schema is None:
        raise bad_request("response_format.json_schema needs a schema", "response_format.json_schema.schema")
    strict = bool(response_format.json_schema.strict)
    param = "response_format.json_schema.schema"
    try:
        return json_schema(schema, strict=strict), param
    except ConstraintError as error:
        raise from_constraint_error(error, param) from None


def _structured_outputs_spec(outputs):
    given = {k: v for k, v in outputs.model_dump(by_alias=True).items() if v is not None}
    if given.get("json_object") is False:
        given.pop("json_object")
    if len(given) != 1:
        raise bad_request(
            "structured_outputs needs exactly one of json, regex, choice, grammar, json_object; "
            f"got {', '.join(given) or 'none'}",
            "structured_outputs",
        )
    (kind, value), = given.items()  # fmt: skip
    return _one_constraint(kind, value, f"structured_outputs.{kind}")


def _one_constraint(kind: str, value, param: str):
    try:
        if kind == "json":
            return json_schema(value), param
        if kind == "json_object":
            return json_schema({"type": "object"}), param
        if kind == "regex":
            return regex(value), param
        if kind == "choice":
            return choice(value), param
        if kind == "grammar":
            return lark(value), param
    except ConstraintError as error:
        raise from_constraint_error(error, param) from None
    raise bad_request(f"unknown constraint {kind!r}", param)


def _render(served: ServedModel, messages: list[Message], tools: list[dict] | None) -> list[dict]:
    rendered: list[dict] = []
    for i, message in enumerate(messages):
        content = _text(message, i)
        role = "system" if message.role == "developer" else message.role
        if message.role == "tool" and not message.tool_call_id:
            raise bad_request("a tool message needs tool_call_id", f"messages[{i}].tool_call_id")
        calls = []
        for j, call in enumerate(message.tool_calls or []):
            try:
                arguments = json.loads(call.function.arguments)
            except json.JSONDecodeError as error:
                raise bad_request(
                    f"tool call arguments are not JSON: {error}", f"messages[{i}].tool_calls[{j}].function.arguments"
                ) from None
            calls.append({"name": call.function.name, "arguments": arguments})
        entry = {"role": role, "content": content}
        if calls and served.native_tools:
            entry["tool_calls"] = [
                {"id": c.id, "type": "function", "function": f} for c, f in zip(message.tool_calls, calls)
            ]
        elif calls:
            entry["content"] = "\n".join(filter(None, [content, _calls_text(calls, served.tool_format)]))
        if message.role == "tool" and served.native_tools:
            entry["tool_call_id"] = message.tool_call_id
        if message.name is not None:
            entry["name"] = message.name
        rendered.append(entry)
    if tools and not served.native_tools:
        prompt = tool_prompt(tools, served.tool_format)
        if rendered and rendered[0]["role"] == "system":
            rendered[0] = {**rendered[0], "content": rendered[0]["content"] + "\n\n" + prompt}
        else:
            rendered.insert(0, {"role": "system", "content": prompt})
    return rendered


def _text(message: Message, index: int) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    texts = []
    for j, part in enumerate(message.content):
        if isinstance(part, ImagePart):
            raise bad_request(
                f"content parts of type {part.type!r} are not supported: this model reads text only",
                f"messages[{index}].content[{j}]",
            )
        texts.append(part.text)
    return "\n".join(texts)


def _calls_text(calls: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(calls)
    return "\n".join(f"<tool_call>\n{json.dumps(call)}\n</tool_call>" for call in calls)


def tool_prompt(tools: list[dict], fmt: str) -> str:
    """The system-message text that tells a model whose template ignores `tools` how to call them."""
    listing = json.dumps([tool["function"] for tool in tools])
    if fmt == "json":
        how = '[{"name": "func_name1", "arguments": {"argument1": "value1"}}, ... (more calls as required)]'
    else:
        how = (
            '<tool_call>\n{"name": "func_name1", "arguments": {"argument1": "value1"}}\n</tool_call>\n'
            "... (one block per call)"
        )
    return (
        "You are an expert in composing functions. You are given a question and a set of possible functions. "
        "Based on the question, make one or more function calls to achieve the purpose. If none of the functions "
        "can be used, answer in plain text instead.\n\n"
        f"You have access to the following tools:\n<tools>{listing}</tools>\n\n"
        f"To call functions, answer in this format and with no other text:\n{how}"
    )


# --- completions ----------------------------------------------------------------------------


def completion_plan(served: ServedModel, req: CompletionRequest) -> Plan:
    _check_model(served, req.model)
    _refuse_unsupported(req)
    if req.echo:
        raise bad_request("echo is not supported", "echo")
    if req.suffix is not None:
        raise bad_request("suffix is not supported: this model does not fill in the middle", "suffix")
    prompts = _completion_prompts(served, req.prompt)
    spec, param = _constraint_spec(req, None, served)
    plan = _plan(served, req, prompts, req.max_tokens, "max_tokens", "prompt")
    if req.best_of is not None and req.best_of != req.n:
        plan.search = _best_of(served, req)
    plan.constraint = served.compile(spec, param) if spec is not None else None
    plan.top_logprobs = req.logprobs
    _check_search_logprobs(plan, "logprobs")
    return plan


def _best_of(served: ServedModel, req: CompletionRequest):
    """OpenAI's legacy `best_of`: that many samples, the `n` with the highest mean token
    log-probability returned (best-of-N with the "logprob" reward)."""
    if req.best_of < req.n:
        raise bad_request(f"best_of ({req.best_of}) must be >= n ({req.n})", "best_of")
    if req.stream:
        raise bad_request("best_of cannot be used with stream", "best_of")
    if req.search is not None:
        raise bad_request("best_of and search are two ways to choose a search; give one", "best_of")
    sampling = {k: getattr(req, k) for k in ("temperature", "top_p", "top_k", "min_p", "seed")}
    sampling = {k: v for k, v in sampling.items() if v is not None}
    if sampling.get("temperature", 1.0) < searches.MIN_TEMPERATURE:
        raise bad_request("best_of needs temperature > 0: greedy samples are all the same", "temperature")
    params = {"n": req.best_of, "reward": "logprob", "temperature": 1.0, **sampling}
    try:
        return searches.build({"algorithm": "best_of_n", **params}, searches.SearchContext(req.n, served.model))
    except APIError as error:
        raise bad_request(error.message.replace("search 'best_of_n': n", "best_of"), "best_of") from None


def _completion_prompts(served: ServedModel, prompt) -> list[list[int]]:
    if isinstance(prompt, str):
        prompts = [served.model.encode(prompt)]
    elif prompt and all(isinstance(p, str) for p in prompt):
        prompts = [served.model.encode(p) for p in prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        prompts = [list(prompt)]
    elif prompt and all(isinstance(p, list) for p in prompt):
        prompts = [list(p) for p in prompt]
    else:
        raise bad_request("prompt must be a string, a list of strings, or token ids", "prompt")
    vocab = served.model.vocab_size
    for i, tokens in enumerate(prompts):
        if not tokens:
            raise bad_request(f"prompt {i} is empty: it encodes to no tokens", "prompt")
        if any(not 0 <= t < vocab for t in tokens):
            raise bad_request(f"prompt {i} holds token ids outside [0, {vocab})", "prompt")
    return prompts


# --- shared ---------------------------------------------------------------------------------


def _check_model(served: ServedModel, name: str) -> None:
    if name != served.name:
        raise APIError(
            f"The model {name!r} does not exist; this server serves {served.name!r}", 404, "invalid_request_error",
            "model", "model_not_found",
        )  # fmt: skip


_NEUTRAL = {
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "verbosity": (None,),
    "web_search_options": (None,),
    "functions": (None,),
    "function_call": (None,),
}


def _refuse_unsupported(req: _Sampling) -> None:
    for name, neutral in _NEUTRAL.items():
        if name in type(req).model_fields and getattr(req, name) not in neutral:
            raise bad_request(f"{name} is not supported by this server", name, "unsupported_parameter")
    if req.stream_options is not None and not req.stream:
        raise bad_request("stream_options is only allowed when stream is true", "stream_options")


def _search(served: ServedModel, req: _Sampling):
    if req.search is not None:
        beside = [k for k in ("temperature", "top_p", "top_k", "min_p", "seed") if getattr(req, k) is not None]
        if beside:
            raise bad_request(f"search holds the decoding parameters; move {', '.join(beside)} into it", beside[0])
        return searches.build(req.search.model_dump(), searches.SearchContext(req.n, served.model))
    temperature = 1.0 if req.temperature is None else req.temperature
    if temperature < searches.MIN_TEMPERATURE:
        return Greedy()  # a temperature this close to 0 overflows the scaled logits; it means arg-max
    top_k = req.top_k if req.top_k not in (None, -1, 0) else None
    try:
        return Sample(temperature, top_k, req.top_p or 1.0, req.min_p or 0.0, n=req.n, seed=req.seed)
    except ValueError as error:
        raise bad_request(str(error)) from None


def _stops(stop) -> tuple[str, ...]:
    stops = () if stop is None else (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stops) > 4:
        raise bad_request(f"stop takes at most 4 strings, got {len(stops)}", "stop")
    for s in stops:
        if not s:
            raise bad_request("stop strings must be non-empty", "stop")
    return stops


def _plan(served: ServedModel, req: _Sampling, prompts, max_tokens, max_param: str, prompt_param: str) -> Plan:
    model = served.model
    if req.n > served.max_n:
        raise bad_request(f"n must be at most {served.max_n} on this server, got {req.n}", "n")
    window = model.context_window
    for tokens in prompts:
        try:
            model.check_prompt_length(len(tokens))
        except PromptTooLongError as error:
            raise context_overflow(error, prompt_param) from None
    longest = max(len(tokens) for tokens in prompts)
    if max_tokens is not None and longest + max_tokens > window:
        raise context_overflow(
            f"This model's maximum context length is {window} tokens. However, you requested {longest + max_tokens} "
            f"tokens ({longest} in the prompt, {max_tokens} for the completion).",
            max_param,
        )
    if max_tokens is None:
        max_tokens = window - longest
        if served.default_max_tokens is not None:
            max_tokens = min(max_tokens, served.default_max_tokens)
    stops = _stops(req.stop)
    search = _search(served, req)
    stopping = Stopping(max_tokens, model.eos_token_ids, stops, window)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return Plan(prompts, search, req.n, stopping, stops, stream=bool(req.stream), include_usage=include_usage)
