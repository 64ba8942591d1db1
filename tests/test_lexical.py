"""Lexically constrained decoding: `sd.includes([...])` (grammars/lexical.py) and `sd.LexicalBeam`
(search/lexical.py). Every output that finishes with "stop" contains every phrase — greedy, sampled,
beam and dynamic beam allocation, alone and within a JSON Schema, on the tiny model and the real one —
and short budgets force the phrases in rather than lose them. The State passes the backend contract
suite (tests/test_backend_contract.py), and bad input fails before any generation."""

from __future__ import annotations

import json

import jsonschema
import pytest
import test_backend_contract as contract

import searchdec as sd
from searchdec.grammars.lexical import LexicalState
from searchdec.search.lexical import bank_sizes

CITY = {
    "type": "object",
    "properties": {"n": {"type": "integer"}, "city": {"type": "string"}},
    "required": ["n", "city"],
    "additionalProperties": False,
}
PHRASES = ["Paris", "train"]


def _searches():
    return {
        "Greedy": sd.Greedy(),
        "Sample": sd.Sample(n=4, seed=3),
        "LexicalBeam": sd.LexicalBeam(3, num_return=3),
        "LexicalBeam-lookahead": sd.LexicalBeam(3, num_return=2, lookahead=2),
    }


def _check(out, phrases, schema=None):
    finished = [h for h in out.hypotheses if h.finish_reason == "stop"]
    assert finished, [h.text for h in out.hypotheses]
    for h in finished:
        for phrase in phrases:
            assert phrase in h.text, (phrase, h.text)
        if schema is not None:
            jsonschema.validate(json.loads(h.text), schema)


# --- every finished output contains every phrase ----------------------------------------------------


@pytest.mark.parametrize("name", list(_searches()))
def test_every_finished_output_contains_every_phrase(tiny, name):
    out = sd.generate(tiny, ["hello", "abc"], max_tokens=24, constraint=sd.includes(PHRASES), search=_searches()[name])
    for generation in out:
        assert all(h.finish_reason == "stop" for h in generation.hypotheses)
        _check(generation, PHRASES)
    assert len(tiny.cache) == 0


@pytest.mark.parametrize("name", list(_searches()))
def test_every_finished_json_document_is_valid_and_contains_every_phrase(tiny, name):
    spec = sd.includes(PHRASES, within=sd.json_schema(CITY, max_whitespace=2))
    out = sd.generate(tiny, "hello", max_tokens=40, constraint=spec, search=_searches()[name])
    assert all(h.finish_reason == "stop" for h in out.hypotheses)
    _check(out, PHRASES, CITY)


def test_a_tight_budget_forces_the_phrase_in_at_the_end(tiny):
    free = sd.generate(tiny, "hello", max_tokens=12)
    assert "Paris" not in free.text
    out = sd.generate(tiny, "hello", max_tokens=12, constraint=sd.includes(["Paris"]))
    assert out.finish_reason == "stop" and out.text.endswith("Paris")
    assert len(out.tokens) <= 12


def test_the_smallest_budget_that_holds_the_phrases_is_enough(tiny):
    # "Paris" and "train" are five byte tokens each, plus end-of-sequence: 11 tokens.
    out = sd.generate(tiny, "hello", max_tokens=11, constraint=sd.includes(PHRASES), search=sd.Sample(n=3, seed=0))
    for h in out.hypotheses:
        assert h.finish_reason == "stop" and sorted([h.text[:5], h.text[5:]]) == ["Paris", "train"]


def test_sampling_on_an_executor_gives_the_same_outputs(tiny):
    spec, search = sd.includes(PHRASES), sd.Sample(n=2, seed=7)
    here = sd.generate(tiny, "hello", max_tokens=20, constraint=spec, search=search)
    with sd.InProcessExecutor() as executor:
        there = sd.generate(tiny, "hello", max_tokens=20, constraint=spec, search=search, executor=executor)
    assert [h.tokens for h in here.hypotheses] == [h.tokens for h in there.hypotheses]
    _check(there, PHRASES)


def test_plain_beam_only_finishes_hypotheses_with_every_phrase(tiny):
    out = sd.generate(tiny, "hello", max_tokens=16, constraint=sd.includes(["ab"]), search=sd.Beam(3, num_return=3))
    for h in out.hypotheses:
        assert h.finish_reason == "length" or "ab" in h.text


# --- the State ----------------------------------------------------------------------------------------


def test_end_of_sequence_waits_for_every_phrase_and_any_tokenization_counts(tiny):
    state = sd.includes(["Par", "is"]).compile(tiny).start()
    eos = next(iter(tiny.eos_token_ids))
    assert not state.allows(eos) and not state.accepting
    for token in tiny.encode("xPa", add_special_tokens=False):
        state = state.advance(token)
    assert isinstance(state, LexicalState) and state.partial(0) == 2 and state.met == (False, False)
    state = state.advance_many(tiny.encode("ris", add_special_tokens=False))
    assert state.met == (True, True) and state.accepting and state.allows(eos)
    with pytest.raises(ValueError, match="end-of-sequence before the phrases"):
        sd.includes(["Par"]).compile(tiny).start().advance(eos)


def test_rollback_and_fork_restore_which_phrases_are_met(tiny):
    start = sd.includes(["ok"]).compile(tiny).start()
    met = start.advance_many(tiny.encode("ok", add_special_tokens=False))
    assert met.all_met and met.rollback(1).met == (False,) and met.rollback(2) is start
    assert start.fork().advance_many(tiny.encode("ok", add_special_tokens=False)).all_met and not start.all_met


def test_a_grammar_that_closes_before_a_phrase_leaves_a_dead_state(tiny):
    state = sd.includes(["zz"], within=sd.choice(["cat", "cow"])).compile(tiny).start()
    ended = state.advance_many(tiny.encode("cat", add_special_tokens=False))
    assert ended.dead and not ended.accepting and not ended.finished and ended.closing(10) is None


def test_bank_sizes_split_evenly_and_hand_spare_slots_to_higher_banks_first():
    assert bank_sizes(4, [9, 9, 9]) == [1, 1, 2]
    assert bank_sizes(4, [9, 0, 0]) == [4, 0, 0]
    assert bank_sizes(5, [9, 1, 9]) == [1, 1, 3]
    assert bank_sizes(2, [9, 9, 9, 9]) == [0, 0, 0, 2]
    assert bank_sizes(3, [1, 0, 1]) == [1, 0, 1]


# --- the backend contract suite, run over includes -------------------------------------------------

LEXICAL_CASES = {
    "includes-forced-regex": (lambda backend: sd.includes(["4"], within=sd.regex(r"id: [0-9]+;")), "id: 42;"),
    "includes-json-schema": (
        lambda backend: sd.includes(["An"], within=sd.json_schema(contract.PERSON, max_whitespace=1)),
        '{"name": "Ann", "age": 42}',
    ),
}
CONTRACT_CHECKS = [
    contract.test_constraint_records_its_backend_and_fits_the_logits,
    contract.test_fill_allows_and_advance_agree_on_every_token,
    contract.test_accepting_means_end_of_sequence_is_allowed,
    contract.test_forced_text_starts_every_continuation,
    contract.test_closing_is_consistent_with_its_limit,
    contract.test_forks_and_parents_move_independently,
    contract.test_rollback_returns_to_the_earlier_state,
    contract.test_a_forbidden_token_raises_and_leaves_the_state,
    contract.test_a_finished_state_allows_end_of_sequence_only,
]


@pytest.mark.parametrize("check", CONTRACT_CHECKS, ids=lambda check: check.__name__.removeprefix("test_"))
@pytest.mark.parametrize("case", list(LEXICAL_CASES))
def test_includes_passes_the_backend_contract(tiny, monkeypatch, check, case):
    monkeypatch.setitem(contract.CASES, case, LEXICAL_CASES[case])
    check(tiny, "includes", case)


# --- bad input ---------------------------------------------------------------------------------------


def test_bad_phrase_lists_are_refused_when_the_spec_is_made():
    with pytest.raises(TypeError, match="not one string"):
        sd.includes("Paris")
    with pytest.raises(sd.ConstraintError, match="at least one phrase"):
        sd.includes([])
    with pytest.raises(sd.ConstraintError, match="phrase 1 is empty"):
        sd.includes(["Paris", ""])
    with pytest.raises(sd.ConstraintError, match="more than once"):
        sd.includes(["a", "a"])
    with pytest.raises(sd.ConstraintError, match="one includes"):
        sd.includes(["a"], within=sd.includes(["b"]))
    with pytest.raises(TypeError, match="constraint spec"):
        sd.includes(["a"], within="[a-z]+")


def test_a_phrase_the_tokenizer_cannot_write_is_refused_at_compile_time(tiny):
    with pytest.raises(sd.ConstraintError, match="cannot write the phrase '<eos>'"):
        sd.includes(["<eos>"]).compile(tiny)


def test_phrases_that_cannot_fit_the_budget_fail_before_generation(tiny):
    calls = tiny.stats.calls
    with pytest.raises(sd.PhrasesDoNotFitError, match=r"max_tokens=10 .* raise max_tokens to 11"):
        sd.generate(tiny, "hello", max_tokens=10, constraint=sd.includes(PHRASES))
    with pytest.raises(sd.PhrasesDoNotFitError, match="no output of regex"):
        sd.generate(tiny, "hello", max_tokens=30, constraint=sd.includes(["Paris"], within=sd.regex("[0-9]+")))
    assert tiny.stats.calls == calls  # refused before any forward


def test_lookahead_must_be_a_non_negative_int():
    with pytest.raises(ValueError, match="lookahead must be"):
        sd.LexicalBeam(2, lookahead=-1)
    with pytest.raises(ValueError, match="lookahead_weight"):
        sd.LexicalBeam(2, lookahead=1, lookahead_weight=float("nan"))


# --- the real default model --------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("name", ["Greedy", "LexicalBeam"])
def test_the_real_model_writes_every_phrase(smollm, name):
    search = {"Greedy": sd.Greedy(), "LexicalBeam": sd.LexicalBeam(3, num_return=2)}[name]
    prompts = ["Write a sentence about travel.", "Describe a city at night."]
    out = sd.generate(smollm, prompts, max_tokens=24, constraint=sd.includes(["Paris", "train"]), search=search)
    for generation in out:
        _check(generation, ["Paris", "train"])
    schema = {"type": "object", "properties": {"sentence": {"type": "string"}}, "required": ["sentence"]}
    spec = sd.includes(["Eiffel Tower"], within=sd.json_schema(schema, strict=True))
    _check(sd.generate(smollm, prompts[0], max_tokens=32, constraint=spec, search=search), ["Eiffel Tower"], schema)
