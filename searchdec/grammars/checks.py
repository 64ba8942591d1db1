"""A constraint beyond its grammar: a compiled grammar plus any number of checks (grammars/base.py's
`Check`), forked with the hypothesis as one State.

A `CheckedState` pairs the grammar's State with one `CheckState` per check and feeds every token's bytes
to each check as the token is taken. It allows what the grammar allows, except the tokens a check refuses
outright (`CheckState.refused`) and end-of-sequence while a check is not OK; it is `dead` the moment a
check says VIOLATED (or the grammar ends with a check still unsatisfied), and a dead state allows nothing.
So a finished output satisfies every check. What a check only finds once the token is taken is left to
the search: the decoding step (search/rows.py) backtracks from a dead hypothesis to the next best
alternative, and frontier searches (beams, best-first) drop it (`finish_reason` "unsatisfied").

`closing` is the grammar's own walk where every check's `completion` says it is fine; elsewhere the walk goes
token by token through this State (so a check's refusals hold), writing what a check asks for (a missing
required key) before the grammar's next choice. An upper bound, consistent with itself: the walk from its
first token is the rest of this one.
"""

from __future__ import annotations

import torch

from searchdec.grammars.base import (
    Check,
    CheckState,
    Constraint,
    State,
    TokenizerInfo,
    Verdict,
    allocate_bitmask,
    fill_masks,
    rollback_by_parent,
)


def _signed(word: int) -> int:
    return word - (1 << 32) if word >= 1 << 31 else word


class CheckedConstraint(Constraint):
    """`inner` (a compiled grammar) with `checks`, for one tokenizer."""

    def __init__(self, inner: Constraint, checks: tuple[Check, ...], tokenizer: TokenizerInfo) -> None:
        if not checks:
            raise ValueError("a CheckedConstraint needs at least one check (use the grammar itself otherwise)")
        self.inner = inner
        self.checks = tuple(checks)
        self.backend = inner.backend
        self.vocab_size = inner.vocab_size
        self.description = f"{inner.description} with checks ({', '.join(c.name for c in self.checks)})"
        self.eos = frozenset(tokenizer.eos_token_ids)
        self.pieces = tokenizer.prepare("check-pieces", lambda: _pieces(tokenizer))  # once per tokenizer
        self.byte_tokens = tokenizer.prepare("check-byte-tokens", lambda: _byte_tokens(self.pieces))
        self._tokenizer = tokenizer
        self._refusals: dict[frozenset[int], torch.Tensor] = {}

    def refusal(self, tokens: frozenset[int]) -> torch.Tensor:
        """The int32 words of a bitmask row with every token but `tokens` allowed (built once per set)."""
        words = self._refusals.get(tokens)
        if words is None:
            words = allocate_bitmask(1, self.vocab_size)[0]
            for token in tokens:
                words[token // 32] &= _signed(~(1 << (token % 32)) & 0xFFFFFFFF)
            if len(self._refusals) < 64:  # a check refuses a few distinct sets
                self._refusals[tokens] = words
        return words

    def start(self) -> CheckedState:
        inner = self.inner.start()
        checks = tuple(check.start(self._tokenizer).feed(b"", inner) for check in self.checks)
        return CheckedState(self, inner, checks, None)

    def check_budget(self, max_tokens: int) -> None:
        self.inner.check_budget(max_tokens)


def _pieces(tokenizer: TokenizerInfo) -> list[bytes]:
    """Each token's bytes as a check reads them (special tokens: none)."""
    special = tokenizer.special_token_ids | tokenizer.eos_token_ids
    return [b"" if token in special else piece for token, piece in enumerate(tokenizer.vocab_bytes)]


def _byte_tokens(pieces: list[bytes]) -> dict[int, int]:
    """For each byte, a token that is exactly that byte (where the vocabulary has one)."""
    found: dict[int, int] = {}
    for token, piece in enumerate(pieces):
        if len(piece) == 1:
            found.setdefault(piece[0], token)
    return found


class CheckedState(State):
    """The grammar's State and each check's State for one hypothesis. Immutable."""

    __slots__ = ("_constraint", "_inner", "_checks", "_parent")

    def __init__(
        self,
        constraint: CheckedConstraint,
        inner: State,
        checks: tuple[CheckState, ...],
        parent: CheckedState | None,
    ) -> None:
        self._constraint = constraint
        self._inner = inner
        self._checks = checks
        self._parent = parent

    def __repr__(self) -> str:
        verdicts = ", ".join(f"{c.name}: {s.verdict.value}" for c, s in zip(self._constraint.checks, self._checks))
        return f"CheckedState({verdicts}; inner={self._inner!r})"

    @property
    def inner(self) -> State:
        return self._inner

    @property
    def verdicts(self) -> tuple[Verdict, ...]:
        """Each check's verdict, in the order the checks were given."""
        return tuple(state.verdict for state in self._checks)

    def violated(self) -> list[str]:
        """The names of the checks the output so far violates."""
        return [c.name for c, s in zip(self._constraint.checks, self._checks) if s.verdict is Verdict.VIOLATED]

    @property
    def _all_ok(self) -> bool:
        return all(state.verdict is Verdict.OK for state in self._checks)

    @property
    def dead(self) -> bool:
        if self._inner.dead or any(state.verdict is Verdict.VIOLATED for state in self._checks):
            return True
        return self._inner.finished and not self._all_ok

    @property
    def accepting(self) -> bool:
        return not self.dead and self._inner.accepting and self._all_ok

    @property
    def finished(self) -> bool:
        return not self.dead and self._inner.finished and self._all_ok

    @property
    def steer_every_token(self) -> bool:
        return self._inner.steer_every_token

    @property
    def may_die(self) -> bool:
        """A check may find a token violates it only once taken: the decoding step keeps alternatives."""
        return not self.dead

    @property
    def forced(self) -> list[int]:
        if self.dead:
            return []
        forced = self._inner.forced
        refused = self._refused()
        for i, token in enumerate(forced):
            if token in refused:
                return forced[:i]
        return forced

    def _refused(self) -> frozenset[int]:
        if len(self._checks) == 1:  # the set itself: its hash is kept, and `refusal` finds its words at once
            return self._checks[0].refused()
        refused = frozenset()
        for state in self._checks:
            refused |= state.refused()
        return refused

    def allows(self, token_id: int) -> bool:
        if self.dead or not self._inner.allows(token_id):
            return False
        if token_id in self._constraint.eos and not self._all_ok:
            return False
        return token_id not in self._refused()

    def advance(self, token_id: int) -> CheckedState:
        if self.dead or (token_id in self._constraint.eos and not self._all_ok) or token_id in self._refused():
            raise ValueError(f"token {token_id} is not allowed here ({self._why_not(token_id)})")
        try:
            inner = self._inner.advance(token_id)  # checks the grammar once: no `allows` before it
        except ValueError:
            raise ValueError(f"token {token_id} is not allowed here ({self._why_not(token_id)})") from None
        data = b"" if token_id in self._constraint.eos else self._constraint.pieces[token_id]
        checks = tuple(state.feed(data, inner) for state in self._checks)
        return CheckedState(self._constraint, inner, checks, self)

    def _why_not(self, token_id: int) -> str:
        if self.dead:
            return f"the output already violates {', '.join(self.violated()) or 'a check'}"
        if not self._inner.allows(token_id):
            return f"{self._constraint.inner.description} forbids it"
        if token_id in self._constraint.eos:
            return "end-of-sequence while a check is still unsatisfied"
        return "a check refuses it"

    def rollback(self, n: int) -> CheckedState:
        return rollback_by_parent(self, n)

    def fill(self, bitmask: torch.Tensor, row: int = 0) -> None:
        self.fill_rows([self], [row], bitmask)

    @classmethod
    def fill_rows(cls, states: list[State], rows: list[int], bitmask: torch.Tensor) -> None:
        """The grammar states' masks in one batch (`fill_masks`), then each row's check refusals."""
        live = [(state, row) for state, row in zip(states, rows) if not state.dead]
        for state, row in zip(states, rows):
            if state.dead:
                bitmask[row] = 0
        if live:
            fill_masks([state._inner for state, _ in live], bitmask, [row for _, row in live])
        for state, row in live:
            state._refuse(bitmask, row)

    def _refuse(self, bitmask: torch.Tensor, row: int) -> None:
        refused = self._refused()
        if not self._all_ok and self._inner.accepting:  # the grammar allows end-of-sequence exactly then
            refused |= self._constraint.eos
        if refused:
            bitmask[row] &= self._constraint.refusal(refused)

    def closing(self, limit: int) -> tuple[int, int | None] | None:
        state, steps, first = self, 0, None
        while steps <= limit:
            if state.dead:
                return None
            if state.finished:
                return (steps, first)
            guidance = state._completion()
            if guidance is None:  # the grammar's walk satisfies every check: it is the rest of this one
                rest = state._inner.closing(limit - steps)
                if rest is None or rest[1] is None or not state.allows(rest[1]):
                    return None
                return (steps + rest[0], rest[1] if first is None else first)
            token = guidance[0] if guidance and state.allows(guidance[0]) else None
            if token is None:  # the grammar's next token, checked against this State's refusals
                rest = state._inner.closing(limit - steps)
                if rest is None or rest[1] is None or not state.allows(rest[1]):
                    return None
                token = rest[1]
            state = state.advance(token)
            first = token if first is None else first
            steps += 1
        return None

    def _completion(self) -> list[int] | None:
        """What the checks ask a closing walk to do next (see `CheckState.completion`): None (follow the
        grammar's walk to the end), [] (take the grammar's next token), or [the token to write next]."""
        step = False
        for check in self._checks:
            data = check.completion()
            if data:
                token = self._constraint.byte_tokens.get(data[0])
                return [token] if token is not None else []
            step = step or data is not None
        return [] if step else None
