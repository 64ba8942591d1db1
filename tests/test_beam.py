"""Beam and best-first beam search on the tiny model: their rules, bad input, constraints, the cache."""

import json

import pytest
from tiny import bias_token

import searchdec as sd
from searchdec.search import Node

PROMPTS = ["hello", "abc def", "a much longer prompt than the others"]


def test_width_one_with_early_stopping_is_greedy(tiny):
    greedy = sd.generate(tiny, PROMPTS, max_tokens=16)
    beam = sd.generate(tiny, PROMPTS, max_tokens=16, search=sd.Beam(1, early_stopping=True))
    assert [b.tokens for b in beam] == [g.tokens for g in greedy]


def test_beam_scores_are_logprob_over_length_to_the_penalty(tiny):
    out = sd.generate(tiny, "hello", max_tokens=10, search=sd.Beam(3, length_penalty=1.5, num_return=3))
    for h in out.hypotheses:
        assert h.score == pytest.approx(h.logprob / len(h.tokens) ** 1.5, abs=1e-4)
    assert [h.score for h in out.hypotheses] == sorted((h.score for h in out.hypotheses), reverse=True)


def test_hypotheses_are_distinct_and_num_return_long(tiny):
    out = sd.generate(tiny, "hello", max_tokens=8, search=sd.Beam(4, num_return=4))
    assert len(out.hypotheses) == 4
    assert len({tuple(h.tokens) for h in out.hypotheses}) == 4


def test_token_logprobs_are_the_model_log_softmax(tiny):
    out = sd.generate(tiny, "abc", max_tokens=6, search=sd.Beam(3))
    node = Node(tuple(tiny.encode("abc")))
    for token, lp in zip(out.tokens, out.token_logprobs):
        assert lp == pytest.approx(float(tiny.logits([node])[0].log_softmax(-1)[token]), abs=1e-4)
        node = Node((token,), node)


def test_beam_forwards_one_token_per_expansion_and_leaves_no_cache_entries(tiny):
    out = sd.generate(tiny, "hello", max_tokens=12, search=sd.Beam(4))
    prompt = len(tiny.encode("hello"))
    assert out.stats.tokens_forwarded == prompt + out.stats.expansions - 1
    assert len(tiny.cache) == 0 and tiny.cache.bytes == 0


def test_patience_collects_more_finished_hypotheses_before_stopping(tiny):
    eos = tiny.tokenizer.eos_token_id
    bias_token(tiny, eos, 4.0)  # hypotheses end often, so early stopping matters
    short = sd.generate(tiny, PROMPTS, max_tokens=30, search=sd.Beam(2, early_stopping=True))
    patient = sd.generate(tiny, PROMPTS, max_tokens=30, search=sd.Beam(2, early_stopping=True, patience=3.0))
    assert sum(p.stats.expansions for p in patient) > sum(s.stats.expansions for s in short)
    for s, p in zip(short, patient):
        assert p.score >= s.score - 1e-6  # a larger pool can only find a better best


def test_constrained_beam_returns_only_accepting_hypotheses(tiny):
    words = ["apple", "banana", "cherry", "kiwi"]
    out = sd.generate(tiny, "fruit:", max_tokens=20, constraint=sd.choice(words), search=sd.Beam(4, num_return=4))
    assert sorted(h.text for h in out.hypotheses) == sorted(words)
    assert all(h.finish_reason == "stop" for h in out.hypotheses)


def test_constrained_beam_cut_by_length_says_length(tiny):
    out = sd.generate(tiny, "x", max_tokens=3, constraint=sd.regex(r"[a-z]{10}"), search=sd.Beam(2))
    assert out.finish_reason == "length"
    assert len(out.tokens) == 3


def test_best_first_equals_beam_without_length_penalty_with_fewer_expansions(tiny):
    beam = sd.generate(tiny, PROMPTS, max_tokens=20, search=sd.Beam(3, length_penalty=0.0, num_return=2))
    best = sd.generate(tiny, PROMPTS, max_tokens=20, search=sd.BestFirstBeam(3, num_return=2))
    for b, f in zip(beam, best):
        assert [h.tokens for h in f.hypotheses] == [h.tokens for h in b.hypotheses]
        assert [h.score for h in f.hypotheses] == pytest.approx([h.score for h in b.hypotheses], abs=1e-4)
        assert f.stats.expansions <= b.stats.expansions
    assert len(tiny.cache) == 0


def test_trace_json_holds_the_tree_and_the_winning_path(tiny):
    out = sd.generate(tiny, "hello", max_tokens=6, search=sd.Beam(2))
    data = json.loads(out.trace.to_json())
    assert data["algorithm"] == "Beam"
    ids = {n["id"]: n for n in data["nodes"]}
    path = data["best"]
    assert ids[path[0]]["parent"] is None
    assert all(ids[child]["parent"] == parent for parent, child in zip(path, path[1:]))
    winner_tokens = [t for i in path[1:] for t in ids[i]["tokens"]]
    assert winner_tokens == out.tokens
    assert "<svg" in out.trace.to_html()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: sd.Beam(0), "width must be >= 1"),
        (lambda: sd.Beam(2, num_return=3), "num_return"),
        (lambda: sd.Beam(2, early_stopping="sometimes"), "early_stopping"),
        (lambda: sd.Beam(2, patience=0), "patience"),
        (lambda: sd.Beam(2, length_penalty=float("nan")), "length_penalty"),
        (lambda: sd.Beam(2, length_penalty=1000), "length_penalty must be within"),
        (lambda: sd.DiverseBeam(4, 2, length_penalty=-100), "length_penalty must be within"),
        (lambda: sd.BestFirstBeam(0), "width must be >= 1"),
    ],
)
def test_bad_search_parameters_fail_early(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_an_integer_length_penalty_scores_like_its_float(tiny):
    # length ** 32 with ints is an exact, huge int that torch cannot divide by (the server's fuzzer found it).
    as_int = sd.generate(tiny, "hello", max_tokens=12, search=sd.Beam(2, length_penalty=32))
    as_float = sd.generate(tiny, "hello", max_tokens=12, search=sd.Beam(2, length_penalty=32.0))
    assert as_int.tokens == as_float.tokens and as_int.score == as_float.score


def test_width_must_be_an_int():
    with pytest.raises(TypeError, match="width must be an int"):
        sd.Beam(2.5)


def test_reward_on_a_search_without_one_is_an_error(tiny):
    with pytest.raises(TypeError, match="does not use a reward"):
        sd.generate(tiny, "hi", search=sd.Beam(2), reward=lambda p, o: 0.0)


def test_diverse_beam_groups_avoid_earlier_groups_tokens(tiny):
    out = sd.generate(tiny, "hello", max_tokens=4, search=sd.DiverseBeam(3, 3, diversity_penalty=1e4, num_return=3))
    first_tokens = [h.tokens[0] for h in out.hypotheses]
    assert len(set(first_tokens)) == 3  # a huge penalty makes every group start differently


def test_diverse_beam_without_penalty_repeats_one_beam_search_per_group(tiny):
    out = sd.generate(tiny, "hello", max_tokens=6, search=sd.DiverseBeam(4, 2, diversity_penalty=0.0, num_return=4))
    tokens = sorted(tuple(h.tokens) for h in out.hypotheses)
    assert tokens[0::2] == tokens[1::2]  # both groups found the same two hypotheses


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: sd.DiverseBeam(4, 3), "groups \\(3\\) must divide width \\(4\\)"),
        (lambda: sd.DiverseBeam(4, 2, diversity_penalty=-1), "diversity_penalty"),
        (lambda: sd.DiverseBeam(0, 1), "width must be >= 1"),
    ],
)
def test_bad_diverse_beam_parameters_fail_early(make, message):
    with pytest.raises(ValueError, match=message):
        make()
