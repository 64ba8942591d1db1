"""First-finish search (Agarwal et al., "First Finish Search: Efficient Test-Time Scaling in Large
Language Models", arXiv 2505.18149): launch `n` samples side by side and keep the first to finish.

The n samples of a prompt decode in one batch, one task on any executor (ancestral sampling with
`sample`, sample j of prompt i seeded by `task_seed(seed, i, j)`, the prompt forwarded once).
Decoding of that prompt stops at the step where `num_return` of them have ended
with "stop" (end-of-sequence, a stop string, or, under a constraint, a complete output); the rest
are cut where they are and finish with "length". Shorter reasoning traces are more often correct
for reasoning models (the paper's finding), and cutting the longer ones saves their tokens.
Ranking: finished before cut, then fewer generated tokens (finishing first), then higher
log-probability; a hypothesis's score is minus its generated token count. With a seed, the winner
is the shortest finished sample of the same seeded `Sample(n=n)` run decoded to the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from searchdec.search.base import Search, SearchResult, SearchStats, check_positive_int
from searchdec.search.decode import complete
from searchdec.search.sampling import Sample
from searchdec.search.trace import Trace
from searchdec.search.tree import Node
from searchdec.search.work import Work


@dataclass(frozen=True)
class FirstFinish(Search):
    """Sample `n` completions in parallel; stop when `num_return` have finished; return those first."""

    n: int = 8
    sample: Sample = field(default_factory=lambda: Sample(temperature=0.8))
    num_return: int = 1

    distributable = True

    def __post_init__(self) -> None:
        check_positive_int("n", self.n)
        check_positive_int("num_return", self.num_return)
        if self.num_return > self.n:
            raise ValueError(f"num_return ({self.num_return}) cannot exceed n ({self.n})")
        if not isinstance(self.sample, Sample):
            raise TypeError(f"sample must be sd.Sample(...), got {type(self.sample).__name__}")

    def run(self, work: Work, roots: list[Node]) -> list[SearchResult]:
        all_leaves = complete(work, roots, self.sample, self.n, first=self.num_return)
        return [self._rank(work.model, root, leaves) for root, leaves in zip(roots, all_leaves)]

    def _rank(self, model, root: Node, leaves: list[Node]) -> SearchResult:
        order = sorted(
            range(len(leaves)),
            key=lambda i: (leaves[i].finish_reason != "stop", leaves[i].depth, -leaves[i].logprob, i),
        )
        stats = SearchStats(expansions=1 + sum(leaf.depth for leaf in leaves))
        stats.tokens_forwarded = len(root.new_tokens) + sum(max(leaf.depth - 1, 0) for leaf in leaves)
        trace = Trace("FirstFinish", {"n": self.n, "num_return": self.num_return}, model.decode)
        trace.add(root, status="root")
        for leaf in leaves:
            trace.add(leaf, score=-leaf.depth, status="finished" if leaf.finish_reason == "stop" else "pruned")
        ranked = [(-float(leaves[i].depth), leaves[i]) for i in order[: max(self.num_return, 1)]]
        return SearchResult.ranked(ranked, trace, stats)
