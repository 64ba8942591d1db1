"""The Work interface — how a search asks for model work and rewards without knowing where they run —
with its in-process implementation, the default of every `generate` call.

A search describes its model work as `Job`s: a node of its tree to start from, the seeds of the rows
to grow from it (one row per seed; None: greedy), and how many of the most probable next tokens to
report. `Work.run` cuts each job into tasks of at most `executor.batch_rows` rows (in order, so the
same jobs give the same tasks on any executor), runs them on its `Executor`, and hands back tree
nodes: each row's tokens become one child node of the job's start (its constraint state advanced on
this side), with the finish reason the task reported. Tokens forwarded by the tasks are charged to
each job's stats. Rewards are scored through the executor too (`score`, `score_steps`), in batches.

An executor does two things: `run(tasks, model)` computes model tasks (`search/tasks.py`) and returns
their results in task order, and it scores rewards. `InProcessExecutor` runs the tasks one after
another on the caller's model with a `TaskRunner`, and rewards in this process; `sd.RayExecutor`
(searchdec/distributed) runs the same tasks on Ray actors. A task's random draws depend on its seed
alone, so a seeded search returns the same result with no executor (an in-process one is made for
the call), `sd.InProcessExecutor()` and `sd.RayExecutor(...)`. Greedy decoding with no executor is
the one fused exception: it has no random draws, so every prompt's rows decode in one batch.

Seeds come from `task_seed(search seed, place in the search)`; a search whose `Sample` has no seed
draws one base seed per call, so rows stay independent of one another but the call is not
reproducible.

`batch_rows` caps the rows one task holds (the N samples of best-of-N are cut into tasks of at most
`batch_rows`): tasks are cut from the work in order, so equal `batch_rows` and `threads` give equal
tasks on every executor and every worker count.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from searchdec.rewards.base import Reward, as_reward
from searchdec.search.base import SearchStats, check_positive_int
from searchdec.search.rows import Stopping
from searchdec.search.tasks import Task, TaskResult, TaskRunner, task_seed
from searchdec.search.tree import Node

if TYPE_CHECKING:
    from searchdec.search.sampling import Sample

OnDone = Callable[[TaskResult], None] | None


class Executor:
    """Where model tasks and reward calls run. Subclasses implement `run`; rewards default to in-process."""

    batch_rows: int = 8
    threads: int = 1
    local: bool = False  # runs tasks on the caller's own model (streaming with on_token is possible)

    def run(self, tasks: Sequence[Task], model, on_done: OnDone = None, on_token=None) -> list[TaskResult]:
        """Results of `tasks`, in task order; `on_done(result)` is called as each one completes."""
        raise NotImplementedError(f"{type(self).__name__} must implement run(tasks, model)")

    def score(
        self, reward: Reward, prompts: Sequence[str], outputs: Sequence[str], logprobs: Sequence | None = None
    ) -> list[float]:
        """`reward.score_batch` of the outputs: one call for the whole batch."""
        return score_batch(reward, prompts, outputs, logprobs)

    def score_steps(self, reward: Reward, prompt: str, steps_list: Sequence[list[str]]) -> list[list[float]]:
        """`reward.score_steps(prompt, steps)` of each list of steps."""
        return [list(reward.score_steps(prompt, steps)) for steps in steps_list]

    def close(self) -> None:
        """Release what the executor holds (workers, kept prompts)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InProcessExecutor(Executor):
    """Runs every task in this process, on the model `generate` was given."""

    local = True

    def __init__(self, batch_rows: int = 8, threads: int = 1, prompts: int = 64) -> None:
        check_positive_int("batch_rows", batch_rows)
        check_positive_int("threads", threads)
        check_positive_int("prompts", prompts)
        self.batch_rows = batch_rows
        self.threads = threads
        self.prompts = prompts
        self._runners: dict[int, TaskRunner] = {}

    def __repr__(self) -> str:
        return f"InProcessExecutor(batch_rows={self.batch_rows}, threads={self.threads})"

    def run(self, tasks: Sequence[Task], model, on_done: OnDone = None, on_token=None) -> list[TaskResult]:
        runner = self._runners.get(id(model))
        if runner is None or runner.model is not model:
            runner = self._runners[id(model)] = TaskRunner(model, self.prompts)
        results = []
        for k, task in enumerate(tasks):
            result = runner.run(task, None if on_token is None else lambda row, k=k: on_token(k, row))
            results.append(result)
            if on_done is not None:
                on_done(result)
        return results

    def close(self) -> None:
        for runner in self._runners.values():
            runner.release()
        self._runners.clear()


def score_batch(reward: Reward, prompts: Sequence[str], outputs: Sequence[str], logprobs=None) -> list[float]:
    """`reward.score_batch` (NaN counts as -inf), checked to return one score per output."""
    if not outputs:
        return []
    values = reward.score_batch(list(prompts), list(outputs), logprobs=logprobs)
    if len(values) != len(outputs):
        raise ValueError(f"reward returned {len(values)} scores for {len(outputs)} outputs")
    return [_finite(v) for v in values]


def _finite(value) -> float:
    value = float(value)
    return float("-inf") if math.isnan(value) else value


@dataclass
class Job:
    """Rows to grow from `start` (a node under `root`), and/or its `top` next tokens to report. A job
    with `first` is one task whatever its size (its rows stop together: first-finish search)."""

    root: Node
    start: Node
    seeds: Sequence[int | None] = ()
    top: int = 0
    stats: SearchStats | None = None
    first: int | None = None


@dataclass
class JobResult:
    rows: list[Node] = field(default_factory=list)  # one child of the job's start per seed
    top: list[tuple[int, float]] = field(default_factory=list)


class Work:
    """A `generate` call's model, stopping rule and constraint, bound to an executor (with none given,
    an in-process one that lives as long as the call). `close()` releases what the call holds."""

    def __init__(
        self,
        model,
        stopping: Stopping,
        constraint=None,
        *,
        executor: Executor | None = None,
        jump_forward: bool = True,
        progress: bool = False,
        on_token: Callable | None = None,
    ) -> None:
        self.owned = executor is None
        self.executor = InProcessExecutor() if executor is None else executor
        self.model = model
        self.stopping = stopping
        self.constraint = constraint  # the spec (or compiled Constraint, in process only) tasks compile
        self.jump_forward = jump_forward
        self.on_token = on_token  # on_token(prompt_index, node) for every new token (local executors)
        self._next_id = 0
        self._bar = None
        if on_token is not None and not self.executor.local:
            raise ValueError("on_token streaming is not available on a remote executor (tasks return whole outputs)")
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=0, unit="task", desc=f"searchdec on {type(self.executor).__name__}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self.owned:
            self.executor.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
        owners: Sequence[int] | None = None,
    ) -> list[JobResult]:
        """Each job's rows (as child nodes of its start, in seed order) and top tokens. `owners` (the
        prompt index of each job) lets streaming report which prompt a token belongs to."""
        tasks: list[Task] = []
        of: list[int] = []
        for j, job in enumerate(jobs):
            prompt = tuple(job.root.new_tokens)
            path = job.start.path() if job.start is not job.root else []
            prefix = tuple(t for node in path for t in node.new_tokens)
            cuts = tuple(len(node.new_tokens) for node in path if node.new_tokens)
            seeds = list(job.seeds)
            size = len(seeds) if job.first is not None else self.executor.batch_rows
            chunks = [seeds[k : k + size] for k in range(0, len(seeds), max(size, 1))]
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
                        job.first,
                        cuts,
                    )
                )
                of.append(j)
        if self._bar is not None:
            self._bar.total += len(tasks)
            self._bar.refresh()
        on_token = None
        if self.on_token is not None:
            index = list(owners) if owners is not None else list(range(len(jobs)))

            def on_token(k: int, row) -> None:
                self.on_token(index[of[k]], row.node)

        results = self.executor.run(tasks, self.model, self._tick if self._bar is not None else None, on_token)
        out = [JobResult() for _ in jobs]
        for owner, task, result in zip(of, tasks, results):
            if result.id != task.id:
                raise RuntimeError(f"executor returned the result of task {result.id} in place of task {task.id}")
            job = jobs[owner]
            out[owner].top += result.top
            for row in result.rows:
                child = job.start.child(row.tokens, row.logprobs)
                child.finish_reason = row.finish_reason
                child.backtracks = row.backtracks
                out[owner].rows.append(child)
            if job.stats is not None:
                job.stats.tokens_forwarded += result.tokens_forwarded
                job.stats.expansions += result.expansions
                job.stats.backtracks += result.backtracks
        return out

    def score(
        self, reward: Reward, prompt: str, outputs: Sequence[str], logprobs: Sequence | None = None
    ) -> list[float]:
        """Rewards of `outputs` for `prompt` in one batch (NaN counts as -inf), where the executor
        runs rewards."""
        if not outputs:
            return []
        values = self.executor.score(as_reward(reward), [prompt] * len(outputs), list(outputs), logprobs)
        if len(values) != len(outputs):
            raise ValueError(f"reward returned {len(values)} scores for {len(outputs)} outputs")
        return [_finite(v) for v in values]

    def score_steps(self, reward: Reward, prompt: str, steps_list: Sequence[list[str]]) -> list[list[float]]:
        """One score per step of each list of steps (NaN counts as -inf)."""
        if not steps_list:
            return []
        values = self.executor.score_steps(as_reward(reward), prompt, list(steps_list))
        for scores, steps in zip(values, steps_list):
            if len(scores) != len(steps):
                raise ValueError(f"reward returned {len(scores)} step scores for {len(steps)} steps")
        return [[_finite(v) for v in scores] for scores in values]

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _tick(self, _result: TaskResult) -> None:
        self._bar.update(1)
