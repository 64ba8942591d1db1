"""Best-of-N, weighted best-of-N and self-consistency, with the semantics of search-and-learn
(Beeching et al., "Scaling test-time compute with open models", 2024; Snell et al., arXiv 2408.03314)
and Wang et al., "Self-Consistency Improves Chain of Thought Reasoning" (arXiv 2203.11171).

N completions are sampled independently (ancestral sampling with `sample`, one batched decode; each
prompt is forwarded once and its KV entry shared by all N), each is scored by
`reward(prompt_text, output_text)`, and `answer(output_text)` extracts what is compared. Ranking:
- "max": by reward (best-of-N);
- "weighted": by the sum of rewards of all completions with the same answer, then by reward;
- "majority": by how many completions share the answer (self-consistency; `reward`, if given,
  breaks ties, else the earlier sample wins).
Under a constraint every completion follows it; one cut by `max_tokens` ranks after all that
finished. Every completion is returned (`.hypotheses`, N of them), best first.

Sample j of prompt i is drawn with its own seed `task_seed(sample.seed, i, j)` (the same on every
executor), the N samples are cut into tasks of `executor.batch_rows`, and the rewards of a prompt's N
outputs are scored in one `score_batch` call (with each output's token log-probabilities) where the
executor runs rewards.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from searchdec.rewards.base import Reward
from searchdec.search.base import Search, SearchResult, SearchStats, check_positive_int, text_of
from searchdec.search.sampling import Sample
from searchdec.search.trace import Trace
from searchdec.search.tree import Node
from searchdec.search.work import Job, Work

AGGREGATES = ("max", "weighted", "majority")


@dataclass(frozen=True)
class BestOfN(Search):
    """Sample `n` completions, score them, pick by `aggregate`."""

    distributable = True

    n: int = 8
    reward: Reward | Callable[[str, str], float] | None = None
    aggregate: str = "max"
    answer: Callable[[str], object] | None = None
    sample: Sample = field(default_factory=lambda: Sample(temperature=0.8))

    def __post_init__(self) -> None:
        check_positive_int("n", self.n)
        if self.aggregate not in AGGREGATES:
            raise ValueError(f'aggregate must be "max", "weighted" or "majority", got {self.aggregate!r}')
        if self.answer is not None and not callable(self.answer):
            raise TypeError(f"answer must be callable (text -> answer), got {type(self.answer).__name__}")
        if not isinstance(self.sample, Sample):
            raise TypeError(f"sample must be sd.Sample(...), got {type(self.sample).__name__}")
        self._wrap_reward()

    def check(self) -> None:
        if self.aggregate != "majority":
            self._require_reward()

    def run(self, work: Work, roots: list[Node]) -> list[SearchResult]:
        self.check()
        base = work.base_seed(self.sample)
        stats = [SearchStats() for _ in roots]
        jobs = [
            Job(root, root, [work.seed(base, i, j) for j in range(self.n)], stats=stats[i])
            for i, root in enumerate(roots)
        ]
        results = work.run(jobs, self.sample, owners=range(len(roots)))
        return [self._rank(work, root, result.rows, s) for root, result, s in zip(roots, results, stats)]

    def _rank(self, work: Work, root: Node, leaves: list[Node], stats: SearchStats) -> SearchResult:
        model = work.model
        prompt = model.decode(list(root.new_tokens))
        texts = [text_of(model, leaf) for leaf in leaves]
        if self.reward is not None:
            logprobs = [leaf.generated()[1] for leaf in leaves]
            rewards = work.score(self.reward, prompt, texts, logprobs)
            stats.reward_calls = len(texts)
        else:
            rewards = [0.0] * len(texts)
        answers = [self.answer(t) if self.answer else t.strip() for t in texts]
        weight: dict = defaultdict(float)
        count: dict = defaultdict(int)
        for a, r, leaf in zip(answers, rewards, leaves):
            if leaf.finish_reason == "stop":
                weight[a] += r
                count[a] += 1
        keys = []
        for i, (a, r, leaf) in enumerate(zip(answers, rewards, leaves)):
            finished = leaf.finish_reason == "stop"
            group = weight[a] if self.aggregate == "weighted" else count[a] if self.aggregate == "majority" else r
            keys.append(((finished, group, r, -i), i))
        order = [i for _, i in sorted(keys, reverse=True)]
        score = {"max": rewards, "weighted": [weight[a] for a in answers], "majority": [count[a] for a in answers]}
        scores = [float(score[self.aggregate][i]) for i in order]
        trace = Trace("BestOfN", {"n": self.n, "aggregate": self.aggregate}, model.decode)
        trace.add(root, status="root")
        for i, leaf in enumerate(leaves):
            trace.add(leaf, score=rewards[i], status="finished", answer=str(answers[i])[:80])
        ranked = [leaves[i] for i in order]
        trace.set_best(ranked[0])
        stats.generated_tokens = sum(leaf.depth for leaf in leaves)
        trace.stats = stats.as_dict()
        return SearchResult(ranked, scores, trace, stats)
