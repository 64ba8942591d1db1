"""Hostile constraints: a seeded generator of JSON Schemas, Lark grammars, regexes and SQL schemas meant to
break the compiler, and the harness that feeds each one to `sd.json_schema` / `sd.lark` / `sd.regex` /
`sd.sql` (compiled for a tokenizer, first mask included) and to the HTTP server.

The rule every case must pass: it compiles, or it is refused with a `ConstraintError` subclass (the
server: a 400 naming the request field); nothing else is raised, the process survives, and no case takes
5 seconds or more. Cases come from families (`FAMILIES`): mutations of real schemas (JSONSchemaBench)
and of the SQL grammar, deep nesting, huge enums and bounds, pathological and invalid patterns,
contradictory keywords, wrong JSON types, mutated Spider `tables.json` entries and unreadable database
files. `Cases(seed)[i]` is deterministic: the same seed and index give the same case.

`tests/test_fuzz_constraints.py` runs a slice in CI. The full run (each case in a forked worker, so a
crash or a hang is recorded and the run goes on; counts per outcome printed at the end):

    HF_HUB_OFFLINE=1 python tests/fuzz_constraints.py --count 10000 [--data ../shared/data] [--no-server]
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import random
import sqlite3
import string
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
DATA = HERE / "data"
SLOW_S = 5.0  # a case taking this long (compile + first mask, or a whole request) counts as a hang


# --- cases --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One hostile input: `kind` names the constructor it goes to, `family` the generator that made it."""

    kind: str  # "json_schema" | "json_text" | "lark" | "regex" | "sql_tables" | "sql_db"
    family: str
    value: Any = field(repr=False)
    note: str = ""

    def build(self):
        """The constraint spec (raises what the constructor raises)."""
        import searchdec as sd

        if self.kind in ("json_schema", "json_text"):
            return sd.json_schema(self.value)
        if self.kind == "lark":
            return sd.lark(self.value)
        if self.kind == "regex":
            return sd.regex(self.value)
        if self.kind == "sql_tables":
            return sd.sql(tables=self.value)
        if self.kind == "sql_db":
            return sd.sql(db=self.value)
        raise ValueError(f"unknown case kind {self.kind!r}")

    def request(self, databases: dict[str, str]) -> dict | None:
        """The chat request body fields that ask the server for this constraint (None: no HTTP form)."""
        if self.kind == "json_schema":
            if isinstance(self.value, dict):
                return {"response_format": {"type": "json_schema", "json_schema": {"name": "f", "schema": self.value}}}
            return {"structured_outputs": {"json": self.value}}
        if self.kind == "json_text":
            return {"structured_outputs": {"json": self.value}}
        if self.kind == "lark":
            return {"structured_outputs": {"grammar": self.value}}
        if self.kind == "regex":
            return {"structured_outputs": {"regex": self.value}}
        if self.kind == "sql_tables":
            return {"structured_outputs": {"sql": {"tables": self.value}}}
        if self.kind == "sql_db":
            name = next((n for n, p in databases.items() if p == self.value), Path(str(self.value)).stem)
            return {"structured_outputs": {"sql": {"database": name}}}
        return None


def load_schemas(data: Path | None = None) -> list[Any]:
    """JSONSchemaBench schemas: every file of `data`/jsonschemabench (the 818 of the shared folder), or the
    sample in tests/data."""
    folder = (data or DATA) / "jsonschemabench"
    return [json.loads(path.read_text())["schema"] for path in sorted(folder.glob("*.json"))]


def load_tables(data: Path | None = None) -> list[dict]:
    return json.loads(((data or DATA) / "spider" / "tables.json").read_text())


def sql_grammar() -> str:
    from searchdec.grammars.sql import grammar_text

    return grammar_text()


# Values a keyword can hold that no sane schema gives it: wrong types, extremes, nonsense.
_HUGE = [10**30, -(10**30), 2**64, 2**63, -(2**63) - 1, 1e308, -1e308, 5e-324, 1e-300, 0, -1, 0.5, 2**53 + 1]
_WRONG = [None, True, False, "x", "", [], {}, [1, "a"], {"a": 1}, -3, 3.7, "1e400", "NaN"]
_PATTERNS = [
    "(a*)*b", "(a|aa)*c", "(.*){40}", "(a+)+$", "^(([a-z])+.)+[A-Z]([a-z])+$", "[^\\x00]{100000}", "\\p{L}{5000}",
    "(", ")", "[z-a]", "a{5,2}", "(?<=a)b", "(?=x)y", "(?!x)", "(a)\\1", "\\", "[", "*", "+?+", "a{99999999}",
    "(?P<n>a)(?P=n)", "\\p{NotAProperty}", "\\u{110000}", "[\\d-z]", "^$", "$^", "\\b", "(?i)abc", "a{1000}{1000}",
    "(?:(?:(?:(?:(?:a{10}){10}){10}){10}){10})", "[[:alpha:]]", "\\Q", "(?x) a # c", "\ud800", "\x00", "^.{0,5}$",
    "((((((((((((((((((((a))))))))))))))))))))", "a|" * 2000 + "a", "[" + "a-z" * 3000 + "]",
]  # fmt: skip
_KEYWORD_VALUES: dict[str, list] = {
    "type": ["string", "integer", "number", "object", "array", "boolean", "null", "strin", ["string", "null"], [],
             ["integer", "integer"], 5],  # fmt: skip
    "minLength": _HUGE, "maxLength": _HUGE, "minItems": _HUGE, "maxItems": _HUGE,
    "minProperties": _HUGE, "maxProperties": _HUGE, "minimum": _HUGE, "maximum": _HUGE,
    "exclusiveMinimum": _HUGE + [True], "exclusiveMaximum": _HUGE + [False], "multipleOf": _HUGE,
    "minContains": _HUGE, "maxContains": _HUGE,
    "pattern": _PATTERNS, "format": ["date", "date-time", "email", "uuid", "ipv4", "uri", "regex", "nonsense", "time",
                                     "duration", "hostname", 7],  # fmt: skip
    "enum": [[], [None], [1, 1], [{"a": [1]}, [2]], list(range(2000)), ["a" * 100000], [1e308, -1e308, 5e-324]],
    "const": [None, 10**30, "a" * 50000, {"a": {"b": [1, 2, {}]}}, [[[[]]]], float("1e308")],
    "required": [["a"] * 3, ["zz"], [], "a", [5], ["a", "b", "c", "d"]],
    "additionalProperties": [False, True, {}, {"type": "integer"}, {"not": {}}],
    "uniqueItems": [True, False, "yes"],
    "properties": [{}, {"": {}}, {"a": False}, {"a": {"type": "integer"}, "b": True}, {"\x00": {}, "\u2028": {}}],
    "patternProperties": [{p: {"type": "string"}} for p in _PATTERNS[:12]],
    "propertyNames": [{"pattern": p} for p in _PATTERNS[:8]] + [{"maxLength": 0}, False],
    "items": [False, True, {}, [{"type": "string"}, {"type": "integer"}], {"type": "array", "items": {}}],
    "prefixItems": [[], [False], [{"const": 1}] * 50],
    "contains": [{}, False, {"const": 1}], "not": [{}, True, False, {"type": "string"}],
    "if": [{}, False, {"type": "integer"}], "then": [False, {"minimum": 10}], "else": [False, {"type": "null"}],
    "dependentRequired": [{"a": ["b"]}, {"a": "b"}, {"a": [5]}],
    "dependentSchemas": [{"a": False}, {"a": {"required": ["zz"]}}],
    "$ref": ["#", "#/", "#/nope", "#/definitions/x/y", "http://example.com/schema.json", "#/properties/a", "x:y",
             "#/$defs/%25", "#/items/0", "urn:x"],  # fmt: skip
    "allOf": [[], [{}], [{"type": "string"}, {"type": "integer"}], [False]],
    "anyOf": [[], [False], [{"type": "string"}] * 200],
    "oneOf": [[], [{}, {}], [{"type": "integer"}, {"type": "number"}]],
    "x-guidance": [{"whitespace_pattern": "(a*)*"}, {"item_separator": 5}, {"lenient": "yes"}, {"nonsense": []},
                   {"key_separator": ""}, {"whitespace_flexible": None}],  # fmt: skip
    "$schema": ["http://json-schema.org/draft-04/schema#", "https://json-schema.org/draft/2020-12/schema", "nope", 3],
}  # fmt: skip


def dumps(value: Any) -> str:
    """JSON text of `value`, however deep it nests (the encoder recurses past Python's default limit)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20000))
    try:
        return json.dumps(value)
    finally:
        sys.setrecursionlimit(limit)


def _nodes(schema: Any) -> list[tuple[Any, Any]]:
    """(container, key) of every dict node inside `schema` (the root as (None, None))."""
    out, pending = [], [(None, None, schema)]
    while pending:
        parent, key, node = pending.pop()
        if isinstance(node, dict):
            out.append((parent, key))
            pending += [(node, k, v) for k, v in node.items() if isinstance(v, (dict, list))]
        elif isinstance(node, list):
            pending += [(node, i, v) for i, v in enumerate(node) if isinstance(v, (dict, list))]
    return out


def _get(root, parent, key):
    return root if parent is None else parent[key]


def mutate_schema(rng: random.Random, schema: Any, steps: int) -> Any:
    """`schema` after `steps` random edits at random object nodes (a tree still: no node is shared, as
    in any schema that came as JSON text)."""
    root = copy.deepcopy(schema)
    for _ in range(steps):
        if not isinstance(root, dict):
            break
        parent, key = rng.choice(_nodes(root))
        node = _get(root, parent, key)
        op = rng.randrange(8)
        if op <= 2:  # a keyword set to a hostile value
            name = rng.choice(sorted(_KEYWORD_VALUES))
            node[name] = copy.deepcopy(rng.choice(_KEYWORD_VALUES[name]))
        elif op == 3 and node:  # a keyword dropped
            del node[rng.choice(sorted(node, key=str))]
        elif op == 4:  # a keyword given a value of the wrong JSON type
            if node:
                node[rng.choice(sorted(node, key=str))] = copy.deepcopy(rng.choice(_WRONG))
        else:  # the node wrapped, duplicated deeper, or replaced
            wrapped = copy.deepcopy(node)
            new = rng.choice(
                [
                    {"not": wrapped},
                    {"allOf": [wrapped, {"type": "object"}]},
                    {"anyOf": [wrapped, {"type": "null"}]},
                    {"oneOf": [wrapped, {}]},
                    {"if": wrapped, "then": {"minProperties": 1}, "else": False},
                    {"type": "array", "items": wrapped, "uniqueItems": True, "minItems": 2},
                    {"type": "object", "properties": {"a": wrapped, "b": {}}, "required": ["a", "b"]},
                    {"$defs": {"d": wrapped}, "$ref": "#/$defs/d"},
                    {"contains": wrapped, "minContains": 2, "maxContains": 1},
                    {"dependentSchemas": {"a": wrapped}, "dependentRequired": {"b": ["a"]}},
                    False,
                ]
            )
            if parent is None:
                root = new
            else:
                parent[key] = new
    return root


def _deep(rng: random.Random) -> Any:
    depth = rng.choice([20, 60, 100, 123, 124, 125, 200, 500, 2000])
    leaf: Any = rng.choice([{"type": "string"}, {}, True, {"type": "integer", "minimum": 3}])
    wrap = rng.choice(
        [
            lambda s: {"type": "object", "properties": {"a": s}, "required": ["a"]},
            lambda s: {"type": "array", "items": s},
            lambda s: {"anyOf": [s, {"type": "null"}]},
            lambda s: {"allOf": [s]},
            lambda s: {"not": {"not": s}},
            lambda s: {"if": s, "then": {"type": "object"}},
            lambda s: {"additionalProperties": s},
            lambda s: {"type": "array", "prefixItems": [s], "uniqueItems": True},
            lambda s: {"oneOf": [s]},
        ]
    )
    for _ in range(depth):
        leaf = wrap(leaf)
    return leaf


def _ref_chain(rng: random.Random) -> Any:
    """`$ref` chains and cycles: no JSON nesting, but a compiler that follows references recursively."""
    length = rng.choice([10, 200, 1000, 5000])
    defs = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(length)}
    defs[f"d{length}"] = rng.choice([{"type": "string"}, {"$ref": "#/$defs/d0"}, {"$ref": "#"}, {"not": {}}])
    shape = rng.choice(["plain", "object", "array"])
    if shape == "object":
        defs[f"d{length}"] = {"type": "object", "properties": {"x": {"$ref": "#/$defs/d0"}}, "required": ["x"]}
    elif shape == "array":
        defs[f"d{length}"] = {"type": "array", "items": {"$ref": "#/$defs/d0"}, "minItems": 1}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


def _huge(rng: random.Random) -> Any:
    n = rng.choice([1000, 20000, 100000])
    options = [
        lambda: {"enum": [f"v{i}" for i in range(n)]},
        lambda: {"enum": list(range(n))},
        lambda: {"enum": ["".join(rng.choices(string.printable, k=50)) for _ in range(n // 10)]},
        lambda: {"const": "x" * (n * 10)},
        lambda: {
            "type": "object",
            "properties": {f"p{i}": {"type": "integer"} for i in range(n // 10)},
            "required": [f"p{i}" for i in range(n // 10)],
        },  # fmt: skip
        lambda: {"type": "string", "minLength": rng.choice(_HUGE[:6]), "maxLength": rng.choice(_HUGE)},
        lambda: {"type": "string", "minLength": n, "maxLength": n},
        lambda: {"type": "array", "minItems": n, "items": {"type": "integer"}},
        lambda: {"type": "array", "maxItems": rng.choice(_HUGE), "minItems": rng.choice([0, 1, 10**9])},
        lambda: {"type": "integer", "minimum": rng.choice(_HUGE), "maximum": rng.choice(_HUGE)},
        lambda: {"type": "number", "multipleOf": rng.choice(_HUGE), "minimum": rng.choice(_HUGE)},
        lambda: {"type": "integer", "multipleOf": rng.choice([7, 10**20, 0.001, 1e-300]), "maximum": 10**25},
        lambda: {"type": "object", "minProperties": n, "additionalProperties": {"type": "integer"}},
        lambda: {"type": "string", "pattern": f"^a{{{n}}}$"},
        lambda: {"anyOf": [{"const": i} for i in range(n // 20)]},
        lambda: {"type": "array", "prefixItems": [{"const": i} for i in range(n // 20)]},
        lambda: {"type": "string", "enum": ["a" * i for i in range(1, 400)]},
    ]
    return rng.choice(options)()


def _pattern(rng: random.Random) -> Any:
    p = rng.choice(_PATTERNS)
    return rng.choice(
        [
            {"type": "string", "pattern": p},
            {"type": "string", "pattern": p, "maxLength": rng.choice([0, 5, 1000])},
            {"type": "object", "patternProperties": {p: {"type": "integer"}}, "additionalProperties": False},
            {"type": "object", "propertyNames": {"pattern": p}, "minProperties": 1},
            {"type": "string", "format": rng.choice(["date", "email", "uuid", "date-time"]), "pattern": p},
            {"type": "array", "items": {"type": "string", "pattern": p}, "uniqueItems": True, "minItems": 3},
        ]
    )


def _contradiction(rng: random.Random) -> Any:
    return copy.deepcopy(
        rng.choice(
            [
                {"type": "integer", "minimum": 10, "maximum": 2},
                {"type": "integer", "exclusiveMinimum": 3, "exclusiveMaximum": 4},
                {"type": "integer", "minimum": 0.2, "maximum": 0.8},
                {"type": "integer", "multipleOf": 2, "minimum": 3, "maximum": 3},
                {"type": "string", "minLength": 5, "maxLength": 2},
                {"type": "string", "const": 5},
                {"enum": [1, 2], "const": 3},
                {"enum": []},
                {"type": []},
                {"allOf": [{"type": "string"}, {"type": "integer"}]},
                {"type": "object", "required": ["a"], "additionalProperties": False},
                {"type": "object", "properties": {"a": False}, "required": ["a"]},
                {"type": "array", "minItems": 3, "maxItems": 1},
                {"type": "array", "items": {"type": "boolean"}, "uniqueItems": True, "minItems": 3},
                {"type": "array", "items": False, "minItems": 1},
                {"not": {}},
                {"type": "object", "minProperties": 3, "maxProperties": 1},
                {"type": "string", "format": "date", "pattern": "^x$"},
                {"if": {}, "then": False},
                {"type": "array", "contains": {"const": 1}, "maxContains": 0, "minContains": 1},
                {"anyOf": []},
                {"oneOf": [{}, {}]},
                {
                    "type": "object",
                    "dependentRequired": {"a": ["b"]},
                    "properties": {"a": {}, "b": False},
                    "required": ["a"],
                },  # fmt: skip
                {"type": "number", "minimum": float("inf") if False else 1e308, "exclusiveMinimum": 1e308},
                False,
            ]
        )
    )


def _junk(rng: random.Random) -> Any:
    """Schemas that are not schemas: wrong JSON types anywhere, unknown keywords, odd keys."""
    base: dict = {}
    for _ in range(rng.randint(1, 4)):
        name = rng.choice(sorted(_KEYWORD_VALUES) + ["$id", "definitions", "$defs", "title", "\x00", "", "🙂"])
        base[name] = copy.deepcopy(rng.choice(_WRONG + [rng.choice(_KEYWORD_VALUES.get(name, _WRONG))]))
    return rng.choice([base, base, None, 5, 2.5, "string", [], [{}], True, False, {"type": base}])


def _json_text(rng: random.Random, schemas: list) -> str:
    """Schema JSON text, cut, padded or broken."""
    text = json.dumps(rng.choice(schemas)) if schemas else "{}"
    return rng.choice(
        [
            text[: rng.randrange(len(text) + 1)],
            text + rng.choice(["}", "]", ",", " x", "\x00"]),
            '{"items":' * rng.choice([100, 130, 3000]) + "{}" + "}" * 100,
            "[" * 5000,
            "",
            "null",
            "5",
            '"string"',
            "[]",
            "{'type': 'string'}",
            '{"type": "string", "type": "integer"}',
            '{"minimum": 1e999}',
            '{"enum": [NaN, Infinity]}',
            '{"const": "\\ud800"}',
        ]
    )


_LARK_SNIPPETS = [
    'start: "a"',
    "start: start \"a\" | \"a\"",
    "start: a\na: b\nb: a",
    "start: undefined_rule",
    "start:",
    "start: /[/",
    'start: "a"~5..2',
    'start: "a"~1000000',
    'start: "a"~0',
    'start.99999999999999999999: "a"',
    "start: %json {}",
    'start: %json {"type": "object", "minProperties": 3, "maxProperties": 1}',
    "start: %json {nope",
    "%import common.WS\nstart: WS",
    '%ignore " "\nstart: "a" "b"',
    "start: A\nA: /(a*)*b/",
    "start: A\nA: /\\p{L}{5000}/",
    'start: "" ',
    "start: /a{99999999}/",
    "start: x\nx: x",
    'start: "a" | ',
    "start: (((((((((((((((((((((((((((((((((((((((((\"a\")))))))))))))))))))))))))))))))))))))))",
    '\x00start: "a"',
    'start: "\\ud800"',
    "start: %regex {\"substring_words\": \"a b\"}",
    'start: <[0-9]*>',
    'start: <[99999999999]>',
    'start: "a" "b" -> nope',
    "start: s\ns: @1",
    'start[capture]: "a"',
    "%llguidance {\"no_forcing\": 7}\nstart: \"a\"",
    "%llguidance {\nstart: \"a\"",
]  # fmt: skip


def _lark(rng: random.Random, grammars: list[str]) -> str:
    choice = rng.randrange(6)
    if choice == 0:
        return rng.choice(_LARK_SNIPPETS)
    if choice == 1:  # a real grammar, mutated as text
        text = rng.choice(grammars)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(text) + 1)
            j = min(len(text), i + rng.randint(0, 40))
            text = text[:i] + rng.choice(["", text[i:j] * 2, rng.choice('()[]|*+?"/:\n~%{}'), "start: x\n"]) + text[j:]
        return text
    if choice == 2:  # deep parentheses, long chains, wide alternations
        n = rng.choice([100, 500, 3000, 20000])
        return rng.choice(
            [
                "start: " + "(" * n + '"a"' + ")" * n,
                "start: r0\n" + "".join(f'r{i}: r{i + 1} | "x"\n' for i in range(n)) + f'r{n}: "a"',
                "start: " + " | ".join(f'"w{i}"' for i in range(n)),
                "start: " + " ".join(['"a"?'] * min(n, 2000)),
                "start: " + "[" * n + '"a"' + "]" * n,
            ]
        )
    if choice == 3:  # a JSON schema from another family embedded with %json
        return "start: %json " + dumps(rng.choice([_deep, _huge, _pattern, _contradiction, _junk])(rng))
    if choice == 4:  # a random grammar over a few rules
        rules = [f"r{i}" for i in range(rng.randint(1, 5))]
        atoms = rules + ['"a"', '"b"', "/[0-9]+/", '""', "/(x|y)*/", "%json {}"]
        lines = ["start: " + " ".join(rng.choices(atoms, k=rng.randint(1, 4)))]
        for rule in rules:
            alts = [" ".join(rng.choices(atoms, k=rng.randint(0, 3))) + rng.choice(["", "*", "+", "?"]) for _ in "ab"]
            lines.append(f"{rule}: " + " | ".join(alts))
        return "\n".join(lines)
    return "".join(rng.choices(string.printable, k=rng.randint(0, 200)))


def _regex(rng: random.Random) -> str:
    return rng.choice(_PATTERNS + ["".join(rng.choices("()[]{}|*+?.\\^$-,0123456789abc", k=rng.randint(1, 30)))])


def mutate_tables(rng: random.Random, entry: dict) -> Any:
    entry = copy.deepcopy(entry)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(9)
        keys = sorted(entry)
        if op == 0 and keys:
            del entry[rng.choice(keys)]
        elif op == 1 and keys:
            entry[rng.choice(keys)] = copy.deepcopy(rng.choice(_WRONG))
        elif op == 2 and entry.get("column_names_original"):  # a column entry broken
            columns = entry["column_names_original"]
            if isinstance(columns, list) and columns:
                columns[rng.randrange(len(columns))] = copy.deepcopy(
                    rng.choice(
                        [
                            [99, "x"],
                            [-5, "x"],
                            ["0", "x"],
                            [0],
                            [0, "x", "y"],
                            [0, None],
                            [0, ""],
                            None,
                            5,
                            [1.5, "x"],
                            [True, "x"],
                        ]
                    )  # fmt: skip
                )
        elif op == 3 and isinstance(entry.get("table_names_original"), list):  # a hostile name
            names = entry["table_names_original"]
            name = rng.choice(['"', "a\"b", "x" * 10000, "", "select", "a b", "\x00", "é", "t;DROP TABLE t", "sqlite_x",
                               "[a]", "`", "\\", "/", ".*", None, 5])  # fmt: skip
            if names:
                names[rng.randrange(len(names))] = name
            else:
                names.append(name)
        elif op == 4:
            entry["column_types"] = rng.choice([[], ["nonsense"] * 3, None, "text", [5]])
        elif op == 5:
            entry["primary_keys"] = rng.choice([[999], [-1], "x", [[1, 2]], None, [0]])
        elif op == 6:
            entry["foreign_keys"] = rng.choice([[[999, 0]], [[1]], [[1, 2, 3]], "x", [None], [[0, 0]], [["a", "b"]]])
        elif op == 7 and isinstance(entry.get("column_names_original"), list):  # duplicated names and tables
            entry["column_names_original"] = entry["column_names_original"] * rng.choice([2, 50])
        else:
            n = rng.choice([0, 1, 300, 3000])
            entry = {
                "table_names_original": [f"t{i}" for i in range(n)],
                "column_names_original": [[-1, "*"]] + [[i, f"c{i}"] for i in range(n)],
                "column_types": ["text"] * (n + 1),
                "primary_keys": [],
                "foreign_keys": [],
            }
    return entry  # a dict still: the argument's own type is checked first (a TypeError, or a 400 over HTTP)


def database_files(folder: Path, data: Path | None = None) -> list[str]:
    """Paths `sd.sql(db=...)` gets: real databases, and files that are not (missing, a folder, text,
    empty, truncated, a database with no tables)."""
    folder.mkdir(parents=True, exist_ok=True)
    real = sorted(str(p) for p in ((data or DATA) / "sqlite").glob("*.sqlite"))
    text = folder / "text.sqlite"
    text.write_text("not a database\n" * 100)
    empty = folder / "empty.sqlite"
    empty.write_bytes(b"")
    truncated = folder / "truncated.sqlite"
    truncated.write_bytes(Path(real[0]).read_bytes()[:3000] if real else b"SQLite format 3\x00" + b"\x00" * 90)
    no_tables = folder / "no_tables.sqlite"
    if not no_tables.exists():
        sqlite3.connect(no_tables).close()
    odd = folder / "odd names.sqlite"
    if not odd.exists():
        with sqlite3.connect(odd) as connection:
            connection.execute('CREATE TABLE "a""b" ("x y" TEXT, "select" INT, "" INT)')
            connection.execute('CREATE VIEW "v" AS SELECT 1')
    return [*real, str(text), str(empty), str(truncated), str(no_tables), str(odd), str(folder / "missing.sqlite"),
            str(folder), "", "\x00"]  # fmt: skip


FAMILIES = (
    "schema_mutation", "deep", "ref_chain", "huge", "pattern", "contradiction", "junk", "json_text", "lark",
    "regex", "sql_tables", "sql_db",
)  # fmt: skip
_WEIGHTS = (40, 5, 3, 6, 6, 4, 5, 4, 12, 3, 10, 2)


class Cases:
    """The cases of one seed: case `i` is drawn from its own generator (seeded with the seed and `i`), so
    any case can be made again alone, in any order, in any process."""

    def __init__(self, seed: int, *, data: Path | None = None, db_folder: Path | None = None) -> None:
        self.seed = seed
        self.schemas = load_schemas(data)
        self.grammars = [sql_grammar(), 'start: "yes" | "no"', 'start: item+\nitem: /[a-z]+/ ","?\n%ignore " "']
        self.tables = load_tables(data)
        self.databases = database_files(db_folder or Path(tempfile.gettempdir()) / "searchdec-fuzz-db", data)

    def __getitem__(self, index: int) -> Case:
        rng = random.Random(f"{self.seed}:{index}")
        family = rng.choices(FAMILIES, _WEIGHTS)[0]
        if family == "schema_mutation":
            return Case("json_schema", family, mutate_schema(rng, rng.choice(self.schemas), rng.randint(0, 4)))
        if family in _SCHEMA_MAKERS:
            return Case("json_schema", family, _SCHEMA_MAKERS[family](rng))
        if family == "json_text":
            return Case("json_text", family, _json_text(rng, self.schemas))
        if family == "lark":
            return Case("lark", family, _lark(rng, self.grammars))
        if family == "regex":
            return Case("regex", family, _regex(rng))
        if family == "sql_tables":
            return Case("sql_tables", family, mutate_tables(rng, rng.choice(self.tables)))
        return Case("sql_db", family, rng.choice(self.databases))


_SCHEMA_MAKERS = {"deep": _deep, "ref_chain": _ref_chain, "huge": _huge, "pattern": _pattern,
                  "contradiction": _contradiction, "junk": _junk}  # fmt: skip


# --- running a case -----------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one case came to, directly (`api`) and over HTTP (`http`, None when not sent)."""

    api: str  # "compiled", "refused:<ErrorClass>", or "crash:<ExceptionClass>: message"
    api_s: float
    http: str | None = None  # "200", "400:<code>", or "<status>: message" for anything else
    http_s: float = 0.0

    @property
    def failure(self) -> str | None:
        """Why this outcome breaks the rule, or None."""
        if self.api.startswith("crash"):
            return self.api
        if self.api_s >= SLOW_S:
            return f"slow: {self.api_s:.1f} s ({self.api})"
        if (
            self.http is not None
            and not (self.http == "200" or self.http.startswith("400:"))
            or self.http == "400:None"
        ):
            return f"http {self.http}"
        if self.http_s >= SLOW_S:
            return f"slow over http: {self.http_s:.1f} s"
        return None


def compile_case(case: Case, tokenizer) -> tuple[str, float]:
    """Build, compile for `tokenizer`, start and fill the first mask; the outcome and the seconds taken."""
    from searchdec.errors import ConstraintError
    from searchdec.grammars.base import allocate_bitmask, tokenizer_info

    start = time.perf_counter()
    try:
        constraint = case.build().compile(tokenizer)
        state = constraint.start()
        state.fill(allocate_bitmask(1, tokenizer_info(tokenizer).vocab_size))
        outcome = "compiled"
    except ConstraintError as error:
        outcome = f"refused:{type(error).__name__}"
    except Exception as error:  # the rule broken: anything but a ConstraintError
        outcome = f"crash:{type(error).__name__}: {str(error)[:300]}"
    return outcome, time.perf_counter() - start


def post(client, body: dict):
    """POST `body` to /v1/chat/completions as ASCII JSON (a lone surrogate travels as its escape)."""
    return client.post("/v1/chat/completions", content=dumps(body), headers={"content-type": "application/json"})


def request_case(case: Case, client, model: str, databases: dict[str, str]) -> tuple[str | None, float]:
    """POST the case as a chat request (one token asked) to a test client; the outcome and seconds taken."""
    fields = case.request(databases)
    if fields is None:
        return None, 0.0
    body = {"model": model, "messages": [{"role": "user", "content": "go"}], "max_tokens": 1, **fields}
    start = time.perf_counter()
    try:
        response = post(client, body)
    except Exception as error:  # the test client re-raises what the app did not answer
        return f"raised {type(error).__name__}: {str(error)[:300]}", time.perf_counter() - start
    elapsed = time.perf_counter() - start
    if response.status_code == 400:
        error = response.json()["error"]
        if error["code"] == "invalid_json":  # a body that cannot be read has no field to name
            return "400:body", elapsed
        return f"400:{str(error['param']).split('.')[0].split('[')[0]}", elapsed
    if response.status_code == 200:
        return "200", elapsed
    return f"{response.status_code}: {response.text[:300]}", elapsed


# --- the full run, each case in a forked worker -------------------------------------------------------


def _opens(path: str) -> bool:
    import searchdec as sd

    try:
        sd.sql(db=path)
    except (sd.ConstraintError, TypeError, ValueError):
        return False
    return True


def _worker(connection, all_cases: Cases, tokenizer, serve: bool, databases) -> None:
    client = None
    if serve:  # made here, after the fork: the app's threads (engine, test client portal) do not survive one
        from fastapi.testclient import TestClient
        from tiny import tiny_model

        from searchdec.server import create_app

        app = create_app(tiny_model(), "tiny", databases=databases)
        client = TestClient(app, raise_server_exceptions=False).__enter__()
    connection.send("ready")
    while True:
        message = connection.recv()
        if message is None:
            return
        case = all_cases[message]  # an index: a case is made where it runs (deep ones do not pickle)
        api, api_s = compile_case(case, tokenizer)
        if client is not None:
            result, http_s = request_case(case, client, "tiny", databases)
        else:
            result, http_s = None, 0.0
        connection.send(Outcome(api, api_s, result, http_s))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", type=Path, default=None, help="a data folder (default tests/data; ../shared/data)")
    parser.add_argument("--no-server", action="store_true", help="compile only; send nothing over HTTP")
    parser.add_argument("--kill-after", type=float, default=120.0, help="seconds before a worker is taken as hung")
    parser.add_argument("--show", type=int, default=40, help="failures printed in full")
    parser.add_argument("--only", type=int, nargs="*", help="run these case indexes alone")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import multiprocessing

    from transformers import AutoTokenizer

    from searchdec.models.loading import DEFAULT_MODEL, _resolve

    tokenizer = AutoTokenizer.from_pretrained(_resolve(DEFAULT_MODEL), local_files_only=True)
    db_folder = Path(tempfile.mkdtemp(prefix="searchdec-fuzz-"))
    all_cases = Cases(args.seed, data=args.data, db_folder=db_folder)
    databases = {Path(p).stem: p for p in all_cases.databases if _opens(p)}  # what a server may be started with
    import torch

    torch.set_num_threads(1)  # no thread pool in this process: a forked worker inherits none half-held
    context = multiprocessing.get_context("fork")
    counts: collections.Counter = collections.Counter()
    per_family: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    failures: list[tuple[Case, str]] = []
    slowest: list[tuple[float, str, str]] = []
    worker = connection = None
    began = time.perf_counter()
    for index in args.only or range(args.count):
        case = all_cases[index]
        if worker is None:
            connection, child = context.Pipe()
            worker = context.Process(
                target=_worker, args=(child, all_cases, tokenizer, not args.no_server, databases), daemon=True
            )
            worker.start()
            child.close()  # the worker's end, so that its death reads as end-of-file here
            if not connection.poll(600) or connection.recv() != "ready":
                raise SystemExit(f"the worker did not start (exit {worker.exitcode})")
        connection.send(index)
        if connection.poll(args.kill_after):
            try:
                outcome = connection.recv()
                failure = outcome.failure
                key = (
                    failure.split(":")[0]
                    if failure
                    else ":".join(outcome.api.split(":")[:2]) + " / " + (outcome.http or "-")
                )
                slowest.append((max(outcome.api_s, outcome.http_s), case.family, outcome.api))
            except EOFError:
                outcome, failure, key = None, f"worker died (exit {worker.exitcode})", "died"
        else:
            outcome, failure, key = None, f"hung past {args.kill_after:.0f} s", "hung"
        if outcome is None:
            worker.kill()
            worker.join()
            worker = None
        counts[key] += 1
        per_family[case.family][failure.split(":")[0] if failure else "ok"] += 1
        if failure:
            failures.append((case, failure))
            print(f"case {index} [{case.family}]: {failure[:200]}", flush=True)
        if (index + 1) % 500 == 0:
            print(f"{index + 1} cases, {time.perf_counter() - began:.0f} s, {len(failures)} failures", flush=True)
    if worker is not None:
        connection.send(None)
        worker.join(10)
    print(f"\n{args.count} cases in {time.perf_counter() - began:.0f} s (seed {args.seed})")
    print("\noutcomes (direct compile / HTTP):")
    for key, n in counts.most_common():
        print(f"  {n:6d}  {key}")
    print("\nper family:")
    for family in FAMILIES:
        print(f"  {family:16s} " + ", ".join(f"{k} {v}" for k, v in per_family[family].most_common()))
    print("\nslowest:")
    for seconds, family, api in sorted(slowest, reverse=True)[:8]:
        print(f"  {seconds:6.2f} s  {family:16s} {api[:100]}")
    print(f"\nfailures: {len(failures)}")
    for case, failure in failures[: args.show]:
        print(f"  [{case.family}] {failure[:300]}\n      value: {dumps(case.value)[:300]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.path[:0] = [str(HERE.parent), str(HERE)]  # this checkout's searchdec, and tests/ (tiny.py)
    sys.exit(main())
