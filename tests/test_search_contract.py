"""The search contract (search/base.py), checked for every search: `generate` runs it through its one
`run`, it returns its `n` hypotheses ranked, finished outputs satisfy the constraint, it reports stats
(and, for searches that grow a tree, a trace), it leaves no cache entry behind, and a seed gives the
same result twice — and, for searches that run as tasks, the same with an in-process executor.
A new search is added to SEARCHES below, or the registration test fails."""

import re

import pytest
from tiny import tiny_model

import searchdec as sd
from searchdec.search.base import Search


def length(prompt: str, output: str) -> float:
    return float(len(output) % 5)


def step_scores(prompt: str, steps: list[str]) -> list[float]:
    return [float(len(s) % 3) for s in steps]


SEARCHES = {
    "Greedy": lambda: sd.Greedy(),
    "Sample": lambda: sd.Sample(n=3, seed=1),
    "Beam": lambda: sd.Beam(3),
    "LexicalBeam": lambda: sd.LexicalBeam(3, lookahead=2),
    "DiverseBeam": lambda: sd.DiverseBeam(4, 2, 0.5),
    "BestFirstBeam": lambda: sd.BestFirstBeam(3),
    "AStar": lambda: sd.AStar(length, budget=40, step="token", expansions=2),
    "MCTS": lambda: sd.MCTS(6, reward=length, max_children=2),
    "BestOfN": lambda: sd.BestOfN(3, length, sample=sd.Sample(seed=2)),
    "StepBeam": lambda: sd.StepBeam(2, 2, step_scores, step=re.compile("[aeiou]"), sample=sd.Sample(seed=3)),
    "DVTS": lambda: sd.DVTS(2, 2, step_scores, step=re.compile("[aeiou]"), sample=sd.Sample(seed=4)),
    "FirstFinish": lambda: sd.FirstFinish(4, sample=sd.Sample(seed=5), num_return=2),
    "MBR": lambda: sd.MBR(3, utility="chrf", candidates=sd.Sample(n=3, seed=6)),
    "PrioritySampling": lambda: sd.PrioritySampling(3),
    "ArithmeticSampling": lambda: sd.ArithmeticSampling(3, sample=sd.Sample(seed=7)),
    "Speculative": lambda: sd.Speculative(k=3),
    "Lookahead": lambda: sd.Lookahead(window=3, ngram=3, candidates=2, sample=sd.Sample(seed=8)),
    "Contrastive": lambda: sd.Contrastive(amateur=1, alpha=0.1, search=sd.Beam(2)),
    "SMC": lambda: sd.SMC(4, seed=8),
    "TreeBoN": lambda: sd.TreeBoN(4, 2, segment=3, rounds=1, reward=length, sample=sd.Sample(seed=8)),
    "CARDS": lambda: sd.CARDS(
        reward=length, reward_threshold=3.0, entropy=2.0, min_segment=2, retries=2, sample=sd.Sample(seed=9)
    ),
    "PhiDecoding": lambda: sd.PhiDecoding(2, 2, max_steps=2, step="a", max_step_tokens=3, sample=sd.Sample(seed=10)),
    "RewardGuidedSpeculative": lambda: sd.RewardGuidedSpeculative(
        draft=tiny_model(seed=4), reward=length, threshold=2.0, step="a", max_step_tokens=4
    ),
}
TREES = {
    *("Beam", "LexicalBeam", "DiverseBeam", "BestFirstBeam", "AStar", "MCTS", "BestOfN", "StepBeam", "DVTS"),
    *("FirstFinish", "MBR", "PrioritySampling", "TreeBoN", "CARDS", "PhiDecoding"),
}
FREE_TEXT_ONLY = {"RewardGuidedSpeculative"}  # its steps are text, re-read by each model
# searches that need the torch runtime's modules, and the error they give on another runtime
TORCH_ONLY = {"Contrastive": "early layers"}  # its amateur here is the expert's first layer (EarlyExit)


def _runs_on(runtime, name: str) -> bool:
    """False, after checking the error names the cause, for a search this runtime cannot run."""
    if name in TORCH_ONLY and not hasattr(runtime, "hf"):
        with pytest.raises(ValueError, match=TORCH_ONLY[name]):
            sd.generate(runtime, "hello", max_tokens=2, search=SEARCHES[name]())
        return False
    return True


def _all_searches(cls=Search) -> set[str]:
    found = set()
    for sub in cls.__subclasses__():
        if sub.__module__.startswith("searchdec.search."):
            found.add(sub.__name__)
        found |= _all_searches(sub)
    return found


def _outcome(out) -> list:
    return [(h.tokens, h.token_logprobs, h.finish_reason, h.score) for h in out.hypotheses]


def test_every_search_is_covered_by_the_contract_suite():
    assert _all_searches() == set(SEARCHES)


@pytest.mark.parametrize("name", list(SEARCHES))
def test_a_search_returns_its_n_hypotheses_ranked_with_stats_and_leaves_no_cache(runtime, name):
    if not _runs_on(runtime, name):
        return
    search = SEARCHES[name]()
    out = sd.generate(runtime, ["hello", "abc def"], max_tokens=8, search=search)
    for generation in out:
        assert 1 <= len(generation.hypotheses) <= search.n
        assert generation.text == generation.hypotheses[0].text
        assert generation.stats is not None and generation.stats.generated_tokens >= 0
        if name in TREES:
            assert generation.trace is not None and generation.trace.to_dict()["nodes"]
        scores = [h.score for h in generation.hypotheses]
        if name in TREES - {"FirstFinish"} and None not in scores and name != "BestOfN":
            finished = [h.score for h in generation.hypotheses if h.finish_reason == "stop"]
            assert finished == sorted(finished, reverse=True)
    assert len(runtime.cache) == 0 and getattr(runtime.cache, "bytes", 0) == 0


@pytest.mark.parametrize("name", sorted(set(SEARCHES) - FREE_TEXT_ONLY))
def test_finished_outputs_satisfy_the_constraint(runtime, name):
    if not _runs_on(runtime, name):
        return
    word = sd.regex(r"[a-z]{1,6}")
    out = sd.generate(runtime, "hello", max_tokens=10, constraint=word, search=SEARCHES[name]())
    for h in out.hypotheses:
        if h.finish_reason == "stop":
            assert re.fullmatch(r"[a-z]{1,6}", h.text), h.text
    assert len(runtime.cache) == 0


@pytest.mark.parametrize("name", list(SEARCHES))
def test_a_seed_gives_the_same_result_twice_and_on_an_in_process_executor(runtime, name):
    if not _runs_on(runtime, name):
        return
    first = sd.generate(runtime, "hello", max_tokens=8, search=SEARCHES[name]())
    again = sd.generate(runtime, "hello", max_tokens=8, search=SEARCHES[name]())
    assert _outcome(first) == _outcome(again)
    search = SEARCHES[name]()
    if search.distributable:
        with sd.InProcessExecutor() as executor:
            tasks = sd.generate(runtime, "hello", max_tokens=8, search=search, executor=executor)
        assert _outcome(tasks) == _outcome(first)


# --- a new search is one module over the contract ---------------------------------------------------


from dataclasses import dataclass  # noqa: E402

from searchdec.search.base import SearchResult, SearchStats  # noqa: E402
from searchdec.search.decode import complete  # noqa: E402


@dataclass(frozen=True)
class ShortestOfN(Search):
    """A search written in a few lines over the contract: n seeded samples (as tasks), shortest first."""

    n: int = 3
    sample: sd.Sample = sd.Sample(seed=9)
    distributable = True

    def run(self, work, roots):
        results = []
        for leaves in complete(work, roots, self.sample, self.n):
            ranked = sorted(leaves, key=lambda leaf: (leaf.finish_reason != "stop", leaf.depth))
            results.append(SearchResult(ranked, [-float(leaf.depth) for leaf in ranked], None, SearchStats()))
        return results


def test_a_search_written_over_the_contract_runs_everywhere_generate_does(tiny):
    out = sd.generate(tiny, "hello", max_tokens=8, search=ShortestOfN(), constraint=sd.regex("[a-z]{1,5}"))
    assert [h.score for h in out.hypotheses] == sorted((h.score for h in out.hypotheses), reverse=True)
    with sd.InProcessExecutor() as executor:
        again = sd.generate(
            tiny, "hello", max_tokens=8, search=ShortestOfN(), constraint=sd.regex("[a-z]{1,5}"), executor=executor
        )
    assert _outcome(again) == _outcome(out)
    assert len(tiny.cache) == 0
