"""Contrastive decoding vs greedy decoding on a small arithmetic set, real default model, same run.

Twenty one- and two-step arithmetic questions (fixed below, answers computed) asked through the chat
template of SmolLM2-135M-Instruct; an answer counts when the last integer of the output equals the
true result (the model tends to restate the question: "13 + 29 = 42"). There is no smaller model
with SmolLM2's tokenizer, so the amateur is the model's own first k layers (`sd.EarlyExit(k)`: early
exit through the final norm and the LM head). Prints accuracy and seconds per configuration: greedy,
then `sd.Contrastive` with Li et al.'s score (log p_e - log p_a) and with O'Brien & Lewis's
(beta = 0.5), alpha = 0.1, for each k given (`--li`, `--obrien`).

Run (from the repository root, CPU-heavy):
    PYTHONPATH=. nice python benchmarks/contrastive.py [--li 15] [--obrien 15 24] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import re
import time

import searchdec as sd

# (question, answer): a fixed, varied set; answers are computed, not typed.
QUESTIONS = [
    ("What is 17 + 25?", 17 + 25),
    ("What is 8 times 7?", 8 * 7),
    ("What is 45 - 19?", 45 - 19),
    ("What is 120 divided by 4?", 120 // 4),
    ("What is 13 + 29?", 13 + 29),
    ("What is 9 times 6?", 9 * 6),
    ("What is 100 - 37?", 100 - 37),
    ("What is 64 divided by 8?", 64 // 8),
    ("What is 250 + 175?", 250 + 175),
    ("What is 12 times 12?", 12 * 12),
    ("Tom has 12 apples and gives away 5. How many apples does he have left?", 12 - 5),
    ("A box holds 6 eggs. How many eggs are in 4 boxes?", 6 * 4),
    ("Sara had 30 dollars and spent 12. How many dollars does she have now?", 30 - 12),
    ("There are 5 rows of 9 chairs. How many chairs are there?", 5 * 9),
    ("A train travels 60 miles per hour for 3 hours. How many miles does it travel?", 60 * 3),
    ("What is 3 + 4 times 2?", 3 + 4 * 2),
    ("What is (15 + 5) divided by 4?", (15 + 5) // 4),
    ("Anna reads 15 pages a day. How many pages does she read in 7 days?", 15 * 7),
    ("A shirt costs 25 dollars. How much do 3 shirts cost?", 25 * 3),
    ("What is 1000 - 999 + 41?", 1000 - 999 + 41),
]
INSTRUCTION = " Answer with the number only."


def last_integer(text: str) -> int | None:
    found = re.findall(r"-?\d+", text.replace(",", ""))
    return int(found[-1]) if found else None


def evaluate(model, search, max_tokens: int) -> tuple[int, float, list[str]]:
    prompts = [[{"role": "user", "content": q + INSTRUCTION}] for q, _ in QUESTIONS]
    start = time.perf_counter()
    outs = sd.generate(model, prompts, max_tokens=max_tokens, search=search)
    seconds = time.perf_counter() - start
    correct = sum(last_integer(out.text) == answer for out, (_, answer) in zip(outs, QUESTIONS))
    return correct, seconds, [out.text for out in outs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--li", type=int, nargs="*", default=[15], help="amateur depths for Li et al.'s score")
    parser.add_argument("--obrien", type=int, nargs="*", default=[15, 24], help="amateur depths for O'Brien & Lewis's")
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--show", action="store_true", help="print every output")
    args = parser.parse_args()

    model = sd.load(args.model)
    depth = model.config.num_hidden_layers
    configs = [("greedy", sd.Greedy())]
    for k in args.li:
        configs.append((f"CD Li, amateur = first {k}/{depth} layers", sd.Contrastive(k, alpha=args.alpha)))
    for k in args.obrien:
        configs.append((f"CD O'Brien b=0.5, first {k}/{depth} layers", sd.Contrastive(k, alpha=args.alpha, beta=0.5)))
    print(f"{model.name}, {len(QUESTIONS)} arithmetic questions, alpha={args.alpha}, max_tokens={args.max_tokens}")
    print(f"{'configuration':<44} {'accuracy':>9} {'seconds':>8}")
    for name, search in configs:
        correct, seconds, texts = evaluate(model, search, args.max_tokens)
        print(f"{name:<44} {correct:>4}/{len(QUESTIONS):<4} {seconds:>8.1f}", flush=True)
        if args.show:
            for (question, answer), text in zip(QUESTIONS, texts):
                print(f"    {question} [{answer}] -> {text!r}")


if __name__ == "__main__":
    main()
