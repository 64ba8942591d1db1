"""`sd.tool_calls`: outputs that are tool calls (or, with tool_choice="auto", a plain answer), built from
an OpenAI `tools` list so that every call names a real tool and its arguments validate against that
tool's JSON Schema.

Formats:
- "json": a JSON array of `{"name": ..., "arguments": {...}}` objects (one element unless `parallel`);
- "hermes": the Hermes/Qwen wrapper, one `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`
  per call, calls separated by a newline.

`tool_choice`: "required" (at least one call), a tool's name or `{"name": ...}` /
`{"type": "function", "function": {"name": ...}}` (calls of that tool only), "auto" (a call, or text
that does not begin like one: its first character after whitespace is neither "[" nor "<"; the two
languages are disjoint), "none" (such text only).
`parse(text)` reads the calls back out of a finished output.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import llguidance

from searchdec.errors import ConstraintError
from searchdec.grammars.specs import ConstraintSpec

FORMATS = ("json", "hermes")
# A plain answer: its first character after any whitespace is neither "<" nor "[", so it never starts
# like a call of either format, even after leading whitespace (tests/test_tool_calls.py proves the two
# patterns disjoint with interegular).
_TEXT_PATTERN = r"[ \t\r\n]*[^<\[ \t\r\n][\s\S]*"
_CALL_START = r"[ \t\r\n]*(\[|<tool_call>)[\s\S]*"
_TEXT = f"TEXT: /{_TEXT_PATTERN}/"
_HERMES_CALL = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.S)


@dataclass(frozen=True)
class ToolCalls(ConstraintSpec):
    tools_json: str  # [{"name", "parameters"}], in the order given
    choice: str  # "auto" | "required" | "none" | "named"
    names: tuple[str, ...]  # the tools a call may name
    parallel: bool
    format: str
    max_whitespace: int = 4

    @property
    def tools(self) -> list[dict]:
        return json.loads(self.tools_json)

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

    def grammar(self) -> str:
        if self.choice == "none":
            return llguidance.LLMatcher.grammar_from_lark(f"start: TEXT\n{_TEXT}\n")
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
        start = "start: calls | TEXT" if self.choice == "auto" else "start: calls"
        text = f"\n{_TEXT}" if self.choice == "auto" else ""
        return llguidance.LLMatcher.grammar_from_lark(f"{start}\n{calls}{text}\n")

    def parse(self, text: str) -> list[dict] | None:
        """The calls in a finished output as [{"name", "arguments"}], or None for a plain answer."""
        if self.format == "json":
            if not text.lstrip().startswith("["):
                return None
            return json.loads(text)
        bodies = _HERMES_CALL.findall(text)
        return [json.loads(body) for body in bodies] if bodies else None


def tool_calls(
    tools: list[dict], tool_choice="auto", parallel: bool = True, format: str = "hermes", max_whitespace: int = 4
) -> ToolCalls:
    """A constraint from an OpenAI `tools` list (`[{"type": "function", "function": {...}}]`)."""
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
    return ToolCalls(json.dumps(normalized), choice, tuple(allowed), bool(parallel), format, max_whitespace)


def _tool(index: int, tool: dict) -> dict:
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        raise ConstraintError(f"tools[{index}] must be {{'type': 'function', 'function': {{...}}}}")
    function = tool.get("function", tool)
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ConstraintError(f"tools[{index}].function.name must be a non-empty string")
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict):
        raise ConstraintError(f"tools[{index}].function.parameters must be a JSON Schema object")
    return {"name": name, "parameters": parameters}


def _choice(tool_choice, names: list[str]) -> tuple[str, list[str]]:
    if isinstance(tool_choice, dict):
        name = tool_choice.get("name") or tool_choice.get("function", {}).get("name")
        if not name:
            raise ConstraintError(f"tool_choice {tool_choice!r} names no function")
        tool_choice = name
        named = True
    else:
        named = tool_choice not in ("auto", "required", "none")
    if tool_choice == "none":
        return "none", []
    if not names:
        raise ConstraintError(f"tool_choice={tool_choice!r} needs at least one tool")
    if named:
        if tool_choice not in names:
            raise ConstraintError(
                f"tool_choice names {tool_choice!r}, which is not among the tools: {', '.join(names)}"
            )
        return "named", [tool_choice]
    return tool_choice, names
