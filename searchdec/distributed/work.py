"""`Work`: one `generate` call bound to an executor — how a search asks for model work and rewards
without knowing where they run.

A search describes its model work as `Job`s: a node of its tree to start from, the seeds of the rows
to grow from it (one row per seed; None: greedy), and how many of the most probable next tokens to
report. `Work.run` cuts each job into tasks of at most `executor.batch_rows` rows (in order, so the
same jobs give the same tasks on any executor), runs them, and hands back tree nodes: each row's
tokens become one child node of the job's start (its constraint state advanced on this side), with
the finish reason the task reported. Tokens forwarded by the tasks are charged to each job's stats.

Seeds come from `task_seed(search seed, place in the search)`; a search whose `Sample` has no seed
draws one base seed per call, so rows stay independent of one another but the call is not
reproducible (as without an executor).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from searchdec.distributed.executor import Executor
from searchdec.distributed.tasks import Task, TaskResult, task_seed
from searchdec.search.decode import Stopping
from searchdec.search.expand import SearchStats
from searchdec.search.sampling import Sample
from searchdec.search.tree import Node


@dataclass
class Job:
    """Rows to grow from `start` (a node under `root`), and/or its `top` next tokens to report."""

    root: Node
    start: Node
    seeds: Sequence[int | None] = ()
    top: int = 0
    stats: SearchStats | None = None


@dataclass
class JobResult:
    rows: list[Node] = field(default_factory=list)  # one child of the job's start per seed
    top: list[tuple[int, float]] = field(default_factory=list)


class Work:
    """A `generate` call's model, stopping rule and constraint spec, bound to an executor."""

    def __init__(
        self,
        executor: Executor,
        model,
        stopping: Stopping,
        constraint=None,
        jump_forward: bool = True,
        progress: bool = False,
    ) -> None:
        self.executor = executor
        self.model = model
        self.stopping = stopping
        self.constraint = constraint
        self.jump_forward = jump_forward
        self._next_id = 0
        self._bar = None
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=0, unit="task", desc=f"searchdec on {type(executor).__name__}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def base_seed(self, sample: Sample) -> int:
        return sample.seed if sample.seed is not None else random.SystemRandom().randrange(2**62)

    @staticmethod
    def seed(base: int, *keys: object) -> int:
        return task_seed(base, *keys)

    def run(
        self,
        jobs: Sequence[Job],
        sample: Sample | None = None,
        *,
        to_end: bool = True,
        step: re.Pattern | None = None,
        max_step_tokens: int | None = None,
    ) -> list[JobResult]:
        """Each job's rows (as child nodes of its start, in seed order) and top tokens."""
        tasks: list[Task] = []
        owners: list[int] = []
        for j, job in enumerate(jobs):
            prompt = tuple(job.root.new_tokens)
            prefix = tuple(job.start.generated()[0]) if job.start is not job.root else ()
            seeds = list(job.seeds)
            chunks = [seeds[k : k + self.executor.batch_rows] for k in range(0, len(seeds), self.executor.batch_rows)]
            for c, chunk in enumerate(chunks or [[]]):
                tasks.append(
                    Task(
                        self._new_id(),
                        prompt,
                        prefix,
                        self.stopping,
                        tuple(chunk),
                        sample,
                        self.constraint,
                        job.top if c == 0 else 0,
                        to_end,
                        step,
                        max_step_tokens,
                        self.jump_forward,
                        self.executor.threads,
                    )
                )
                owners.append(j)
        if self._bar is not None:
            self._bar.total += len(tasks)
            self._bar.refresh()
        results = self.executor.run(tasks, self.model, self._tick if self._bar is not None else None)
        out = [JobResult() for _ in jobs]
        for owner, task, result in zip(owners, tasks, results):
            if result.id != task.id:
                raise RuntimeError(f"executor returned the result of task {result.id} in place of task {task.id}")
            job = jobs[owner]
            out[owner].top += result.top
            for row in result.rows:
                child = job.start.child(row.tokens, row.logprobs)
                child.finish_reason = row.finish_reason
                out[owner].rows.append(child)
            if job.stats is not None:
                job.stats.tokens_forwarded += result.tokens_forwarded
                job.stats.expansions += 1 + sum(len(row.tokens) for row in result.rows)
        return out

    def score(self, reward: Callable, prompt: str, outputs: Sequence[str]) -> list[float]:
        """Rewards of `outputs` (NaN counts as -inf), computed where the executor runs rewards."""
        if not outputs:
            return []
        values = self.executor.score(reward, prompt, list(outputs))
        if len(values) != len(outputs):
            raise ValueError(f"reward returned {len(values)} scores for {len(outputs)} outputs")
        return values

    def score_steps(self, prm: Callable, prompt: str, steps_list: Sequence[list[str]]) -> list:
        if not steps_list:
            return []
        return self.executor.score_steps(prm, prompt, list(steps_list))

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _tick(self, _result: TaskResult) -> None:
        self._bar.update(1)
