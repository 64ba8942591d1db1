"""Step-level search with a reward callable: a step beam over lines of a worked solution, where the
"process reward" checks each line's arithmetic (every `a op b = c` in it must be true).

Run:  python examples/step_search.py
"""

import re

import searchdec as sd

model = sd.load("smollm2-135m")


def arithmetic_is_right(step: str) -> float:
    claims = re.findall(r"(\d+)\s*([-+*x])\s*(\d+)\s*=\s*(\d+)", step)
    ops = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__, "x": int.__mul__}
    if not claims:
        return 0.5  # nothing checkable in this step
    return sum(ops[op](int(a), int(b)) == int(c) for a, op, b, c in claims) / len(claims)


def prm(prompt: str, steps: list[str]) -> list[float]:
    return [arithmetic_is_right(step) for step in steps]


messages = [
    {
        "role": "user",
        "content": "Tom has 12 apples, buys 3 bags of 4 apples, then eats 5. How many now? "
        "Show the arithmetic line by line.",
    }
]
out = sd.generate(
    model, messages, max_tokens=120, search=sd.StepBeam(width=2, expansions=3, reward=prm, aggregate="min", step="\n")
)
print(out.text, "\n--- score", out.score, out.stats)
