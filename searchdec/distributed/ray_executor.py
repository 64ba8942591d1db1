"""`RayExecutor`: model tasks and reward calls on Ray actors (Moritz et al., "Ray: A Distributed
Framework for Emerging AI Applications", OSDI 2018, arXiv 1712.05889), with the same results as
`InProcessExecutor`.

Workers. Each model worker is an actor that loads the model itself — `sd.load(name)` for a name or
path, or a zero-argument factory called on the worker — so no model is ever pickled; it runs tasks
with its own `TaskRunner` (`search/tasks.py`), one at a time. One worker per GPU when the
cluster has GPUs (`num_gpus_per_worker`, default 1, is honoured by Ray's scheduler and the worker
loads onto its GPU); CPU workers otherwise. Reward workers (`reward_workers=N`, optionally with
`reward_gpus_per_worker`) score rewards in batches: PRMs on their own GPUs, or execution rewards on
CPU. A reward is shipped once per call by reference; `LazyReward` builds a model-based reward on the
worker instead of pickling it. `placement="PACK" | "SPREAD" | ...` reserves every worker's bundle in
one placement group first (all or nothing), as multi-node clusters need.

Scheduling. Tasks are pulled: each live worker holds at most `in_flight` calls, and the next call
goes to the least busy one (on a tie, one holding the next task's prompt). A worker takes the first
pending task whose prompt it already holds (its runner keeps that prompt's KV entry and logits:
prefix affinity), else the first task whose prompt no worker holds, else the first pending one — so
the follow-up work of a prompt goes where its cache is, and an idle worker still takes work.
Results are placed by task position, whatever order they come back in.

Faults. A call that fails because its actor died (`ray.kill`, a crashed process, a lost node) marks
the worker gone and puts every task it held back at the front of the queue, for the live workers;
a task's result is kept once (by position), so nothing is lost or duplicated, and since a task's
result does not depend on which worker computes it, a retried search returns what an undisturbed
one would. When no worker is left, `WorkersLostError` is raised at once, naming the tasks left; an
exception raised by the task itself is not retried (it would fail again) and propagates.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from searchdec.errors import ExecutorError, WorkersLostError
from searchdec.rewards.base import Lazy
from searchdec.search.base import check_positive_int
from searchdec.search.tasks import Task, TaskResult, TaskRunner
from searchdec.search.work import Executor, OnDone, score_batch

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


class ModelWorker:
    """A model worker's body (wrapped by `ray.remote` at start-up): loads the model, runs tasks."""

    def __init__(self, model, index: int, device: str, dtype: str, threads: int, prompts: int) -> None:
        import torch

        torch.set_num_threads(threads)
        if isinstance(model, str):
            from searchdec.models.loading import load

            loaded = load(model, device=device, dtype=dtype)
        else:
            loaded = model()
        self.runner = TaskRunner(loaded, prompts, name=f"worker-{index}")

    def describe(self) -> dict:
        model = self.runner.model
        return {"name": model.name, "vocab": model.vocab_size, "device": str(model.device), "pid": os.getpid()}

    def run(self, task: Task) -> TaskResult:
        return self.runner.run(task)


class RewardWorker:
    """A reward worker's body: keeps each reward it is sent (so a `LazyReward` builds once here)."""

    def __init__(self) -> None:
        self._rewards: dict[str, Callable] = {}

    def score(self, key: str, reward, prompts: list[str], outputs: list[str], logprobs) -> list[float]:
        return score_batch(self._rewards.setdefault(key, reward), prompts, outputs, logprobs)

    def score_steps(self, key: str, reward, prompt: str, steps_list: list[list[str]]) -> list:
        kept = self._rewards.setdefault(key, reward)
        return [list(kept.score_steps(prompt, steps)) for steps in steps_list]

    def describe(self) -> dict:
        return {"pid": os.getpid()}


LazyReward = Lazy  # sd.LazyReward: a reward built on the worker that runs it (searchdec.rewards.Lazy)


@dataclass(eq=False)
class _Member:
    actor: object
    name: str
    prompts: OrderedDict = field(default_factory=OrderedDict)  # prompts its runner holds (LRU, as the runner's)
    load: int = 0
    alive: bool = True
    done: int = 0


class _Pool:
    """Actors of one kind and the pull loop that spreads calls over them (see module docstring)."""

    def __init__(self, ray, kind: str, members: list[_Member], in_flight: int, prompts: int) -> None:
        self.ray = ray
        self.kind = kind
        self.members = members
        self.in_flight = in_flight
        self.prompts = prompts
        self.lost: list[str] = []  # names of workers found dead, with the cause
        self.retried = 0  # calls put back in the queue after their worker died

    def alive(self) -> list[_Member]:
        return [m for m in self.members if m.alive]

    def call(
        self,
        method: str,
        items: Sequence[tuple],
        key: Callable[[int], object] | None = None,
        on_done: Callable[[object], None] | None = None,
    ) -> list:
        """`actor.method(*items[i])` for every i, each on some live worker, results in item order."""
        from ray.exceptions import ActorUnavailableError, ObjectLostError, RayActorError

        results: list = [None] * len(items)
        finished = [False] * len(items)
        remaining = len(items)
        pending = deque(range(len(items)))
        flying: dict = {}  # ObjectRef -> (member, item index)
        while remaining:
            live = self.alive()
            if not live:
                raise WorkersLostError(
                    f"every {self.kind} worker is gone ({'; '.join(self.lost) or 'none started'}); "
                    f"{remaining} of {len(items)} tasks were left unfinished"
                )
            while pending:
                free = [m for m in live if m.load < self.in_flight]
                if not free:
                    break
                low = min(m.load for m in free)
                level = [m for m in free if m.load == low]
                member = next((m for m in level if key is not None and key(pending[0]) in m.prompts), level[0])
                i = self._pick(member, pending, key, live)
                ref = getattr(member.actor, method).remote(*items[i])
                flying[ref] = (member, i)
                member.load += 1
            ready, _ = self.ray.wait(list(flying), num_returns=1, timeout=1.0)
            for ref in ready:
                if ref not in flying:
                    continue  # already put back when its worker was found dead
                member, i = flying.pop(ref)
                member.load -= 1
                try:
                    value = self.ray.get(ref)
                except (RayActorError, ActorUnavailableError) as error:
                    self._lose(member, error, flying, pending, i)
                    continue
                except ObjectLostError:  # the result was lost with its node's object store: compute it again
                    self.retried += 1
                    pending.appendleft(i)
                    continue
                if finished[i]:
                    continue
                results[i], finished[i] = value, True
                remaining -= 1
                member.done += 1
                if on_done is not None:
                    on_done(value)
        return results

    def _pick(self, member: _Member, pending: deque, key, live: list[_Member]) -> int:
        if key is not None:
            position = next((p for p, i in enumerate(pending) if key(i) in member.prompts), None)
            if position is None:
                held = [m.prompts for m in live]
                position = next((p for p, i in enumerate(pending) if not any(key(i) in h for h in held)), 0)
            i = pending[position]
            del pending[position]
            member.prompts[key(i)] = True
            member.prompts.move_to_end(key(i))
            while len(member.prompts) > self.prompts:
                member.prompts.popitem(last=False)
            return i
        return pending.popleft()

    def _lose(self, member: _Member, error: Exception, flying: dict, pending: deque, first: int) -> None:
        member.alive = False
        cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        self.lost.append(f"{member.name}: {cause[:200]}")
        back = [first] + [i for ref, (m, i) in list(flying.items()) if m is member]
        for ref in [ref for ref, (m, _) in flying.items() if m is member]:
            del flying[ref]
        member.load = 0
        self.retried += len(back)
        pending.extendleft(sorted(back, reverse=True))


def _check_fits(resources: dict, bundles: list[dict]) -> None:
    """Refuse, before anything starts, workers whose resources the cluster does not have at all."""
    for name in ("CPU", "GPU"):
        needed = sum(bundle.get(name, 0) for bundle in bundles)
        if needed > resources.get(name, 0) + 1e-9:
            raise ExecutorError(
                f"the workers need {needed:g} {name} in all but the cluster has {resources.get(name, 0):g}: start Ray "
                f"with more (ray.init(num_{name.lower()}s=...)), or ask for fewer workers or less per worker"
            )


class RayExecutor(Executor):
    """Model workers (and optionally reward workers) on a Ray cluster; see the module docstring."""

    def __init__(
        self,
        model: str | Callable = "smollm2-135m",
        *,
        workers: int | None = None,
        num_gpus_per_worker: float | None = None,
        cpus_per_worker: float = 1,
        address: str | None = None,
        reward_workers: int = 0,
        reward_gpus_per_worker: float = 0,
        placement: str | None = None,
        batch_rows: int = 8,
        threads: int = 1,
        in_flight: int = 2,
        prompts: int = 64,
        dtype: str = "float32",
        init: dict | None = None,
        placement_timeout: float = 120.0,
        start_timeout: float = 600.0,
    ) -> None:
        if not isinstance(model, str) and not callable(model):
            raise TypeError(f"model must be a name or path (or a factory), got {type(model).__name__}")
        if hasattr(model, "hf") and hasattr(model, "tokenizer"):
            raise TypeError("RayExecutor loads the model on each worker: pass its name or path, not a loaded Model")
        for name, value in (("batch_rows", batch_rows), ("threads", threads), ("in_flight", in_flight)):
            check_positive_int(name, value)
        check_positive_int("reward_workers", reward_workers, minimum=0)
        if workers is not None:
            check_positive_int("workers", workers)
        if placement is not None and placement not in STRATEGIES:
            raise ValueError(f"placement must be one of {', '.join(STRATEGIES)} or None, got {placement!r}")
        try:
            import ray
        except ImportError:
            raise ImportError("RayExecutor needs Ray: pip install 'searchdec[ray]'") from None
        self.ray = ray
        self.model = model
        self.batch_rows, self.threads = batch_rows, threads
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            settings = {"include_dashboard": False, **(init or {})}
            if address is None and workers is not None and "num_cpus" not in settings:
                # Logical CPUs: a worker mostly waits on its GPU (or shares cores), and Ray would
                # otherwise leave the workers beyond the core count unscheduled.
                settings["num_cpus"] = max(os.cpu_count() or 1, math.ceil(workers * cpus_per_worker) + reward_workers)
            ray.init(address=address, **settings)
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0.0)
        self.num_gpus_per_worker = (1.0 if gpus else 0.0) if num_gpus_per_worker is None else num_gpus_per_worker
        if workers is None:
            if self.num_gpus_per_worker:
                workers = max(1, int(gpus // self.num_gpus_per_worker))
            else:
                workers = max(1, int(resources.get("CPU", 1) // max(cpus_per_worker, 1e-9)) - reward_workers)
        self.workers = workers
        self._placement_group = None
        self.placement_timeout = placement_timeout
        self._rewards: dict[int, tuple[Callable, object, str]] = {}
        self._checked: set[int] = set()
        model_bundle = {
            "CPU": cpus_per_worker,
            **({"GPU": self.num_gpus_per_worker} if self.num_gpus_per_worker else {}),
        }
        reward_bundle = {"CPU": 1, **({"GPU": reward_gpus_per_worker} if reward_gpus_per_worker else {})}
        if address is None:  # a local cluster has no autoscaler: what it lacks now, it will never have
            _check_fits(resources, [model_bundle] * workers + [reward_bundle] * reward_workers)
        self.start_timeout = start_timeout
        options = self._placement([model_bundle] * workers + [reward_bundle] * reward_workers, placement)
        device = "cuda" if self.num_gpus_per_worker else "cpu"
        body = ray.remote(max_restarts=0)(ModelWorker)
        actors = [
            body.options(num_cpus=cpus_per_worker, num_gpus=self.num_gpus_per_worker, **options(i)).remote(
                model, i, device, dtype, threads, prompts
            )
            for i in range(workers)
        ]
        reward_body = ray.remote(max_restarts=0)(RewardWorker)
        reward_actors = [
            reward_body.options(num_cpus=1, num_gpus=reward_gpus_per_worker, **options(workers + i)).remote()
            for i in range(reward_workers)
        ]
        self._models = _Pool(
            ray, "model", [_Member(a, f"worker-{i}") for i, a in enumerate(actors)], in_flight, prompts
        )
        self._reward_pool = _Pool(
            ray, "reward", [_Member(a, f"reward-{i}") for i, a in enumerate(reward_actors)], in_flight, prompts
        )
        self.info = self._started(self._models)
        self._started(self._reward_pool)

    def __repr__(self) -> str:
        return (
            f"RayExecutor({self.model!r}, workers={self.workers}, num_gpus_per_worker={self.num_gpus_per_worker}, "
            f"reward_workers={len(self._reward_pool.members)})"
        )

    @property
    def actors(self) -> list:
        """The model workers' actor handles (for inspection, or to kill one in a test)."""
        return [m.actor for m in self._models.members]

    @property
    def reward_actors(self) -> list:
        return [m.actor for m in self._reward_pool.members]

    @property
    def lost(self) -> list[str]:
        """Workers found dead so far, with the cause."""
        return self._models.lost + self._reward_pool.lost

    @property
    def retried(self) -> int:
        """Calls re-queued because their worker died."""
        return self._models.retried + self._reward_pool.retried

    @property
    def tasks_done(self) -> dict[str, int]:
        return {m.name: m.done for m in self._models.members}

    def run(self, tasks: Sequence[Task], model, on_done: OnDone = None, on_token=None) -> list[TaskResult]:
        self._check_model(model)
        tasks = list(tasks)
        keys = [hash(task.prompt) for task in tasks]  # hashed once: routing looks keys up many times
        return self._models.call("run", [(t,) for t in tasks], key=keys.__getitem__, on_done=on_done)

    def score(self, reward, prompts: Sequence[str], outputs: Sequence[str], logprobs=None) -> list[float]:
        if not self._reward_pool.members:
            return super().score(reward, prompts, outputs, logprobs)
        key, ref = self._shipped(reward)
        spans = self._chunks(list(range(len(outputs))))
        calls = [
            (
                key,
                ref,
                [prompts[i] for i in span],
                [outputs[i] for i in span],
                None if logprobs is None else [logprobs[i] for i in span],
            )
            for span in spans
        ]
        parts = self._reward_pool.call("score", calls)
        return [value for part in parts for value in part]

    def score_steps(self, reward, prompt: str, steps_list: Sequence[list[str]]) -> list:
        if not self._reward_pool.members:
            return super().score_steps(reward, prompt, steps_list)
        key, ref = self._shipped(reward)
        chunks = self._chunks(list(steps_list))
        parts = self._reward_pool.call("score_steps", [(key, ref, prompt, chunk) for chunk in chunks])
        return [value for part in parts for value in part]

    def close(self) -> None:
        """Stop every worker (and the local Ray cluster, if this executor started it)."""
        for member in self._models.members + self._reward_pool.members:
            try:
                self.ray.kill(member.actor)
            except Exception:  # noqa: BLE001 - already gone is fine
                pass
            member.alive = False
        if self._placement_group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self._placement_group)
            self._placement_group = None
        self._rewards.clear()
        if self._owns_ray and self.ray.is_initialized():
            self.ray.shutdown()
            self._owns_ray = False

    # --- start-up ------------------------------------------------------------------------

    def _placement(self, bundles: list[dict], strategy: str | None):
        if strategy is None:
            return lambda i: {}
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        group = placement_group(bundles, strategy=strategy)
        if not group.wait(timeout_seconds=self.placement_timeout):
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(group)
            raise ExecutorError(
                f"the cluster cannot place {len(bundles)} worker bundles with strategy {strategy} within "
                f"{self.placement_timeout:g} s "
                f"(resources: {self.ray.cluster_resources()}; asked for {bundles[0]} per model worker)"
            )
        self._placement_group = group

        def options(i: int) -> dict:
            return {
                "scheduling_strategy": PlacementGroupSchedulingStrategy(
                    placement_group=group, placement_group_bundle_index=i
                )
            }

        return options

    def _started(self, pool: _Pool) -> list[dict]:
        """Wait for every worker to be up; a worker that failed to start is dropped with its cause."""
        from ray.exceptions import RayActorError

        calls = {member.name: member.actor.describe.remote() for member in pool.members}
        ready, waiting = self.ray.wait(list(calls.values()), num_returns=len(calls), timeout=self.start_timeout)
        if waiting:
            names = [name for name, ref in calls.items() if ref in set(waiting)]
            self.close()
            raise ExecutorError(
                f"{', '.join(names)} did not start within {self.start_timeout:g} s: not scheduled (the cluster has "
                f"{self.ray.available_resources()} free) or still loading; raise start_timeout for a slow load"
            )
        info = []
        for member in pool.members:
            try:
                info.append(self.ray.get(calls[member.name]))
            except RayActorError as error:
                member.alive = False
                pool.lost.append(f"{member.name} failed to start: {str(error).strip()[:400]}")
        if pool.members and not pool.alive():
            self.close()
            raise WorkersLostError(f"no {pool.kind} worker could start: {'; '.join(pool.lost)}")
        return info

    def _check_model(self, model) -> None:
        if id(model) in self._checked:
            return
        vocab = getattr(model, "vocab_size", None)
        for info in self.info:
            if info["vocab"] != vocab:
                raise ValueError(
                    f"the workers run {info['name']!r} (vocabulary {info['vocab']}) but generate() was given "
                    f"{getattr(model, 'name', model)!r} (vocabulary {vocab}); load the same model on both sides"
                )
        self._checked.add(id(model))

    def _shipped(self, reward: Callable) -> tuple[str, object]:
        kept = self._rewards.get(id(reward))
        if kept is None or kept[0] is not reward:
            kept = (reward, self.ray.put(reward), f"{os.getpid()}-{id(self)}-{id(reward)}")
            self._rewards[id(reward)] = kept
        return kept[2], kept[1]

    def _chunks(self, items: list) -> list[list]:
        n = max(1, len(self._reward_pool.alive()))
        size = max(1, -(-len(items) // n))
        return [items[k : k + size] for k in range(0, len(items), size)]
