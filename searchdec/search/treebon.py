"""TreeBoN: tree-structured best-of-N with speculative rejection.

Reference: Qiu et al., "TreeBoN: Enhancing Inference-Time Alignment with Speculative Tree-Search and
Best-of-N Sampling" (arXiv 2410.16033), which builds on Sun et al., "Fast Best-of-N Decoding via
Speculative Rejection" (arXiv 2410.20290). Semantics, per prompt:
1. `n` candidates are sampled from the prompt, each for one segment: `segment` tokens, or up to and
   including the first match of `step` (a delimiter) when one is given, whichever comes first;
2. each round, every new candidate is scored by `reward(prompt_text, text_so_far)` — a reward on the
   partial text (TreeBoN's partial or implicit reward) —, all of a prompt's candidates in one batch
   with their token log-probabilities; a candidate that has finished (end of sequence, `max_tokens`)
   leaves for the completed pool;
3. the best `max(1, n // branching)` unfinished candidates survive (reward order; the earlier sample
   on ties) and the rest are rejected; each survivor samples `branching` children, so the population
   stays near `n` while the low-reward branches stop costing tokens;
4. after `rounds` such rounds the survivors' children are sampled to the end in one last round.
Completed candidates are returned best first by their reward (those cut by `max_tokens` after those
that finished), at most `n` of them. `rounds=0` is best-of-N.

Candidates grow as tasks (child j of survivor s of prompt i in round r draws with the seed
`task_seed(sample.seed, i, r, j)` of its place, so a seeded search returns the same result on every
executor); a survivor's children share its forwarded prefix. Under a grammar constraint every
segment follows it and the last round steers each candidate to close within `max_tokens`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from searchdec.rewards.base import Reward
from searchdec.search.base import Search, SearchResult, SearchStats, check_positive_int, text_of
from searchdec.search.sampling import Sample
from searchdec.search.steps import step_pattern
from searchdec.search.trace import Trace
from searchdec.search.tree import Node
from searchdec.search.work import Job, Work

NO_DELIMITER = re.compile(r"(?!)")  # matches nothing: a segment ends at its token count alone


@dataclass(frozen=True)
class TreeBoN(Search):
    """Best-of-N grown as a tree of segments, low-reward branches rejected each round (module docstring)."""

    distributable = True

    n: int = 8
    branching: int = 2
    segment: int = 16
    rounds: int = 3
    reward: Reward | Callable[[str, str], float] | None = None
    step: object = None
    sample: Sample = field(default_factory=lambda: Sample(temperature=0.8))

    def __post_init__(self) -> None:
        check_positive_int("n", self.n)
        check_positive_int("branching", self.branching)
        check_positive_int("segment", self.segment)
        check_positive_int("rounds", self.rounds, minimum=0)
        if self.branching > self.n:
            raise ValueError(f"branching ({self.branching}) must be <= n ({self.n}): survivors are n // branching")
        if self.step is not None:
            step_pattern(self.step)
        if not isinstance(self.sample, Sample):
            raise TypeError(f"sample must be sd.Sample(...), got {type(self.sample).__name__}")
        self._wrap_reward()

    @property
    def survivors(self) -> int:
        return max(1, self.n // self.branching)

    def run(self, work: Work, roots: list[Node]) -> list[SearchResult]:
        self._require_reward()
        pattern = NO_DELIMITER if self.step is None else step_pattern(self.step)
        base = work.base_seed(self.sample)
        trees = [_Tree(root, self, work.model) for root in roots]
        starts = [[(root, self.n)] for root in roots]  # per prompt: (node, children to sample)
        for round_ in range(self.rounds + 1):
            last = round_ == self.rounds
            jobs, owners = [], []
            for i, (tree, frontier) in enumerate(zip(trees, starts)):
                placed = 0
                for start, count in frontier:
                    seeds = [work.seed(base, i, round_, placed + j) for j in range(count)]
                    placed += count
                    jobs.append(Job(tree.root, start, seeds, 0, tree.stats))
                    owners.append(i)
            if not jobs:
                break
            segment = None if last else self.segment
            results = work.run(jobs, self.sample, to_end=last, step=pattern, max_step_tokens=segment, owners=owners)
            grown: list[list[Node]] = [[] for _ in roots]
            for i, job, result in zip(owners, jobs, results):
                for node in result.rows:
                    trees[i].trace.add(node, status="segment", parent=job.start, round=round_)
                    grown[i].append(node)
            starts = [tree.select(nodes, work) for tree, nodes in zip(trees, grown)]
        return [tree.result() for tree in trees]


class _Tree:
    """One prompt's completed pool, counters and trace."""

    def __init__(self, root: Node, spec: TreeBoN, model) -> None:
        self.root = root
        self.spec = spec
        self.model = model
        self.prompt = model.decode(list(root.new_tokens))
        self.completed: list[tuple[float, int, Node]] = []
        self.order = 0
        self.stats = SearchStats()
        self.trace = Trace("TreeBoN", _params(spec), model.decode)
        self.trace.add(root, status="root")

    def select(self, candidates: list[Node], work: Work) -> list[tuple[Node, int]]:
        """Score the round's candidates in one batch; the finished ones complete, the best unfinished
        ones survive (each to sample `branching` children next round), the rest are rejected."""
        if not candidates:
            return []
        texts = [text_of(self.model, node) for node in candidates]
        logprobs = [node.generated()[1] for node in candidates]
        scores = work.score(self.spec.reward, self.prompt, texts, logprobs)
        self.stats.reward_calls += len(candidates)
        live: list[tuple[float, int, Node]] = []
        for node, score in zip(candidates, scores):
            node.score = score
            self.order += 1
            if node.finish_reason is not None:  # every candidate of the last round has finished
                self.completed.append((score, -self.order, node))
                self.trace.add(node, score=score, status="finished")
            else:
                live.append((score, -self.order, node))
        live.sort(key=lambda entry: (entry[0], entry[1]), reverse=True)
        for score, _, node in live[self.spec.survivors :]:
            self.trace.add(node, score=score, status="rejected")
        kept = live[: self.spec.survivors]
        for score, _, node in kept:
            self.trace.add(node, score=score, status="kept")
        return [(node, self.spec.branching) for _, _, node in kept]

    def result(self) -> SearchResult:
        ranked = sorted(self.completed, key=lambda e: (e[2].finish_reason == "stop", e[0], e[1]), reverse=True)
        return SearchResult.ranked([(score, node) for score, _, node in ranked[: self.spec.n]], self.trace, self.stats)


def _params(spec: TreeBoN) -> dict:
    step = spec.step.pattern if isinstance(spec.step, re.Pattern) else spec.step
    return {"n": spec.n, "branching": spec.branching, "segment": spec.segment, "rounds": spec.rounds, "step": step}
