"""Executors: seeded results are identical in process and on Ray workers (best-of-N, MCTS, step-level
search on the real default model), a worker killed mid-search changes nothing, losing every worker
is a clear error, and the tests' own local Ray cluster leaves no process behind.

The Ray tests start one local cluster for the module (`ray.init`, no dashboard) and shut it down at
the end, then check that every process it started has exited. Unit tests of the task runner use the
tiny random model and no Ray.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
from tiny import tiny_model

import searchdec as sd
from searchdec.distributed import InProcessExecutor, Task, TaskRunner, task_seed
from searchdec.rewards import StepFunction, as_reward
from searchdec.search.rows import Stopping

ray = pytest.importorskip("ray")

PROMPTS = ["The capital of France is", [{"role": "user", "content": "Name a fruit."}]]


def words_near_six(prompt: str, output: str) -> float:
    return -abs(len(output.split()) - 6)


def step_lengths(prompt: str, steps: list[str]) -> list[float]:
    return [float(len(step) % 7) for step in steps]


def hypotheses(generations) -> list[tuple[list[int], list[float], str]]:
    return [(h.tokens, h.token_logprobs, h.finish_reason) for g in generations for h in g.hypotheses]


def tree(generation) -> dict:
    data = generation.trace.to_dict()
    data.pop("stats", None)
    return data


# --- the task runner (no Ray) -------------------------------------------------------------


def _task(model, id_: int, prefix: tuple[int, ...] = (), seeds=(1, 2, 3)) -> Task:
    return Task(
        id_,
        tuple(model.encode("hello")),
        prefix,
        Stopping(12, model.eos_token_ids, (), model.context_window),
        tuple(seeds),
        sd.Sample(temperature=1.0),
        top=3,
    )


def test_a_task_result_does_not_depend_on_what_the_runner_ran_before():
    model = tiny_model()
    fresh = TaskRunner(model).run(_task(model, 1, prefix=(70, 71)))
    busy = TaskRunner(model)
    busy.run(_task(model, 7))  # the prompt is now kept, with its entry and logits
    busy.run(_task(model, 8, prefix=(72,), seeds=(9,)))
    again = busy.run(_task(model, 1, prefix=(70, 71)))
    assert again.rows == fresh.rows and again.top == fresh.top
    assert again.tokens_forwarded < fresh.tokens_forwarded  # the kept prompt was not forwarded again


def test_a_row_depends_on_its_own_seed_only():
    model = tiny_model()
    together = TaskRunner(model).run(_task(model, 1, seeds=(5, 6, 7)))
    alone = TaskRunner(model).run(_task(model, 2, seeds=(6,)))
    assert together.rows[1].tokens == alone.rows[0].tokens


def test_task_seeds_are_stable_across_processes():
    assert task_seed(0, 1, 2) == 5458876493991123480
    assert task_seed(0, 1, 2) != task_seed(0, 2, 1)


def test_in_process_executor_is_reproducible_and_leaves_no_cache_after_close():
    model = tiny_model()
    search = sd.BestOfN(5, words_near_six, sample=sd.Sample(seed=3))
    runs = []
    for _ in range(2):
        with InProcessExecutor(batch_rows=2) as executor:
            runs.append(sd.generate(model, ["hello", "abc"], max_tokens=10, search=search, executor=executor))
            assert len(model.cache) == 2  # each prompt kept once, for later tasks
        assert len(model.cache) == 0
    assert hypotheses(runs[0]) == hypotheses(runs[1])
    assert [len(g.hypotheses) for g in runs[0]] == [5, 5]


def test_parallel_mcts_without_an_executor_runs_in_process_as_tasks():
    model = tiny_model()
    search = sd.MCTS(6, reward=words_near_six, max_children=3, parallel=3)
    default = sd.generate(model, ["hello", "abc"], max_tokens=8, search=search)
    with InProcessExecutor() as executor:
        explicit = sd.generate(model, ["hello", "abc"], max_tokens=8, search=search, executor=executor)
    assert hypotheses(default) == hypotheses(explicit)
    assert len(model.cache) == 0


def test_an_unsupported_search_on_an_executor_is_refused():
    with pytest.raises(ValueError, match="Beam does not run on an executor"):
        sd.generate(tiny_model(), "hi", search=sd.Beam(2), executor=InProcessExecutor())


def test_a_compiled_constraint_on_an_executor_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="constraint spec"):
        sd.generate(model, "hi", constraint=sd.regex("[ab]+").compile(model), executor=InProcessExecutor())


def test_a_ray_executor_refuses_a_loaded_model():
    with pytest.raises(TypeError, match="name or path"):
        sd.RayExecutor(tiny_model())


def test_a_lazy_reward_is_built_once_where_it_runs_and_pickles_as_its_recipe():
    built = []

    def factory(offset: float):
        built.append(offset)
        return lambda prompt, output: len(output) + offset

    reward = sd.LazyReward(factory, 0.5)
    assert reward.score_batch(["p", "p"], ["ab", "abc"]) == [2.5, 3.5] and reward("p", "a") == 1.5
    assert built == [0.5]
    assert pickle.loads(pickle.dumps(sd.LazyReward(len)))._built is None


def test_a_worker_takes_the_tasks_of_the_prompts_it_holds_first():
    from collections import deque

    from searchdec.distributed.ray_executor import _Member, _Pool

    a, b = _Member(None, "a"), _Member(None, "b")
    pool = _Pool(ray, "model", [a, b], in_flight=2, prompts=4)
    keys = ["p", "q", "p", "r", "q"].__getitem__
    pending = deque(range(5))
    a.prompts["q"] = True
    assert pool._pick(a, pending, keys, [a, b]) == 1  # its own prompt, though not first in line
    assert pool._pick(b, pending, keys, [a, b]) == 0  # a prompt nobody holds
    assert pool._pick(b, pending, keys, [a, b]) == 2  # now b holds "p"
    assert pool._pick(a, pending, keys, [a, b]) == 4
    assert pool._pick(a, pending, keys, [a, b]) == 3  # nothing of its own left: the next free prompt


# --- on a local Ray cluster ----------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    # Workers unpickle this module's rewards by reference: they must be able to import it.
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), *([path] if path else [])])
    try:
        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    finally:
        os.environ.pop("PYTHONPATH") if path is None else os.environ.__setitem__("PYTHONPATH", path)
    yield
    started = psutil.Process().children(recursive=True)
    assert started, "the local cluster's processes should be children of this process"
    ray.shutdown()
    deadline = time.time() + 30
    while time.time() < deadline and any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in started):
        time.sleep(0.2)
    left = [p.pid for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"Ray processes left behind: {left}"
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def workers(cluster):
    executor = sd.RayExecutor("smollm2-135m", workers=2, reward_workers=1)
    yield executor
    executor.close()


@pytest.mark.integration
def test_ray_workers_load_the_model_themselves(workers, smollm):
    assert [info["name"] for info in workers.info] == ["smollm2-135m", "smollm2-135m"]
    assert len({info["pid"] for info in workers.info}) == 2


SEEDED = {
    "sample": sd.Sample(temperature=0.9, n=3, seed=11),
    "best-of-n": sd.BestOfN(3, words_near_six, sample=sd.Sample(temperature=0.8, seed=1)),
    "mcts": sd.MCTS(5, reward=words_near_six, max_children=2, rollout="sample", sample=sd.Sample(seed=2)),
    "mcts-parallel": sd.MCTS(6, reward=words_near_six, max_children=3, parallel=3),
    "mcts-step": sd.MCTS(4, step=" ", reward=words_near_six, sample=sd.Sample(seed=3)),
    "step-beam": sd.StepBeam(2, 2, step_lengths, step=" ", max_step_tokens=3, sample=sd.Sample(seed=4)),
    "dvts": sd.DVTS(2, 2, step_lengths, step=" ", max_step_tokens=3, sample=sd.Sample(seed=5)),
    "first-finish": sd.FirstFinish(4, sample=sd.Sample(temperature=1.0, seed=6)),
}


@pytest.mark.integration
@pytest.mark.parametrize("name", list(SEEDED))
def test_a_seed_gives_the_same_result_with_no_executor_in_process_and_on_ray(workers, smollm, name):
    search = SEEDED[name]
    default = sd.generate(smollm, PROMPTS, max_tokens=8, search=search)
    local = sd.generate(smollm, PROMPTS, max_tokens=8, search=search, executor=InProcessExecutor())
    remote = sd.generate(smollm, PROMPTS, max_tokens=8, search=search, executor=workers)
    assert hypotheses(default) == hypotheses(local) == hypotheses(remote)
    assert [g.score for g in default] == [g.score for g in local] == [g.score for g in remote]
    if default[0].trace is not None:
        assert [tree(g) for g in default] == [tree(g) for g in local] == [tree(g) for g in remote]


@pytest.mark.integration
def test_constrained_samples_are_identical_in_process_and_on_ray(workers, smollm):
    search = sd.Sample(temperature=1.0, n=3, seed=7)
    number = sd.regex(r"[0-9]{1,3}(\.[0-9])?")
    local = sd.generate(smollm, PROMPTS, max_tokens=6, search=search, constraint=number, executor=InProcessExecutor())
    remote = sd.generate(smollm, PROMPTS, max_tokens=6, search=search, constraint=number, executor=workers)
    assert hypotheses(remote) == hypotheses(local)
    assert all(h.finish_reason == "stop" and h.text.replace(".", "").isdigit() for g in remote for h in g.hypotheses)


@pytest.mark.integration
def test_many_prompts_spread_over_workers_with_a_progress_bar(workers, smollm, capsys):
    prompts = [f"Count to {i}:" for i in range(8)]
    before = dict(workers.tasks_done)
    outs = sd.generate(smollm, prompts, max_tokens=4, executor=workers, progress=True)
    greedy = sd.generate(smollm, prompts, max_tokens=4, executor=InProcessExecutor())
    assert [o.tokens for o in outs] == [o.tokens for o in greedy]
    ran = {name: done - before[name] for name, done in workers.tasks_done.items()}
    assert sum(ran.values()) == 8 and all(n > 0 for n in ran.values())
    assert "8/8" in capsys.readouterr().err


@pytest.fixture(scope="module")
def fragile(cluster):
    """Three workers in a placement group, for the tests that kill them one by one."""
    executor = sd.RayExecutor("smollm2-135m", workers=3, placement="PACK")
    yield executor
    executor.close()


MCTS_9 = sd.MCTS(9, reward=words_near_six, max_children=3, parallel=3)


@pytest.fixture(scope="module")
def mcts_9_in_process(smollm):
    """What MCTS_9 gives in process: what a run that loses a worker must still give."""
    return sd.generate(smollm, PROMPTS, max_tokens=10, search=MCTS_9, executor=InProcessExecutor())


@pytest.mark.integration
def test_a_worker_killed_mid_mcts_changes_nothing(fragile, smollm, mcts_9_in_process):
    expected = mcts_9_in_process
    calls = []

    def killing_reward(prompt: str, output: str) -> float:
        calls.append(output)
        if len(calls) == 4:  # between rounds: the next round's tasks reach a dead worker
            ray.kill(fragile.actors[0])
        return words_near_six(prompt, output)

    search = replace(MCTS_9, reward=killing_reward)
    killed = sd.generate(smollm, PROMPTS, max_tokens=10, search=search, executor=fragile)
    assert hypotheses(killed) == hypotheses(expected)
    assert len(fragile.lost) == 1 and fragile.lost[0].startswith("worker-0")
    assert fragile.retried >= 1


@pytest.mark.integration
def test_a_worker_killed_while_its_tasks_run_changes_nothing(fragile, smollm, mcts_9_in_process):
    expected = mcts_9_in_process
    lost_before = len(fragile.lost)
    calls = []

    def killing_reward(prompt: str, output: str) -> float:
        calls.append(output)
        if len(calls) == 2:  # the next round's tasks take about a second each: kill during them
            threading.Timer(0.3, ray.kill, [fragile.actors[1]]).start()
        return words_near_six(prompt, output)

    search = replace(MCTS_9, reward=killing_reward)
    killed = sd.generate(smollm, PROMPTS, max_tokens=10, search=search, executor=fragile)
    assert hypotheses(killed) == hypotheses(expected)
    assert len(fragile.lost) == lost_before + 1 and fragile.lost[-1].startswith("worker-1")


@pytest.mark.integration
def test_losing_every_worker_is_a_clear_error(cluster, smollm):
    executor = sd.RayExecutor("smollm2-135m", workers=1)
    ray.kill(executor.actors[0])
    try:
        with pytest.raises(sd.WorkersLostError, match="every model worker is gone"):
            sd.generate(smollm, PROMPTS, max_tokens=4, search=sd.BestOfN(2, words_near_six), executor=executor)
    finally:
        executor.close()


def test_workers_the_cluster_cannot_hold_are_a_clear_error_not_a_hang(cluster):
    with pytest.raises(sd.ExecutorError, match="the workers need 3 GPU in all but the cluster has 0"):
        sd.RayExecutor("smollm2-135m", workers=3, num_gpus_per_worker=1)


def test_a_placement_group_the_cluster_cannot_hold_is_a_clear_error(cluster):
    # One node cannot spread two bundles strictly over two nodes.
    with pytest.raises(sd.ExecutorError, match="cannot place 2 worker bundles with strategy STRICT_SPREAD"):
        sd.RayExecutor("smollm2-135m", workers=2, placement="STRICT_SPREAD", placement_timeout=1)


@pytest.mark.integration
def test_reward_workers_score_in_batches(workers):
    assert workers.score(as_reward(words_near_six), ["p", "p"], ["a b c d e f", "a"]) == [0.0, -5.0]
    assert workers.score_steps(StepFunction(step_lengths), "p", [["abc", "de"], ["x"]]) == [[3.0, 2.0], [1.0]]
