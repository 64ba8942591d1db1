"""Search benchmarks on the real default model, with the peer in the same run.

1. Beam speed: `sd.Beam(4)` vs transformers `generate(num_beams=4)`, each prompt alone (batch 1),
   alternating which engine goes first; both must return the same tokens. Prints wall time p50/p99 per
   prompt for each engine and the ratio ours/theirs (<= 1.0 means at least as fast).
2. Prefix reuse: tokens forwarded through the network per returned token, for every algorithm on the
   same prompts (the prompt is forwarded once; a search that re-read prefixes would show it here).
3. Countdown-style arithmetic puzzles (use three given digits once each with + - * to reach a
   target), the answer checked by evaluation: solve rate, tokens forwarded and reward calls for
   greedy, best-of-N, beam, A*, MCTS, TreeBoN, CARDS and φ-decoding at similar token budgets, with a
   constraint that admits only expressions over the given digits and without (`--constraint` picks one).

Run:  python benchmarks/search.py [--repeats 3] [--puzzles 16] [--skip-speed] [--skip-puzzles] [--device cuda]
      searchdec bench search  (the quick rows: the beam speed row only, 3 prompts, 24 tokens, best of 2)
      python benchmarks/search.py --skip-speed --skip-reuse --only best-of-16 "TreeBoN(16, 4)"
      python benchmarks/search.py --skip-speed --skip-reuse --puzzles 8 --only best-of-16 "beam(16)" \
          "MCTS(24, token)" "TreeBoN(16, 4)" "CARDS(4 x 4)" "phi(2 x 4)"
"""

from __future__ import annotations

import argparse
import platform
import random
import re
import time
from functools import partial

import torch

import searchdec as sd
from searchdec.bench.peers import alternate, pct, prompt_ids, transformers_generate

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "Q: What is 17 times 3?\nA:",
    "The best way to learn a new language is",
    [{"role": "user", "content": "Write a Python function that reverses a string."}],
    [{"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "List three fruits."}],
]


def beam_ours(model, prompt, max_tokens, width):
    start = time.perf_counter()
    out = sd.generate(model, prompt, max_tokens=max_tokens, search=sd.Beam(width))
    return time.perf_counter() - start, out.tokens


def beam_theirs(model, prompt, max_tokens, width):
    run = transformers_generate(model, [prompt], max_tokens, num_beams=width)
    return run.seconds, run.tokens[0]


def speed(model, args) -> None:
    prompts = args.prompt_list
    print(
        f"\n## Beam({args.width}) vs transformers num_beams={args.width}: {len(prompts)} prompts, batch 1, "
        f"{args.max_tokens} new tokens, best of {args.repeats}"
    )
    beam_ours(model, PROMPTS[0], 8, args.width)  # warm-up
    beam_theirs(model, PROMPTS[0], 8, args.width)
    ours, theirs, ratios = [], [], []
    for i, prompt in enumerate(prompts):
        ours_runs, theirs_runs = alternate(
            partial(beam_ours, model, prompt, args.max_tokens, args.width),
            partial(beam_theirs, model, prompt, args.max_tokens, args.width),
            args.repeats,
            first=i,
            same=f"on prompt {i}",
        )
        a, b = min(t for t, _ in ours_runs), min(t for t, _ in theirs_runs)
        ours.append(a)
        theirs.append(b)
        ratios.append(a / b)
    print("| engine | p50 s/prompt | p99 s/prompt |")
    print("|---|---|---|")
    print(f"| searchdec | {pct(ours, 50):.3f} | {pct(ours, 99):.3f} |")
    print(f"| transformers | {pct(theirs, 50):.3f} | {pct(theirs, 99):.3f} |")
    print(
        f"ratio ours/theirs per prompt: p50 {pct(ratios, 50):.2f}, p99 {pct(ratios, 99):.2f}; "
        f"total {sum(ours) / sum(theirs):.2f}"
    )


def length_reward(prompt: str, output: str) -> float:
    return -abs(len(output.split()) - 12)


def length_prm(prompt: str, steps: list[str]) -> list[float]:
    return [length_reward(prompt, "".join(steps[: i + 1])) for i in range(len(steps))]


def reuse(model, args) -> None:
    prompts = args.prompt_list
    print(f"\n## Tokens forwarded per returned token ({len(prompts)} prompts, {args.max_tokens} new tokens)")
    steps = sd.Sample(temperature=0.8, seed=0)
    searches = {
        "Greedy": sd.Greedy(),
        "Beam(4)": sd.Beam(4),
        "BestFirstBeam(4)": sd.BestFirstBeam(4),
        "DiverseBeam(4, 2)": sd.DiverseBeam(4, 2, 0.5),
        "BestOfN(4)": sd.BestOfN(4, length_reward),
        "StepBeam(2, 2)": sd.StepBeam(2, 2, length_prm, step="\n", sample=steps),
        "DVTS(2, 2)": sd.DVTS(2, 2, length_prm, step="\n", sample=steps),
        "MCTS(16, token)": sd.MCTS(16, reward=length_reward, max_children=3),
        "MCTS(8, step)": sd.MCTS(8, step="\n", reward=length_reward, sample=steps),
        "AStar(step)": sd.AStar(length_reward, budget=400, step="\n", expansions=2, sample=steps),
    }
    print("| search | tokens forwarded | returned tokens | forwarded/returned | expansions | prompt tokens | s |")
    print("|---|---|---|---|---|---|---|")
    prompt_tokens = sum(len(prompt_ids(model, p)) for p in prompts)
    for name, search in searches.items():
        before = model.stats.tokens
        start = time.perf_counter()
        outs = sd.generate(model, prompts, max_tokens=args.max_tokens, search=search)
        elapsed = time.perf_counter() - start
        forwarded = model.stats.tokens - before
        returned = sum(len(o.tokens) for o in outs)
        expansions = sum(o.stats.expansions for o in outs) if outs[0].stats else "-"
        print(
            f"| {name} | {forwarded} | {returned} | {forwarded / returned:.1f} | {expansions} | {prompt_tokens} "
            f"| {elapsed:.1f} |"
        )
        assert len(model.cache) == 0, f"{name} left cache entries"


def puzzles(n: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """Countdown-style puzzles: three distinct digits and a target that `a op b op c` reaches."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        digits = rng.sample(range(2, 10), 3)
        a, b, c = digits
        expression = f"{a} {rng.choice('+-*')} {b} {rng.choice('+-*')} {c}"
        target = eval(expression)  # digits and operators we just wrote
        if 1 <= target <= 99 and target not in digits:
            out.append((sorted(digits), target))
    return out


EXPRESSION = re.compile(r"\d+(?:\s*[-+*]\s*\d+)+")


def evaluate(text: str, digits: list[int]) -> tuple[int | None, bool]:
    """The value of the first arithmetic expression in `text`, and whether it uses each digit once."""
    found = EXPRESSION.search(text)
    if not found:
        return None, False
    expression = found.group(0)
    value = eval(expression, {"__builtins__": {}})  # digits, spaces and + - * only (matched above)
    return value, sorted(int(n) for n in re.findall(r"\d+", expression)) == digits


def solve(model, args) -> None:
    tasks = puzzles(args.puzzles)
    messages = [
        [
            {
                "role": "user",
                "content": f"Using each of {d[0]}, {d[1]} and {d[2]} once with + - *, write an expression equal "
                f"to {t}. Reply with the expression only.",
            }
        ]
        for d, t in tasks
    ]
    prompts_text = [model.decode(model.apply_chat_template(m)) for m in messages]
    index = {text: i for i, text in enumerate(prompts_text)}

    def execution(prompt: str, output: str) -> float:
        """1 for the target with every digit once; less the further off; -0.5 unless the digits are right."""
        digits, target = tasks[index[prompt]]
        value, used = evaluate(output, digits)
        if value is None:
            return -1.0
        return (1.0 if value == target else 1 / (1 + abs(value - target))) - (0.0 if used else 0.5)

    def value(text: str) -> int | None:
        """What φ-decoding clusters rollouts by: the value of the expression written."""
        found = EXPRESSION.search(text)
        return None if not found else eval(found.group(0), {"__builtins__": {}})  # digits and + - * only

    def solved(i: int, text: str) -> bool:
        value, used = evaluate(text, tasks[i][0])
        return used and value == tasks[i][1]

    sample = sd.Sample(temperature=1.0, seed=0)
    searches = {
        "greedy": sd.Greedy(),
        "best-of-16": sd.BestOfN(16, execution, sample=sample),
        "beam(16)": sd.Beam(16),
        "A*(token, 3 exp)": sd.AStar(execution, budget=160, step="token", expansions=3, sample=sample),
        "MCTS(24, token)": sd.MCTS(24, reward=execution, max_children=6),
        # TreeBoN: 16 candidates of 3 tokens, the best 4 by the reward on the partial expression keep
        # growing (4 children each), twice, then run to the end
        "TreeBoN(16, 4)": sd.TreeBoN(16, branching=4, segment=3, rounds=2, reward=execution, sample=sample),
        # CARDS: 4 candidate segments a try (cut where the next token's entropy reaches 1.5 nats, 2 to 6
        # tokens), the first whose partial reward passes a threshold rising to 1.0 (solved) kept, the best
        # of 4 tries kept otherwise
        "CARDS(4 x 4)": sd.CARDS(
            reward=execution,
            reward_threshold=1.0,
            entropy=1.5,
            min_segment=2,
            max_segment=6,
            retries=4,
            candidates=4,
            sample=sample,
        ),  # fmt: skip
        # φ-decoding: 2 beams x 4 candidate steps (a step ends after a space), each valued by a rollout to
        # the end (its likelihood advantage, and how many rollouts reach the same value); no reward
        "phi(2 x 4)": sd.PhiDecoding(
            beams=2, candidates=4, max_steps=4, step=" ", max_step_tokens=3, answer=value, sample=sample
        ),
    }
    if args.only:
        searches = {name: search for name, search in searches.items() if name in args.only}
    print(
        f"\n## Countdown puzzles ({len(tasks)}: three digits, + - *, reach the target), execution reward; "
        "solved = the target with each digit once"
    )
    print("| search | constraint | solved | tokens forwarded/puzzle | reward calls/puzzle | s |")
    print("|---|---|---|---|---|---|")
    for constrained in {"both": (False, True), "none": (False,), "digits": (True,)}[args.constraint]:
        for name, search in searches.items():
            before = model.stats.tokens
            start = time.perf_counter()
            outs = []
            for (digits, _), m in zip(tasks, messages):
                allowed = "[" + "".join(map(str, digits)) + "]"
                constraint = sd.regex(f"{allowed} [-+*] {allowed} [-+*] {allowed}") if constrained else None
                outs.append(sd.generate(model, m, max_tokens=12, search=search, constraint=constraint))
            elapsed = time.perf_counter() - start
            forwarded = (model.stats.tokens - before) / len(tasks)
            calls = sum(o.stats.reward_calls for o in outs) / len(tasks) if outs[0].stats else 0
            wins = sum(solved(i, o.text) for i, o in enumerate(outs))
            print(
                f"| {name} | {'digits' if constrained else 'none'} | {wins}/{len(tasks)} | {forwarded:.0f} "
                f"| {calls:.0f} | {elapsed:.1f} |"
            )


QUICK_PROMPTS = [PROMPTS[0], PROMPTS[3], PROMPTS[5]]  # text, a question, chat


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="searchdec bench search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: the model's own choice)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=None, help="the first N prompts of the speed and reuse rows")
    parser.add_argument("--puzzles", type=int, default=16)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-reuse", action="store_true")
    parser.add_argument("--skip-puzzles", action="store_true")
    parser.add_argument("--only", nargs="+", default=None, help="puzzle rows to run, by name (default: all)")
    parser.add_argument("--constraint", choices=("both", "none", "digits"), default="both", help="puzzle settings")
    parser.add_argument("--quick", action="store_true", help="the beam speed row only: 3 prompts, 24 tokens, best of 2")
    args = parser.parse_args(argv)
    for flag in ("max_tokens", "width", "repeats", "prompts"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    args.prompt_list = QUICK_PROMPTS if args.quick else PROMPTS
    if args.quick:
        args.max_tokens, args.repeats = min(args.max_tokens, 24), min(args.repeats, 2)
        args.skip_reuse = args.skip_puzzles = True
    args.prompt_list = args.prompt_list[: args.prompts]
    model = sd.load(args.model, device=args.device)
    print(
        f"# searchdec search benchmark — {model.name}, {model.dtype}, {model.device}; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}"
    )
    if not args.skip_speed:
        speed(model, args)
    if not args.skip_reuse:
        reuse(model, args)
    if not args.skip_puzzles:
        solve(model, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
