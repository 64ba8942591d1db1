"""φ-decoding (search/phi.py): candidate steps valued by rollouts to the end — (softmax of cluster
shares + softmax of likelihood advantages / tau) / 2 —, the next beams drawn from that value; width
pruning drops unlikely steps before foresight, depth pruning stops once the rollouts agree; seeded,
under a grammar; bad parameters are early errors, also over the server's search field."""

from __future__ import annotations

import math
import re

import pytest

import searchdec as sd
from searchdec.server import searches
from searchdec.server.errors import APIError


def records(trace) -> list[dict]:
    return [node for node in trace.to_dict()["nodes"] if "round" in node]


def by_round(trace) -> dict[int, list[dict]]:
    rounds: dict[int, list[dict]] = {}
    for node in records(trace):
        rounds.setdefault(node["round"], []).append(node)
    return rounds


def softmax(values):
    top = max(values)
    weights = [math.exp(v - top) for v in values]
    return [w / sum(weights) for w in weights]


def test_a_candidates_value_mixes_its_clusters_share_and_its_advantage(tiny):
    search = sd.PhiDecoding(beams=2, candidates=3, max_steps=3, step="a", max_step_tokens=4, sigma=None,
                            agreement=None, tau=0.5, sample=sd.Sample(seed=0))  # fmt: skip
    out = sd.generate(tiny, "hello", max_tokens=16, search=search)
    rounds = by_round(out.trace)
    assert rounds
    for nodes in rounds.values():
        assert len(nodes) == 2 * 3 or any(n["finish_reason"] for n in nodes)  # no width pruning
        expected = [
            (a + b) / 2
            for a, b in zip(softmax([n["share"] for n in nodes]), softmax([n["advantage"] / 0.5 for n in nodes]))
        ]
        assert [n["score"] for n in nodes] == pytest.approx(expected)
        assert sum(n["status"] == "selected" for n in nodes) == min(2, len(nodes))


def test_width_pruning_drops_steps_below_the_mean_before_foresight(tiny):
    search = sd.PhiDecoding(beams=1, candidates=6, max_steps=2, step="a", max_step_tokens=4, sigma=0.0,
                            agreement=None, sample=sd.Sample(seed=1))  # fmt: skip
    out = sd.generate(tiny, "hello", max_tokens=12, search=search)
    for nodes in by_round(out.trace).values():
        pruned = [n["step_logprob"] for n in nodes if n["status"] == "pruned"]
        kept = [n["step_logprob"] for n in nodes if n["status"] != "pruned"]
        assert pruned and kept
        mean = sum(pruned + kept) / len(pruned + kept)
        assert max(pruned) <= mean < min(kept)
        assert all("advantage" not in n for n in nodes if n["status"] == "pruned")  # no rollout for them


def test_depth_pruning_stops_once_the_rollouts_agree(tiny):
    def rounds(agreement):
        search = sd.PhiDecoding(beams=2, candidates=2, max_steps=4, min_steps=2, step="a", max_step_tokens=3,
                                agreement=agreement, answer=lambda text: "same", sample=sd.Sample(seed=2))  # fmt: skip
        out = sd.generate(tiny, "hello", max_tokens=30, search=search)
        return len(by_round(out.trace)), out

    stopped, out = rounds(0.5)
    assert stopped == 2  # every rollout in one cluster: the search stops after min_steps rounds
    assert len(out.hypotheses) == 2 and all(h.finish_reason for h in out.hypotheses)
    assert rounds(None)[0] == 4  # no depth pruning: max_steps rounds


def test_outputs_are_the_rollouts_ranked_by_answer_share(tiny):
    search = sd.PhiDecoding(beams=3, candidates=2, max_steps=2, step="a", max_step_tokens=4,
                            answer=lambda text: len(text) % 2, sample=sd.Sample(seed=3))  # fmt: skip
    out = sd.generate(tiny, "hello", max_tokens=10, search=search)
    keys = [len(h.text) % 2 for h in out.hypotheses]
    shares = [keys.count(k) / len(keys) for k in keys]
    assert [h.score for h in out.hypotheses] == pytest.approx(shares) and shares == sorted(shares, reverse=True)


def test_a_seed_gives_the_same_result_and_seeds_differ(tiny):
    def run(seed):
        search = sd.PhiDecoding(beams=2, candidates=2, max_steps=2, step="a", max_step_tokens=3,
                                sample=sd.Sample(seed=seed))  # fmt: skip
        return [h.text for h in sd.generate(tiny, "hello", max_tokens=10, search=search).hypotheses]

    assert run(4) == run(4)
    assert len({tuple(run(seed)) for seed in range(3)}) > 1


def test_steps_and_rollouts_follow_a_grammar(tiny):
    spec = sd.regex(r"[a-z]{2,10}\.")
    search = sd.PhiDecoding(beams=2, candidates=2, max_steps=3, step=re.compile("[aeiou]"), max_step_tokens=3,
                            sample=sd.Sample(seed=5))  # fmt: skip
    out = sd.generate(tiny, "x", max_tokens=16, constraint=spec, search=search)
    for h in out.hypotheses:
        assert h.finish_reason == "stop" and re.fullmatch(r"[a-z]{2,10}\.", h.text)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"beams": 0}, ValueError, "beams must be >= 1"),
        ({"candidates": 2.0}, TypeError, "candidates must be an int"),
        ({"min_steps": 3, "max_steps": 2}, ValueError, r"min_steps \(3\) must be <= max_steps \(2\)"),
        ({"step": "token"}, ValueError, "step must be a delimiter"),
        ({"step": ""}, ValueError, "step must be"),
        ({"max_step_tokens": 0}, ValueError, "max_step_tokens must be >= 1"),
        ({"sigma": -1.0}, ValueError, "sigma must be >= 0"),
        ({"agreement": 1.0}, ValueError, "agreement must be < 1"),
        ({"tau": 0.0}, ValueError, "tau must be > 0"),
        ({"tau": float("inf")}, TypeError, "tau must be a finite number"),
        ({"answer": "("}, ValueError, "answer is not a valid regex"),
        ({"answer": 3}, TypeError, "answer must be a regex or a callable"),
        ({"sample": sd.Greedy()}, TypeError, "sample must be sd.Sample"),
    ],
)
def test_bad_parameters_are_early_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        sd.PhiDecoding(**kwargs)


def test_the_server_builds_phi_and_names_bad_fields(tiny):
    context = searches.SearchContext(2, tiny)
    spec = searches.build({"algorithm": "phi", "beams": 3, "candidates": 2, "agreement": None, "seed": 1}, context)
    assert isinstance(spec, sd.PhiDecoding) and (spec.beams, spec.candidates, spec.agreement) == (3, 2, None)
    assert spec.sample.seed == 1
    for params, field in [
        ({"beams": 1}, "search.beams"),
        ({"candidates": "4"}, "search.candidates"),
        ({"beams": 8, "candidates": 16}, "search.candidates"),
        ({"tau": 0}, "search.tau"),
        ({"step": 3}, "search.step"),
        ({"min_steps": 9}, "search.min_steps"),
        ({"width": 3}, "search.width"),
    ]:
        with pytest.raises(APIError) as caught:
            searches.build({"algorithm": "phi", **params}, context)
        assert caught.value.status == 400 and caught.value.param == field, params


@pytest.mark.integration
def test_phi_decoding_on_the_real_model_returns_completed_rollouts(smollm):
    search = sd.PhiDecoding(beams=2, candidates=2, max_steps=2, step=" ", max_step_tokens=3, sample=sd.Sample(seed=0))
    out = sd.generate(smollm, "Q: What is 17 times 3?\nA:", max_tokens=12, stop=["\n"], search=search)
    assert len(out.hypotheses) == 2 and all(h.finish_reason in ("stop", "length") for h in out.hypotheses)
    assert 1 <= len(by_round(out.trace)) <= 2 and out.stats.reward_calls == 0
