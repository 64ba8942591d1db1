"""Step-level beam search guided by a process reward model, and DVTS (diverse verifier tree search),
with the semantics of search-and-learn (Beeching, Tunstall and Rush, 2024; Snell et al., arXiv
2408.03314, "Scaling LLM Test-Time Compute Optimally").

`StepBeam(width, expansions, reward, aggregate)`: the population starts as `width * expansions`
samples of a first step from the prompt. Each round, every candidate is scored by the reward's
`score_steps(prompt_text, steps)` (one score per step so far; a plain callable `f(prompt, steps)` is
wrapped as `rewards.StepFunction`), aggregated by `aggregate` ("last", "min", "prod") —
finished candidates leave for the completed
pool, and the best `width` unfinished ones (score order, earlier sample on ties) each sample
`expansions` next steps. It stops when `width * expansions` hypotheses are completed, or no
candidate is left. Completed hypotheses are returned best first by their aggregated score.

`DVTS(subtrees, expansions, reward, aggregate)`: `subtrees` independent searches, each a step beam of
width 1 (keep the best of its `expansions` candidates each round), so the budget spreads over
diverse subtrees; completions of all subtrees are ranked together.

Steps end at `step` (a delimiter string or regex, as search-and-learn's "\\n\\n"), at the end of
sequence, or at `max_step_tokens`. All candidates of all prompts extend in one forward per token.

On every executor (none given: an in-process one), the `expansions` samples of a kept candidate are one
task (the candidate's step is forwarded once for all of them), sample j of prompt i's frontier in
round r has the seed `task_seed(sample.seed, i, r, j)`, and each round's new candidates of a prompt
are scored by the PRM in one batch where the executor runs rewards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from searchdec.rewards.base import Reward
from searchdec.rewards.steps import as_step_reward
from searchdec.search.base import Search, SearchResult, SearchStats, check_positive_int
from searchdec.search.sampling import Sample
from searchdec.search.steps import aggregate_steps, step_pattern, step_texts
from searchdec.search.trace import Trace
from searchdec.search.tree import Node
from searchdec.search.work import Job, Work


@dataclass(frozen=True)
class StepBeam(Search):
    """Beam search over reasoning steps scored by a process reward model (`reward`)."""

    distributable = True

    width: int = 4
    expansions: int = 4
    reward: Reward | Callable | None = None
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
        self._wrap_reward(as_step_reward)

    @property
    def n(self) -> int:
        return self.width * self.expansions

    @property
    def name(self) -> str:
        return "DVTS" if self.independent else "StepBeam"

    def run(self, work: Work, roots: list[Node]) -> list[SearchResult]:
        """Rounds of step extensions, each dispatched as tasks: one per kept candidate (module docstring)."""
        self._require_reward("f(prompt_text, steps) -> one score per step")
        model = work.model
        pattern = step_pattern(self.step)
        base = work.base_seed(self.sample)
        searches = [_Population(root, self, model) for root in roots]
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


@dataclass(frozen=True)
class DVTS(StepBeam):
    """Diverse verifier tree search: `width` (subtrees) independent width-1 step beams (module
    docstring); `DVTS(subtrees, expansions, reward, ...)`."""

    independent: bool = True

    def __post_init__(self) -> None:
        if not self.independent:
            raise ValueError("DVTS is StepBeam with independent subtrees; use sd.StepBeam for one shared beam")
        super().__post_init__()


class _Population:
    def __init__(self, root: Node, spec: StepBeam, model) -> None:
        self.root = root
        self.spec = spec
        self.model = model
        self.prompt = model.decode(list(root.new_tokens))
        self.boundaries: set[int] = set()
        self.completed: list[tuple[float, int, Node]] = []
        self.order = 0
        self.stats = SearchStats()
        self.trace = Trace(spec.name, _params(spec), model.decode)
        self.trace.add(root, status="root")

    def select(self, candidates: list[tuple[int, Node]], work: Work) -> list[tuple[int, Node]]:
        """Score the new steps (`score_steps` of each, in one batch through `work`); return (group,
        node) pairs to extend next round."""
        target = self.spec.width * self.spec.expansions
        live: dict[int, list[tuple[float, int, Node]]] = {}
        self.boundaries.update(id(node) for _, node in candidates)
        steps = [step_texts(self.model, node, self.boundaries) for _, node in candidates]
        values = work.score_steps(self.spec.reward, self.prompt, steps)
        scored = [aggregate_steps(v, self.spec.aggregate) for v in values]
        self.stats.reward_calls += len(candidates)
        for k, (group, node) in enumerate(candidates):
            value = scored[k]
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
        kept = ranked[: self.spec.n]  # the last round may complete more than n
        return SearchResult.ranked([(score, node) for score, _, node in kept], self.trace, self.stats)


def _params(spec) -> dict:
    return {
        "width": spec.width,
        "expansions": spec.expansions,
        "aggregate": spec.aggregate,
        "step": spec.step if isinstance(spec.step, str) else spec.step.pattern,
        "independent": spec.independent,
    }
