"""The constraint-backend contract (grammars/base.py), checked the same way for every backend: at each
state along a valid output, `fill` agrees with `allows` and `advance` on every token of the
vocabulary; `accepting` means end-of-sequence is allowed; `forced` is text every continuation starts
with; `closing` is consistent with its limit; forks and parents move independently; `rollback`
returns to the earlier state; a finished state allows end-of-sequence only.

The suite runs over llguidance, outlines-core and a third backend defined here, `ChoiceTrie`: the
worked example of adding a backend (one module with a State, a Constraint and a Backend; one
`register_backend` line). Nothing else in searchdec changes for it: `sd.choice(..., backend="choice-trie")`
compiles with it and `sd.generate` decodes with it."""

from __future__ import annotations

import re
from collections import deque

import pytest
import torch

import searchdec as sd
from searchdec.grammars import Backend, Constraint, State, TokenizerInfo, register_backend
from searchdec.grammars.base import allocate_bitmask, fill_masks, pack_bitmask

# --- the worked example: a third backend ----------------------------------------------------------


class ChoiceTrieConstraint(Constraint):
    """`sd.choice` as a walk over the options' bytes: a state is the bytes written so far."""

    backend = "choice-trie"

    def __init__(self, options: tuple[str, ...], tokenizer: TokenizerInfo, description: str) -> None:
        self.options = frozenset(option.encode() for option in options)
        self.prefixes = {option[:i] for option in self.options for i in range(len(option) + 1)}
        self.eos = frozenset(tokenizer.eos_token_ids)
        self.pieces = [
            (token, piece)
            for token, piece in enumerate(tokenizer.vocab_bytes)
            if piece and token not in tokenizer.special_token_ids
        ]
        self.vocab_size = tokenizer.vocab_size
        self.description = description

    def start(self) -> ChoiceTrieState:
        return ChoiceTrieState(self, b"", ())

    def allowed(self, written: bytes | None) -> frozenset[int]:
        if written is None:  # end-of-sequence consumed
            return self.eos
        tokens = {token for token, piece in self.pieces if written + piece in self.prefixes}
        return frozenset(tokens | (self.eos if written in self.options else set()))


class ChoiceTrieState(State):
    __slots__ = ("_constraint", "_written", "_history")

    def __init__(self, constraint: ChoiceTrieConstraint, written: bytes | None, history: tuple) -> None:
        self._constraint, self._written, self._history = constraint, written, history

    @property
    def accepting(self) -> bool:
        return self._written is None or self._written in self._constraint.options

    @property
    def finished(self) -> bool:
        return self.accepting and self._constraint.allowed(self._written) <= self._constraint.eos

    @property
    def forced(self) -> list[int]:
        tokens, state = [], self
        while not state.accepting and len(allowed := state._constraint.allowed(state._written)) == 1:
            tokens.append(next(iter(allowed)))
            state = state.advance(tokens[-1])
        return tokens

    def allows(self, token_id: int) -> bool:
        return token_id in self._constraint.allowed(self._written)

    def advance(self, token_id: int) -> ChoiceTrieState:
        if not self.allows(token_id):
            raise ValueError(f"token {token_id} is not allowed here")
        piece = dict(self._constraint.pieces).get(token_id)
        written = None if token_id in self._constraint.eos else self._written + piece
        return ChoiceTrieState(self._constraint, written, (*self._history, self._written))

    def rollback(self, n: int) -> ChoiceTrieState:
        if n > len(self._history):
            raise ValueError(f"cannot roll back {n} tokens: only {len(self._history)} were consumed")
        return self if n == 0 else ChoiceTrieState(self._constraint, self._history[-n], self._history[:-n])

    def fill(self, bitmask: torch.Tensor, row: int = 0) -> None:
        allowed = torch.zeros(self._constraint.vocab_size, dtype=torch.bool)
        allowed[list(self._constraint.allowed(self._written))] = True
        bitmask[row] = pack_bitmask(allowed)

    def closing(self, limit: int) -> tuple[int, int | None] | None:
        if self.finished:
            return (0, None)
        seen, queue = {self._written}, deque([(self, 0, None)])
        while queue:  # breadth-first: exact
            state, steps, first = queue.popleft()
            if state.accepting:
                found = (steps + 1, min(self._constraint.eos) if first is None else first)
                return found if found[0] <= limit else None
            for token in sorted(self._constraint.allowed(state._written) - self._constraint.eos):
                child = state.advance(token)
                if child._written not in seen:
                    seen.add(child._written)
                    queue.append((child, steps + 1, token if first is None else first))
        return None


class ChoiceTrie(Backend):
    name = "choice-trie"

    def check(self, spec) -> None:
        if not isinstance(spec, sd.grammars.Choice):
            raise sd.ConstraintError(f"the choice-trie backend compiles sd.choice only, not {spec.describe()}")

    def compile(self, spec, tokenizer: TokenizerInfo) -> ChoiceTrieConstraint:
        self.check(spec)
        return ChoiceTrieConstraint(spec.options, tokenizer, spec.describe())


register_backend(ChoiceTrie())  # the one registry line (a shipped backend puts it in grammars/__init__.py)

# --- the suite -------------------------------------------------------------------------------------

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 6}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
# (spec maker, a valid output); each backend runs the cases it compiles.
CASES = {
    "regex": (lambda backend: sd.regex(r"(ab|cd)[0-9]{1,3}", backend=backend), "cd42"),
    "forced-regex": (lambda backend: sd.regex(r"id: [0-9]+;", backend=backend), "id: 7;"),
    "choice": (lambda backend: sd.choice(["cat", "cow", "dog"], backend=backend), "cow"),
    "json-schema": (
        lambda backend: sd.json_schema(PERSON, max_whitespace=1, backend=backend),
        '{"name": "Ann", "age": 42}',
    ),
}
BACKENDS = {
    "llguidance": ["regex", "forced-regex", "choice", "json-schema"],
    "outlines-core": ["regex", "forced-regex", "choice", "json-schema"],
    "choice-trie": ["choice"],
}
PARAMS = [pytest.param(backend, case, id=f"{backend}-{case}") for backend, cases in BACKENDS.items() for case in cases]


@pytest.fixture(scope="module")
def model():
    from tiny import tiny_model

    return tiny_model()


def _walk(model, backend: str, case: str) -> tuple[Constraint, list[State], list[int]]:
    """The compiled constraint, the states along the case's output (start first) and its tokens."""
    if backend == "outlines-core":
        pytest.importorskip("outlines_core")
    make, text = CASES[case]
    constraint = make(backend).compile(model)
    tokens = model.encode(text, add_special_tokens=False)
    states = [constraint.start()]
    for token in tokens:
        states.append(states[-1].advance(token))
    return constraint, states, tokens


def _mask(state: State, vocab: int) -> list[int]:
    return state.allowed_tokens(vocab).nonzero().flatten().tolist()


@pytest.mark.parametrize("backend, case", PARAMS)
def test_constraint_records_its_backend_and_fits_the_logits(model, backend, case):
    constraint, _, _ = _walk(model, backend, case)
    assert constraint.backend == backend
    assert constraint.vocab_size == model.vocab_size
    assert constraint.start().allowed_tokens(model.vocab_size).shape == (model.vocab_size,)


@pytest.mark.parametrize("backend, case", PARAMS)
def test_fill_allows_and_advance_agree_on_every_token(model, backend, case):
    _, states, _ = _walk(model, backend, case)
    for state in states:
        mask = state.allowed_tokens(model.vocab_size)
        for token in range(model.vocab_size):
            assert bool(mask[token]) == state.allows(token), (state, token)
            try:
                state.advance(token)
                advanced = True
            except ValueError:
                advanced = False
            assert advanced == bool(mask[token]), (state, token)


@pytest.mark.parametrize("backend, case", PARAMS)
def test_a_batched_fill_equals_each_states_own_fill(model, backend, case):
    """`fill_masks` (one `fill_rows` call per State class, llguidance's parallel fill, a repeated State
    filled once) writes every row exactly as the State's own `fill` would, in any row order."""
    _, states, _ = _walk(model, backend, case)
    batch = [*reversed(states), states[0], states[-1]]  # rows out of order, two States repeated
    bitmask = allocate_bitmask(len(batch) + 1, model.vocab_size)
    fill_masks(batch, bitmask, [row + 1 for row in range(len(batch))])  # row 0 left alone
    assert bool((bitmask[0] == -1).all())
    for row, state in enumerate(batch, start=1):
        own = allocate_bitmask(1, model.vocab_size)
        state.fill(own)
        assert torch.equal(bitmask[row], own[0]), (row, state)


@pytest.mark.parametrize("backend, case", PARAMS)
def test_accepting_means_end_of_sequence_is_allowed(model, backend, case):
    _, states, _ = _walk(model, backend, case)
    assert states[-1].accepting
    for state in states:
        assert state.accepting == any(state.allows(eos) for eos in model.eos_token_ids), state


@pytest.mark.parametrize("backend, case", PARAMS)
def test_forced_text_starts_every_continuation(model, backend, case):
    _, states, _ = _walk(model, backend, case)
    saw_forced = False
    for state in states:
        forced = state.forced
        text = b"".join(model.vocab_bytes[t] for t in forced)
        allowed = [t for t in _mask(state, model.vocab_size) if t not in model.eos_token_ids]
        if forced:
            saw_forced = True
            assert not state.accepting
            state.advance_many(forced)  # the forced tokens are allowed, in turn
        for token in allowed:
            piece = model.vocab_bytes[token]
            assert piece.startswith(text) or text.startswith(piece), (state, token, text)
        if len(allowed) == 1 and not state.accepting:  # one option left: the grammar fixes it
            assert forced[:1] == allowed
    assert saw_forced or case == "regex"  # the other cases all fix some text along the way


@pytest.mark.parametrize("backend, case", PARAMS)
def test_closing_is_consistent_with_its_limit(model, backend, case):
    _, states, _ = _walk(model, backend, case)
    for state in states:
        found = state.closing(64)
        if state.finished:
            assert found == (0, None)
            continue
        assert found is not None, state
        steps, first = found
        assert state.closing(steps) == found and (steps == 0 or state.closing(steps - 1) is None)
        assert steps >= 1 and state.allows(first)
        if state.accepting:
            assert found == (1, first) and first in model.eos_token_ids
        else:
            child = state.advance(first)
            assert child.closing(steps - 1) is not None  # the first token keeps the rest in reach


@pytest.mark.parametrize("backend, case", PARAMS)
def test_forks_and_parents_move_independently(model, backend, case):
    _, states, tokens = _walk(model, backend, case)
    for state, token in zip(states, tokens):
        before = _mask(state, model.vocab_size)
        fork = state.fork()
        moved = fork.advance(token)
        assert _mask(state, model.vocab_size) == before == _mask(fork, model.vocab_size)
        assert _mask(moved, model.vocab_size) == _mask(state.advance(token), model.vocab_size)


@pytest.mark.parametrize("backend, case", PARAMS)
def test_rollback_returns_to_the_earlier_state(model, backend, case):
    _, states, tokens = _walk(model, backend, case)
    last = states[-1]
    for n in range(len(tokens) + 1):
        assert _mask(last.rollback(n), model.vocab_size) == _mask(states[-1 - n], model.vocab_size)
    assert _mask(last, model.vocab_size) == _mask(states[-1], model.vocab_size)  # unchanged by rolling back
    with pytest.raises(ValueError):
        last.rollback(len(tokens) + 1)


@pytest.mark.parametrize("backend, case", PARAMS)
def test_a_forbidden_token_raises_and_leaves_the_state(model, backend, case):
    _, states, _ = _walk(model, backend, case)
    start = states[0]
    forbidden = next(t for t in range(model.vocab_size) if not start.allows(t))
    before = _mask(start, model.vocab_size)
    with pytest.raises(ValueError):
        start.advance(forbidden)
    with pytest.raises(ValueError):
        start.advance_many([forbidden])
    assert _mask(start, model.vocab_size) == before


@pytest.mark.parametrize("backend, case", PARAMS)
def test_a_finished_state_allows_end_of_sequence_only(model, backend, case):
    _, states, _ = _walk(model, backend, case)
    eos = next(t for t in model.eos_token_ids if states[-1].allows(t))
    ended = states[-1].advance(eos)
    assert ended.finished and ended.accepting and not ended.dead
    assert set(_mask(ended, model.vocab_size)) <= set(model.eos_token_ids)
    assert ended.closing(8) == (0, None)
    assert ended.rollback(1).allows(eos)
    for state in states:
        if state.finished:  # e.g. "cow": nothing more can follow
            assert set(_mask(state, model.vocab_size)) <= set(model.eos_token_ids)
            assert state.closing(8) == (0, None)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_constrained_generation_works_with_every_backend(runtime, backend):
    """On each runtime (the walks above need only a vocabulary, so they run on the tiny model's)."""
    if backend == "outlines-core":
        pytest.importorskip("outlines_core")
    spec = sd.choice(["cat", "cow", "dog"], backend=backend)
    out = sd.generate(runtime, "x", max_tokens=8, constraint=spec, search=sd.Sample(n=4, seed=0))
    for hypothesis in out.hypotheses:
        assert hypothesis.finish_reason == "stop" and hypothesis.text in ("cat", "cow", "dog")
    compiled = sd.generate(runtime, "x", max_tokens=8, constraint=spec.compile(runtime), search=sd.Beam(width=3))
    assert all(re.fullmatch("cat|cow|dog", h.text) for h in compiled.hypotheses)


def test_a_backend_refuses_a_spec_it_cannot_compile_when_the_spec_is_made():
    with pytest.raises(sd.ConstraintError, match="choice-trie backend compiles sd.choice only"):
        sd.regex("a+", backend="choice-trie")
    with pytest.raises(sd.ConstraintError, match="unknown grammar backend 'nope'.*choice-trie"):
        sd.choice(["a"], backend="nope")


def test_a_backend_name_is_taken_once():
    class Impostor(ChoiceTrie):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_backend(Impostor())
    with pytest.raises(TypeError):
        register_backend(object())
