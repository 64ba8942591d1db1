"""Step-level beam search guided by a process reward model, and DVTS (diverse verifier tree search),
with the semantics of search-and-learn (Beeching, Tunstall and Rush, 2024; Snell et al., arXiv
2408.03314, "Scaling LLM Test-Time Compute Optimally").

`StepBeam(width, expansions, prm, aggregate)`: the population starts as `width * expansions`
samples of a first step from the prompt. Each round, every candidate is scored by the PRM —
`prm(prompt_text, steps) -> list[float]` (one score per step so far) is aggregated by `aggregate`
("last", "min", "prod"); a `float` is used as it is — finished candidates leave for the completed
pool, and the best `width` unfinished ones (score order, earlier sample on ties) each sample
`expansions` next steps. It stops when `width * expansions` hypotheses are completed, or no
candidate is left. Completed hypotheses are returned best first by their aggregated score.

`DVTS(subtrees, expansions, prm, aggregate)`: `subtrees` independent searches, each a step beam of
width 1 (keep the best of its `expansions` candidates each round), so the budget spreads over
diverse subtrees; completions of all subtrees are ranked together.

Steps end at `step` (a delimiter string or regex, as search-and-learn's "\\n\\n"), at the end of
sequence, or at `max_step_tokens`. All candidates of all prompts extend in one forward per token.

On an executor (`generate(..., executor=...)`), the `expansions` samples of a kept candidate are one
task (the candidate's step is forwarded once for all of them), sample j of prompt i's frontier in
round r has the seed `task_seed(sample.seed, i, r, j)`, and each round's new candidates of a prompt
are scored by the PRM in one batch where the executor runs rewards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from searchdec.search.decode import Stopping
from searchdec.search.expand import Expander, SearchResult, SearchStats, check_positive_int
from searchdec.search.reward import aggregate_steps, check_reward
from searchdec.search.sampling import Sample
from searchdec.search.steps import Extension, extend, step_pattern, step_texts
from searchdec.search.trace import Trace
from searchdec.search.tree import Node


@dataclass(frozen=True)
class StepBeam:
    """Beam search over reasoning steps scored by a process reward model."""

    width: int = 4
    expansions: int = 4
    prm: Callable | None = None
    aggregate: str = "last"
    step: object = "\n\n"
    sample: Sample = field(default_factory=lambda: Sample(temperature=0.8, seed=0))
    max_step_tokens: int | None = None
    independent: bool = False  # DVTS: each of `width` subtrees keeps its own best candidate

    def __post_init__(self) -> None:
        check_positive_int("width", self.width)
        check_positive_int("expansions", self.expansions)
        if self.aggregate not in ("last", "min", "prod"):
            raise ValueError(f'aggregate must be "last", "min" or "prod", got {self.aggregate!r}')
        step_pattern(self.step)
        if self.max_step_tokens is not None:
            check_positive_int("max_step_tokens", self.max_step_tokens)

    @property
    def n(self) -> int:
        return self.width * self.expansions

    def run(self, model, roots: list[Node], stopping: Stopping, work=None) -> list[SearchResult]:
        check_reward("prm", self.prm, type(self).__name__)
        if work is not None:
            return self._run_on(work, model, roots)
        expander = Expander(model, stopping)
        pattern = step_pattern(self.step)
        generator = self.sample.generator(model.device)
        name = "DVTS" if self.independent else "StepBeam"
        searches = [_Population(root, self, model, name) for root in roots]
        # Every subtree (or the one beam) starts from the prompt: width * expansions first steps.
        frontier = [(s, g, s.root) for s in searches for g in range(self.groups) for _ in range(self.per_group_start)]
        while frontier:
            jobs = [Extension(s.root, start, s.stats) for s, _, start in frontier]
            ends = extend(expander, jobs, self.sample, generator, pattern, max_step_tokens=self.max_step_tokens)
            by_search: dict[int, list[tuple[int, Node]]] = {}
            for (s, group, start), node in zip(frontier, ends):
                s.trace.add(node, status="step", parent=start)
                by_search.setdefault(id(s), []).append((group, node))
            frontier = []
            for s in searches:
                if id(s) in by_search:
                    frontier += [(s, g, node) for g, node in s.select(by_search[id(s)])]
        expander.release()
        return [s.result() for s in searches]

    def _run_on(self, work, model, roots: list[Node]) -> list[SearchResult]:
        """The same rounds, each dispatched as tasks: one per kept candidate (see module docstring)."""
        from searchdec.distributed.work import Job

        pattern = step_pattern(self.step)
        base = work.base_seed(self.sample)
        name = "DVTS" if self.independent else "StepBeam"
        searches = [_Population(root, self, model, name) for root in roots]
        frontier = [
            (i, g, s.root)
            for i, s in enumerate(searches)
            for g in range(self.groups)
            for _ in range(self.per_group_start)
        ]
        round_ = 0
        while frontier:
            runs: list[list] = []  # [prompt, group, start, count]: consecutive samples from one node
            for i, g, start in frontier:
                if runs and runs[-1][0] == i and runs[-1][1] == g and runs[-1][2] is start:
                    runs[-1][3] += 1
                else:
                    runs.append([i, g, start, 1])
            jobs, placed = [], {}
            for i, _, start, count in runs:
                first = placed.get(i, 0)
                placed[i] = first + count
                seeds = [work.seed(base, i, round_, first + j) for j in range(count)]
                jobs.append(Job(searches[i].root, start, seeds, 0, searches[i].stats))
            results = work.run(jobs, self.sample, to_end=False, step=pattern, max_step_tokens=self.max_step_tokens)
            by_search: dict[int, list[tuple[int, Node]]] = {}
            for (i, g, start, _), result in zip(runs, results):
                for node in result.rows:
                    searches[i].trace.add(node, status="step", parent=start)
                    by_search.setdefault(i, []).append((g, node))
            frontier = []
            for i, candidates in sorted(by_search.items()):
                frontier += [(i, g, node) for g, node in searches[i].select(candidates, work)]
            round_ += 1
        return [s.result() for s in searches]

    @property
    def groups(self) -> int:
        return self.width if self.independent else 1

    @property
    def per_group_start(self) -> int:
        return self.expansions if self.independent else self.width * self.expansions


def DVTS(subtrees: int = 4, expansions: int = 4, prm: Callable | None = None, aggregate: str = "last", **kwargs):
    """Diverse verifier tree search: `subtrees` independent width-1 step beams (see module docstring)."""
    return StepBeam(subtrees, expansions, prm, aggregate, independent=True, **kwargs)


class _Population:
    def __init__(self, root: Node, spec: StepBeam, model, name: str) -> None:
        self.root = root
        self.spec = spec
        self.model = model
        self.prompt = model.decode(list(root.new_tokens))
        self.boundaries: set[int] = set()
        self.completed: list[tuple[float, int, Node]] = []
        self.order = 0
        self.stats = SearchStats()
        self.trace = Trace(name, _params(spec), model.decode)
        self.trace.add(root, status="root")

    def score(self, node: Node) -> float:
        steps = step_texts(self.model, node, self.boundaries)
        return self.aggregate(self.spec.prm(self.prompt, steps), steps)

    def aggregate(self, value, steps: list[str]) -> float:
        """The candidate's score from what the PRM returned for its `steps`."""
        self.stats.reward_calls += 1
        if isinstance(value, (list, tuple)):
            if len(value) != len(steps):
                raise ValueError(f"prm returned {len(value)} scores for {len(steps)} steps")
            return aggregate_steps([float(v) for v in value], self.spec.aggregate)
        if isinstance(value, torch.Tensor):
            value = value.item()
        return float(value)

    def select(self, candidates: list[tuple[int, Node]], work=None) -> list[tuple[int, Node]]:
        """Score the new steps (in one batch through `work`, if given); return (group, node) pairs to
        extend next round."""
        target = self.spec.width * self.spec.expansions
        live: dict[int, list[tuple[float, int, Node]]] = {}
        scored: list[float] = []
        if work is not None:
            self.boundaries.update(id(node) for _, node in candidates)
            steps = [step_texts(self.model, node, self.boundaries) for _, node in candidates]
            raw = work.score_steps(self.spec.prm, self.prompt, steps)
            scored = [self.aggregate(v, s) for v, s in zip(raw, steps)]
        for k, (group, node) in enumerate(candidates):
            self.boundaries.add(id(node))
            value = scored[k] if work is not None else self.score(node)
            node.score = value
            self.order += 1
            if node.finish_reason is not None:
                self.completed.append((value, -self.order, node))
                self.trace.add(node, score=value, status="finished")
            else:
                live.setdefault(group, []).append((value, -self.order, node))
                self.trace.add(node, score=value, status="step")
        if len(self.completed) >= target:
            return []
        keep = 1 if self.spec.independent else self.spec.width
        chosen = []
        for group, entries in sorted(live.items()):
            entries.sort(key=lambda e: (e[0], e[1]), reverse=True)
            for _, _, node in entries[:keep]:
                chosen += [(group, node)] * self.spec.expansions
                self.trace.add(node, status="kept")
        return chosen

    def result(self) -> SearchResult:
        ranked = sorted(self.completed, key=lambda e: (e[2].finish_reason == "stop", e[0], e[1]), reverse=True)
        return SearchResult.ranked([(score, node) for score, _, node in ranked], self.trace, self.stats)


def _params(spec) -> dict:
    return {
        "width": spec.width,
        "expansions": spec.expansions,
        "aggregate": spec.aggregate,
        "step": spec.step if isinstance(spec.step, str) else spec.step.pattern,
        "independent": spec.independent,
    }
