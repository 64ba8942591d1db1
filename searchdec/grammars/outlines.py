"""The outlines side: an outlines-core backend for regular constraints, and `outlines.types` objects
taken unchanged.

Backend. outlines-core compiles a regex (a JSON Schema via its own schema-to-regex) into an Index: a
token-level DFA over the vocabulary, built ahead of time. A state is then one integer, so a State
here is immutable and forks for free; `advance` is a table lookup. The price is paid at compile time
(seconds to minutes on large schemas, where llguidance takes about a millisecond) and in coverage
(regular languages only: no Lark/SQL, no recursive schemas). Masks are cached per DFA state. Choose
it with `backend="outlines-core"` on `sd.regex`, `sd.choice` or `sd.json_schema`.

`outlines.types`. `from_outlines(obj)` turns outlines' output types into specs: `JsonSchema` into
`sd.json_schema`, `CFG` into `sd.lark`, `Choice` into `sd.choice`, and every other DSL term (Regex,
`integer`, `email`, sequences, quantifiers...) or Python type outlines understands (Literal, int,
bool, Enum...) into `sd.regex` of the regex outlines itself derives.
"""

from __future__ import annotations

import json

import torch

from searchdec.errors import ConstraintError, EmptyLanguageError, SchemaError

BACKENDS = ("llguidance", "outlines-core")


def check_backend(backend: str, kind: str) -> None:
    if backend not in BACKENDS:
        raise ConstraintError(f"unknown grammar backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "outlines-core" and kind not in ("regex", "choice", "json_schema"):
        raise ConstraintError(
            f"the outlines-core backend compiles regular languages only (regex, choice, JSON Schema), not {kind}; "
            "use the default llguidance backend"
        )


def _outlines_core():
    try:
        import outlines_core
    except ImportError:
        raise ConstraintError(
            "backend='outlines-core' needs the outlines-core package: pip install 'searchdec[outlines]'"
        ) from None
    return outlines_core


class OutlinesVocabulary:
    """outlines-core's Vocabulary for one tokenizer (token bytes to ids; end-of-sequence apart)."""

    def __init__(self, vocab_bytes: list[bytes], eos_token_ids, vocab_size: int) -> None:
        oc = _outlines_core()
        self.eos = sorted(eos_token_ids)[0]
        self.eos_ids = frozenset(eos_token_ids)
        self.vocab_size = vocab_size
        by_bytes: dict[bytes, list[int]] = {}
        for token_id, piece in enumerate(vocab_bytes):
            if piece and token_id not in self.eos_ids:
                by_bytes.setdefault(piece, []).append(token_id)
        self.vocabulary = oc.Vocabulary(self.eos, by_bytes)


class OutlinesConstraint:
    """A regex compiled by outlines-core into a token-level DFA; `start()` gives the initial State."""

    def __init__(self, regex: str, vocabulary: OutlinesVocabulary, description: str) -> None:
        oc = _outlines_core()
        try:
            self.index = oc.Index(regex, vocabulary.vocabulary)
        except (ValueError, RuntimeError) as error:
            message = str(error)
            if "empty" in message.lower() or "no valid" in message.lower():
                raise EmptyLanguageError(f"{description} matches no output at all: {message}") from None
            raise ConstraintError(f"outlines-core cannot compile {description}: {message}") from None
        self.regex = regex
        self.vocabulary = vocabulary
        self.vocab_size = vocabulary.vocab_size
        self.description = description
        self._masks: dict[int, torch.Tensor] = {}
        self._allowed: dict[int, frozenset[int]] = {}
        self._closing: dict[int, tuple[int, int] | None] = {}

    def __repr__(self) -> str:
        return f"Constraint({self.description}, backend='outlines-core')"

    def start(self) -> OutlinesState:
        return OutlinesState(self, self.index.get_initial_state(), ())

    def allowed(self, state: int) -> frozenset[int]:
        found = self._allowed.get(state)
        if found is None:
            found = self._allowed[state] = frozenset(self.index.get_allowed_tokens(state) or ())
        return found

    def closing(self, state: int) -> tuple[int, int] | None:
        if state in self._closing:
            return self._closing[state]
        eos_ids, eos = self.vocabulary.eos_ids, self.vocabulary.eos
        found = (1, eos) if self.index.is_final_state(state) else None
        seen, frontier, depth = {state}, [(state, None)], 1
        while found is None and frontier:
            following = []
            for current, first in frontier:
                for token in self.allowed(current) - eos_ids:
                    nxt = self.index.get_next_state(current, token)
                    if nxt is None or nxt in seen:
                        continue
                    seen.add(nxt)
                    start = token if first is None else first
                    if self.index.is_final_state(nxt):
                        found = (depth + 1, start)
                        break
                    following.append((nxt, start))
                if found is not None:
                    break
            frontier, depth = following, depth + 1
        self._closing[state] = found
        return found

    def words(self, state: int) -> torch.Tensor:
        """The state's allowed tokens as llguidance-layout int32 words (token i is bit i % 32 of word i // 32)."""
        found = self._masks.get(state)
        if found is None:
            bits = torch.zeros(((self.vocab_size + 31) // 32) * 32, dtype=torch.bool)
            allowed = [t for t in self.allowed(state) if t < self.vocab_size]
            bits[allowed] = True
            weights = torch.tensor([1 << i for i in range(31)] + [-(1 << 31)], dtype=torch.int64)
            found = (bits.view(-1, 32).long() * weights).sum(-1).to(torch.int32)
            self._masks[state] = found
        return found


class OutlinesState:
    """Where one hypothesis stands in an outlines-core DFA: the state id and the tokens that led there."""

    __slots__ = ("_constraint", "_state", "_history")

    def __init__(self, constraint: OutlinesConstraint, state: int, history: tuple[int, ...]) -> None:
        self._constraint = constraint
        self._state = state
        self._history = history  # (state before each token), for rollback

    def __repr__(self) -> str:
        return f"OutlinesState({self._state}, accepting={self.accepting})"

    @property
    def accepting(self) -> bool:
        return self._constraint.index.is_final_state(self._state)

    @property
    def dead(self) -> bool:
        return False  # an invalid token is refused by advance, so no state is ever dead

    @property
    def finished(self) -> bool:
        """Final with nothing but end-of-sequence left to write."""
        allowed = self._constraint.allowed(self._state)
        return self.accepting and allowed <= self._constraint.vocabulary.eos_ids

    @property
    def forced(self) -> list[int]:
        tokens, state = [], self
        for _ in range(64):
            allowed = state._constraint.allowed(state._state) - state._constraint.vocabulary.eos_ids
            if len(allowed) != 1 or state.accepting:
                break
            token = next(iter(allowed))
            tokens.append(token)
            state = state.advance(token)
        return tokens

    def allows(self, token_id: int) -> bool:
        return token_id in self._constraint.allowed(self._state)

    def advance(self, token_id: int) -> OutlinesState:
        if token_id in self._constraint.vocabulary.eos_ids and self.accepting:
            return OutlinesState(self._constraint, self._state, (*self._history, self._state))
        if token_id not in self._constraint.allowed(self._state):
            raise ValueError(f"token {token_id} is not allowed here")
        following = self._constraint.index.get_next_state(self._state, token_id)
        return OutlinesState(self._constraint, following, (*self._history, self._state))

    def advance_many(self, token_ids: list[int]) -> OutlinesState:
        state = self
        for token in token_ids:
            state = state.advance(token)
        return state

    def fork(self) -> OutlinesState:
        return self  # immutable: a fork is the same value

    def rollback(self, n: int) -> OutlinesState:
        if n > len(self._history):
            raise ValueError(f"cannot roll back {n} tokens: only {len(self._history)} were consumed")
        if n == 0:
            return self
        return OutlinesState(self._constraint, self._history[-n], self._history[:-n])

    def fill(self, bitmask: torch.Tensor, row: int = 0) -> None:
        words = self._constraint.words(self._state)
        bitmask[row, : words.numel()] = words

    def closing(self, limit: int) -> tuple[int, int | None] | None:
        """Tokens (end-of-sequence included) to an accepting state and the first of them, exact (a
        breadth-first search over the DFA, cached per state); None when more than `limit`."""
        found = self._constraint.closing(self._state)
        return found if found is not None and found[0] <= limit else None


def regex_for(spec) -> str:
    """The regex outlines-core compiles for a Regex, Choice or JsonSchema spec."""
    from searchdec.grammars.specs import Choice, JsonSchema, Regex

    if isinstance(spec, Regex):
        return spec.pattern
    if isinstance(spec, Choice):
        import re

        return "(" + "|".join(re.escape(option) for option in spec.options) + ")"
    if isinstance(spec, JsonSchema):
        oc = _outlines_core()
        whitespace = rf"[ \t\n\r]{{0,{spec.max_whitespace}}}"
        try:
            return oc.json_schema.build_regex_from_schema(spec.schema_text, whitespace)
        except (ValueError, TypeError) as error:
            raise SchemaError(f"outlines-core cannot turn this JSON Schema into a regex: {error}") from None
    raise ConstraintError(f"the outlines-core backend cannot compile {type(spec).__name__}")


# --- outlines.types ------------------------------------------------------------------------------


def is_outlines_type(obj) -> bool:
    module = getattr(type(obj), "__module__", "") or ""
    own = getattr(obj, "__module__", "") if isinstance(obj, type) else ""
    return module.startswith("outlines.") or (own or "").startswith("outlines.")


def from_outlines(obj):
    """The spec for an `outlines.types` output type (or a Python type outlines understands)."""
    try:
        from outlines.types import dsl
    except ImportError:
        raise ConstraintError("from_outlines() needs the outlines package: pip install outlines") from None
    from searchdec.grammars.specs import choice, json_schema, lark, regex

    if isinstance(obj, dsl.JsonSchema):
        schema = json.loads(obj.schema) if isinstance(obj.schema, str) else obj.schema
        if getattr(obj, "whitespace_pattern", None):
            raise ConstraintError(
                "outlines JsonSchema whitespace_pattern is not taken over: searchdec bounds JSON whitespace with "
                "sd.json_schema(..., max_whitespace=N)"
            )
        return json_schema(schema)
    if isinstance(obj, dsl.CFG):
        return lark(obj.definition)
    if isinstance(obj, dsl.Choice):
        return choice([str(item) for item in obj.items])
    if not isinstance(obj, dsl.Term):
        try:
            obj = dsl.python_types_to_terms(obj)
        except Exception as error:  # outlines raises a bare TypeError/ValueError for what it cannot map
            raise ConstraintError(f"outlines cannot turn {obj!r} into an output type: {error}") from None
        if isinstance(obj, (dsl.JsonSchema, dsl.CFG, dsl.Choice)):
            return from_outlines(obj)
    return regex(dsl.to_regex(obj))
