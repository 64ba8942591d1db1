"""The outlines-core backend: regular constraints (regex, choice, JSON Schema) as a token-level DFA.

outlines-core compiles a regex (a JSON Schema via its own schema-to-regex) into an Index: a DFA over
the vocabulary, built ahead of time. A state is then one integer, so a State here is immutable and
forks for free; `advance` is a table lookup; `closing` is exact (a breadth-first search over the DFA,
cached per state). The price is paid at compile time (seconds to minutes on large schemas, where
llguidance takes about a millisecond) and in coverage (regular languages only: no Lark/SQL, no
recursive schemas). Masks are cached per DFA state. Specs choose it with `backend="outlines-core"`
(`sd.regex`, `sd.choice`, `sd.json_schema`). outlines-core is optional (`searchdec[outlines]`): it
is imported when a constraint is compiled, so the backend is registered without it.
"""

from __future__ import annotations

import re

import torch

from searchdec.errors import ConstraintError, EmptyLanguageError, SchemaError
from searchdec.grammars.base import Backend, Constraint, State, TokenizerInfo, pack_bitmask
from searchdec.grammars.regular import check_nonempty
from searchdec.grammars.specs import Choice, ConstraintSpec, JsonSchema, Regex

NAME = "outlines-core"
_END = -1  # the DFA state after end-of-sequence: nothing more can follow


def _outlines_core():
    try:
        import outlines_core  # optional: only this backend needs it
    except ImportError:
        raise ConstraintError(
            "backend='outlines-core' needs the outlines-core package: pip install 'searchdec[outlines]'"
        ) from None
    return outlines_core


class OutlinesVocabulary:
    """outlines-core's Vocabulary for one tokenizer (token bytes to ids; end-of-sequence apart;
    special tokens other than end-of-sequence never match text)."""

    def __init__(self, tokenizer: TokenizerInfo) -> None:
        oc = _outlines_core()
        self.eos = min(tokenizer.eos_token_ids)
        self.eos_ids = frozenset(tokenizer.eos_token_ids)
        self.vocab_size = tokenizer.vocab_size
        special = tokenizer.special_token_ids - self.eos_ids
        by_bytes: dict[bytes, list[int]] = {}
        for token_id, piece in enumerate(tokenizer.vocab_bytes):
            if piece and token_id not in self.eos_ids and token_id not in special:
                by_bytes.setdefault(piece, []).append(token_id)
        self.vocabulary = oc.Vocabulary(self.eos, by_bytes)


class OutlinesConstraint(Constraint):
    """A regex compiled by outlines-core into a token-level DFA; `start()` gives the initial State."""

    backend = NAME

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
        self._allowed: dict[int, frozenset[int]] = {_END: vocabulary.eos_ids}
        self._closing: dict[int, tuple[int, int | None] | None] = {_END: (0, None)}

    def start(self) -> OutlinesState:
        return OutlinesState(self, self.index.get_initial_state(), ())

    def is_final(self, state: int) -> bool:
        return state == _END or self.index.is_final_state(state)

    def allowed(self, state: int) -> frozenset[int]:
        found = self._allowed.get(state)
        if found is None:
            found = self._allowed[state] = frozenset(self.index.get_allowed_tokens(state) or ())
        return found

    def closing(self, state: int) -> tuple[int, int | None] | None:
        if state in self._closing:
            return self._closing[state]
        eos_ids, eos = self.vocabulary.eos_ids, self.vocabulary.eos
        if self.allowed(state) <= eos_ids and self.is_final(state):
            found: tuple[int, int | None] | None = (0, None)  # finished: nothing is needed
        else:
            found = (1, eos) if self.is_final(state) else None
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
        """The state's allowed tokens as bitmask words (token i is bit i % 32 of word i // 32)."""
        found = self._masks.get(state)
        if found is None:
            allowed = torch.zeros(self.vocab_size, dtype=torch.bool)
            allowed[[t for t in self.allowed(state) if t < self.vocab_size]] = True
            found = self._masks[state] = pack_bitmask(allowed)
        return found


class OutlinesState(State):
    """Where one hypothesis stands in an outlines-core DFA: the state id and the states before each token."""

    __slots__ = ("_constraint", "_state", "_history")

    def __init__(self, constraint: OutlinesConstraint, state: int, history: tuple[int, ...]) -> None:
        self._constraint = constraint
        self._state = state
        self._history = history  # (state before each token), for rollback

    def __repr__(self) -> str:
        return f"OutlinesState({self._state}, accepting={self.accepting})"

    @property
    def accepting(self) -> bool:
        return self._constraint.is_final(self._state)

    @property
    def finished(self) -> bool:
        """End-of-sequence consumed, or final with nothing but end-of-sequence left to write."""
        return self.accepting and self._constraint.allowed(self._state) <= self._constraint.vocabulary.eos_ids

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
        if token_id not in self._constraint.allowed(self._state):
            raise ValueError(f"token {token_id} is not allowed here")
        if token_id in self._constraint.vocabulary.eos_ids:
            following = _END
        else:
            following = self._constraint.index.get_next_state(self._state, token_id)
        return OutlinesState(self._constraint, following, (*self._history, self._state))

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
        """Exact: the fewest tokens (end-of-sequence included) to an accepting state and the first of them."""
        found = self._constraint.closing(self._state)
        return found if found is not None and found[0] <= limit else None


def regex_for(spec: ConstraintSpec) -> str:
    """The regex outlines-core compiles for a Regex, Choice or JsonSchema spec."""
    if isinstance(spec, Regex):
        return spec.pattern
    if isinstance(spec, Choice):
        return "(" + "|".join(re.escape(option) for option in spec.options) + ")"
    if isinstance(spec, JsonSchema):
        oc = _outlines_core()
        whitespace = rf"[ \t\n\r]{{0,{spec.max_whitespace}}}"
        try:
            return oc.json_schema.build_regex_from_schema(spec.schema_text, whitespace)
        except (ValueError, TypeError) as error:
            raise SchemaError(f"outlines-core cannot turn this JSON Schema into a regex: {error}") from None
    raise ConstraintError(f"the outlines-core backend cannot compile {spec.describe()}")


class OutlinesCoreBackend(Backend):
    """Regular languages only: Regex, Choice and JsonSchema (no lenient or strict mode)."""

    name = NAME

    def check(self, spec: ConstraintSpec) -> None:
        if not isinstance(spec, (Regex, Choice, JsonSchema)):
            raise ConstraintError(
                f"the outlines-core backend compiles regular languages only (regex, choice, JSON Schema), not "
                f"{spec.describe()}; use the default llguidance backend"
            )
        if isinstance(spec, JsonSchema) and (spec.lenient or spec.strict):
            raise ConstraintError("lenient and strict are llguidance options; the outlines-core backend has neither")

    def compile(self, spec: ConstraintSpec, tokenizer: TokenizerInfo) -> OutlinesConstraint:
        self.check(spec)
        vocabulary = tokenizer.prepare(NAME, lambda: OutlinesVocabulary(tokenizer))
        pattern = regex_for(spec)
        if not isinstance(spec, JsonSchema):  # a schema's regex is too large to prove anything about cheaply
            check_nonempty(pattern, spec.describe())
        return OutlinesConstraint(pattern, vocabulary, spec.describe())
