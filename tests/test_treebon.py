"""TreeBoN (search/treebon.py): best-of-N grown in segments; each round the best n // branching
unfinished candidates by reward survive and sample `branching` children, the rest are rejected;
rounds=0 is plain best-of-N; bad parameters are early errors, also over the server's search field."""

from __future__ import annotations

import json
import re

import pytest

import searchdec as sd
from searchdec.server import searches


def vowels(prompt: str, output: str) -> float:
    return float(sum(c in "aeiou" for c in output))


def rounds_of(trace) -> dict[int, list[dict]]:
    by_round: dict[int, list[dict]] = {}
    for node in trace.to_dict()["nodes"]:
        if "round" in node:
            by_round.setdefault(node["round"], []).append(node)
    return by_round


def test_each_round_keeps_the_best_n_over_branching_and_rejects_the_rest(tiny):
    search = sd.TreeBoN(n=6, branching=3, segment=2, rounds=2, reward=vowels, sample=sd.Sample(seed=0))
    out = sd.generate(tiny, "hello", max_tokens=12, search=search)
    by_round = rounds_of(out.trace)
    assert sorted(by_round) == [0, 1, 2]
    for r in (0, 1):
        kept = [n for n in by_round[r] if n["status"] == "kept"]
        rejected = [n for n in by_round[r] if n["status"] == "rejected"]
        assert len(kept) == 2 == search.survivors
        assert min(n["score"] for n in kept) >= max((n["score"] for n in rejected), default=float("-inf"))
        assert len(by_round[r + 1]) == 2 * 3  # each survivor samples `branching` children
    assert all(n["status"] == "finished" for n in by_round[2])


def test_results_are_completed_candidates_ranked_by_reward(tiny):
    search = sd.TreeBoN(n=4, branching=2, segment=3, rounds=1, reward=vowels, sample=sd.Sample(seed=1))
    out = sd.generate(tiny, "hello", max_tokens=10, search=search)
    assert 1 <= len(out.hypotheses) <= 4
    for h in out.hypotheses:
        assert h.score == vowels("", h.text)
    finished = [h.score for h in out.hypotheses if h.finish_reason == "stop"]
    assert finished == sorted(finished, reverse=True)
    assert out.stats.reward_calls == 4 + 4  # round 0's n candidates, then the survivors' children


def test_zero_rounds_is_best_of_n(tiny):
    search = sd.TreeBoN(n=4, branching=2, rounds=0, reward=vowels, sample=sd.Sample(seed=2))
    out = sd.generate(tiny, "hello", max_tokens=8, search=search)
    assert len(out.hypotheses) == 4 and out.stats.reward_calls == 4
    assert len(rounds_of(out.trace)) == 1  # one round, to the end


def test_a_delimiter_ends_a_segment_early(tiny):
    def segments(step):
        search = sd.TreeBoN(n=2, branching=1, segment=6, rounds=1, reward=vowels, step=step, sample=sd.Sample(seed=3))
        out = sd.generate(tiny, "hello", max_tokens=40, search=search)
        return [len(node["tokens"]) for node in rounds_of(out.trace)[0]]

    assert segments(None) == [6, 6]  # the token count alone
    assert max(segments(re.compile(r"\S"))) < 6  # any visible character ends a segment


def test_segments_follow_a_grammar(tiny):
    spec = sd.json_schema({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]})
    search = sd.TreeBoN(n=4, branching=2, segment=4, rounds=2, reward=vowels, sample=sd.Sample(seed=4))
    out = sd.generate(tiny, "x", max_tokens=40, constraint=spec, search=search)
    for h in out.hypotheses:
        assert h.finish_reason == "stop"  # steered to close within max_tokens
        assert set(json.loads(h.text)) == {"a"}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n": 0}, ValueError, "n must be >= 1"),
        ({"branching": 9, "n": 8}, ValueError, r"branching \(9\) must be <= n \(8\)"),
        ({"segment": 0}, ValueError, "segment must be >= 1"),
        ({"rounds": -1}, ValueError, "rounds must be >= 0"),
        ({"rounds": 1.5}, TypeError, "rounds must be an int"),
        ({"step": ""}, ValueError, "step must be"),
        ({"sample": sd.Greedy()}, TypeError, "sample must be sd.Sample"),
    ],
)
def test_bad_parameters_are_early_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        sd.TreeBoN(**{"reward": vowels, **kwargs})


def test_a_missing_reward_is_an_error_before_generation(tiny):
    with pytest.raises(ValueError, match="TreeBoN needs reward="):
        sd.generate(tiny, "hello", max_tokens=4, search=sd.TreeBoN())


def test_the_server_builds_treebon_and_names_bad_fields(tiny):
    spec = searches.build(
        {"algorithm": "treebon", "n": 4, "branching": 2, "segment": 8, "rounds": 2, "reward": "grounding", "seed": 1},
        searches.SearchContext(1, tiny),
    )
    assert isinstance(spec, sd.TreeBoN) and (spec.n, spec.branching, spec.segment, spec.rounds) == (4, 2, 8, 2)
    from searchdec.server.errors import APIError

    with pytest.raises(APIError, match="branching") as caught:
        searches.build({"algorithm": "treebon", "n": 4, "branching": 5}, searches.SearchContext(1, tiny))
    assert caught.value.status == 400
    with pytest.raises(APIError, match="reward") as caught:
        searches.build({"algorithm": "treebon", "reward": "none"}, searches.SearchContext(1, tiny))
    with pytest.raises(APIError) as caught:
        searches.build({"algorithm": "treebon", "width": 3}, searches.SearchContext(1, tiny))
    assert caught.value.param == "search.width"


def test_treebon_ranks_tool_calls_by_grounding_on_partial_calls(tiny):
    tool = {"name": "area", "parameters": {"type": "object", "properties": {"base": {"type": "integer"}}}}
    spec = sd.tool_calls([tool], tool_choice="required", format="json")
    reward = sd.rewards.Grounding([tool])
    search = sd.TreeBoN(n=4, branching=2, segment=6, rounds=2, reward=reward, sample=sd.Sample(seed=5))
    out = sd.generate(tiny, "The base is 10.", constraint=spec, max_tokens=40, search=search)
    kept = [n for n in out.trace.to_dict()["nodes"] if n["status"] == "kept"]
    assert kept and all(0.0 <= n["score"] <= 1.0 for n in kept)
    for h in out.hypotheses:
        if h.finish_reason == "stop":
            assert spec.parse(h.text)[0]["name"] == "area"
