"""A grounding reward for tool calls: how much of a call the conversation supports.

`Grounding(tools=None)` reads the calls an output makes (the "json" format, `[{"name", "arguments"}]`,
or Hermes `<tool_call>` blocks, as `sd.tool_calls` writes them) and scores the fraction of their
argument values that the conversation supports, in [0, 1]. The conversation is the prompt text with
its tool listing (`<tools>...</tools>`, as `requests.tool_prompt` and Hermes templates write it) cut
out, so a value copied from a tool's description is not evidence. Every leaf value of the arguments
counts once (list items and object fields one by one):
- a string is supported when its normalised form (lower case, spaces and the punctuation
  , . / - _ * ^ ' " : ; ( ) removed, as BFCL's checker compares strings) occurs in the normalised
  conversation; otherwise it scores the fraction of its words the conversation holds (a word matches
  its first five letters, so "calculating" supports "calculate"). A string that is a date (ISO
  `2024-03-05`, `03/05/2024`, `March 5, 2024`, `5 March 2024`) is supported when the conversation
  names the same day in any of those forms (a year it leaves out matches any year);
- a number is supported when the conversation holds it: digits (`1,000`, `2.5`, `-3`, sign ignored),
  number words ("five", "twenty", "a hundred"), scaled words ("3 million"), or a percentage either
  way ("5%" supports 5 and 0.05);
- a value equal to the parameter's schema `default` (or to a quoted value its description calls the
  default) is supported, as is the only value of a one-value `enum`;
- a boolean or null counts only where the schema gives a default: supported when it equals it.
A call that repeats an earlier one of the same output verbatim scores 0.0 for each of its values
(the conversation asked for it once; parallel calls differ in their arguments).
An unfinished output (cut by `max_tokens`, or a search's partial candidate, as TreeBoN scores) counts
what it has completed: its complete calls, and the complete values of the call being written.
The function's name counts as one more value when `names=True` (the default): the fraction of its
words (split at `_`, `.`, `-` and camelCase) the conversation holds, relative to the best such
fraction among the tools offered (the best-matching tool scores 1.0, so a lone tool always does),
which separates "triangle_area" from "circle_area" when several tools are offered. A call with
nothing to count scores 1.0; an output that makes no parseable call scores 0.0.

The tools' schemas (for defaults and enums) come from `tools` (an OpenAI `tools` list, or plain
`{"name", "parameters"}` entries) or, when it is None, from the prompt's own tool listing, so
`Grounding()` works on any prompt that lists its tools (the server's `"reward": "grounding"`).
Text only: no model, no log-probabilities, and it pickles.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from searchdec.rewards.base import Reward

_TOOLS = re.compile(r"<tools>(.*?)</tools>", re.S)
_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
_PUNCTUATION = re.compile(r"[\s,./\-_*^'\":;()]")
_WORD = re.compile(r"[a-z0-9]+")
_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+")
_NAME_PARTS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_QUOTED = re.compile(r"""['"]([^'"]{1,80})['"]""")
STEM = 5  # letters a word is compared by (a crude stem)
_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40,
    "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
    "million": 10**6, "billion": 10**9, "dozen": 12, "half": 0.5, "twice": 2, "double": 2, "triple": 3,
    "once": 1, "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "tenth": 10,
}  # fmt: skip
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_MONTH_NAMES = (
    "jan january|feb february|mar march|apr april|may|jun june|jul july|aug august|sep sept september|"
    "oct october|nov november|dec december"
)
_MONTHS = {name: i + 1 for i, names in enumerate(_MONTH_NAMES.split("|")) for name in names.split()}
_MONTH = "|".join(sorted(_MONTHS, key=len, reverse=True))
_DATES = (  # (pattern, order of its groups: y m d, month given by name where "n")
    (re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b"), "ymd"),
    (re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{4})\b"), "mdy"),
    (re.compile(rf"\b({_MONTH})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?(?:,?\s+(\d{{4}}))?\b", re.I), "ndy"),
    (re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH})\.?(?:,?\s+(\d{{4}}))?\b", re.I), "dny"),
)


class Grounding(Reward):
    """The fraction of a tool call's argument values the conversation supports (module docstring)."""

    def __init__(self, tools: Sequence[dict] | None = None, *, names: bool = True) -> None:
        super().__init__()
        self.tools = None if tools is None else _schemas(tools)
        self.names = bool(names)

    def __repr__(self) -> str:
        return "Grounding()" if self.tools is None else f"Grounding({len(self.tools)} tools)"

    def _score(self, prompts, outputs):
        return [self.grounding(prompt, output) for prompt, output in zip(prompts, outputs)]

    def grounding(self, prompt: str, output: str) -> float:
        """The score of one output (see the module docstring)."""
        calls = parse_calls(output)
        if not calls:
            return 0.0
        tools = self.tools if self.tools is not None else _schemas(_listed_tools(prompt))
        evidence = Evidence(_TOOLS.sub(" ", prompt))
        scores: list[float] = []
        seen: set[str] = set()
        for call in calls:
            schema = tools.get(call["name"], {})
            call_scores = [_name_score(call["name"], tools, evidence)] if self.names else []
            arguments = call.get("arguments")
            if isinstance(arguments, dict):
                properties = schema.get("properties") or {}
                for key, value in arguments.items():
                    call_scores += _leaf_scores(value, properties.get(key) or {}, evidence)
            key = json.dumps(call, sort_keys=True)
            if key in seen:  # a repeated call: the conversation asked for it once
                call_scores = [0.0] * max(len(call_scores), 1)
            seen.add(key)
            scores += call_scores
        return sum(scores) / len(scores) if scores else 1.0


class Evidence:
    """What a conversation's text can support: its normalised text, words, numbers and dates."""

    def __init__(self, text: str) -> None:
        lowered = text.lower()
        self.text = _normal(text)
        self.stems = {word[:STEM] for word in _WORD.findall(lowered)}
        self.numbers = _numbers(lowered)
        self.dates = _dates(text)

    def string(self, value: str) -> float:
        date = _dates(value)
        if len(date) == 1:
            return 1.0 if any(_same_day(date[0], day) for day in self.dates) else 0.0
        normal = _normal(value)
        if not normal or normal in self.text:
            return 1.0
        return self.words(_WORD.findall(value.lower()))

    def words(self, words: Sequence[str]) -> float:
        if not words:
            return 1.0
        return sum(word[:STEM] in self.stems for word in words) / len(words)

    def number(self, value: float) -> float:
        return 1.0 if abs(value) in self.numbers else 0.0


def parse_calls(output: str) -> list[dict]:
    """The calls an output makes, as [{"name", "arguments"}] (none when it makes no parseable call);
    of an unfinished output, the calls and values it has completed (`complete_part`)."""
    text = output.strip()
    found: list = []
    if text.startswith(("[", "{")):
        value = complete_part(text)
        found = value if isinstance(value, list) else [] if value is None else [value]
    else:
        bodies = _HERMES_CALL.findall(text)
        opened = text.rfind("<tool_call>")
        if opened >= 0 and "</tool_call>" not in text[opened:]:
            bodies.append(text[opened + len("<tool_call>") :].strip())  # the call being written
        for body in bodies:
            value = complete_part(body)
            if value is None:
                return []
            found.append(value)
    calls = [c for c in found if isinstance(c, dict) and isinstance(c.get("name"), str)]
    return calls if len(calls) == len(found) else []


def complete_part(text: str):
    """The JSON value `text` holds, or, when it is cut short, the value made of its complete parts:
    the longest prefix ending at a complete string, object, array or before a comma, with its open
    brackets closed (a number or string still being written is left out). None: nothing parses."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    stack: list[str] = []
    cuts: list[tuple[int, str]] = []  # (end of a prefix, the brackets that close it)
    in_string = escape = False
    for i, ch in enumerate(text):
        if in_string:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_string = False
                cuts.append((i + 1, "".join(reversed(stack))))
            continue
        if ch == '"':
            in_string = True
        elif ch in "[{":
            stack.append("]" if ch == "[" else "}")
            cuts.append((i + 1, "".join(reversed(stack))))
        elif ch in "]}" and stack:
            stack.pop()
            cuts.append((i + 1, "".join(reversed(stack))))
        elif ch == ",":
            cuts.append((i, "".join(reversed(stack))))
    for end, closers in reversed(cuts):
        try:
            return json.loads(text[:end] + closers)
        except ValueError:
            continue
    return None


def _name_score(name: str, tools: dict[str, dict], evidence: Evidence) -> float:
    """The name's word overlap with the conversation, relative to the best-matching tool offered."""
    overlap = evidence.words(_name_words(name))
    best = max((evidence.words(_name_words(other)) for other in tools), default=overlap)
    return 1.0 if best <= 0 or overlap >= best else overlap / best


def _leaf_scores(value, schema: dict, evidence: Evidence) -> list[float]:
    if not isinstance(schema, dict):
        schema = {}
    if _is_default(value, schema):
        return [1.0]
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        return [s for key, item in value.items() for s in _leaf_scores(item, properties.get(key) or {}, evidence)]
    if isinstance(value, list):
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        return [s for item in value for s in _leaf_scores(item, items, evidence)]
    if isinstance(value, bool) or value is None:
        return [0.0] if "default" in schema else []
    if isinstance(value, (int, float)):
        return [evidence.number(float(value))]
    return [evidence.string(str(value))]


def _is_default(value, schema: dict) -> bool:
    enum = schema.get("enum")
    if isinstance(enum, list) and len(enum) == 1 and _same(value, enum[0]):
        return True
    if "default" in schema and _same(value, schema["default"]):
        return True
    description = schema.get("description")
    if isinstance(value, str) and isinstance(description, str) and "default" in description.lower():
        return any(_normal(value) == _normal(quoted) for quoted in _QUOTED.findall(description))
    return False


def _same(value, other) -> bool:
    if isinstance(value, bool) or isinstance(other, bool):
        return value is other
    if isinstance(value, (int, float)) and isinstance(other, (int, float)):
        return float(value) == float(other)
    if isinstance(value, str) and isinstance(other, str):
        return _normal(value) == _normal(other)
    return value == other


def _normal(text: str) -> str:
    return _PUNCTUATION.sub("", text).lower()


def _name_words(name: str) -> list[str]:
    return [part.lower() for part in _NAME_PARTS.findall(name)]


def _numbers(text: str) -> set[float]:
    """Every number `text` states, as absolute values (digits, number words, scales, percentages)."""
    found: set[float] = set()
    for match in _NUMBER.finditer(text):
        value = float(match.group().replace(",", ""))
        found.add(value)
        rest = text[match.end() : match.end() + 12].lstrip()
        if rest.startswith(("%", "percent")):
            found.add(value / 100)
        word = _WORD.match(rest)
        if word and word.group() in _SCALES:
            found.add(value * _SCALES[word.group()])
    words = _WORD.findall(text)
    for i, word in enumerate(words):
        value = _UNITS.get(word)
        if value is None:
            continue
        found.add(float(value))
        if i + 1 < len(words) and words[i + 1] in _UNITS and value >= 20 and _UNITS[words[i + 1]] < 10:
            found.add(float(value + _UNITS[words[i + 1]]))  # "twenty five"
        if i + 1 < len(words) and words[i + 1] in _SCALES:
            found.add(float(value * _SCALES[words[i + 1]]))  # "five hundred"
    return found


def _same_day(a: tuple[int | None, int, int], b: tuple[int | None, int, int]) -> bool:
    """Same month and day, and the same year unless either leaves it out."""
    return a[1:] == b[1:] and (a[0] is None or b[0] is None or a[0] == b[0])


def _dates(text: str) -> list[tuple[int | None, int, int]]:
    """The calendar days `text` names, as (year or None, month, day)."""
    days = []
    for pattern, order in _DATES:
        for match in pattern.finditer(text):
            parts = dict(zip(order, match.groups()))
            month = _MONTHS[parts["n"].lower()] if "n" in parts else int(parts["m"])
            year = int(parts["y"]) if parts.get("y") else None
            day = int(parts["d"])
            if 1 <= month <= 12 and 1 <= day <= 31:
                days.append((year, month, day))
    return days


def _listed_tools(prompt: str) -> list[dict]:
    """The tools a prompt lists inside `<tools>...</tools>` (a JSON array, or one object a line)."""
    tools: list[dict] = []
    for block in _TOOLS.findall(prompt):
        try:
            value = json.loads(block)
            tools += value if isinstance(value, list) else [value]
        except ValueError:
            for line in block.splitlines():
                try:
                    tools.append(json.loads(line))
                except ValueError:
                    continue
    return [tool for tool in tools if isinstance(tool, dict)]


def _schemas(tools: Sequence[dict]) -> dict[str, dict]:
    """Each tool's parameter schema by name (OpenAI `{"type": "function", "function": {...}}` or plain)."""
    if isinstance(tools, (str, bytes)) or not isinstance(tools, Sequence):
        raise TypeError(f"tools must be a list of tool definitions, got {type(tools).__name__}")
    schemas = {}
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise TypeError(f"tools[{i}] must be a dict, got {type(tool).__name__}")
        function = tool.get("function", tool)
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ValueError(f"tools[{i}] has no function name")
        parameters = function.get("parameters")
        schemas[function["name"]] = parameters if isinstance(parameters, dict) else {}
    return schemas
