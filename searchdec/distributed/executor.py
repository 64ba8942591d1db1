"""The Executor interface — where a search's expensive work runs — and the in-process executor.

An executor does two things for a search: `run(tasks, model)` computes model tasks
(`distributed/tasks.py`) and returns their results in task order, and `score(reward, prompt,
outputs)` / `score_steps(prm, prompt, steps_list)` evaluate rewards in batches. `sd.generate(...,
executor=...)` binds one to a call; the searches that dispatch through it are Greedy, Sample,
BestOfN, MCTS (K leaves per round with virtual loss), StepBeam and DVTS.

`InProcessExecutor` runs the tasks one after another on the caller's model with a `TaskRunner`,
and rewards in this process. It is the reference the Ray executor is measured against: both run the
same tasks by the same procedure, so seeded results are identical. Without `executor=`, `generate`
keeps the searches' own fused loops (every prompt's rows in one forward, one shared generator),
which are the fastest on a single device but whose samples depend on the batch they were drawn in.

`batch_rows` caps the rows one task holds (the N samples of best-of-N are cut into tasks of at most
`batch_rows`): tasks are cut from the work in order, so equal `batch_rows` and `threads` give equal
tasks on every executor and every worker count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from searchdec.distributed.tasks import Task, TaskResult, TaskRunner
from searchdec.search.expand import check_positive_int
from searchdec.search.reward import score_outputs

OnDone = Callable[[TaskResult], None] | None


class Executor:
    """Where model tasks and reward calls run. Subclasses implement `run`; rewards default to in-process."""

    batch_rows: int = 8
    threads: int = 1

    def run(self, tasks: Sequence[Task], model, on_done: OnDone = None) -> list[TaskResult]:
        """Results of `tasks`, in task order; `on_done(result)` is called as each one completes."""
        raise NotImplementedError(f"{type(self).__name__} must implement run(tasks, model)")

    def score(self, reward: Callable, prompt: str, outputs: Sequence[str]) -> list[float]:
        """`reward(prompt, output)` of each output (batched when the reward has `.batch`)."""
        return score_outputs(reward, prompt, outputs)

    def score_steps(self, prm: Callable, prompt: str, steps_list: Sequence[list[str]]) -> list:
        """`prm(prompt, steps)` of each list of steps, as the PRM returns it (a float or one per step)."""
        return [prm(prompt, steps) for steps in steps_list]

    def close(self) -> None:
        """Release what the executor holds (workers, kept prompts)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InProcessExecutor(Executor):
    """Runs every task in this process, on the model `generate` was given."""

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

    def run(self, tasks: Sequence[Task], model, on_done: OnDone = None) -> list[TaskResult]:
        runner = self._runners.get(id(model))
        if runner is None or runner.model is not model:
            runner = self._runners[id(model)] = TaskRunner(model, self.prompts)
        results = []
        for task in tasks:
            result = runner.run(task)
            results.append(result)
            if on_done is not None:
                on_done(result)
        return results

    def close(self) -> None:
        for runner in self._runners.values():
            runner.release()
        self._runners.clear()
