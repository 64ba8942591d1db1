"""Lexical constraints: `sd.includes(["Paris", "Eiffel Tower"])` — every output contains every phrase —
alone or over another constraint (`sd.includes([...], within=sd.json_schema(...))`: a JSON document
whose text contains the phrases, for instance in its string fields).

A phrase is met when its bytes appear in the decoded text of the output (the prompt excluded), however
the model tokenized it: " Paris" as one token, "Par" + "is", or inside a longer token all count. Matching
is exact and case-sensitive, on the text as decoded (inside a JSON string, a phrase holding a quote or a
backslash appears escaped, so such a phrase cannot be met there).

A `LexicalState` wraps the inner grammar's State (none: free text) and tracks, per hypothesis, which
phrases are met and the partial match in progress (the last bytes of the text, enough to find a phrase
that straddles tokens). It allows what the inner grammar allows, except end-of-sequence while a phrase is
unmet; a hypothesis whose inner grammar ends with a phrase unmet is `dead`. Its `closing(limit)` is a walk
that inserts each unmet phrase (continuing a partial match first) at the first place the inner grammar
takes it, stepping the inner grammar's own closing walk until then, and then closes the inner grammar:
search/budget.py steers every decoded row by it, so when the tokens left require it the phrases are
forced in, and every output that finishes with "stop" contains every phrase. Over an inner grammar the
check runs on every token (`steer_every_token`): a token that closes a JSON document is fine a hundred
tokens before the budget ends, yet ends all hope of a phrase.

Bad input is refused early: a phrase list that is a bare string or empty, an empty phrase, a phrase no
tokenization can write (`ConstraintError`, at construction or compile time), and a budget that cannot hold
the phrases (`PhrasesDoNotFitError`, from `check_budget`, which `generate` calls before any forward).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from searchdec.errors import ConstraintError
from searchdec.grammars.base import Backend, Constraint, State, TokenizerInfo, fill_masks, rollback_by_parent
from searchdec.grammars.compile import compile_spec
from searchdec.grammars.specs import ConstraintSpec

NAME = "includes"


class PhrasesDoNotFitError(ConstraintError):
    """The token budget (`max_tokens`) cannot hold every required phrase (and what the inner grammar needs)."""


@dataclass(frozen=True)
class Includes(ConstraintSpec):
    """Outputs containing every phrase of `phrases`, under `within` (another spec) when given."""

    phrases: tuple[str, ...]
    within: ConstraintSpec | None = None
    backend: ClassVar[str] = NAME

    def describe(self) -> str:
        inner = f" within {self.within.describe()}" if self.within is not None else ""
        return f"includes {list(self.phrases)!r}{inner}"


def includes(phrases, *, within: ConstraintSpec | None = None) -> Includes:
    """Outputs that contain every phrase of `phrases` (a list of non-empty strings) in their decoded text.

    `within` combines it with another constraint: `sd.includes(["Paris"], within=sd.json_schema(schema))`
    gives JSON documents valid under `schema` that contain "Paris" (in a string field, where the schema
    lets free text go). Every output that finishes with "stop" contains every phrase; `generate` raises
    `PhrasesDoNotFitError` up front when `max_tokens` cannot hold them.

    Searches that decode rows (Greedy, Sample, BestOfN, MCTS, ...) write a phrase in when the tokens left
    require it (search/budget.py), so they always finish with every phrase; `sd.LexicalBeam` is the beam
    search for phrases (dynamic beam allocation). `sd.Beam` and the other frontier searches only refuse
    to end before the phrases are met: their output may end with "length" instead."""
    if isinstance(phrases, (str, bytes)):
        raise TypeError(f"includes() takes a list of phrases, not one string: write includes([{phrases!r}])")
    try:
        phrases = tuple(phrases)
    except TypeError:
        raise TypeError(f"includes() takes a list of phrases, got {type(phrases).__name__}") from None
    if not phrases:
        raise ConstraintError("includes() needs at least one phrase, got an empty list")
    for index, phrase in enumerate(phrases):
        if not isinstance(phrase, str):
            raise TypeError(f"includes() phrase {index} must be a string, got {type(phrase).__name__}")
        if not phrase:
            raise ConstraintError(f"includes() phrase {index} is empty: every phrase needs at least one character")
    repeated = sorted({p for p in phrases if phrases.count(p) > 1})
    if repeated:
        raise ConstraintError(f"includes() phrases are given more than once: {repeated!r}")
    if isinstance(within, Includes):
        raise ConstraintError("includes() within includes(): put all the phrases in one includes([...])")
    if isinstance(within, Constraint):
        raise TypeError("includes(within=...) takes a constraint spec (sd.json_schema(...), ...), not a compiled one")
    if within is not None and not isinstance(within, ConstraintSpec):
        raise TypeError(f"includes(within=...) takes a constraint spec such as sd.json_schema(...), got {within!r}")
    return Includes(phrases, within)


# --- compiled -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Phrase:
    """One phrase for one tokenizer: its bytes and, for each length k of a partial match already
    written (0: none), the token sequences that write the rest of it, shortest first."""

    text: str
    data: bytes
    rest: tuple[tuple[tuple[int, ...], ...], ...]  # rest[k]: completions once data[:k] ends the text


class LexicalConstraint(Constraint):
    """`Includes` compiled for one tokenizer: the phrases' tokenizations and the inner constraint."""

    backend = NAME

    def __init__(self, spec: Includes, tokenizer: TokenizerInfo) -> None:
        self.spec = spec
        self.vocab_size = tokenizer.vocab_size
        self.description = spec.describe()
        self.inner = compile_spec(spec.within, tokenizer) if spec.within is not None else None
        self.eos = tuple(sorted(tokenizer.eos_token_ids))
        special = tokenizer.special_token_ids | tokenizer.eos_token_ids
        vocab = tokenizer.vocab_bytes
        self.pieces = [b"" if token in special else piece for token, piece in enumerate(vocab)]
        self.phrases = tuple(_tokenized(phrase, tokenizer.tokenizer, self.pieces, special) for phrase in spec.phrases)
        self.keep = max(len(p.data) for p in self.phrases) - 1  # text bytes a state keeps to match across tokens

    def start(self) -> LexicalState:
        inner = self.inner.start() if self.inner is not None else None
        return LexicalState(self, inner, (False,) * len(self.phrases), b"", None, False)

    def min_tokens(self) -> int:
        """The fewest tokens any finished output has: each phrase's shortest tokenization, plus end-of-sequence."""
        return sum(len(p.rest[0][0]) for p in self.phrases) + 1

    def check_budget(self, max_tokens: int) -> None:
        """Raise PhrasesDoNotFitError when no output within `max_tokens` tokens is found that holds every
        phrase (and closes the inner grammar): the budget steering needs such a completion from the start."""
        counts = ", ".join(f"{p.text!r}: {len(p.rest[0][0])}" for p in self.phrases)
        if self.min_tokens() > max_tokens:
            raise PhrasesDoNotFitError(
                f"max_tokens={max_tokens} cannot hold the required phrases: they take {self.min_tokens() - 1} "
                f"tokens at least ({counts}) plus end-of-sequence; raise max_tokens to {self.min_tokens()} or more"
            )
        if self.start().closing(max_tokens) is None:
            raise PhrasesDoNotFitError(
                f"no output of {self.inner_description()} holding every phrase ({counts} tokens) was found within "
                f"max_tokens={max_tokens}: raise max_tokens, or check that the grammar has room for the phrases "
                "(free text, such as a string field)"
            )

    def inner_description(self) -> str:
        return self.inner.description if self.inner is not None else "free text"


def _tokenized(phrase: str, tokenizer, pieces: list[bytes], special: frozenset[int]) -> _Phrase:
    """The phrase's completions: its own tokenization and that of " " + phrase (as it comes mid-sentence),
    cut after every token that ends inside the phrase; and the tokenization of each remainder."""
    data = phrase.encode()
    rest: list[set[tuple[int, ...]]] = [set() for _ in range(len(data))]
    for text in (phrase, " " + phrase):
        tokens = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
        if not tokens or special.intersection(tokens):
            continue
        written = b"".join(pieces[t] for t in tokens)
        start = written.find(data)
        if start < 0:
            continue
        rest[0].add(tokens)
        end = 0
        for i, token in enumerate(tokens[:-1]):
            end += len(pieces[token])
            k = end - start
            if 0 < k < len(data):
                rest[k].add(tokens[i + 1 :])
    if not rest[0]:
        raise ConstraintError(
            f"the tokenizer cannot write the phrase {phrase!r}: no tokenization of it decodes back to its text"
        )
    for k in range(1, len(data)):
        remainder = data[k:]
        try:
            tokens = tuple(tokenizer(remainder.decode(), add_special_tokens=False)["input_ids"])
        except UnicodeDecodeError:  # the cut falls inside a character
            continue
        if tokens and not special.intersection(tokens) and b"".join(pieces[t] for t in tokens).startswith(remainder):
            rest[k].add(tokens)
    return _Phrase(phrase, data, tuple(tuple(sorted(r, key=lambda ts: (len(ts), ts))) for r in rest))


def _signed(word: int) -> int:
    return word - (1 << 32) if word >= 1 << 31 else word


class LexicalState(State):
    """Where one hypothesis stands: the inner grammar's State, which phrases are met, and the last bytes of
    the text (for phrases that straddle tokens). Immutable; `rollback` walks back to an earlier state."""

    __slots__ = ("_constraint", "_inner", "met", "_tail", "_parent", "_ended", "_walk", "_walk_failed")

    def __init__(
        self,
        constraint: LexicalConstraint,
        inner: State | None,
        met: tuple[bool, ...],
        tail: bytes,
        parent: LexicalState | None,
        ended: bool,
    ) -> None:
        self._constraint = constraint
        self._inner = inner
        self.met = met  # per phrase, in the order given
        self._tail = tail
        self._parent = parent
        self._ended = ended  # end-of-sequence consumed (free text; an inner grammar records it itself)
        self._walk: tuple[int, int | None] | None = None  # the closing walk, once found
        self._walk_failed = -1  # the largest limit a closing walk failed within

    def __repr__(self) -> str:
        return f"LexicalState(met={self.met_count}/{len(self.met)}, inner={self._inner!r})"

    @property
    def inner(self) -> State | None:
        return self._inner

    @property
    def met_count(self) -> int:
        return sum(self.met)

    @property
    def all_met(self) -> bool:
        return all(self.met)

    @property
    def steer_every_token(self) -> bool:
        """The budget check must run on every token (search/budget.py): an inner grammar can close, for
        good, long before the budget is tight."""
        return self._inner is not None

    @property
    def accepting(self) -> bool:
        if not self.all_met:
            return False
        return self._inner.accepting if self._inner is not None else True

    @property
    def finished(self) -> bool:
        if not self.all_met:
            return False
        return self._inner.finished if self._inner is not None else self._ended

    @property
    def dead(self) -> bool:
        if self._inner is None:
            return False
        return self._inner.dead or (self._inner.finished and not self.all_met)

    @property
    def forced(self) -> list[int]:
        return self._inner.forced if self._inner is not None else []

    def allows(self, token_id: int) -> bool:
        if token_id in self._constraint.eos:
            if not self.all_met:
                return False
            return self._inner.allows(token_id) if self._inner is not None else True
        if self._inner is not None:
            return self._inner.allows(token_id)
        return not self._ended and 0 <= token_id < self._constraint.vocab_size

    def advance(self, token_id: int) -> LexicalState:
        if not self.allows(token_id):
            raise ValueError(f"token {token_id} is not allowed here ({self._why_not(token_id)})")
        constraint = self._constraint
        inner = self._inner.advance(token_id) if self._inner is not None else None
        if token_id in constraint.eos:
            return LexicalState(constraint, inner, self.met, self._tail, self, True)
        text = self._tail + constraint.pieces[token_id]
        met = tuple(done or phrase.data in text for done, phrase in zip(self.met, constraint.phrases))
        tail = text[-constraint.keep :] if constraint.keep else b""
        return LexicalState(constraint, inner, met, tail, self, False)

    def _why_not(self, token_id: int) -> str:
        if token_id in self._constraint.eos and not self.all_met:
            unmet = [p.text for p, done in zip(self._constraint.phrases, self.met) if not done]
            return f"end-of-sequence before the phrases {unmet!r}"
        if self._ended:
            return "the output has ended"
        return f"{self._constraint.inner_description()} forbids it"

    def rollback(self, n: int) -> LexicalState:
        return rollback_by_parent(self, n)

    def fill(self, bitmask: torch.Tensor, row: int = 0) -> None:
        self.fill_rows([self], [row], bitmask)

    @classmethod
    def fill_rows(cls, states: list[State], rows: list[int], bitmask: torch.Tensor) -> None:
        """The wrapped grammar states' masks in one batch (`fill_masks`), then each row's own part."""
        inner = [(state._inner, row) for state, row in zip(states, rows) if state._inner is not None]
        if inner:
            fill_masks([state for state, _ in inner], bitmask, [row for _, row in inner])
        for state, row in zip(states, rows):
            state._fill_own(bitmask, row)

    def _fill_own(self, bitmask: torch.Tensor, row: int) -> None:
        eos = self._constraint.eos
        if self._ended and self._inner is None:
            bitmask[row] = 0
            for token in eos:
                bitmask[row, token // 32] |= _signed(1 << (token % 32))
            return
        if self._inner is None:
            bitmask[row] = -1
        if not self.all_met:
            for token in eos:
                bitmask[row, token // 32] &= _signed(~(1 << (token % 32)) & 0xFFFFFFFF)

    # --- the closing walk (budget steering) -----------------------------------------------------

    def closing(self, limit: int) -> tuple[int, int | None] | None:
        """Tokens (end-of-sequence included) that complete an output holding every phrase, and the first
        of them: each unmet phrase written where the inner grammar first takes it (a partial match
        continued first), then the inner grammar's own closing walk. An upper bound, consistent with
        itself: the walk from its first token is the rest of this one."""
        if self.finished:
            return (0, None)
        if self._walk is None and limit > self._walk_failed:
            found = self._close(limit)
            if found is None:
                self._walk_failed = limit
            else:
                self._walk = found
        if self._walk is not None and self._walk[0] <= limit:
            return self._walk
        return None

    def _close(self, limit: int) -> tuple[int, int | None] | None:
        state, steps, first = self, 0, None
        while True:
            if state.dead:
                return None
            if state.all_met:
                if state._inner is None:
                    rest = (0, None) if state._ended else (1, self._constraint.eos[0])
                else:
                    rest = state._inner.closing(limit - steps)
                if rest is None or steps + rest[0] > limit:
                    return None
                return (steps + rest[0], first if first is not None else rest[1])
            tokens = state._insertion()
            if tokens is None:
                rest = state._inner.closing(limit - steps) if state._inner is not None else None
                if rest is None or rest[1] is None or rest[1] in self._constraint.eos:
                    return None  # the inner grammar closes without room for a phrase
                tokens = (rest[1],)
            if steps + len(tokens) > limit:
                return None
            state = state.advance_many(list(tokens))
            first = tokens[0] if first is None else first
            steps += len(tokens)

    def partial(self, index: int) -> int:
        """The length of the longest start of phrase `index` that ends the text (0: none, or met)."""
        if self.met[index]:
            return 0
        data = self._constraint.phrases[index].data
        for k in range(min(len(data) - 1, len(self._tail)), 0, -1):
            if self._tail.endswith(data[:k]):
                return k
        return 0

    def completions(self) -> list[tuple[int, ...]]:
        """Token sequences that would meet an unmet phrase from here (continuing a partial match, or
        writing the phrase afresh), shortest first; a phrase in progress before a fresh one, then the
        phrases in the order given. Not filtered by the inner grammar."""
        space_first = bool(self._tail) and self._tail[-1:].isalnum()
        found: list[tuple[int, int, int, tuple[int, ...]]] = []
        for index, (phrase, done) in enumerate(zip(self._constraint.phrases, self.met)):
            if done:
                continue
            k = self.partial(index)
            if k:
                found += [(len(tokens), 0, index, tokens) for tokens in phrase.rest[k]]
            for tokens in phrase.rest[0]:
                leading_space = self._constraint.pieces[tokens[0]][:1].isspace()
                found.append((len(tokens), 1 if leading_space == space_first else 2, index, tokens))
        found.sort(key=lambda entry: entry[:3])
        return [tokens for *_, tokens in found]

    def next_tokens(self) -> list[int]:
        """The first token of every completion (the phrase tokens dynamic beam allocation proposes)."""
        return list(dict.fromkeys(tokens[0] for tokens in self.completions()))

    def _insertion(self) -> tuple[int, ...] | None:
        for tokens in self.completions():
            if self._inner is None or _takes(self._inner, tokens):
                return tokens
        return None


def _takes(state: State, tokens: tuple[int, ...]) -> bool:
    """Whether `state` allows `tokens` in turn (asked token by token: a refused advance is logged by llguidance)."""
    for token in tokens:
        if not state.allows(token):
            return False
        state = state.advance(token)
    return True


class LexicalBackend(Backend):
    """Compiles `sd.includes(...)`; its inner spec compiles with the backend that spec names."""

    name = NAME

    def check(self, spec) -> None:
        if not isinstance(spec, Includes):
            raise ConstraintError(f"the includes backend compiles sd.includes only, not {spec.describe()}")

    def compile(self, spec: Includes, tokenizer: TokenizerInfo) -> LexicalConstraint:
        self.check(spec)
        return LexicalConstraint(spec, tokenizer)
