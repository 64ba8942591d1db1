"""From a request body to a decoding plan, with every check done before anything is queued.

A plan holds the tokenized prompt(s), the compiled constraint (tool calls, `response_format`,
`structured_outputs` or `guided_*`: at most one of them), the search spec, the stopping rule and
what the response must report (log-probabilities, usage). Each refusal is an `APIError` naming the
request field.

The constraint and the chat prompt come from searchdec/requests.py, which scripts use too
(`sd.constraint_for`, `sd.generate(..., tools=...)`): a request means the same constraint and the
same prompt in a script and over HTTP. Tool calls the model makes are enforced by `sd.tool_calls`,
not merely requested.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from pydantic import BaseModel

from searchdec.errors import ConstraintError, PromptTooLongError
from searchdec.grammars import ConstraintSpec, ToolCalls
from searchdec.grammars.base import Constraint
from searchdec.requests import ChatFormat, RequestConstraint, RequestError, request_constraint
from searchdec.search.processors import is_neutral
from searchdec.search.rows import Stopping
from searchdec.search.sampling import Greedy, Sample
from searchdec.server import searches
from searchdec.server.errors import APIError, bad_request, context_overflow, from_constraint_error
from searchdec.server.protocol import ChatCompletionRequest, CompletionRequest, _Sampling


@dataclass
class ServedModel:
    """The model behind the server and how requests are turned into its prompts."""

    model: object
    name: str
    tool_format: str = "auto"  # "hermes" | "json" | "auto": hermes when the template renders tools, else json
    default_max_tokens: int | None = None  # None: up to the context window
    max_n: int = 16
    databases: dict[str, str] = field(default_factory=dict)  # name -> SQLite path, for structured_outputs.sql

    def __post_init__(self) -> None:
        self.compile_lock = threading.Lock()  # the grammar compiler's cache is not thread-safe
        self.chat = ChatFormat(self.model, self.tool_format)
        self.tool_format = self.chat.tool_format  # the template is probed once, here

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
    spec: ConstraintSpec | None = None  # the constraint before compilation (as `sd.constraint_for` builds it)
    tools: ToolCalls | None = None  # outputs are read back as tool calls
    named_tool: bool = False  # OpenAI answers finish_reason "stop" for a named tool_choice
    top_logprobs: int | None = None
    stream: bool = False
    include_usage: bool = False


# --- chat -----------------------------------------------------------------------------------

_ECHOED = {"refusal", "annotations", "audio", "function_call"}  # what a client echoes back; not for the template


def chat_plan(served: ServedModel, req: ChatCompletionRequest) -> Plan:
    _check_model(served, req.model)
    _refuse_unsupported(req)
    tools = [tool.model_dump(exclude_none=True) for tool in req.tools] if req.tools else None
    built = _request_constraint(
        served,
        req,
        tools=tools,
        tool_choice=_dump(req.tool_choice),
        parallel_tool_calls=req.parallel_tool_calls,
        response_format=_dump(req.response_format),
    )
    if not getattr(served.model.tokenizer, "chat_template", None):
        raise bad_request(f"model {served.name!r} has no chat template; use /v1/completions", "messages")
    messages = [m.model_dump(exclude_none=True, exclude=_ECHOED) for m in req.messages]
    try:
        prompt = served.chat.prompt(messages, tools)
    except RequestError as error:
        raise _api_error(error) from None
    except Exception as error:  # the template's own complaint (e.g. roles out of order)
        raise bad_request(f"the model's chat template cannot render these messages: {error}", "messages") from None
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs=true", "top_logprobs")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    param_max = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    plan = _plan(served, req, [prompt], max_tokens, param_max, "messages")
    _constrain(served, plan, built)
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


def _dump(field):
    """A request field as its JSON shape (what `sd.constraint_for` takes)."""
    return field.model_dump(by_alias=True, exclude_none=True) if isinstance(field, BaseModel) else field


_GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")


def _request_constraint(served: ServedModel, req: _Sampling, **chat_fields) -> RequestConstraint:
    """The constraint the request's fields ask for, built as `sd.constraint_for` builds it."""
    extensions = {name: getattr(req, name) for name in _GUIDED}
    try:
        return request_constraint(
            **chat_fields,
            structured_outputs=_dump(req.structured_outputs),
            **extensions,
            tool_format=served.chat.tool_format,
            databases=served.databases,
        )
    except RequestError as error:
        raise _api_error(error) from None


def _constrain(served: ServedModel, plan: Plan, built: RequestConstraint) -> None:
    for part, param in built.parts:  # alone first, so that their errors name their own field
        served.compile(part, param)
    plan.spec = built.spec
    plan.constraint = served.compile(built.spec, built.param) if built.spec is not None else None
    plan.tools = built.spec if isinstance(built.spec, ToolCalls) else None
    plan.named_tool = plan.tools is not None and plan.tools.choice == "named"


def _api_error(error: RequestError) -> APIError:
    if error.cause is not None:
        return from_constraint_error(error.cause, error.param)
    return bad_request(str(error), error.param)


# --- completions ----------------------------------------------------------------------------


def completion_plan(served: ServedModel, req: CompletionRequest) -> Plan:
    _check_model(served, req.model)
    _refuse_unsupported(req)
    if req.echo:
        raise bad_request("echo is not supported", "echo")
    if req.suffix is not None:
        raise bad_request("suffix is not supported: this model does not fill in the middle", "suffix")
    prompts = _completion_prompts(served, req.prompt)
    built = _request_constraint(served, req)
    plan = _plan(served, req, prompts, req.max_tokens, "max_tokens", "prompt")
    if req.best_of is not None and req.best_of != req.n:
        plan.search = _best_of(served, req)
    _constrain(served, plan, built)
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
    context = searches.SearchContext(req.n, served.model)
    sampling = {k: getattr(req, k) for k in _DECODING if getattr(req, k) is not None}
    sampling.update(searches.processors({k: getattr(req, k) for k in searches.PROCESSORS}, context))
    if sampling.get("temperature", 1.0) < searches.MIN_TEMPERATURE:
        raise bad_request("best_of needs temperature > 0: greedy samples are all the same", "temperature")
    params = {"n": req.best_of, "reward": "logprob", "temperature": 1.0, **sampling}
    try:
        return searches.build({"algorithm": "best_of_n", **params}, context)
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


_DECODING = ("temperature", "top_p", "top_k", "min_p", "seed")


def _search(served: ServedModel, req: _Sampling):
    context = searches.SearchContext(req.n, served.model)
    if req.search is not None:
        beside = [k for k in _DECODING if getattr(req, k) is not None]
        beside += [k for k in searches.PROCESSORS if not is_neutral(k, getattr(req, k))]
        if beside:
            raise bad_request(f"search holds the decoding parameters; move {', '.join(beside)} into it", beside[0])
        return searches.build(req.search.model_dump(), context)
    processors = searches.processors({k: getattr(req, k) for k in searches.PROCESSORS}, context)
    temperature = 1.0 if req.temperature is None else req.temperature
    if temperature < searches.MIN_TEMPERATURE:
        return Greedy(**processors)  # a temperature this close to 0 overflows the scaled logits; it means arg-max
    top_k = req.top_k if req.top_k not in (None, -1, 0) else None
    try:
        return Sample(temperature, top_k, req.top_p or 1.0, req.min_p or 0.0, n=req.n, seed=req.seed, **processors)
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
