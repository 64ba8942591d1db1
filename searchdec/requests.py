"""Requests in OpenAI's shape, read one way by scripts and by the server: the constraint a request's
fields ask for, and the prompt its messages and tools make.

`constraint_for` (`request_constraint` for the server, which also learns which field asked) turns
`tools`, `tool_choice`, `parallel_tool_calls`, `response_format`, `structured_outputs` and the
legacy `guided_json` / `guided_regex` / `guided_choice` / `guided_grammar` into one constraint spec:

- at most one of them constrains the output, with one combination OpenAI also takes: `tools` with
  `response_format`. With tool_choice "auto" the output is a call or an answer in the format (one
  grammar holds both); "none": an answer in the format; "required" or a named tool: a call, which
  the format does not apply to;
- tool calls are `sd.tool_calls` (arguments hold only the properties a tool declares), in the call
  format of the model's prompts (`ChatFormat.tool_format`).

`chat_prompt` (and `ChatFormat.prompt`) renders chat messages and tools into token ids. A chat
template that renders `tools` gets them and the messages in OpenAI's shape (earlier calls as
`tool_calls`); one that ignores them (SmolLM2's does) gets the tools and the call format described
in the system message (`tool_prompt`) and earlier calls written out in that format, so the model
always sees the tools it may call. `sd.generate(..., tools=...)` and the server both render this way.

Every refusal is a `RequestError` naming the request field (`param`, as in OpenAI's errors).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

from searchdec.errors import ConstraintError
from searchdec.grammars.specs import ConstraintSpec, JsonSchema, choice, json_schema, lark, regex
from searchdec.grammars.sql import sql
from searchdec.grammars.tool_calls import FORMATS, ToolCalls, ToolChoiceError, tool_calls

AUTO = "auto"
_PROBE = [{"type": "function", "function": {"name": "searchdec_template_probe", "parameters": {"type": "object"}}}]
_PROBE_MESSAGES = [{"role": "user", "content": "x"}]
_LEGACY = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")


class RequestError(ConstraintError):
    """A request field that cannot be honoured; `param` names it (e.g. "tool_choice",
    "messages[2].tool_call_id") and `cause` holds the grammar layer's own error when there is one."""

    def __init__(self, message: str, param: str, cause: ConstraintError | None = None) -> None:
        super().__init__(f"{param}: {message}" if cause is not None else message)
        self.param = param
        self.cause = cause


# --- constraints ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestConstraint:
    """The one constraint a request asks for (None when the output is free) and the field that asked.

    `parts` are specs that came from other fields and sit inside `spec` or were checked beside it
    (response_format's schema beside tools), each with its field: compiling them alone first lets a
    grammar error name the field that caused it."""

    spec: ConstraintSpec | None
    param: str | None
    parts: tuple[tuple[ConstraintSpec, str], ...] = ()


def constraint_for(
    model=None,
    *,
    tools: list[dict] | None = None,
    tool_choice: str | dict | None = None,
    parallel_tool_calls: bool | None = None,
    response_format: dict | None = None,
    structured_outputs: dict | None = None,
    guided_json: dict | str | None = None,
    guided_regex: str | None = None,
    guided_choice: list[str] | None = None,
    guided_grammar: str | None = None,
    tool_format: str = AUTO,
    databases: dict[str, str] | None = None,
) -> ConstraintSpec | None:
    """The constraint spec an OpenAI-style request's fields ask for, exactly as the server builds it
    (None when they leave the output free). Pass it to `sd.generate(..., constraint=...)`.

    The fields take their JSON shapes: `tools=[{"type": "function", "function": {...}}]`,
    `tool_choice="required"` or `{"type": "function", "function": {"name": ...}}`,
    `response_format={"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}`,
    `structured_outputs={"regex": ...}` (one of json, regex, choice, grammar, json_object, sql);
    `{"sql": {"tables": <a Spider tables.json entry>}}` or `{"sql": {"database": name}}`, a name of
    `databases` (name -> SQLite path), with `"checks": false` to keep the grammar alone (`sd.sql`).
    `tool_format` "auto" takes the call format of `model`'s prompts ("hermes" when its chat template
    renders tools, else "json"; "hermes" without a model). Raises `RequestError` naming the field."""
    if tool_format == AUTO:  # the template is probed only when there are calls to format
        tool_format = ChatFormat(model).tool_format if model is not None and tools else "hermes"
    fields = dict(tools=tools, tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls,
                  response_format=response_format, structured_outputs=structured_outputs, guided_json=guided_json,
                  guided_regex=guided_regex, guided_choice=guided_choice, guided_grammar=guided_grammar)  # fmt: skip
    return request_constraint(**fields, tool_format=tool_format, databases=databases).spec


def request_constraint(
    *,
    tools: list[dict] | None = None,
    tool_choice: str | dict | None = None,
    parallel_tool_calls: bool | None = None,
    response_format: dict | None = None,
    structured_outputs: dict | None = None,
    guided_json: dict | str | None = None,
    guided_regex: str | None = None,
    guided_choice: list[str] | None = None,
    guided_grammar: str | None = None,
    tool_format: str = "hermes",
    databases: dict[str, str] | None = None,
) -> RequestConstraint:
    """`constraint_for` with the field that asked for the constraint (the server's error `param`)."""
    tool_spec = _tool_spec(tools, tool_choice, parallel_tool_calls, tool_format)
    found: list[tuple[ConstraintSpec, str]] = []
    parts: list[tuple[ConstraintSpec, str]] = []
    answer = None
    if response_format is not None and _format_type(response_format) != "text":
        answer = _response_format_spec(response_format)
        if tool_spec is not None:
            if tool_spec.choice == "auto":
                parts.append(answer)  # the schema's own errors name response_format
                try:
                    tool_spec = tool_spec.with_answer(answer[0])
                except ConstraintError as error:
                    raise RequestError(str(error), answer[1], error) from None
                answer = None
            elif tool_spec.choice == "none":
                tool_spec = None
            else:
                parts.append(answer)  # a call is asked for; the format must still be valid
                answer = None
    if tool_spec is not None and tool_spec.choice != "none":
        found.append((tool_spec, "tools"))
    if answer is not None:
        found.append(answer)
    if structured_outputs is not None:
        found.append(_structured_outputs_spec(structured_outputs, databases or {}))
    legacy = dict(zip(_LEGACY, (guided_json, guided_regex, guided_choice, guided_grammar)))
    for name, value in legacy.items():
        if value is not None:
            found.append(_one_constraint(name.removeprefix("guided_"), value, name))
    if len(found) > 1:
        fields = ", ".join(param.split(".")[0] for _, param in found)
        if found[0][1] == "tools":
            raise RequestError(
                f"tools (tool_choice={tool_spec.choice!r}) cannot be combined with another output constraint "
                f"({fields}); response_format can shape a plain answer beside tools, or set tool_choice='none' to "
                "constrain a plain answer",
                found[1][1],
            )
        raise RequestError(f"at most one output constraint per request; got {fields}", found[1][1])
    if found:
        return RequestConstraint(*found[0], tuple(parts))
    if tool_spec is not None:  # tool_choice="none": a plain answer that does not begin like a call
        return RequestConstraint(tool_spec, "tools", tuple(parts))
    return RequestConstraint(None, None, tuple(parts))


def _tool_spec(tools, tool_choice, parallel, tool_format: str) -> ToolCalls | None:
    if not tools:
        if tool_choice is not None:
            raise RequestError("tool_choice is only allowed when tools are given", "tool_choice")
        if parallel is not None:
            raise RequestError("parallel_tool_calls is only allowed when tools are given", "parallel_tool_calls")
        return None
    parallel = True if parallel is None else parallel
    try:
        return tool_calls(tools, tool_choice=tool_choice or "auto", parallel=parallel, format=tool_format)
    except ToolChoiceError as error:
        raise RequestError(str(error), "tool_choice") from None
    except ConstraintError as error:
        raise RequestError(str(error), "tools", error) from None


def _format_type(response_format) -> str:
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise RequestError(
            "response_format must be {'type': 'text' | 'json_object' | 'json_schema', ...}", "response_format"
        )
    return kind


def _response_format_spec(response_format: dict) -> tuple[JsonSchema, str]:
    described = response_format.get("json_schema")
    if response_format["type"] == "json_object":
        if described is not None:
            raise RequestError("response_format json_object takes no json_schema", "response_format.json_schema")
        return json_schema({"type": "object"}), "response_format"
    if not isinstance(described, dict):
        raise RequestError("response_format type json_schema needs a json_schema object", "response_format.json_schema")
    schema = described.get("schema")
    if schema is None:
        raise RequestError("response_format.json_schema needs a schema", "response_format.json_schema.schema")
    param = "response_format.json_schema.schema"
    try:
        return json_schema(schema, strict=bool(described.get("strict"))), param
    except ConstraintError as error:
        raise RequestError(str(error), param, error) from None


def _structured_outputs_spec(outputs: dict, databases: dict[str, str]) -> tuple[ConstraintSpec, str]:
    if not isinstance(outputs, dict):
        raise RequestError("structured_outputs must be an object", "structured_outputs")
    given = {k: v for k, v in outputs.items() if v is not None}
    if given.get("json_object") is False:
        given.pop("json_object")
    if len(given) != 1:
        raise RequestError(
            "structured_outputs needs exactly one of json, regex, choice, grammar, json_object, sql; "
            f"got {', '.join(given) or 'none'}",
            "structured_outputs",
        )
    (kind, value), = given.items()  # fmt: skip
    if kind == "sql":
        return _sql_spec(value, "structured_outputs.sql", databases)
    return _one_constraint(kind, value, f"structured_outputs.{kind}")


def _sql_spec(value, param: str, databases: dict[str, str]) -> tuple[ConstraintSpec, str]:
    """`{"tables": <tables.json entry>}` or `{"database": <a name of databases>}`, and optionally `checks`."""
    if not isinstance(value, dict):
        raise RequestError("sql takes {'tables': <a tables.json entry>} or {'database': <name>}", param)
    unknown = sorted(set(value) - {"tables", "database", "checks"})
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r}; sql takes tables or database, and checks", param)
    given = [key for key in ("tables", "database") if value.get(key) is not None]
    if len(given) != 1:
        raise RequestError(f"sql needs exactly one of tables, database; got {', '.join(given) or 'none'}", param)
    checks = value.get("checks", True)
    if not isinstance(checks, bool):
        raise RequestError(f"checks must be true or false, got {checks!r}", f"{param}.checks")
    where = f"{param}.{given[0]}"
    if given[0] == "database":
        name = value["database"]
        if not isinstance(name, str) or name not in databases:
            known = ", ".join(sorted(databases)) or "none (start it with --database NAME=PATH)"
            raise RequestError(f"unknown database {name!r}; the databases here: {known}", where)
        source = {"db": databases[name]}
    else:
        if not isinstance(value["tables"], dict):
            raise RequestError("tables must be a tables.json entry (an object)", where)
        source = {"tables": value["tables"]}
    try:
        return sql(**source, checks=checks), where
    except ConstraintError as error:
        raise RequestError(str(error), where, error) from None


def _one_constraint(kind: str, value, param: str) -> tuple[ConstraintSpec, str]:
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
        raise RequestError(str(error), param, error) from None
    raise RequestError(f"unknown constraint {kind!r}", param)


# --- prompts --------------------------------------------------------------------------------


def chat_prompt(model, messages: list[dict], tools: list[dict] | None = None, *, tool_format: str = AUTO) -> list[int]:
    """Token ids of chat `messages` (OpenAI's shape) with `tools`, rendered as the server renders them:
    to a chat template that renders tools, or described in the system message in `tool_format`
    ("auto": the model's own, see `ChatFormat`)."""
    return ChatFormat(model, tool_format).prompt(messages, tools)


class ChatFormat:
    """How one model's chat prompts carry tools: `native` when its chat template renders `tools`
    (its output changes when tools are given), and `tool_format`, the format its calls take: "hermes"
    when native, else "json" (measured on SmolLM2: Hermes blocks ran on into more calls, while a JSON
    list is closed with "]"), unless one is asked for. Both are found on first use."""

    def __init__(self, model, tool_format: str = AUTO) -> None:
        if tool_format != AUTO and tool_format not in FORMATS:
            raise ValueError(f"unknown tool-call format {tool_format!r}; choose one of auto, {', '.join(FORMATS)}")
        self.model = model
        self._asked = tool_format

    @functools.cached_property
    def native(self) -> bool:
        if not getattr(self.model.tokenizer, "chat_template", None):
            return False
        try:
            with_tools = self.model.apply_chat_template(_PROBE_MESSAGES, tools=_PROBE)
        except Exception:  # a template that chokes on tools does not render them
            return False
        return with_tools != self.model.apply_chat_template(_PROBE_MESSAGES)

    @functools.cached_property
    def tool_format(self) -> str:
        if self._asked != AUTO:
            return self._asked
        return "hermes" if self.native else "json"

    def prompt(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """Token ids of `messages` and `tools` through the model's chat template (see `messages`)."""
        return self.model.apply_chat_template(self.messages(messages, tools), tools=tools if self.native else None)

    def messages(self, messages: list[dict], tools: list[dict] | None = None) -> list[dict]:
        """The messages the chat template gets: "developer" is "system", text parts are joined, and
        with a template that ignores tools, earlier calls are written out in `tool_format` and the
        tools are described in the system message (`tool_prompt`)."""
        rendered = [self._message(i, message) for i, message in enumerate(messages)]
        if tools and not self.native:
            prompt = tool_prompt(tools, self.tool_format)
            if rendered and rendered[0]["role"] == "system":
                rendered[0] = {**rendered[0], "content": rendered[0]["content"] + "\n\n" + prompt}
            else:
                rendered.insert(0, {"role": "system", "content": prompt})
        return rendered

    def _message(self, i: int, message: dict) -> dict:
        if not isinstance(message, dict) or "role" not in message:
            raise RequestError(f"chat message {i} has no 'role'", f"messages[{i}].role")
        content = message_text(message, i)
        role = "system" if message["role"] == "developer" else message["role"]
        if role == "tool" and not message.get("tool_call_id"):
            raise RequestError("a tool message needs tool_call_id", f"messages[{i}].tool_call_id")
        given = message.get("tool_calls") or []
        calls = [_call(i, j, call) for j, call in enumerate(given)]
        entry = {"role": role, "content": content}
        if calls and self.native:
            entry["tool_calls"] = [
                {**({"id": c["id"]} if "id" in c else {}), "type": "function", "function": f}
                for c, f in zip(given, calls)
            ]
        elif calls:
            entry["content"] = "\n".join(filter(None, [content, _calls_text(calls, self.tool_format)]))
        if role == "tool" and self.native:
            entry["tool_call_id"] = message["tool_call_id"]
        for key, value in message.items():  # anything else (e.g. "name") goes to the template as given
            if key not in ("role", "content", "tool_calls", "tool_call_id"):
                entry[key] = value
        return entry


def message_text(message: dict, index: int) -> str:
    """A chat message's text: its content string, or its text parts joined by newlines."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError("content must be a string or a list of parts", f"messages[{index}].content")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            raise RequestError(
                f"content parts of type {kind!r} are not supported: this model reads text only",
                f"messages[{index}].content[{j}]",
            )
        texts.append(part["text"])
    return "\n".join(texts)


def _call(i: int, j: int, call: dict) -> dict:
    function = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise RequestError("a tool call needs function.name", f"messages[{i}].tool_calls[{j}].function.name")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as error:
            raise RequestError(
                f"tool call arguments are not JSON: {error}", f"messages[{i}].tool_calls[{j}].function.arguments"
            ) from None
    return {"name": function["name"], "arguments": arguments}


def _calls_text(calls: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(calls)
    return "\n".join(f"<tool_call>\n{json.dumps(call)}\n</tool_call>" for call in calls)


def tool_prompt(tools: list[dict], fmt: str) -> str:
    """The system-message text that tells a model whose template ignores `tools` how to call them."""
    listing = json.dumps([tool.get("function", tool) for tool in tools])
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
