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
import json
import re
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import llguidance
import llguidance.hf
import llguidance.torch

from searchdec.errors import (
    ConstraintError,
    EmptyLanguageError,
    GrammarSyntaxError,
    SchemaError,
    UnsupportedKeywordError,
)
from searchdec.grammars.outlines import OutlinesConstraint, OutlinesVocabulary, check_backend, regex_for
from searchdec.grammars.regular import check_nonempty
from searchdec.grammars.state import Constraint, grammar_json

_COMPILED_PER_TOKENIZER = 256


class ConstraintSpec:
    """A constraint before compilation; `compile(model)` returns the cached `Constraint`."""

    def grammar(self) -> str:
        raise NotImplementedError

    def compile(self, model) -> Constraint:
        return _compiler_for(model).compile(self)


@dataclass(frozen=True)
class Regex(ConstraintSpec):
    pattern: str
    backend: str = "llguidance"

    def grammar(self) -> str:
        return llguidance.LLMatcher.grammar_from_regex(self.pattern)


@dataclass(frozen=True)
class Choice(ConstraintSpec):
    options: tuple[str, ...]
    backend: str = "llguidance"

    def grammar(self) -> str:
        alternatives = " | ".join(json.dumps(option) for option in self.options)
        return grammar_json("lark_grammar", f"start: {alternatives}\n")


@dataclass(frozen=True)
class Lark(ConstraintSpec):
    source: str

    def grammar(self) -> str:
        return llguidance.LLMatcher.grammar_from_lark(self.source)


@dataclass(frozen=True)
class JsonSchema(ConstraintSpec):
    schema_text: str  # the schema as given, as JSON text (key order kept), before engine options
    lenient: bool = False
    strict: bool = False
    max_whitespace: int = 16
    backend: str = "llguidance"

    @property
    def schema(self) -> dict:
        return json.loads(self.schema_text)

    def grammar(self) -> str:
        return grammar_json("json_schema", self.engine_schema())

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
    check_backend(backend, "regex")
    return Regex(pattern, backend)


def choice(options, *, backend: str = "llguidance") -> Choice:
    """Exactly one of `options` (strings)."""
    check_backend(backend, "choice")
    options = tuple(options)
    if not options:
        raise EmptyLanguageError("choice() needs at least one option")
    for option in options:
        if not isinstance(option, str) or not option:
            raise ConstraintError(f"choice options must be non-empty strings, got {option!r}")
    return Choice(options, backend)


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
    check_backend(backend, "json_schema")
    if backend == "outlines-core" and (lenient or strict):
        raise ConstraintError("lenient and strict are llguidance options; the outlines-core backend has neither")
    schema = _schema_dict(schema)
    if max_whitespace < 0:
        raise ConstraintError(f"max_whitespace must be >= 0, got {max_whitespace}")
    # Key order is kept: llguidance emits properties in the order the schema declares them.
    return JsonSchema(json.dumps(schema), lenient, strict, max_whitespace, backend)


def _schema_dict(schema):
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        return schema.model_json_schema()  # a Pydantic model class
    if isinstance(schema, str):
        try:
            return json.loads(schema)
        except json.JSONDecodeError as error:
            raise SchemaError(f"not valid JSON: {error}") from error
    if isinstance(schema, (dict, bool)):
        return schema
    raise TypeError(f"json_schema() takes a dict, JSON text or a Pydantic model class, got {type(schema).__name__}")


def _schema_problem(schema) -> SchemaError | None:
    """The first metaschema violation of `schema`, located by its JSON pointer (None if none).

    Only consulted once the engine has refused a schema: checking every schema against its
    metaschema costs ~10x the compile itself, and real-world schemas the engine handles often carry
    small deviations (a draft-3 `"required": true`) that need not block them."""
    from jsonschema import exceptions, validators

    try:
        validators.validator_for(schema, default=validators.Draft202012Validator).check_schema(schema)
    except exceptions.SchemaError as error:
        return SchemaError(error.message, "/" + "/".join(str(part) for part in error.path))
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


# --- compilation ----------------------------------------------------------------------------

_UNIMPLEMENTED = re.compile(r"Unimplemented keys: \[(.*?)\]")
_UNSUPPORTED_FEATURES = [
    (r"oneOf constraints are not supported", "oneOf"),
    (r"Unknown format: (\S+)", "format {0!r}"),
    (r"min/maxProperties only supported", "minProperties/maxProperties"),
]


class _Compiler:
    """Compiles specs for one tokenizer and keeps the most recent ones."""

    def __init__(self, model) -> None:
        self._model = weakref.ref(model)  # a strong reference would keep the tokenizer key alive
        self.tokenizer = llguidance.hf.from_tokenizer(model.tokenizer, n_vocab=model.vocab_size)
        self.vocab_size = model.vocab_size
        self.cache: OrderedDict[str, Constraint] = OrderedDict()
        self._outlines_vocabulary: OutlinesVocabulary | None = None

    def _compile_outlines(self, spec: ConstraintSpec) -> OutlinesConstraint:
        if self._outlines_vocabulary is None:
            model = self._model()
            special = set(model.tokenizer.all_special_ids) - set(model.eos_token_ids)
            pieces = [b"" if i in special else piece for i, piece in enumerate(model.vocab_bytes)]
            self._outlines_vocabulary = OutlinesVocabulary(pieces, model.eos_token_ids, model.vocab_size)
        pattern = regex_for(spec)
        if not isinstance(spec, JsonSchema):  # a schema's regex is too large to prove anything about cheaply
            check_nonempty(pattern, _describe(spec))
        return OutlinesConstraint(pattern, self._outlines_vocabulary, _describe(spec))

    def compile(self, spec: ConstraintSpec) -> Constraint:
        key = repr(spec)  # specs are frozen dataclasses: the repr holds every field
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        if getattr(spec, "backend", "llguidance") == "outlines-core":
            constraint = self._compile_outlines(spec)
            self.cache[key] = constraint
            return constraint
        try:
            grammar = spec.grammar()
            closing = getattr(spec, "CLOSING", None)
            constraint = Constraint(
                grammar, self.tokenizer, self.vocab_size, _describe(spec), *([closing] if closing else [])
            )
        except ValueError as error:  # llguidance's own message: the keyword, rule or position
            raise _classify(spec, str(error)) from None
        _check_nonempty(constraint, spec)
        self.cache[key] = constraint
        if len(self.cache) > _COMPILED_PER_TOKENIZER:
            self.cache.popitem(last=False)
        return constraint


_COMPILERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiler_for(model) -> _Compiler:
    """The compiler of the model's tokenizer (one per tokenizer object; freed with it)."""
    compiler = _COMPILERS.get(model.tokenizer)
    if compiler is None or compiler.vocab_size != model.vocab_size:
        compiler = _Compiler(model)
        _COMPILERS[model.tokenizer] = compiler
    return compiler


def _classify(spec: ConstraintSpec, message: str) -> ConstraintError:
    if match := _UNIMPLEMENTED.search(message):
        keywords = [k.strip().strip('"') for k in match.group(1).split(",") if k.strip()]
        return UnsupportedKeywordError(keywords, message)
    if "Unsatisfiable" in message or "unsatisfiable" in message:
        return EmptyLanguageError(f"{_describe(spec)} can never be satisfied: {message}")
    if isinstance(spec, JsonSchema):
        problem = _schema_problem(spec.schema)
        if problem is not None:
            return problem
        # A valid schema the engine cannot enforce: name the feature.
        for pattern, name in _UNSUPPORTED_FEATURES:
            if found := re.search(pattern, message):
                return UnsupportedKeywordError([name.format(*found.groups())], message.strip())
        return ConstraintError(f"the grammar engine cannot compile this JSON Schema: {message.strip()}")
    return GrammarSyntaxError(f"{_describe(spec)} does not parse:\n{message.rstrip()}")


def _describe(spec: ConstraintSpec) -> str:
    if isinstance(spec, Regex):
        return f"regex {spec.pattern!r}"
    if isinstance(spec, Choice):
        return f"choice of {len(spec.options)}"
    if isinstance(spec, Lark):
        return "lark grammar"
    if isinstance(spec, JsonSchema):
        return "JSON Schema"
    return f"{type(spec).__name__} grammar"


def _check_nonempty(constraint: Constraint, spec: ConstraintSpec) -> None:
    state = constraint.start()
    bitmask = llguidance.torch.allocate_token_bitmask(1, constraint.vocab_size)
    state.fill(bitmask)
    if not state.accepting and not bool(bitmask.any()):
        raise EmptyLanguageError(f"{_describe(spec)} matches no output at all")
