"""Reward-guided speculative decoding (RSD) on a task with a verifiable step reward, beside the
draft alone and the target alone, same run.

Task: two-step arithmetic ("Start with 23. Add 5, then subtract 4."), answered in the few-shot
format "23 + 5 = 28" / "28 - 4 = 24" / "The answer is 24.", one line per step. Draft:
SmolLM2-135M-Instruct; target: Gemma-3-270M (base; another tokenizer, 262k vocabulary: RSD passes
steps as text). Both read the same plain-text few-shot prompt.

Step rewards (process checks that never see the answer):
- "chain": a line "x op y = z" scores 1 when x is the previous result (the start number for the
  first line), "op y" is the question's next operation and z is right; "The answer is N." scores 1
  when N is the last result; a blank line (the end) scores 1 right after the answer line; else 0;
- "arithmetic": only whether z = x op y holds (weaker: a true but irrelevant line passes).
Quality is the exact final answer. Reported per system: accuracy, wall time, and for RSD the fraction
of steps kept from the draft and the target forwards avoided (draft tokens kept).

With `--searches`, the draft model alone runs the reward-guided searches on the same problems with the
"chain" reward, one table at equal settings: greedy, beam, best-of-N (ranked by the reward of the whole
answer), MCTS over lines and TreeBoN (lines as segments, the partial answer scored after each line):
accuracy, tokens forwarded and reward calls per problem.

Run:  python benchmarks/reward_guided.py [--problems 16] [--threshold 0.5]
      python benchmarks/reward_guided.py --searches [--problems 16] [--samples 8]
"""

from __future__ import annotations

import argparse
import platform
import random
import re
import time

import torch

import searchdec as sd
from searchdec.rewards import Reward

SHOTS = """Q: Start with 12. Add 5, then add 3.
A: 12 + 5 = 17
17 + 3 = 20
The answer is 20.

Q: Start with 31. Add 4, then subtract 6.
A: 31 + 4 = 35
35 - 6 = 29
The answer is 29.

Q: Start with 47. Subtract 3, then add 8.
A: 47 - 3 = 44
44 + 8 = 52
The answer is 52.

"""
WORDS = {"+": "add", "-": "subtract"}
CLAIM = re.compile(r"^\s*(-?\d+)\s*([-+])\s*(\d+)\s*=\s*(-?\d+)\s*$")
ANSWER = re.compile(r"The answer is (-?\d+)\.?")


def problems(n: int, seed: int = 0) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start = rng.randint(11, 59)
        ops = [(rng.choice("+-"), rng.randint(2, 9)) for _ in range(2)]
        said = ", then ".join(f"{WORDS[op]} {y}" for op, y in ops)
        value = start
        for op, y in ops:
            value = value + y if op == "+" else value - y
        out.append((f"Start with {start}. {said[0].upper()}{said[1:]}.", value))
    return out


def parse_question(prompt: str) -> tuple[int, list[tuple[str, int]]]:
    question = prompt.rsplit("Q:", 1)[-1]
    start = int(re.search(r"Start with (-?\d+)", question).group(1))
    pairs = re.findall(r"(add|subtract) (\d+)", question, flags=re.IGNORECASE)
    ops = [("+" if w.lower() == "add" else "-", int(y)) for w, y in pairs]
    return start, ops


class ArithmeticSteps(Reward):
    """The score of an answer's last line (see the module docstring); `chain` adds the process check."""

    def __init__(self, chain: bool) -> None:
        super().__init__()
        self.chain = chain

    def _score(self, prompts, outputs):
        return [self._one(p, o) for p, o in zip(prompts, outputs)]

    def _one(self, prompt: str, output: str) -> float:
        if not output.strip():
            return 1.0
        if output.endswith("\n\n"):  # a blank line ends the answer: right after the answer line only
            return 1.0 if not self.chain else float(bool(ANSWER.search(output.strip("\n").split("\n")[-1])))
        lines = output.strip("\n").split("\n")
        last, earlier = lines[-1], lines[:-1]
        start, ops = parse_question(prompt)
        results = []
        for line in earlier:
            m = CLAIM.match(line)
            if m:
                results.append(int(m.group(4)))
        claim = CLAIM.match(last)
        if claim:
            x, op, y, z = int(claim.group(1)), claim.group(2), int(claim.group(3)), int(claim.group(4))
            true = z == (x + y if op == "+" else x - y)
            if not self.chain:
                return float(true)
            index = len(results)
            expected_x = results[-1] if results else start
            return float(true and index < len(ops) and x == expected_x and (op, y) == ops[index])
        answer = ANSWER.search(last)
        if answer:
            if not self.chain:
                return 1.0
            return float(bool(results) and len(results) == len(ops) and int(answer.group(1)) == results[-1])
        return 0.0


def final(text: str) -> int | None:
    m = ANSWER.search(text)
    return int(m.group(1)) if m else None


def run(model, prompts, answers, search, max_tokens):
    start = time.perf_counter()
    outs = [sd.generate(model, p, max_tokens=max_tokens, stop=["\n\n", "Q:"], search=search) for p in prompts]
    elapsed = time.perf_counter() - start
    correct = sum(final(o.text) == a for o, a in zip(outs, answers))
    return correct, elapsed, outs


def compare_searches(model, prompts, answers, args) -> None:
    """The reward-guided searches on the draft model with the chain reward (module docstring)."""
    reward = ArithmeticSteps(chain=True)
    sample = sd.Sample(temperature=1.0, seed=0)
    n = args.samples
    searches = {
        "greedy": sd.Greedy(),
        f"beam({n})": sd.Beam(n),
        f"best-of-{n}": sd.BestOfN(n, reward, sample=sample),
        f"MCTS({n}, line)": sd.MCTS(n, step="\n", reward=reward, sample=sample),
        f"TreeBoN({n}, 2, line)": sd.TreeBoN(
            n, branching=2, segment=24, rounds=2, step="\n", reward=reward, sample=sample
        ),
    }
    print(
        f"\n## Reward-guided searches on {model.name}, chain reward, {len(prompts)} two-step problems, "
        f"max_tokens={args.max_tokens}"
    )
    print("| search | correct | tokens forwarded/problem | reward calls/problem | s |")
    print("|---|---|---|---|---|")
    for name, search in searches.items():
        before = model.stats.tokens
        correct, elapsed, outs = run(model, prompts, answers, search, args.max_tokens)
        forwarded = (model.stats.tokens - before) / len(prompts)
        calls = sum(o.stats.reward_calls for o in outs) / len(prompts) if outs[0].stats else 0
        print(f"| {name} | {correct}/{len(prompts)} | {forwarded:.0f} | {calls:.0f} | {elapsed:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--searches", action="store_true", help="compare the searches on the draft model instead")
    parser.add_argument("--samples", type=int, default=8, help="samples (beams, simulations) of each search")
    args = parser.parse_args()
    if args.searches:
        model = sd.load("smollm2-135m")
        tasks = problems(args.problems)
        compare_searches(model, [SHOTS + f"Q: {q}\nA:" for q, _ in tasks], [a for _, a in tasks], args)
        return
    draft, target = sd.load("smollm2-135m"), sd.load("gemma3-270m")
    tasks = problems(args.problems)
    prompts = [SHOTS + f"Q: {q}\nA:" for q, _ in tasks]
    answers = [a for _, a in tasks]
    print(
        f"# RSD benchmark — draft {draft.name}, target {target.name}; {len(tasks)} two-step problems, greedy, "
        f"max_tokens={args.max_tokens}, threshold={args.threshold}; {platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}"
    )
    print("| system | correct | wall s | steps from draft | target forwards avoided | target tokens |")
    print("|---|---|---|---|---|---|")
    ok, t, _ = run(draft, prompts, answers, sd.Greedy(), args.max_tokens)
    print(f"| draft only (SmolLM2-135M) | {ok}/{len(tasks)} | {t:.1f} | - | - | 0 |")
    ok, t, outs = run(target, prompts, answers, sd.Greedy(), args.max_tokens)
    target_tokens = sum(len(o.tokens) for o in outs)
    print(f"| target only (Gemma-3-270M) | {ok}/{len(tasks)} | {t:.1f} | - | 0 | {target_tokens} |")
    for name, chain in (("chain", True), ("arithmetic", False)):
        reward = ArithmeticSteps(chain)
        steps = draft_steps = avoided = spent = 0
        start = time.perf_counter()
        correct = 0
        for p, a in zip(prompts, answers):
            rsd = sd.RewardGuidedSpeculative(draft=draft, reward=reward, threshold=args.threshold, step="\n")
            out = sd.generate(target, p, max_tokens=args.max_tokens, stop=["\n\n", "Q:"], search=rsd)
            correct += final(out.text) == a
            steps += out.stats.steps
            draft_steps += out.stats.draft_steps
            avoided += out.stats.target_calls_avoided
            spent += out.stats.target_tokens
        elapsed = time.perf_counter() - start
        print(
            f"| RSD, {name} reward | {correct}/{len(tasks)} | {elapsed:.1f} | {draft_steps}/{steps} "
            f"({draft_steps / max(steps, 1):.0%}) | {avoided} | {spent} |"
        )


if __name__ == "__main__":
    main()
