"""Executors: where a search's model tasks and reward calls run — in this process, or on Ray actors
(model workers, one per GPU, and reward workers) with the same results. `ray` is imported only when
a `RayExecutor` is made."""

from searchdec.distributed.ray_executor import LazyReward, RayExecutor
from searchdec.search.tasks import Completion, Task, TaskResult, TaskRunner, task_seed
from searchdec.search.work import Executor, InProcessExecutor, Job, JobResult, Work

__all__ = [
    "Completion",
    "Executor",
    "InProcessExecutor",
    "Job",
    "JobResult",
    "LazyReward",
    "RayExecutor",
    "Task",
    "TaskResult",
    "TaskRunner",
    "Work",
    "task_seed",
]
