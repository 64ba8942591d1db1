"""The checks contract (grammars/base.py `Check`, grammars/checks.py): a grammar plus checks is one State,
dead the moment a check is violated; decoding backtracks from dead hypotheses, frontier searches drop them,
and a check that can never be satisfied ends the output with "unsatisfied", never as a valid output."""

from __future__ import annotations

import json

import pytest
import torch

import searchdec as sd
from searchdec.distributed import InProcessExecutor
from searchdec.grammars.base import (
    Check,
    CheckState,
    Verdict,
    allocate_bitmask,
    fill_masks,
    tokenizer_info,
    unpack_bitmask,
)
from searchdec.grammars.checks import CheckedConstraint


class _Forbid(CheckState):
    """Violated once `text` appears in the output; OK otherwise."""

    __slots__ = ("text", "seen")

    def __init__(self, text: bytes, seen: bytes) -> None:
        self.text, self.seen = text, seen

    @property
    def verdict(self) -> Verdict:
        return Verdict.VIOLATED if self.text in self.seen else Verdict.OK

    def feed(self, data, grammar):
        return type(self)(self.text, self.seen + data)


class Forbid(Check):
    def __init__(self, text: str) -> None:
        self.text = text.encode()
        self.name = f"no {text!r}"

    def start(self, tokenizer):
        return _Forbid(self.text, b"")


class _EvenCount(CheckState):
    """OK while the output holds an even number of `letter`; UNDECIDED otherwise (never violated)."""

    __slots__ = ("letter", "count")

    def __init__(self, letter: int, count: int) -> None:
        self.letter, self.count = letter, count

    @property
    def verdict(self) -> Verdict:
        return Verdict.OK if self.count % 2 == 0 else Verdict.UNDECIDED

    def feed(self, data, grammar):
        return _EvenCount(self.letter, self.count + data.count(self.letter))


class EvenCount(Check):
    def __init__(self, letter: str) -> None:
        self.letter = ord(letter)
        self.name = f"an even number of {letter!r}"

    def start(self, tokenizer):
        return _EvenCount(self.letter, 0)


class _Unclosable(_Forbid):
    """Once `text` appears the output can never be OK again, but the check cannot say so (it stays
    UNDECIDED, never VIOLATED): only a closing walk, which finds no end it accepts, tells."""

    __slots__ = ()

    @property
    def verdict(self) -> Verdict:
        return Verdict.UNDECIDED if self.text in self.seen else Verdict.OK

    def completion(self):
        return None if self.verdict is Verdict.OK else b""  # follow the grammar's walk, asking again


class Unclosable(Forbid):
    def start(self, tokenizer):
        return _Unclosable(self.text, b"")


def checked(model, spec, *checks) -> CheckedConstraint:
    return CheckedConstraint(spec.compile(model), checks, tokenizer_info(model))


def token(model, text: str) -> int:
    (found,) = model.encode(text, add_special_tokens=False)
    return found


def test_a_violated_check_makes_the_state_dead_and_it_allows_nothing(tiny):
    constraint = checked(tiny, sd.regex("[ab]{1,6}"), Forbid("bb"))
    a, b = token(tiny, "a"), token(tiny, "b")
    state = constraint.start().advance(b)
    assert not state.dead and state.may_die and state.allows(b)
    dead = state.advance(b)
    assert dead.dead and not dead.accepting and not dead.allows(a) and dead.forced == []
    assert dead.closing(10) is None
    mask = allocate_bitmask(1, constraint.vocab_size)
    dead.fill(mask)
    assert not unpack_bitmask(mask, constraint.vocab_size).any()
    assert dead.rollback(1) is state and not state.dead


def test_end_of_sequence_waits_until_every_check_is_ok(tiny):
    constraint = checked(tiny, sd.regex("[ab]{1,6}"), EvenCount("b"))
    a, b, eos = token(tiny, "a"), token(tiny, "b"), tiny.tokenizer.eos_token_id
    one_b = constraint.start().advance(b)
    assert not one_b.accepting and not one_b.allows(eos) and not one_b.dead
    mask = allocate_bitmask(1, constraint.vocab_size)
    one_b.fill(mask)
    allowed = unpack_bitmask(mask, constraint.vocab_size)[0]
    assert allowed[a] and allowed[b] and not allowed[eos]
    two_b = one_b.advance(a).advance(b)
    assert two_b.accepting and two_b.allows(eos)


def test_a_check_at_the_end_of_the_grammar_leaves_an_odd_count_dead(tiny):
    constraint = checked(tiny, sd.regex("b"), EvenCount("b"))
    state = constraint.start().advance(token(tiny, "b"))
    assert state.dead  # the grammar can go no further and the check is not satisfied


@pytest.mark.parametrize(
    "search",
    [sd.Greedy(), sd.Sample(n=4, seed=3)],
    ids=["greedy", "sample"],
)
def test_decoding_backtracks_so_every_finished_output_satisfies_the_checks(tiny, search):
    constraint = checked(tiny, sd.regex("[abc]{2,12}"), Forbid("bb"), Forbid("ca"), EvenCount("a"))
    out = sd.generate(tiny, "xyz", constraint=constraint, search=search, max_tokens=16)
    for hypothesis in out.hypotheses:
        assert hypothesis.finish_reason == "stop", hypothesis
        text = hypothesis.text
        assert "bb" not in text and "ca" not in text and text.count("a") % 2 == 0


def test_backtracks_are_counted_and_the_same_whatever_the_batching(tiny):
    schema = {"type": "array", "items": {"enum": [1, 2, 3]}, "uniqueItems": True, "minItems": 3, "maxItems": 3}
    constraint = sd.json_schema(schema, max_whitespace=0)  # a spec: each worker compiles its own
    search = sd.Sample(n=12, seed=5)
    # A roomy budget: near its end, budget steering (search/budget.py) would avoid dead tokens itself.
    here = sd.generate(tiny, "xyz", constraint=constraint, search=search, max_tokens=200)
    with InProcessExecutor(batch_rows=1) as executor:
        there = sd.generate(tiny, "xyz", constraint=constraint, search=search, max_tokens=200, executor=executor)
    assert [h.text for h in here.hypotheses] == [h.text for h in there.hypotheses]
    assert all(sorted(json.loads(h.text)) == [1, 2, 3] for h in here.hypotheses if h.finish_reason == "stop")
    assert here.stats.backtracks == there.stats.backtracks > 0


def test_backtracking_changes_nothing_when_no_check_is_violated(tiny):
    plain = sd.generate(tiny, "xyz", constraint=sd.regex("[abc]{2,12}"), max_tokens=16)
    constraint = checked(tiny, sd.regex("[abc]{2,12}"), Forbid("never"))
    with_check = sd.generate(tiny, "xyz", constraint=constraint, max_tokens=16)
    assert with_check.text == plain.text and with_check.tokens == plain.tokens
    assert with_check.stats.backtracks == 0


def test_a_check_that_cannot_be_satisfied_ends_with_unsatisfied(tiny):
    constraint = checked(tiny, sd.regex("[ab]{3}"), Forbid("a"), Forbid("b"))
    out = sd.generate(tiny, "xyz", constraint=constraint, max_tokens=8)
    assert out.finish_reason == "unsatisfied"


@pytest.mark.parametrize("seed", range(4))
def test_a_hypothesis_that_can_no_longer_close_is_backtracked_from(tiny, seed):
    """The budget's closing walk finds that no end is accepted after "aa" (search/budget.py's `stranded`):
    the row backtracks to before it instead of running on to "length"."""
    constraint = checked(tiny, sd.regex("[ab]{8,80}"), Unclosable("aa"))  # the tiny model writes "aa" often
    out = sd.generate(tiny, "xyz", constraint=constraint, max_tokens=64, search=sd.Sample(seed=seed))
    assert out.finish_reason == "stop", out  # before `stranded`: 3 of these 4 ran on to "length"
    assert "aa" not in out.text


def test_the_backtracking_budget_bounds_the_search(tiny):
    """A word of [ab]{7} with neither "aa" nor "bb" alternates its letters, so one of them comes an odd
    number of times: no output satisfies every check, and the search gives up within its budget."""
    constraint = checked(tiny, sd.regex("[ab]{7}"), Forbid("aa"), Forbid("bb"), EvenCount("b"), EvenCount("a"))
    out = sd.generate(tiny, "xyz", constraint=constraint, max_tokens=8)
    assert out.finish_reason == "unsatisfied"


@pytest.mark.parametrize("search", [sd.Beam(width=3), sd.BestFirstBeam(width=3)], ids=["beam", "best-first"])
def test_frontier_searches_drop_dead_beams(tiny, search):
    constraint = checked(tiny, sd.regex("[abc]{2,10}"), Forbid("bb"), Forbid("ac"))
    out = sd.generate(tiny, "xyz", constraint=constraint, search=search, max_tokens=12)
    assert out.finish_reason == "stop"
    assert "bb" not in out.text and "ac" not in out.text


def test_a_constraint_with_checks_needs_one():
    with pytest.raises(ValueError, match="at least one check"):
        CheckedConstraint(object(), (), None)


def test_the_mask_matches_allows(tiny):
    constraint = checked(tiny, sd.regex("[ab]{1,4}"), EvenCount("a"), Forbid("ab"))
    state = constraint.start()
    for text in ("", "a", "b", "ba"):
        s = state.advance_many([token(tiny, ch) for ch in text])
        mask = allocate_bitmask(1, constraint.vocab_size)
        s.fill(mask)
        allowed = unpack_bitmask(mask, constraint.vocab_size)[0]
        expected = torch.tensor([s.allows(t) for t in range(constraint.vocab_size)])
        assert torch.equal(allowed, expected), text


def test_a_batched_fill_of_checked_states_equals_their_own_fills(tiny):
    """`fill_masks` fills the grammar states in one batch, then each row's refusals; dead rows allow nothing."""
    constraint = checked(tiny, sd.regex("[ab]{1,4}"), EvenCount("a"), Forbid("bb"))
    start = constraint.start()
    states = [start.advance_many([token(tiny, ch) for ch in text]) for text in ("", "a", "b", "ba", "bb", "aab")]
    assert states[4].dead
    batch = [*states, states[1]]
    bitmask = allocate_bitmask(len(batch), constraint.vocab_size)
    fill_masks(batch, bitmask)
    for row, state in enumerate(batch):
        own = allocate_bitmask(1, constraint.vocab_size)
        state.fill(own)
        assert torch.equal(bitmask[row], own[0]), row
