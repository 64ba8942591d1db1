"""MBR against best-of-N and greedy at equal samples, on 20 one-step arithmetic word problems, with
the real default model (SmolLM2-135M-Instruct), same run.

Each problem is asked in a plain few-shot format ("A: 3 + 4 = 7. The answer is 7."); an output is
correct when its last number equals the answer. Systems:
- greedy: one output;
- best-of-N: N = 8 samples (temperature 0.7, seeded), the one of highest mean token log-probability
  (`rewards.MeanLogprob`, OpenAI's `best_of` criterion);
- MBR (exact): the same 8 samples (same seeds: the script checks the candidates are identical),
  the one whose extracted answer agrees with most of the others (`sd.MBR(8, utility="exact")`);
- MBR (chrF): the same samples, the one of highest mean chrF against the others;
- MBR over arithmetic sampling: 8 evenly spaced code points in place of independent samples.
Reported: accuracy, wall time for the 20 problems (all prompts in one `generate` call), and, for
the sampled systems, the oracle (some candidate is correct).

Run:  python benchmarks/families.py [--problems 20] [--n 8] [--temperature 0.7]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

import searchdec as sd
from searchdec.search.mbr import last_number

SHOTS = """Q: Nina has 5 shells and finds 2 more. How many shells does she have?
A: 5 + 2 = 7. The answer is 7.

Q: A jar has 10 candies. 4 are eaten. How many candies are left?
A: 10 - 4 = 6. The answer is 6.

Q: Paul has 3 boxes with 2 toys each. How many toys does he have?
A: 3 * 2 = 6. The answer is 6.

"""

PROBLEMS = [
    ("Sam has 3 apples and buys 4 more. How many apples does Sam have?", 7),
    ("A box holds 12 pens. 5 pens are taken out. How many pens are left?", 7),
    ("Mia reads 6 pages on Monday and 9 pages on Tuesday. How many pages does she read in total?", 15),
    ("There are 20 birds on a tree. 8 fly away. How many birds are left?", 12),
    ("Leo has 2 bags with 5 marbles each. How many marbles does he have?", 10),
    ("A farmer has 14 cows and sells 6. How many cows remain?", 8),
    ("Ana had 25 dollars and spent 10. How much money does she have now?", 15),
    ("A class has 11 boys and 13 girls. How many students are in the class?", 24),
    ("Tom bakes 3 trays of 4 cookies. How many cookies does he bake?", 12),
    ("A bus has 30 seats and 18 are taken. How many seats are free?", 12),
    ("Kim has 7 stickers and gets 8 more. How many stickers does Kim have?", 15),
    ("A rope is 16 meters long. 9 meters are cut off. How long is the rope now?", 7),
    ("There are 4 cars with 4 wheels each. How many wheels are there?", 16),
    ("Ben scores 21 points and then 9 more points. How many points does he have?", 30),
    ("A shop had 50 eggs and sold 24. How many eggs are left?", 26),
    ("Eva has 18 flowers and gives away 9. How many flowers does she keep?", 9),
    ("A book costs 8 dollars. How much do 3 books cost?", 24),
    ("Jake walks 5 km in the morning and 7 km in the evening. How far does he walk?", 12),
    ("There are 40 students and 15 go home. How many students stay?", 25),
    ("Lily has 9 red balloons and 6 blue balloons. How many balloons does she have?", 15),
]


def correct(text: str, answer: int) -> bool:
    return last_number(text) == str(answer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=len(PROBLEMS))
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, the same for every system")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    problems = PROBLEMS[: args.problems]
    prompts = [f"{SHOTS}Q: {question}\nA:" for question, _ in problems]
    answers = [answer for _, answer in problems]
    model = sd.load("smollm2-135m")
    n, t = args.n, args.temperature
    sampler = sd.Sample(temperature=t, n=n, seed=0)
    systems = {
        "greedy": sd.Greedy(),
        f"best-of-{n} (mean logprob)": sd.BestOfN(n, reward=sd.rewards.MeanLogprob(), sample=sampler),
        f"MBR exact ({n} samples)": sd.MBR(n, utility="exact", candidates=sampler),
        f"MBR chrF ({n} samples)": sd.MBR(n, utility="chrf", candidates=sampler),
        f"MBR exact ({n} arithmetic)": sd.MBR(
            n, utility="exact", candidates=sd.ArithmeticSampling(n, sample=sd.Sample(temperature=t, seed=0))
        ),
    }
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{platform.processor() or 'cpu'}"
    print(f"{len(problems)} arithmetic word problems, SmolLM2-135M-Instruct, {device}, {time.strftime('%Y-%m-%d')}")
    print(f"samples: temperature {t}, seed 0; torch threads {args.threads}")
    print(f"{'system':<30} {'accuracy':>9} {'oracle':>7} {'seconds':>8}", flush=True)
    candidates = {}
    for name, search in systems.items():
        start = time.perf_counter()
        outs = sd.generate(model, prompts, max_tokens=args.max_tokens, stop=["\n"], search=search)
        seconds = time.perf_counter() - start
        hits = sum(correct(out.text, a) for out, a in zip(outs, answers))
        oracle = sum(any(correct(h.text, a) for h in out.hypotheses) for out, a in zip(outs, answers))
        if name != "greedy" and "arithmetic" not in name:
            candidates[name] = [sorted(tuple(h.tokens) for h in out.hypotheses) for out in outs]
        shown = "" if name == "greedy" else f"{oracle}/{len(problems)}"
        print(f"{name:<30} {hits:>4}/{len(problems):<4} {shown:>7} {seconds:>8.1f}", flush=True)
    same = len({repr(c) for c in candidates.values()}) == 1
    print(f"best-of-N and MBR ranked the same candidates: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
