"""MCTS with an execution reward: find an arithmetic expression over given numbers that hits a target.

The constraint keeps every output a well-formed expression; the reward runs it (a plain evaluation of
digits and operators only) and pays 1 for the exact target, less the further off it is.
Run:  python examples/mcts_puzzle.py
"""

import re

import searchdec as sd

model = sd.load("smollm2-135m")
numbers, target = [3, 5, 7], 22
expression = sd.regex(r"\(?[0-9]+( ?[-+*] ?\(?[0-9]+\)?){1,3}")


def execution_reward(prompt: str, output: str) -> float:
    if not re.fullmatch(r"[0-9+\-*() ]+", output):
        return -1.0
    try:
        value = eval(output, {"__builtins__": {}})  # digits and operators only (checked above)
    except SyntaxError:
        return -1.0
    used = sorted(int(n) for n in re.findall(r"[0-9]+", output))
    return (1.0 if value == target else 1 / (1 + abs(value - target))) - (0.5 if used != numbers else 0.0)


question = f"Using {numbers} once each with + - *, write an expression equal to {target}."
messages = [{"role": "user", "content": question}]
greedy = sd.generate(model, messages, max_tokens=16, constraint=expression)
out = sd.generate(
    model,
    messages,
    max_tokens=16,
    constraint=expression,
    search=sd.MCTS(64, c_puct=1.5, reward=execution_reward, max_children=6),
)
print("greedy:", greedy.text, "->", execution_reward("", greedy.text))
print("MCTS:  ", out.text, "->", out.score, out.stats)
out.trace.save("mcts_trace.html")
