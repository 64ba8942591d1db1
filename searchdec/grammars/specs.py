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
from collections import deque
from dataclasses import dataclass
from typing import ClassVar

from searchdec.errors import ConstraintError, EmptyLanguageError, SchemaError
from searchdec.grammars.base import Constraint, backend_named, compile_spec

DEFAULT_BACKEND = "llguidance"
# JSON nesting a schema may have: both engines read a grammar with serde_json, whose recursion limit is
# 128 levels, and llguidance's grammar wraps the schema in three of them (tests/test_schema_depth.py
# compiles a schema of exactly this depth).
MAX_SCHEMA_DEPTH = 124


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
        grammar, check = json_checks.split(schema, any_order=self.backend == DEFAULT_BACKEND)
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
    return Lark(grammar)


def json_schema(
    schema, *, lenient: bool = False, strict: bool = False, max_whitespace: int = 16, backend: str = "llguidance"
) -> JsonSchema:
    """JSON documents valid under `schema`: a dict, JSON text, or a Pydantic model class.
    `backend="outlines-core"` compiles it with outlines-core's schema-to-regex instead."""
    schema = _schema_dict(schema)
    check_depth(schema)
    if max_whitespace < 0:
        raise ConstraintError(f"max_whitespace must be >= 0, got {max_whitespace}")
    # Key order is kept: llguidance emits properties in the order the schema declares them.
    return _checked(JsonSchema(json.dumps(schema), lenient, strict, max_whitespace, backend))


def _schema_dict(schema):
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        return schema.model_json_schema()  # a Pydantic model class
    if isinstance(schema, str):
        try:
            return json.loads(schema)
        except json.JSONDecodeError as error:
            raise SchemaError(f"not valid JSON: {error}") from error
        except RecursionError:  # Python's own parser gives up far past MAX_SCHEMA_DEPTH
            raise SchemaError(f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels, the most supported") from None
    if isinstance(schema, (dict, bool)):
        return schema
    raise TypeError(f"json_schema() takes a dict, JSON text or a Pydantic model class, got {type(schema).__name__}")


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
