"""`sd.tool_calls`: outputs that are tool calls (or, with tool_choice="auto", a plain answer), built from
an OpenAI `tools` list so that every call names a real tool and its arguments validate against that
tool's JSON Schema.

Formats:
- "json": a JSON array of `{"name": ..., "arguments": {...}}` objects (one element unless `parallel`);
- "hermes": the Hermes/Qwen wrapper, one `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`
  per call, calls separated by a newline.

Arguments hold only the properties a tool declares: every object schema in its `parameters` that does
not set `additionalProperties` forbids other keys (as OpenAI's strict mode; without it a small model
pads calls with invented keys such as "description" or "type"). A schema that sets
`additionalProperties` keeps its own rule. A tool with no (or empty) `parameters` takes `{}`.

`tool_choice`: "required" (at least one call), a tool's name or `{"name": ...}` /
`{"type": "function", "function": {"name": ...}}` (calls of that tool only), "auto" (a call, or text
that does not begin like one: its first character after whitespace is neither "[" nor "<"; the two
languages are disjoint), "none" (such text only).
`answer`: with "auto" or "none", a plain answer must instead be a JSON document valid under this
`sd.json_schema` (OpenAI's `tools` with `response_format`: call a tool, or answer in the format).
It must not begin like a call: in the "json" format its root must be typed and not an array (a
JSON answer never begins with "<", so any schema suits "hermes").
`parse(text)` reads the calls back out of a finished output.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass

from searchdec.errors import ConstraintError
from searchdec.grammars.specs import ConstraintSpec, JsonSchema, _forbid_extra_properties, check_depth, check_subschemas

FORMATS = ("json", "hermes")
# A plain answer: its first character after any whitespace is neither "<" nor "[", so it never starts
# like a call of either format, even after leading whitespace (tests/test_tool_calls.py proves the two
# patterns disjoint with interegular).
_TEXT_PATTERN = r"[ \t\r\n]*[^<\[ \t\r\n][\s\S]*"
_CALL_START = r"[ \t\r\n]*(\[|<tool_call>)[\s\S]*"
_TEXT = f"TEXT: /{_TEXT_PATTERN}/"
_HERMES_CALL = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.S)


class ToolChoiceError(ConstraintError):
    """A `tool_choice` that names no tool of the list, or needs tools where there are none."""


@dataclass(frozen=True)
class ToolCalls(ConstraintSpec):
    tools_json: str  # [{"name", "parameters"}], in the order given
    choice: str  # "auto" | "required" | "none" | "named"
    names: tuple[str, ...]  # the tools a call may name
    parallel: bool
    format: str
    max_whitespace: int = 4
    answer_json: str | None = None  # a plain answer's schema (engine options included), else free text

    @property
    def tools(self) -> list[dict]:
        return json.loads(self.tools_json)

    @property
    def call_start(self) -> str:
        """The first character of every call output (after whitespace); a plain answer never has it."""
        return "[" if self.format == "json" else "<"

    def with_answer(self, answer: JsonSchema) -> ToolCalls:
        """These calls, with a plain answer that follows `answer` instead of free text."""
        if self.choice not in ("auto", "none"):
            raise ConstraintError(f"an answer format applies with tool_choice 'auto' or 'none', not {self.choice!r}")
        if not isinstance(answer, JsonSchema):
            raise ConstraintError(f"answer must be sd.json_schema(...), got {type(answer).__name__}")
        if self.format == "json" and _may_be_array(answer.schema):
            raise ConstraintError(
                "the answer schema's root must have a type other than array (e.g. type: object): in the json "
                "tool-call format calls begin with '[', and an answer must not begin like a call"
            )
        # One whitespace bound for both %json rules: llguidance 1.9 panics on a grammar whose %json
        # rules bound whitespace differently, and the panic poisons its lock for every later grammar.
        answer = dataclasses.replace(answer, max_whitespace=self.max_whitespace)
        return ToolCalls(self.tools_json, self.choice, self.names, self.parallel, self.format, self.max_whitespace,
                         json.dumps(answer.engine_schema()))  # fmt: skip

    def call_schema(self) -> dict:
        """JSON Schema of one call object."""
        options = [
            {
                "type": "object",
                "properties": {"name": {"const": tool["name"]}, "arguments": tool["parameters"]},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for tool in self.tools
            if tool["name"] in self.names
        ]
        schema = options[0] if len(options) == 1 else {"anyOf": options}
        # Bounded whitespace between JSON tokens, as in sd.json_schema (calls are compact in practice).
        return {**schema, "x-guidance": {"whitespace_pattern": rf"[ \t\n\r]{{0,{self.max_whitespace}}}"}}

    def describe(self) -> str:
        return f"tool calls ({self.choice}, {self.format})"

    def lark(self) -> str:
        answer = "TEXT" if self.answer_json is None else "answer"
        answer_rule = f"\n{_TEXT}" if self.answer_json is None else f"\nanswer: %json {self.answer_json}"
        if self.choice == "none":
            return f"start: {answer}{answer_rule}\n"
        call = json.dumps(self.call_schema())
        if self.format == "json":
            item = self.call_schema()
            array = {"type": "array", "items": item, "minItems": 1, "x-guidance": item.pop("x-guidance")}
            if not self.parallel:
                array["maxItems"] = 1
            calls = f"calls: %json {json.dumps(array)}"
        else:
            repeat = ' ("\\n" call)*' if self.parallel else ""
            calls = f'calls: call{repeat}\ncall: "<tool_call>\\n" body "\\n</tool_call>"\nbody: %json {call}'
        start = f"start: calls | {answer}" if self.choice == "auto" else "start: calls"
        text = answer_rule if self.choice == "auto" else ""
        return f"{start}\n{calls}{text}\n"

    def parse(self, text: str) -> list[dict] | None:
        """The calls in a finished output as [{"name", "arguments"}], or None for a plain answer."""
        if self.format == "json":
            if not text.lstrip().startswith("["):
                return None
            return json.loads(text)
        bodies = _HERMES_CALL.findall(text)
        return [json.loads(body) for body in bodies] if bodies else None


def tool_calls(
    tools: list[dict],
    tool_choice="auto",
    parallel: bool = True,
    format: str = "hermes",
    max_whitespace: int = 4,
    answer: JsonSchema | None = None,
) -> ToolCalls:
    """A constraint from an OpenAI `tools` list (`[{"type": "function", "function": {...}}]`); with
    `answer` (an `sd.json_schema`), a plain answer follows that schema."""
    if format not in FORMATS:
        raise ConstraintError(f"unknown tool-call format {format!r}; choose one of {', '.join(FORMATS)}")
    normalized = [_tool(i, tool) for i, tool in enumerate(tools or [])]
    names = [tool["name"] for tool in normalized]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConstraintError(f"tool names must be unique; repeated: {', '.join(duplicates)}")
    choice, allowed = _choice(tool_choice, names)
    if max_whitespace < 0:
        raise ConstraintError(f"max_whitespace must be >= 0, got {max_whitespace}")
    spec = ToolCalls(json.dumps(normalized), choice, tuple(allowed), bool(parallel), format, max_whitespace)
    return spec if answer is None else spec.with_answer(answer)


def _may_be_array(schema) -> bool:
    """Whether a document valid under `schema` may be an array, judged by its root's `type` alone."""
    if not isinstance(schema, dict) or "type" not in schema:
        return True
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    return "array" in types


def _tool(index: int, tool: dict) -> dict:
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        raise ConstraintError(f"tools[{index}] must be {{'type': 'function', 'function': {{...}}}}")
    function = tool.get("function", tool)
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ConstraintError(f"tools[{index}].function.name must be a non-empty string")
    parameters = function.get("parameters")
    if parameters is None or parameters == {}:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise ConstraintError(f"tools[{index}].function.parameters must be a JSON Schema object")
    check_depth(parameters)  # before the copy below, which recurses
    check_subschemas(parameters)
    return {"name": name, "parameters": _forbid_extra_properties(parameters)}


def _choice(tool_choice, names: list[str]) -> tuple[str, list[str]]:
    if isinstance(tool_choice, dict):
        name = tool_choice.get("name") or tool_choice.get("function", {}).get("name")
        if not name:
            raise ToolChoiceError(f"tool_choice {tool_choice!r} names no function")
        tool_choice = name
        named = True
    else:
        named = tool_choice not in ("auto", "required", "none")
    if tool_choice == "none":
        return "none", []
    if not names:
        raise ToolChoiceError(f"tool_choice={tool_choice!r} needs at least one tool")
    if named:
        if tool_choice not in names:
            raise ToolChoiceError(
                f"tool_choice names function {tool_choice!r}, which is not among the tools: {', '.join(names)}"
            )
        return "named", [tool_choice]
    return tool_choice, names
