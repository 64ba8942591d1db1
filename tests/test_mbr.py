"""Minimum Bayes risk decoding (search/mbr.py): the utilities against hand-computed values, the
ranking against a brute-force expected-utility computation over the same candidates, the pairwise
matrix computed once, and bad input refused before generation."""

from __future__ import annotations

import math
import re

import pytest

import searchdec as sd
from searchdec.search.mbr import chrf, expected_utilities, last_number, make_utility, token_f1


def test_chrf_equals_hand_computed_values():
    # "ab" vs "abc": unigrams P=1 R=2/3, bigrams P=1 R=1/2, trigrams absent from the hypothesis:
    # P=1, R=7/12, F2 = 5PR / (4P + R) = 7/11.
    assert chrf("ab", "abc") == pytest.approx(7 / 11)
    # Swapped: P=7/12, R=1, F2 = 35/40 (recall weighs more than precision).
    assert chrf("abc", "ab") == pytest.approx(0.875)
    assert chrf("the cat", "the cat") == 1.0
    assert chrf("xyz", "abc") == 0.0
    assert chrf("a b  c", "abc") == 1.0  # whitespace is removed
    assert chrf("", "abc") == 0.0


def test_chrf_uses_orders_up_to_six():
    # Equal character multisets but different order: unigrams match fully, longer orders do not.
    six = "abcdefg"
    assert chrf(six, six[::-1]) < 1.0
    # Seven characters, one changed at the end: order-n precision is (7-n)/(8-n) for n = 1..6 (the
    # change breaks one n-gram of each order), averaged over the six orders.
    p = sum((7 - n) / (8 - n) for n in range(1, 7)) / 6
    assert chrf("abcdefg", "abcdefx") == pytest.approx(p)


def test_token_f1_and_last_number():
    assert token_f1("The cat sat", "the cat") == pytest.approx(0.8)
    assert token_f1("", "") == 1.0 and token_f1("a", "") == 0.0
    assert last_number("so 12 apples cost 1,000.50 dollars.") == "1000.5"
    assert last_number("answer: 3.0") == "3" and last_number("-7") == "-7"
    assert last_number("no digits") is None


def test_exact_match_expected_utilities_are_vote_shares():
    texts = ["so the answer is 4", "it is 4.", "5", "no idea"]
    u, pairs = make_utility("exact", None).matrix(texts)
    assert pairs == 6  # symmetric: each unordered pair once
    assert expected_utilities(u, [1.0] * 4) == pytest.approx([1 / 3, 1 / 3, 0.0, 0.0])
    regex, _ = make_utility("exact", r"answer is (\d+)").matrix(texts)
    assert regex[0][1] == 0.0  # "it is 4." has no match of the regex


def _brute_force(texts, utility, weights):
    n = len(texts)
    return [
        sum(weights[j] * utility(texts[i], texts[j]) for j in range(n) if j != i)
        / sum(weights[j] for j in range(n) if j != i)
        for i in range(n)
    ]


@pytest.mark.parametrize("utility", ["chrf", "f1", "callable"])
@pytest.mark.parametrize("weights", ["uniform", "model"])
def test_mbr_picks_what_brute_force_expected_utility_picks(tiny, utility, weights):
    def overlap(a: str, b: str) -> float:
        return len(set(a) & set(b)) / max(len(set(a)), 1)

    reference = {"chrf": chrf, "f1": token_f1, "callable": overlap}[utility]
    given = overlap if utility == "callable" else utility
    prompts = ["hello", "abc def"]
    candidates = sd.generate(tiny, prompts, max_tokens=8, search=sd.Sample(n=6, seed=11))
    out = sd.generate(
        tiny,
        prompts,
        max_tokens=8,
        search=sd.MBR(6, utility=given, candidates=sd.Sample(n=6, seed=11), weights=weights),
    )
    for sampled, ranked in zip(candidates, out):
        texts = [h.text for h in sampled.hypotheses]
        if weights == "uniform":
            w = [1.0] * len(texts)
        else:
            w = [
                math.exp(h.logprob) / sum(t == h.tokens for t in (g.tokens for g in sampled.hypotheses))
                for h in sampled.hypotheses
            ]
        expected = _brute_force(texts, reference, w)
        order = sorted(
            range(len(texts)),
            key=lambda i: (
                sampled.hypotheses[i].finish_reason != "stop",
                -expected[i],
                -sampled.hypotheses[i].logprob,
                i,
            ),
        )
        assert [h.tokens for h in ranked.hypotheses] == [sampled.hypotheses[i].tokens for i in order]
        assert [h.score for h in ranked.hypotheses] == pytest.approx([expected[i] for i in order], rel=1e-9)
        assert ranked.trace is not None and ranked.stats.generated_tokens > 0


def test_a_symmetric_utility_scores_each_pair_once_and_a_callable_each_ordered_pair(tiny):
    calls = []

    def counting(a: str, b: str) -> float:
        calls.append((a, b))
        return float(a == b)

    f1 = sd.generate(tiny, "hello", max_tokens=6, search=sd.MBR(5, utility="f1"))
    assert f1.stats.utility_pairs == 10
    custom = sd.generate(tiny, "hello", max_tokens=6, search=sd.MBR(5, utility=counting))
    assert custom.stats.utility_pairs == 20 and len(calls) == 20


def test_default_candidates_are_seeded_samples(tiny):
    first = sd.generate(tiny, "hello", max_tokens=6, search=sd.MBR(4, utility="chrf"))
    again = sd.generate(tiny, "hello", max_tokens=6, search=sd.MBR(4, utility="chrf"))
    assert [h.tokens for h in first.hypotheses] == [h.tokens for h in again.hypotheses]
    samples = sd.generate(tiny, "hello", max_tokens=6, search=sd.Sample(n=4, seed=0))
    assert sorted(h.tokens for h in first.hypotheses) == sorted(h.tokens for h in samples.hypotheses)


def test_beam_candidates_with_model_weights(tiny):
    out = sd.generate(
        tiny,
        "hello",
        max_tokens=6,
        search=sd.MBR(3, utility="chrf", candidates=sd.Beam(3, num_return=3), weights="model"),
    )
    beam = sd.generate(tiny, "hello", max_tokens=6, search=sd.Beam(3, num_return=3))
    assert sorted(h.tokens for h in out.hypotheses) == sorted(h.tokens for h in beam.hypotheses)


def test_finished_outputs_follow_a_constraint(tiny):
    out = sd.generate(tiny, "hello", max_tokens=6, constraint=sd.regex(r"[0-9]{1,3}"), search=sd.MBR(6))
    assert all(h.text.isdigit() for h in out.hypotheses if h.finish_reason == "stop")


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"n": 1}, ValueError, "n must be >= 2"),
        ({"utility": "bleu"}, ValueError, "utility must be one of"),
        ({"weights": "prob"}, ValueError, "weights must be"),
        ({"utility": "chrf", "answer": r"\d+"}, ValueError, 'needs utility="exact"'),
        ({"answer": "("}, ValueError, "answer is not a valid regex"),
        ({"answer": 3}, TypeError, "answer must be a regex or a callable"),
        ({"n": 4, "candidates": sd.Sample(n=3)}, ValueError, "candidates returns 3 hypotheses but MBR has n=4"),
        ({"candidates": "beam"}, TypeError, "candidates must be a search"),
    ],
)
def test_bad_input_is_a_specific_early_error(kwargs, error, words):
    with pytest.raises(error, match=re.escape(words)):
        sd.MBR(**kwargs)


def test_a_utility_returning_a_non_number_names_itself(tiny):
    def bad(a: str, b: str):
        return "high"

    with pytest.raises(TypeError, match="utility 'bad' must return a number"):
        sd.generate(tiny, "hello", max_tokens=4, search=sd.MBR(3, utility=bad))


def test_the_server_builds_mbr_from_its_search_field():
    pytest.importorskip("fastapi")
    from searchdec.server.errors import APIError
    from searchdec.server.searches import SearchContext, build

    spec = build({"algorithm": "mbr", "n": 6, "utility": "chrf", "temperature": 0.7, "seed": 3}, SearchContext(n=2))
    assert spec == sd.MBR(6, utility="chrf", candidates=sd.Sample(temperature=0.7, n=6, seed=3))
    assert build({"algorithm": "mbr"}, SearchContext(n=1)).candidates == sd.Sample(n=8, seed=0)
    for bad, param in [
        ({"utility": "bleu"}, "search"),
        ({"answer": "("}, "search"),
        ({"answer": 3}, "search"),
        ({"n": 1}, "search"),
        ({"width": 3}, "search.width"),
    ]:
        with pytest.raises(APIError) as caught:
            build({"algorithm": "mbr", **bad}, SearchContext(n=1))
        assert caught.value.status == 400 and caught.value.param == param, bad
