"""MCTS with an execution reward: an arithmetic expression over given numbers that hits a target.

The constraint admits only expressions over the given numbers ("3 * 5 + 7"); the reward runs the
expression (digits and operators only, checked before evaluation) and pays 1 for the exact target,
less the further off it is, minus 0.5 unless every number is used exactly once.
Run:  python examples/mcts_puzzle.py   (writes mcts_trace.html, the search tree)
"""

import re

import searchdec as sd

model = sd.load("smollm2-135m")
numbers, target = [3, 5, 7], 22
digit = "[" + "".join(str(n) for n in numbers) + "]"
expression = sd.regex(rf"{digit} [-+*] {digit} [-+*] {digit}")


def execution_reward(prompt: str, output: str) -> float:
    if not re.fullmatch(r"[0-9+\-* ]+", output):
        return -1.0
    value = eval(output, {"__builtins__": {}})  # digits, spaces and + - * only (checked above)
    used = sorted(int(n) for n in re.findall(r"[0-9]+", output))
    return (1.0 if value == target else 1 / (1 + abs(value - target))) - (0.5 if used != numbers else 0.0)


question = f"Using each of {numbers} once with + - *, write an expression equal to {target}."
messages = [{"role": "user", "content": question}]
greedy = sd.generate(model, messages, max_tokens=12, constraint=expression)
out = sd.generate(
    model,
    messages,
    max_tokens=12,
    constraint=expression,
    search=sd.MCTS(48, c_puct=1.5, reward=execution_reward, max_children=6),
)
print("greedy:", greedy.text, "->", round(execution_reward("", greedy.text), 3))
print("MCTS:  ", out.text, "->", round(out.score, 3), out.stats)
out.trace.save("mcts_trace.html")
