"""CARDS (search/cards.py) and the entropy end of a step (search/rows.py `Rule.step_entropy`): a step
ends before a token whose distribution's entropy reaches the threshold once it holds `min_step_tokens`;
CARDS accepts a segment against a threshold rising with the output, regenerates rejected ones, keeps
the best after `retries`; bad parameters are early errors, also over the server's search field."""

from __future__ import annotations

import re

import pytest
import torch

import searchdec as sd
from searchdec.search.rows import Decoder, Row, Rule, Stopping, decode_rows, entropy, generator
from searchdec.search.tree import Node
from searchdec.server import searches
from searchdec.server.errors import APIError


def vowels(prompt: str, output: str) -> float:
    return float(sum(c in "aeiou" for c in output))


def segments(trace) -> list[dict]:
    return [node for node in trace.to_dict()["nodes"] if "round" in node]


def entropies_along(model, prompt: list[int], tokens: list[int]) -> list[float]:
    """The entropy of the next-token distribution after the prompt and each prefix of `tokens` (one full forward)."""
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits = model.hf(ids).logits[0, len(prompt) - 1 :].float()
    return entropy(logits).tolist()


def test_a_step_ends_before_the_first_uncertain_token_after_the_minimum(tiny):
    prompt = tiny.encode("hello")
    root = Node(tuple(prompt))
    stopping = Stopping(40, frozenset(tiny.eos_token_ids))
    threshold = sorted(entropies_along(tiny, prompt, tiny.encode(" the quick brown fox")))[10]
    rule = Rule(stopping, to_end=False, step=re.compile(r"(?!)"), max_step_tokens=30, step_entropy=threshold,
                min_step_tokens=3)  # fmt: skip
    rows = [Row(root, root, len(prompt), rule, sd.Sample(seed=0), generator(seed, "cpu")) for seed in range(4)]
    ends = decode_rows(Decoder(tiny), rows)
    for end in ends:
        tokens, _ = end.generated()
        values = entropies_along(tiny, prompt, tokens)
        assert end.finish_reason is None and 3 <= len(tokens)
        if len(tokens) < 30:  # ended by entropy: the next token's distribution is uncertain
            assert values[-1] >= threshold
        assert all(v < threshold for v in values[3:-1])  # no earlier spike past the minimum


def test_zero_entropy_cuts_every_segment_at_its_minimum_and_a_huge_one_at_its_maximum(tiny):
    def lengths(threshold):
        search = sd.CARDS(reward=vowels, reward_threshold=0.0, start=0.0, entropy=threshold, min_segment=3,
                          max_segment=5, sample=sd.Sample(seed=1))  # fmt: skip
        out = sd.generate(tiny, "hello", max_tokens=30, search=search)
        return [len(node["tokens"]) for node in segments(out.trace) if node["finish_reason"] is None]

    assert set(lengths(0.0)) == {3}
    assert set(lengths(1e9)) == {5}


def test_hard_acceptance_keeps_the_first_candidate_at_or_above_the_rising_threshold(tiny):
    search = sd.CARDS(reward=vowels, reward_threshold=4.0, alpha=0.5, acceptance="hard", entropy=0.0,
                      min_segment=2, max_segment=4, retries=3, candidates=2, sample=sd.Sample(seed=2))  # fmt: skip
    out = sd.generate(tiny, "hello", max_tokens=24, search=search)
    nodes = segments(out.trace)
    start = 0.5 * vowels("", "") + 0.5 * 4.0
    for node in nodes:
        assert node["threshold"] == pytest.approx(min(4.0, start + node["depth"] * (4.0 - start) / 24))
        if node["status"] == "accepted":
            assert node["score"] >= node["threshold"]
        if node["status"] == "rejected":
            assert node["score"] < node["threshold"]
        if node["status"] == "unused":  # sampled beside an accepted candidate of its round, after it
            assert any(o["status"] in ("accepted", "finished") and o["round"] == node["round"] for o in nodes)
    assert out.hypotheses[0].score == vowels("", out.text)
    assert out.stats.reward_calls == 1 + len(nodes)  # the empty output's, then one per candidate


def test_after_retries_rejections_the_best_candidate_seen_is_kept(tiny):
    search = sd.CARDS(reward=vowels, reward_threshold=100.0, acceptance="hard", entropy=0.0, min_segment=3,
                      max_segment=3, retries=3, sample=sd.Sample(seed=3))  # fmt: skip
    out = sd.generate(tiny, "hello", max_tokens=9, search=search)
    nodes = segments(out.trace)
    assert len(nodes) == 3 * 3  # three segments, each kept after three rejections
    for k in range(3):
        group = nodes[3 * k : 3 * k + 3]
        kept = [n for n in group if n["status"] in ("kept after retries", "finished")]
        assert len(kept) == 1 and kept[0]["score"] == max(n["score"] for n in group)
        assert kept[0] is next(n for n in group if n["score"] == kept[0]["score"])  # the earlier on ties
    assert out.hypotheses[0].tokens and len(out.hypotheses[0].tokens) == 9


def test_soft_acceptance_is_seeded(tiny):
    def run(seed):
        search = sd.CARDS(reward=vowels, reward_threshold=3.0, entropy=0.0, min_segment=2, max_segment=4,
                          sample=sd.Sample(seed=seed))  # fmt: skip
        return sd.generate(tiny, "hello", max_tokens=16, search=search).text

    assert run(4) == run(4)
    assert len({run(seed) for seed in range(4)}) > 1


def test_segments_follow_a_grammar(tiny):
    spec = sd.regex(r"[a-z]{2,12}\.")
    search = sd.CARDS(reward=vowels, reward_threshold=3.0, entropy=0.5, min_segment=2, max_segment=4,
                      sample=sd.Sample(seed=5))  # fmt: skip
    out = sd.generate(tiny, "x", max_tokens=20, constraint=spec, search=search)
    assert out.finish_reason == "stop" and re.fullmatch(r"[a-z]{2,12}\.", out.text)


def test_an_infinite_reward_of_the_empty_output_needs_start(tiny):
    def bad(prompt, output):
        return float("-inf") if not output else 1.0

    with pytest.raises(ValueError, match="give start="):
        sd.generate(tiny, "hello", max_tokens=8, search=sd.CARDS(reward=bad, reward_threshold=1.0))
    out = sd.generate(tiny, "hello", max_tokens=8, search=sd.CARDS(reward=bad, reward_threshold=1.0, start=0.0))
    assert out.hypotheses[0].score == 1.0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"reward_threshold": None}, ValueError, "needs reward_threshold="),
        ({"alpha": 1.5}, ValueError, r"alpha must be within \[0, 1\]"),
        ({"beta": 0}, ValueError, "beta must be > 0"),
        ({"entropy": -1}, ValueError, "entropy must be >= 0"),
        ({"entropy": float("nan")}, TypeError, "entropy must be a finite number"),
        ({"acceptance": "maybe"}, ValueError, "acceptance must be one of"),
        ({"min_segment": 0}, ValueError, "min_segment must be >= 1"),
        ({"min_segment": 9, "max_segment": 8}, ValueError, r"min_segment \(9\) must be <= max_segment \(8\)"),
        ({"retries": 0}, ValueError, "retries must be >= 1"),
        ({"candidates": 1.0}, TypeError, "candidates must be an int"),
        ({"step": ""}, ValueError, "step must be"),
        ({"sample": sd.Greedy()}, TypeError, "sample must be sd.Sample"),
    ],
)
def test_bad_parameters_are_early_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        sd.CARDS(**{"reward": vowels, "reward_threshold": 1.0, **kwargs})


def test_a_missing_reward_is_an_error_before_generation(tiny):
    with pytest.raises(ValueError, match="CARDS needs reward="):
        sd.generate(tiny, "hello", max_tokens=4, search=sd.CARDS(reward_threshold=1.0))


def test_the_server_builds_cards_and_names_bad_fields(tiny):
    context = searches.SearchContext(1, tiny)
    spec = searches.build(
        {"algorithm": "cards", "reward_threshold": 0.5, "entropy": 2.5, "candidates": 2, "seed": 1}, context
    )
    assert isinstance(spec, sd.CARDS) and (spec.reward_threshold, spec.entropy, spec.candidates) == (0.5, 2.5, 2)
    for params, field in [
        ({}, "search.reward_threshold"),
        ({"reward_threshold": 1, "alpha": 2}, "search.alpha"),
        ({"reward_threshold": 1, "min_segment": "4"}, "search.min_segment"),
        ({"reward_threshold": 1, "acceptance": "maybe"}, "search.acceptance"),
        ({"reward_threshold": 1, "reward": "none"}, "search.reward"),
        ({"reward_threshold": 1, "width": 3}, "search.width"),
    ]:
        with pytest.raises(APIError) as caught:
            searches.build({"algorithm": "cards", **params}, context)
        assert caught.value.status == 400 and caught.value.param == field, params
    with pytest.raises(APIError) as caught:
        searches.build({"algorithm": "cards", "reward_threshold": 1}, searches.SearchContext(2, tiny))
    assert caught.value.param == "search" and "n must be 1" in str(caught.value)


@pytest.mark.integration
def test_cards_on_the_real_model_cuts_segments_by_its_entropy_and_keeps_the_grammar(smollm):
    fruits = {"apple", "banana", "cherry", "grape", "mango", "orange", "pear", "peach", "plum", "lemon"}

    def known(prompt: str, output: str) -> float:
        words = [w.strip() for w in output.split(",") if w.strip()]
        return sum(w in fruits for w in words) / 3

    spec = sd.regex(r"[a-z]+, [a-z]+, [a-z]+")
    search = sd.CARDS(reward=known, reward_threshold=1.0, start=0.0, acceptance="hard", entropy=2.0, min_segment=2,
                      max_segment=8, retries=2, candidates=2, sample=sd.Sample(seed=0))  # fmt: skip
    messages = [{"role": "user", "content": "Name three fruits, comma separated, lowercase."}]
    out = sd.generate(smollm, messages, max_tokens=16, constraint=spec, search=search)
    assert out.finish_reason == "stop" and re.fullmatch(r"[a-z]+, [a-z]+, [a-z]+", out.text)
    assert out.hypotheses[0].score == known("", out.text)
    lengths = {len(node["tokens"]) for node in segments(out.trace) if node["finish_reason"] is None}
    assert lengths and all(2 <= n <= 8 for n in lengths)
