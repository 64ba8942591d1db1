"""Constraint specs: what a user asks for (`sd.regex`, `sd.json_schema`, `sd.choice`, `sd.lark`),
checked when made and compiled per tokenizer on first use (then cached).

Every error is raised at construction or compile time, before any generation: an invalid schema
that the engine refuses names its JSON pointer, an unsupported keyword is named (and refused unless `lenient=True`), a
grammar or regex syntax error shows the rule and position, and a constraint whose language is empty
says so. JSON Schema semantics follow the specification (extra properties are allowed unless the
schema forbids them); `strict=True` gives OpenAI-style outputs with no extra properties. Whitespace
between JSON tokens is bounded (`max_whitespace`, default 16 characters a gap) so a model cannot
emit whitespace until it runs out of tokens.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections import deque
from dataclasses import dataclass
from typing import ClassVar

from searchdec.errors import ConstraintError, EmptyLanguageError, GrammarSyntaxError, SchemaError
from searchdec.grammars.base import Constraint, backend_named
from searchdec.grammars.compile import compile_spec
from searchdec.grammars.json_pointer import local_target

DEFAULT_BACKEND = "llguidance"
# JSON nesting a schema may have: both engines read a grammar with serde_json, whose recursion limit is
# 128 levels, and llguidance's grammar wraps the schema in three of them (tests/test_schema_depth.py
# compiles a schema of exactly this depth).
MAX_SCHEMA_DEPTH = 124
# Subschemas chained by nesting and by local `$ref`s, which the engine follows recursively when it compiles: a
# long enough chain overflows its native stack, a segmentation fault that ends the process (measured with
# llguidance 1.9: 1,000 objects each referring to the next crash, 600 compile; 2,000 bare `$ref`s compile, 3,000
# crash). The bound counts schemas on the longest chain and leaves the engine a wide margin.
MAX_REFERENCE_DEPTH = 400
# Lark rules each referring to the next, likewise (llguidance: a chain of 1,000 compiles, 3,000 crash).
MAX_RULE_CHAIN = 500


class ConstraintSpec:
    """A constraint before compilation: backend-neutral data (frozen dataclasses) naming what a user
    asked for. `compile(x)` compiles it with the backend its `backend` names, for the tokenizer of `x`
    (a Model, a Hugging Face tokenizer or a TokenizerInfo), and caches the result.

    A spec whose language is context-free gives its grammar as Lark text (`lark()`); regular specs
    (Regex, Choice) and JsonSchema give their own fields, which each backend translates itself."""

    backend: ClassVar[str] = DEFAULT_BACKEND  # specs that offer a choice hold it as a field
    # Text a greedy closing walk prefers, for backends that walk (see search/budget.py); None: the
    # backend's own preference (JSON punctuation).
    CLOSING: ClassVar[tuple[str, ...] | None] = None

    def compile(self, model) -> Constraint:
        return compile_spec(self, model)

    def describe(self) -> str:
        """What this spec asks for, in a few words, for error messages."""
        return f"{type(self).__name__} grammar"

    def lark(self) -> str:
        """This spec as a Lark grammar (llguidance's dialect: `%json {schema}` embeds a JSON Schema)."""
        raise ConstraintError(f"{self.describe()} has no Lark form")

    def split_checks(self) -> tuple[ConstraintSpec, tuple]:
        """The spec a grammar backend compiles, and the checks (grammars/base.py's `Check`) its outputs
        must pass beyond that grammar; `compile` joins the two (grammars/checks.py). By default the
        spec itself and no checks."""
        return self, ()

    def checks(self) -> tuple:
        """The checks of `split_checks`."""
        return self.split_checks()[1]


def _checked(spec: ConstraintSpec) -> ConstraintSpec:
    """`spec`, once the backend it names has accepted its kind and options."""
    backend_named(spec.backend).check(spec)
    return spec


@dataclass(frozen=True)
class Regex(ConstraintSpec):
    pattern: str
    backend: str = DEFAULT_BACKEND

    def describe(self) -> str:
        return f"regex {self.pattern!r}"


@dataclass(frozen=True)
class Choice(ConstraintSpec):
    options: tuple[str, ...]
    backend: str = DEFAULT_BACKEND

    def describe(self) -> str:
        return f"choice of {len(self.options)}"


@dataclass(frozen=True)
class Lark(ConstraintSpec):
    source: str

    def describe(self) -> str:
        return "lark grammar"

    def lark(self) -> str:
        return self.source


@dataclass(frozen=True)
class JsonSchema(ConstraintSpec):
    schema_text: str  # the schema as given, as JSON text (key order kept), before engine options
    lenient: bool = False
    strict: bool = False
    max_whitespace: int = 16
    backend: str = DEFAULT_BACKEND
    property_order: str = "schema"  # "schema": objects take their keys in the schema's order; "any": in any order
    given_text: str | None = None  # the schema the user gave, when `schema_text` is the grammar's copy of it

    @property
    def schema(self) -> dict:
        return json.loads(self.schema_text)

    @property
    def given_schema(self) -> dict:
        """The schema as the user gave it (what errors point into)."""
        return json.loads(self.given_text or self.schema_text)

    def describe(self) -> str:
        return "JSON Schema"

    def split_checks(self) -> tuple[ConstraintSpec, tuple]:
        """Keywords no grammar holds (`uniqueItems`, `not`, `if`/`then`/`else`, ...: grammars/json_checks.py)
        come out of the grammar's schema and into a check, and objects take their keys in any order (required
        and duplicate keys checked there)."""
        from searchdec.grammars import json_checks  # the checks build on this module's specs

        schema = self.schema
        if self.strict and isinstance(schema, dict):  # an object strict mode closes may need no reordering
            schema = _forbid_extra_properties(schema)
        # llguidance takes the any-order form (exact-name patternProperties); other backends keep schema order
        any_order = self.property_order == "any" and self.backend == DEFAULT_BACKEND
        grammar, check = json_checks.split(schema, any_order=any_order)
        if check is None:
            return self, ()
        return dataclasses.replace(self, schema_text=json.dumps(grammar), given_text=self.schema_text), (check,)

    def engine_schema(self) -> dict | bool:
        """The schema with the engine's options in `x-guidance` (strict mode, whitespace bounds), as
        llguidance reads it, also inside a larger grammar (`%json {...}` in Lark)."""
        schema = self.schema
        if isinstance(schema, dict):
            if self.strict:
                schema = _forbid_extra_properties(schema)
            options = {
                "lenient": self.lenient,
                "coerce_one_of": self.lenient,  # oneOf enforced as anyOf: a loosening, so only on request
                "whitespace_pattern": rf"[ \t\n\r]{{0,{self.max_whitespace}}}",
            }
            schema = {**schema, "x-guidance": {**schema.get("x-guidance", {}), **options}}
        return schema


# --- constructors ---------------------------------------------------------------------------


def regex(pattern: str, *, backend: str = "llguidance") -> Regex:
    """Outputs matching `pattern` entirely (Rust `regex` syntax, as llguidance reads it).
    `backend="outlines-core"` compiles it with outlines-core instead (see grammars/outlines.py)."""
    if not isinstance(pattern, str):
        raise TypeError(f"regex pattern must be a string, got {type(pattern).__name__}")
    return _checked(Regex(pattern, backend))


def choice(options, *, backend: str = "llguidance") -> Choice:
    """Exactly one of `options` (strings)."""
    options = tuple(options)
    if not options:
        raise EmptyLanguageError("choice() needs at least one option")
    for option in options:
        if not isinstance(option, str) or not option:
            raise ConstraintError(f"choice options must be non-empty strings, got {option!r}")
    return _checked(Choice(options, backend))


def lark(grammar: str) -> Lark:
    """Outputs of a Lark grammar (llguidance's Lark dialect; `start` is the top rule)."""
    if not isinstance(grammar, str):
        raise TypeError(f"lark grammar must be a string, got {type(grammar).__name__}")
    check_lark(grammar)
    return Lark(grammar)


def json_schema(
    schema,
    *,
    lenient: bool = False,
    strict: bool = False,
    max_whitespace: int = 16,
    backend: str = "llguidance",
    property_order: str = "schema",
) -> JsonSchema:
    """JSON documents valid under `schema`: a dict, JSON text, or a Pydantic model class.
    `backend="outlines-core"` compiles it with outlines-core's schema-to-regex instead.
    `property_order="schema"` (the default) takes an object's keys in the schema's order only (the grammar
    alone); `"any"` (llguidance) takes them in any order, required and duplicate keys enforced by a check
    (masks cost about 1.3x, and a budgeted closing walk may still end "length"; see the README)."""
    schema = _schema_dict(schema)
    check_depth(schema)
    check_subschemas(schema)
    text = json.dumps(schema, ensure_ascii=False)
    if _SURROGATE.search(text):  # JSON text may escape one ("\ud800"); no engine reads it as a character
        raise SchemaError(
            "the schema holds a lone surrogate (a \\ud800-\\udfff escape with no pair), which is not text"
        )
    if max_whitespace < 0:
        raise ConstraintError(f"max_whitespace must be >= 0, got {max_whitespace}")
    if property_order not in ("any", "schema"):
        raise ConstraintError(f"property_order must be 'any' or 'schema', got {property_order!r}")
    # Key order is kept: llguidance emits properties in the order the schema declares them.
    spec = JsonSchema(json.dumps(schema), lenient, strict, max_whitespace, backend, property_order)
    return _checked(spec)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _schema_dict(schema):
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        return schema.model_json_schema()  # a Pydantic model class
    if isinstance(schema, str):
        try:
            parsed = json.loads(schema)
        except json.JSONDecodeError as error:
            raise SchemaError(f"not valid JSON: {error}") from error
        except RecursionError:  # Python's own parser gives up far past MAX_SCHEMA_DEPTH
            raise SchemaError(f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels, the most supported") from None
        if isinstance(parsed, str):
            raise SchemaError(f"a JSON Schema is an object or a boolean, got {_json_type(parsed)}")
        return _schema_dict(parsed)
    if isinstance(schema, (dict, bool)):
        return schema
    if schema is None or isinstance(schema, (int, float, list)):  # JSON, but not a schema
        raise SchemaError(f"a JSON Schema is an object or a boolean, got {_json_type(schema)}")
    raise TypeError(f"json_schema() takes a dict, JSON text or a Pydantic model class, got {type(schema).__name__}")


def _json_type(value) -> str:
    names = {type(None): "null", int: "a number", float: "a number", list: "an array", str: "a string"}
    return names.get(type(value), type(value).__name__)


def check_depth(schema, limit: int = MAX_SCHEMA_DEPTH) -> None:
    """Raise SchemaError, with the JSON pointer where it happens, when `schema` nests objects and
    arrays deeper than `limit` (counted iteratively: a deep schema must not exhaust Python's stack)."""
    pending = deque([(schema, 1, "")])
    while pending:
        node, depth, pointer = pending.pop()
        if isinstance(node, dict):
            items = [(str(key), value) for key, value in node.items()]
        elif isinstance(node, list):
            items = [(str(index), value) for index, value in enumerate(node)]
        else:
            continue
        if depth > limit:
            raise SchemaError(
                f"the schema nests objects and arrays more than {limit} levels deep, the most the grammar engines "
                "read (their recursion limit)",
                pointer,
            )
        for key, value in items:
            pending.append((value, depth + 1, f"{pointer}/{key.replace('~', '~0').replace('/', '~1')}"))


# Keywords whose values are schemas: a map of them, one, or a list of them.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies")
_SCHEMA_VALUES = ("items", "additionalItems", "additionalProperties", "not", "if", "then", "else", "contains",
                  "propertyNames", "unevaluatedItems", "unevaluatedProperties")  # fmt: skip
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
# Keywords grammars/json_checks.py takes out of the grammar and validates with jsonschema as generation runs:
# what they hold is checked here first, so a bad value is an error now, not a failure mid-generation.
_CHECKED = ("not", "if", "then", "else", "contains", "dependentSchemas")


def check_subschemas(schema, limit: int = MAX_REFERENCE_DEPTH) -> None:
    """Raise SchemaError, with its JSON pointer, where a keyword that holds schemas holds something else, where
    a `$ref` inside a keyword enforced by a check does not resolve within the schema, and where a chain of
    subschemas, nested or joined by local `$ref`s, is longer than `limit` (a reference back into the chain is
    a recursive schema, which the engine resolves once: not followed). Callers check the nesting first
    (`check_depth`, whose limit is below this one), so a schema without `$ref` needs no chain measured."""
    if not isinstance(schema, dict):
        return
    children: dict[int, list[dict]] = {}
    unresolved: list[tuple[str, str]] = []
    nested_ids = refers = False
    pending = [(schema, "", False)]
    while pending:
        node, pointer, checked = pending.pop()
        if id(node) in children:
            continue
        if pointer and isinstance(node.get("$id", node.get("id")), str):
            nested_ids = True  # a new base URI: its "#/..." references resolve against it, not the root
        found = _subschemas(node, pointer)
        children[id(node)] = [sub for _, sub, _ in found]
        ref = node.get("$ref")
        refers = refers or ref is not None
        if checked and ref is not None and _local_target(schema, ref) is None:
            unresolved.append((ref, pointer))
        pending += [(sub, where, checked or key in _CHECKED) for key, sub, where in found]
    if unresolved and not nested_ids:
        ref, pointer = unresolved[0]
        raise SchemaError(
            f"$ref {ref!r} does not point into this schema (only local '#/...' references resolve)", pointer
        )

    def successors(node: dict) -> list:
        target = _local_target(schema, node.get("$ref"))
        return children.get(id(node), []) if target is None else [*children.get(id(node), []), target]

    if refers and longest_chain([schema], successors, limit) > limit:
        raise SchemaError(
            f"subschemas nest or refer to each other (by $ref) in a chain longer than {limit}, the most the grammar "
            "engine compiles safely"
        )


def _subschemas(node: dict, pointer: str) -> list[tuple[str, dict, str]]:
    """(keyword, subschema, its pointer) of every object subschema of `node`; SchemaError where a keyword that
    holds schemas, or one a check reads, holds a value of the wrong JSON type."""

    def wrong(key: str, expected: str, where: str = "") -> SchemaError:
        return SchemaError(f"{key} must be {expected}", where or f"{pointer}/{_escape(key)}")

    found = []
    for key in _SCHEMA_MAPS:
        if key in node:
            if not isinstance(node[key], dict):
                raise wrong(key, "an object of schemas")
            for name, sub in node[key].items():
                where = f"{pointer}/{_escape(key)}/{_escape(str(name))}"
                if isinstance(sub, dict):
                    found.append((key, sub, where))
                elif not isinstance(sub, bool) and not (key == "dependencies" and isinstance(sub, list)):
                    raise wrong(key, f"an object of schemas, not of {_json_type(sub)}s", where)
    for key in dict.fromkeys(_SCHEMA_VALUES + _SCHEMA_LISTS):  # "items" is both: a schema, or a draft-4 list
        if key not in node:
            continue
        value = node[key]
        if isinstance(value, list) and key in _SCHEMA_LISTS:
            for index, sub in enumerate(value):
                if not isinstance(sub, (dict, bool)):
                    raise wrong(key, f"a list of schemas, not of {_json_type(sub)}s", f"{pointer}/{key}/{index}")
            found += [(key, sub, f"{pointer}/{key}/{i}") for i, sub in enumerate(value) if isinstance(sub, dict)]
        elif isinstance(value, dict) and key in _SCHEMA_VALUES:
            found.append((key, value, f"{pointer}/{key}"))
        elif not (isinstance(value, bool) and key in _SCHEMA_VALUES):
            raise wrong(key, "a schema" if key in _SCHEMA_VALUES else "a list of schemas")
    for key in ("$ref", "$schema"):
        if key in node and not isinstance(node[key], str):
            raise wrong(key, "a string")
    if not pointer and not isinstance(node.get("x-guidance", {}), dict):
        raise wrong("x-guidance", "an object of the engine's options")
    for key in ("minContains", "maxContains"):
        if key in node and not (type(node[key]) is int and node[key] >= 0):
            raise wrong(key, "a non-negative integer")
    if "uniqueItems" in node and not isinstance(node["uniqueItems"], bool):
        raise wrong("uniqueItems", "true or false")
    required = node.get("dependentRequired", {})
    if not isinstance(required, dict) or not all(
        isinstance(names, list) and all(isinstance(name, str) for name in names) for names in required.values()
    ):
        raise wrong("dependentRequired", "an object of lists of property names")
    return found


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _local_target(root, ref) -> dict | None:
    """The schema a local `$ref` ("#", "#/a/b") points to in `root`, or None (remote, anchors, missing)."""
    node = local_target(root, ref)
    return node if isinstance(node, dict) else None


def longest_chain(starts, successors, limit: int, key=id) -> int:
    """The most nodes on a path from any of `starts` along `successors` that enters no node twice (an edge back
    into the path is a cycle, not followed); counting stops once past `limit`. Iterative, memoized by `key`."""
    longest: dict = {}
    for start in starts:
        if key(start) in longest:
            continue
        path = {key(start)}
        stack = [(start, successors(start), 0)]
        while stack:
            node, children, index = stack[-1]
            if index < len(children):
                stack[-1] = (node, children, index + 1)
                child = children[index]
                if key(child) not in longest and key(child) not in path:
                    if len(stack) >= limit:
                        return len(stack) + 1
                    path.add(key(child))
                    stack.append((child, successors(child), 0))
                continue
            stack.pop()
            path.discard(key(node))
            longest[key(node)] = 1 + max((longest.get(key(child), 0) for child in children), default=0)
            if longest[key(node)] > limit:
                return longest[key(node)]
    return max(longest.values(), default=0)


# A Lark grammar's parts that hold no rule names: strings, regexes, comments, and JSON bodies (%json, %regex,
# %llguidance), which are read apart.
_LARK_SKIPPED = re.compile(r'"(?:[^"\\\n]|\\.)*"i?|/(?![/*])(?:[^/\\\n]|\\.)*/[a-z]*|//[^\n]*')
_LARK_DEFINITION = re.compile(r"[?!]?([A-Za-z_][A-Za-z0-9_]*)(?:\[[^\]]*\])?(?:\.-?[0-9]+)?\s*:(.*)")
_LARK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_lark(grammar: str) -> None:
    """Raise before compiling a Lark grammar the engine would crash on: rules that refer one to the next in a
    chain longer than MAX_RULE_CHAIN (GrammarSyntaxError), and `%json` schemas that `json_schema` refuses."""
    text, schemas = _lark_without_json(grammar)
    for schema in schemas:
        check_depth(schema)
        check_subschemas(schema)
    bodies: dict[str, list[str]] = {}
    current = None
    for line in _LARK_SKIPPED.sub(" ", text).splitlines():
        if line[:1].isspace() and current is not None:  # a continued definition
            bodies[current].append(line)
        elif found := _LARK_DEFINITION.match(line):
            current = found.group(1)
            bodies.setdefault(current, []).append(found.group(2))
        else:
            current = None
    refs = {name: [n for n in _LARK_NAME.findall(" ".join(body)) if n in bodies] for name, body in bodies.items()}
    if longest_chain(list(refs), refs.__getitem__, MAX_RULE_CHAIN, key=str) > MAX_RULE_CHAIN:
        raise GrammarSyntaxError(
            f"lark grammar: rules refer one to the next in a chain longer than {MAX_RULE_CHAIN}, the most the grammar "
            "engine compiles safely"
        )


def _lark_without_json(grammar: str) -> tuple[str, list]:
    """`grammar` with the JSON bodies of %json/%regex/%llguidance blanked out, and the %json schemas parsed."""
    decoder = json.JSONDecoder()
    schemas, out, position = [], [], 0
    for found in re.finditer(r"%(json|regex|llguidance)\s*(?=\{)", grammar):
        if found.start() < position:
            continue
        try:
            value, end = decoder.raw_decode(grammar, found.end())
        except RecursionError:
            raise SchemaError(
                f"a %json schema nests deeper than {MAX_SCHEMA_DEPTH} levels, the most supported"
            ) from None
        except ValueError:
            continue  # not JSON: the engine reports it, with its position
        if found.group(1) == "json":
            schemas.append(value)
        out.append(grammar[position : found.end()])
        out.append(" " * (end - found.end()))
        position = end
    out.append(grammar[position:])
    return "".join(out), schemas


def schema_problem(schema) -> SchemaError | None:
    """The first metaschema violation of `schema`, located by its JSON pointer (None if none).

    Only consulted once the engine has refused a schema: checking every schema against its
    metaschema costs ~10x the compile itself, and real-world schemas the engine handles often carry
    small deviations (a draft-3 `"required": true`) that need not block them."""
    from jsonschema import exceptions, validators

    try:
        validators.validator_for(schema, default=validators.Draft202012Validator).check_schema(schema)
    except exceptions.SchemaError as error:
        return SchemaError(error.message, "/" + "/".join(str(part) for part in error.path))
    except RecursionError:  # jsonschema recurses several frames a level: a deep schema stays unchecked
        return None
    return None


def _forbid_extra_properties(schema):
    """A copy of `schema` where every object schema without `additionalProperties` forbids extras."""
    schema = copy.deepcopy(schema)

    def visit(node):
        if isinstance(node, dict):
            if (node.get("type") == "object" or "properties" in node) and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema
