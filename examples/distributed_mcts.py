"""MCTS on Ray workers: 8 simulations a round run in parallel, with the same result in process.

Two model workers load the model themselves; each round selects 8 leaves with virtual loss and
dispatches their expansions and rollouts as tasks; the reward runs on a reward worker. The in-process
executor runs the same tasks here, and the two answers are identical.
Run:  pip install 'searchdec[ray]' && python examples/distributed_mcts.py
"""

import searchdec as sd


def digits_reward(prompt: str, output: str) -> float:
    return 1.0 if "51" in output else -abs(len(output.split()) - 3) / 10


model = sd.load("smollm2-135m")
messages = [{"role": "user", "content": "What is 17 times 3? Answer with the number."}]
search = sd.MCTS(32, reward=digits_reward, max_children=4, parallel=8)

with sd.RayExecutor("smollm2-135m", workers=2, reward_workers=1) as workers:
    remote = sd.generate(model, messages, max_tokens=12, search=search, executor=workers, progress=True)
    print("workers:", workers.info, "tasks:", workers.tasks_done)
local = sd.generate(model, messages, max_tokens=12, search=search, executor=sd.InProcessExecutor())
print("Ray:       ", repr(remote.text), remote.score)
print("in-process:", repr(local.text), local.score, "(identical)" if local.tokens == remote.tokens else "(DIFFERENT)")
