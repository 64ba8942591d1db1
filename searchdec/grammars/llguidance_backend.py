"""The llguidance backend: a spec becomes an llguidance grammar (a regex, Lark alternatives, a JSON
Schema with the engine's options, or the spec's Lark text), compiled per tokenizer into an `LLMatcher`.

Measured best of the engines tried (benchmarks/grammars.py): compile ~1 ms, mask ~5 µs, fork ~2 µs,
strict JSON Schema semantics. A State wraps a matcher and copies it on every move (`deep_copy`), so
States stay immutable. `closing` is a greedy walk, an upper bound on the tokens needed. Errors are
llguidance's own messages, classified: a keyword it cannot enforce, an invalid schema (its JSON
pointer, from the metaschema), a grammar that does not parse, a language with nothing in it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re

import llguidance
import llguidance.hf
import llguidance.torch as llg_torch
import torch

from searchdec.errors import (
    ConstraintError,
    EmptyLanguageError,
    GrammarSyntaxError,
    UnsupportedKeywordError,
)
from searchdec.grammars import json_checks
from searchdec.grammars.base import Backend, Constraint, State, TokenizerInfo, allocate_bitmask, unpack_bitmask
from searchdec.grammars.specs import Choice, ConstraintSpec, JsonSchema, Regex, schema_problem

NAME = "llguidance"
# llguidance's default lexer fuel per step (200k, ~14 ms) runs out on one token of a string whose `pattern`
# counts words (`^(?:\S+\s+){0,29}\S+$`) under a `maxLength`, once a mask has built part of that lexer; the
# lexer is shared by every copy of the matcher, so the whole compiled constraint then refuses everything.
# Ten times the default (a step's worst case ~140 ms): 1M was not enough once invalid instances of such a
# schema had been walked through the same constraint.
LIMITS = llguidance.LLParserLimits(step_lexer_fuel=2_000_000)


class LLGuidanceState(State):
    """Where one hypothesis stands in an llguidance grammar: a matcher, copied on every move."""

    __slots__ = ("_matcher", "_closer", "_after_stop")

    def __init__(self, matcher: llguidance.LLMatcher, closer: Closer, after_stop: int = 0) -> None:
        self._matcher = matcher  # never consumes in place: every move works on a copy
        self._closer = closer
        # End-of-sequence tokens taken after the matcher stopped: llguidance accepts them without
        # recording them, so `rollback` counts them here.
        self._after_stop = after_stop

    def __repr__(self) -> str:
        return f"LLGuidanceState(accepting={self.accepting}, dead={self.dead})"

    @property
    def accepting(self) -> bool:
        """The text so far is a complete output (end-of-sequence is allowed now)."""
        return self._matcher.is_accepting()

    @property
    def dead(self) -> bool:
        """No continuation can satisfy the grammar (an invalid token was forced in)."""
        return self._matcher.is_error()

    @property
    def finished(self) -> bool:
        """The grammar has ended (end-of-sequence consumed, or nothing more can follow)."""
        return self._matcher.is_stopped()

    @property
    def forced(self) -> list[int]:
        """Tokens the grammar fixes from here: they can be appended without a forward pass."""
        return self._matcher.compute_ff_tokens()

    def allows(self, token_id: int) -> bool:
        if self._matcher.validate_tokens([token_id]) == 1:
            return True
        # A stopped matcher refuses to validate end-of-sequence but its mask allows it (and so does
        # consume_token): the contract says a finished state allows end-of-sequence only.
        return token_id == self._closer.tokenizer.eos_token and self._matcher.is_stopped()

    def advance(self, token_id: int) -> LLGuidanceState:
        """The state after `token_id`; raises ValueError when the grammar forbids it."""
        if token_id == self._closer.tokenizer.eos_token and self._matcher.is_stopped():
            return LLGuidanceState(self._matcher, self._closer, self._after_stop + 1)
        matcher = self._matcher.deep_copy()
        if not matcher.consume_token(token_id):
            raise ValueError(f"token {token_id} is not allowed here: {matcher.get_error()}")
        return LLGuidanceState(matcher, self._closer)

    def advance_many(self, token_ids: list[int]) -> LLGuidanceState:
        if self._closer.tokenizer.eos_token in token_ids:
            return super().advance_many(token_ids)  # rare (forced text never holds it): token by token
        matcher = self._matcher.deep_copy()  # one copy for all the tokens
        if not matcher.consume_tokens(token_ids):
            raise ValueError(f"tokens {token_ids} are not allowed here: {matcher.get_error()}")
        return LLGuidanceState(matcher, self._closer)

    def fork(self) -> LLGuidanceState:
        return LLGuidanceState(self._matcher.deep_copy(), self._closer, self._after_stop)

    def rollback(self, n: int) -> LLGuidanceState:
        """The state `n` tokens earlier."""
        unrecorded = min(n, self._after_stop)
        if n == unrecorded:
            return LLGuidanceState(self._matcher, self._closer, self._after_stop - n)
        matcher = self._matcher.deep_copy()
        if not matcher.rollback(n - unrecorded):
            raise ValueError(f"cannot roll back {n} tokens: {matcher.get_error()}")
        return LLGuidanceState(matcher, self._closer)

    def closing(self, limit: int) -> tuple[int, int | None] | None:
        """How many tokens (end-of-sequence included) suffice to complete the output from here, and the
        first of them; None when no completion is found within `limit` tokens.

        The completion is a greedy walk: forced tokens first, then the first token the grammar allows
        among those that close structure or make short values (quote, brackets, comma, digit, letter),
        then the first allowed token that is not whitespace. It is an upper bound: the walk uses single-character
        tokens where a model may close in fewer."""
        if self._matcher.is_stopped():
            return (0, None)
        matcher = self._matcher.deep_copy()
        steps, first = 0, None
        while steps <= limit:
            if matcher.is_accepting() or matcher.is_stopped():
                if not matcher.is_stopped():
                    steps, first = steps + 1, self._closer.tokenizer.eos_token if first is None else first
                return (steps, first) if steps <= limit else None
            tokens = matcher.compute_ff_tokens()[:1] or [self._closer.next_token(matcher)]
            if tokens[0] is None or not matcher.consume_tokens(tokens):
                return None
            first = tokens[0] if first is None else first
            steps += 1
        return None

    def fill(self, bitmask: torch.Tensor, row: int = 0) -> None:
        llg_torch.fill_next_token_bitmask(self._matcher, bitmask, row)

    @classmethod
    def fill_rows(cls, states: list[State], rows: list[int], bitmask: torch.Tensor) -> None:
        """All rows in one call to llguidance's parallel fill (its thread pool, outside the GIL)."""
        if len(states) == 1:
            states[0].fill(bitmask, rows[0])
            return
        llg_torch.fill_next_token_bitmask_par(_executor(), [(s._matcher, r) for s, r in zip(states, rows)], bitmask)


@functools.cache
def _executor() -> llguidance.LLExecutor:
    """llguidance's thread pool for batched masks (one per process, created on first use)."""
    return llguidance.LLExecutor()


class Closer:
    """The tokens a closing walk prefers, for one tokenizer (see `State.closing`)."""

    PREFERRED = tuple('"}])>,;0a')  # closes JSON and most bracketed structure soonest

    def __init__(self, tokenizer: llguidance.LLTokenizer, preferred: tuple[str, ...] = PREFERRED) -> None:
        self.tokenizer = tokenizer
        self.eos = set(tokenizer.eos_tokens)
        self._texts = preferred
        self.preferred: list[int] | None = None  # tokenized on first use: compiling stays cheap
        self.characters: list[int] = []
        self.quotes: list[int] = []

    def _still_free(self, matcher: llguidance.LLMatcher, token: int) -> bool:
        """Whether the walk is still inside free text after `token` (a quote that does not close)."""
        after = matcher.deep_copy()
        after.consume_tokens([token])
        return _free_text(self, after)

    def next_token(self, matcher: llguidance.LLMatcher) -> int | None:
        if self.preferred is None:
            self.preferred = _single_tokens(self.tokenizer, self._texts)
            self.quotes = _single_tokens(self.tokenizer, ['"', "'", "`", "]"])
            # Then any printable ASCII character, checked one by one (validate_tokens takes ~0.5 µs;
            # a full mask takes tens of µs), before falling back to the full mask.
            printable = [chr(c) for c in range(33, 127)]
            self.characters = [t for t in _single_tokens(self.tokenizer, printable) if t not in self.preferred]
        allowed = [token for token in self.preferred if matcher.validate_tokens([token]) == 1]
        if len(allowed) >= 4:
            # Nearly everything is allowed: the walk is inside free text (a string literal), where any
            # preferred token would only lengthen it. Close the quote first.
            for token in self.quotes:
                if matcher.validate_tokens([token]) == 1 and not self._still_free(matcher, token):
                    return token
        if allowed:
            return allowed[0]
        for token in self.characters:
            if matcher.validate_tokens([token]) == 1:
                return token
        words = torch.frombuffer(bytearray(matcher.compute_bitmask()), dtype=torch.int32)
        for token in unpack_bitmask(words.unsqueeze(0), words.numel() * 32)[0].nonzero().flatten().tolist():
            if token not in self.eos and self.tokenizer.decode_bytes([token]).strip():
                return token
        return None


def _free_text(closer: Closer, matcher: llguidance.LLMatcher) -> bool:
    return sum(matcher.validate_tokens([t]) == 1 for t in closer.preferred) >= 4


def _single_tokens(tokenizer: llguidance.LLTokenizer, texts) -> list[int]:
    found = [tokenizer.tokenize_str(text) for text in texts]
    return [ids[0] for ids in found if len(ids) == 1]


class LLGuidanceConstraint(Constraint):
    """An llguidance grammar compiled for one tokenizer."""

    backend = NAME

    def __init__(
        self,
        grammar: str,
        tokenizer: llguidance.LLTokenizer,
        vocab_size: int,
        description: str,
        closing: tuple[str, ...] = Closer.PREFERRED,
    ) -> None:
        self.grammar = grammar
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.description = description
        self._initial = llguidance.LLMatcher(tokenizer, grammar, limits=LIMITS)
        if self._initial.is_error():
            raise ValueError(self._initial.get_error())
        self._closer = Closer(tokenizer, closing)

    def start(self) -> LLGuidanceState:
        return LLGuidanceState(self._initial.deep_copy(), self._closer)


def grammar_json(kind: str, body) -> str:
    """An llguidance top-level grammar holding one grammar of `kind` ("lark_grammar", "json_schema")."""
    return json.dumps({"grammars": [{kind: body}]})


def grammar_for(spec: ConstraintSpec) -> str:
    """The llguidance grammar of `spec`: regular and schema specs directly, any other from its Lark text."""
    if isinstance(spec, Regex):
        return llguidance.LLMatcher.grammar_from_regex(spec.pattern)
    if isinstance(spec, Choice):
        alternatives = " | ".join(json.dumps(option) for option in spec.options)
        return grammar_json("lark_grammar", f"start: {alternatives}\n")
    if isinstance(spec, JsonSchema):
        return grammar_json("json_schema", spec.engine_schema())
    return llguidance.LLMatcher.grammar_from_lark(spec.lark())


class LLGuidanceBackend(Backend):
    """Every spec: regular, JSON Schema and context-free (Lark, SQL, tool calls)."""

    name = NAME

    def check(self, spec: ConstraintSpec) -> None:
        """Every spec compiles here (a spec with no form llguidance reads fails at compile time)."""

    def compile(self, spec: ConstraintSpec, tokenizer: TokenizerInfo) -> LLGuidanceConstraint:
        llg_tokenizer = tokenizer.prepare(
            NAME, lambda: llguidance.hf.from_tokenizer(tokenizer.tokenizer, n_vocab=tokenizer.vocab_size)
        )
        closing = spec.CLOSING or Closer.PREFERRED
        try:
            constraint = LLGuidanceConstraint(
                grammar_for(spec), llg_tokenizer, tokenizer.vocab_size, spec.describe(), closing
            )
        except ValueError as error:  # llguidance's own message: the keyword, rule or position
            raise _classify(spec, str(error)) from None
        _check_nonempty(constraint, spec)
        _check_required(spec)
        return constraint


def _check_required(spec: ConstraintSpec) -> None:
    """Raise EmptyLanguageError where the schema as given requires a property no value can fill, when the grammar
    compiled is its any-order rewrite (grammars/json_checks.py): the rewrite moves `required` into the JSON
    check, out of llguidance's sight, so llguidance validates the schema-order form too (no tokenizer: cheap)."""
    if not isinstance(spec, JsonSchema) or spec.given_text is None or spec.property_order != "any":
        return
    ordered, _ = json_checks.split(spec.given_schema, any_order=False)
    message = llguidance.LLMatcher.validate_grammar(
        grammar_for(dataclasses.replace(spec, schema_text=json.dumps(ordered), given_text=None))
    )
    if _REQUIRED.search(message or ""):
        raise _classify(spec, message)


_REQUIRED = re.compile(r"required property '(.*)' is unsatisfiable")
_UNIMPLEMENTED = re.compile(r"Unimplemented keys: \[(.*?)\]")
_UNSUPPORTED_FEATURES = [
    (r"oneOf constraints are not supported", "oneOf"),
    (r"Unknown format: (\S+)", "format {0!r}"),
    (r"min/maxProperties only supported", "minProperties/maxProperties"),
]


def _classify(spec: ConstraintSpec, message: str) -> ConstraintError:
    if match := _UNIMPLEMENTED.search(message):
        keywords = [k.strip().strip('"') for k in match.group(1).split(",") if k.strip()]
        return UnsupportedKeywordError(keywords, message)
    if "Unsatisfiable" in message or "unsatisfiable" in message:
        where = ""
        if isinstance(spec, JsonSchema) and (found := _REQUIRED.search(message)):
            pointer = json_checks.required_pointer(spec.given_schema, found.group(1))
            where = f" (the required list at {pointer})" if pointer else ""
        return EmptyLanguageError(f"{spec.describe()} can never be satisfied: {message}{where}")
    if isinstance(spec, JsonSchema):
        problem = schema_problem(spec.given_schema)
        if problem is not None:
            return problem
        # A valid schema the engine cannot enforce: name the feature.
        for pattern, name in _UNSUPPORTED_FEATURES:
            if found := re.search(pattern, message):
                return UnsupportedKeywordError([name.format(*found.groups())], message.strip())
        return ConstraintError(f"the grammar engine cannot compile this JSON Schema: {message.strip()}")
    return GrammarSyntaxError(f"{spec.describe()} does not parse:\n{message.rstrip()}")


def _check_nonempty(constraint: LLGuidanceConstraint, spec: ConstraintSpec) -> None:
    state = constraint.start()
    bitmask = allocate_bitmask(1, constraint.vocab_size)
    state.fill(bitmask)
    first = _first_allowed(bitmask[0])
    if first is not None:  # the mask can allow a token the parser then gives up on (its Earley row limit, 2,000 items)
        probe = state._matcher.deep_copy()
        if not probe.consume_token(first):
            raise ConstraintError(
                f"{spec.describe()} is too large for the grammar engine's parser: {probe.get_error().splitlines()[0]}"
            )
    if not state.accepting and not bool(bitmask.any()):
        raise EmptyLanguageError(f"{spec.describe()} matches no output at all")


def _first_allowed(words: torch.Tensor) -> int | None:
    """The lowest token a bitmask row allows, read from its words (no unpacking of the whole vocabulary)."""
    nonzero = words.nonzero()
    if not len(nonzero):
        return None
    word = int(nonzero[0])
    value = int(words[word]) & 0xFFFFFFFF
    return word * 32 + (value & -value).bit_length() - 1
