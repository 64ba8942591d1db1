"""Reward-driven searches on the tiny model: best-of-N and its aggregates, step beam and DVTS, MCTS and
A*; their prefix reuse (every expansion forwards one new token) and their bad-input errors."""

import re
from collections import Counter

import pytest

import searchdec as sd

PROMPTS = ["hello", "abc"]


def vowels(prompt, output):
    return float(sum(ch in "aeiou" for ch in output))


def first_char(text):
    return text[:1]


def test_best_of_n_max_ranks_all_n_samples_by_reward(tiny):
    out = sd.generate(tiny, "hello", max_tokens=10, search=sd.BestOfN(6, vowels, sample=sd.Sample(seed=1)))
    assert len(out.hypotheses) == 6
    rewards = [vowels("", h.text) for h in out.hypotheses if h.finish_reason == "stop"]
    assert rewards == sorted(rewards, reverse=True)
    assert out.score == max(vowels("", h.text) for h in out.hypotheses if h.finish_reason == out.finish_reason)
    assert out.stats.reward_calls == 6


def test_best_of_n_majority_picks_the_most_common_answer(tiny):
    search = sd.BestOfN(8, aggregate="majority", answer=first_char, sample=sd.Sample(seed=2))
    out = sd.generate(tiny, "hello", max_tokens=6, search=search)
    finished = [h for h in out.hypotheses if h.finish_reason == "stop"]
    if finished:
        counts = Counter(first_char(h.text) for h in finished)
        assert counts[first_char(out.text)] == max(counts.values())
        assert out.score == max(counts.values())


def test_best_of_n_weighted_sums_rewards_per_answer(tiny):
    search = sd.BestOfN(8, vowels, aggregate="weighted", answer=first_char, sample=sd.Sample(seed=3))
    out = sd.generate(tiny, "abc", max_tokens=6, search=search)
    finished = [h for h in out.hypotheses if h.finish_reason == "stop"]
    if finished:
        totals = Counter()
        for h in finished:
            totals[first_char(h.text)] += vowels("", h.text)
        assert totals[first_char(out.text)] == max(totals.values())


def test_best_of_n_with_the_same_seed_reproduces(tiny):
    a = sd.generate(tiny, PROMPTS, max_tokens=8, search=sd.BestOfN(4, vowels, sample=sd.Sample(seed=5)))
    b = sd.generate(tiny, PROMPTS, max_tokens=8, search=sd.BestOfN(4, vowels, sample=sd.Sample(seed=5)))
    assert [x.tokens for x in a] == [y.tokens for y in b]


def test_step_beam_passes_steps_to_the_prm_and_ranks_by_its_aggregate(tiny):
    seen = []

    def prm(prompt, steps):
        seen.append(list(steps))
        return [float(len(s)) for s in steps]

    search = sd.StepBeam(2, 2, prm, aggregate="min", step=re.compile("[aeiou]"), sample=sd.Sample(seed=0))
    out = sd.generate(tiny, "hello", max_tokens=12, search=search)
    assert seen and all(re.search("[aeiou]", s) for steps in seen for s in steps[:-1])
    assert len(out.hypotheses) == 4
    assert [h.score for h in out.hypotheses if h.finish_reason == "stop"] == sorted(
        (h.score for h in out.hypotheses if h.finish_reason == "stop"), reverse=True
    )


def test_dvts_runs_independent_subtrees(tiny):
    out = sd.generate(tiny, "hello", max_tokens=10, search=sd.DVTS(3, 2, lambda p, s: [1.0] * len(s), step=" "))
    assert out.trace.algorithm == "DVTS"
    assert len(out.hypotheses) == 6


def test_mcts_finds_an_output_the_reward_prefers(tiny):
    greedy = sd.generate(tiny, "hello", max_tokens=6)
    search = sd.MCTS(24, c_puct=1.0, reward=vowels, max_children=4)
    out = sd.generate(tiny, "hello", max_tokens=6, search=search)
    assert out.score >= vowels("", greedy.text)  # greedy is the first rollout, so MCTS can only improve on it
    assert out.score == vowels("", out.text)


def test_mcts_step_level_uses_progressive_widening(tiny):
    search = sd.MCTS(12, step=" ", reward=vowels, widen=1.0, alpha=0.5)
    out = sd.generate(tiny, "hello", max_tokens=8, search=search)
    nodes = out.trace.to_dict()["nodes"]
    root_children = [n for n in nodes if n["parent"] == 0 and n.get("visits")]
    assert 1 <= len(root_children) <= 4  # ceil(sqrt(12)) children at most


def test_astar_stops_at_its_token_budget(tiny):
    out = sd.generate(tiny, "hello", max_tokens=30, search=sd.AStar(vowels, budget=40, step="token", expansions=3))
    assert out.stats.tokens_forwarded < 40 + 3 * 2 + 5  # one round may finish after the budget is reached


@pytest.mark.parametrize(
    "search",
    [
        sd.BestFirstBeam(3),
        sd.MCTS(10, reward=vowels),
        sd.MCTS(6, step=" ", reward=vowels),
        sd.AStar(vowels, budget=100, step=" ", expansions=2),
        sd.StepBeam(2, 2, lambda p, s: [1.0] * len(s), step=" "),
    ],
    ids=["best-first", "mcts-token", "mcts-step", "astar", "step-beam"],
)
def test_tree_searches_forward_only_new_tokens_and_release_the_cache(tiny, search):
    outs = sd.generate(tiny, PROMPTS, max_tokens=10, search=search)
    for prompt, out in zip(PROMPTS, outs):
        assert out.stats.tokens_forwarded == len(tiny.encode(prompt)) - 1 + out.stats.expansions
    assert len(tiny.cache) == 0 and tiny.cache.bytes == 0


def test_constrained_mcts_returns_accepting_outputs(tiny):
    out = sd.generate(
        tiny, "pick:", max_tokens=12, constraint=sd.choice(["yes", "no", "maybe"]), search=sd.MCTS(8, reward=vowels)
    )
    assert out.text in ("yes", "no", "maybe") and out.finish_reason == "stop"


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: sd.BestOfN(0, vowels), ValueError, "n must be >= 1"),
        (lambda: sd.BestOfN(4, vowels, aggregate="mean"), ValueError, "aggregate"),
        (lambda: sd.StepBeam(2, 2, vowels, aggregate="sum"), ValueError, "aggregate"),
        (lambda: sd.StepBeam(2, 0, vowels), ValueError, "expansions must be >= 1"),
        (lambda: sd.MCTS(0, reward=vowels), ValueError, "simulations must be >= 1"),
        (lambda: sd.MCTS(4, step="", reward=vowels), ValueError, "step must be"),
        (lambda: sd.MCTS(4, rollout="random", reward=vowels), ValueError, "rollout"),
        (lambda: sd.AStar(vowels, budget=0), ValueError, "budget must be >= 1"),
    ],
)
def test_bad_parameters_fail_early(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize(
    "search",
    [sd.BestOfN(4), sd.MCTS(4), sd.AStar(), sd.StepBeam(2, 2)],
    ids=["best-of-n", "mcts", "astar", "step-beam"],
)
def test_missing_reward_fails_before_any_forward(tiny, search):
    calls = tiny.stats.calls
    with pytest.raises(ValueError, match="needs"):
        sd.generate(tiny, "hi", max_tokens=4, search=search)
    assert tiny.stats.calls == calls


def test_generate_reward_fills_in_the_search_reward(tiny):
    out = sd.generate(tiny, "hi", max_tokens=4, search=sd.BestOfN(3), reward=vowels)
    assert out.stats.reward_calls == 3
