"""Greedy decoding speed: searchdec vs transformers `generate(do_sample=False)`, same model, same run.

Both decode the same prompts to the same tokens (the test suite checks they are identical), so the
throughput ratio is a pure speed comparison. Each prompt is timed several times, alternating which
engine goes first; the table shows tokens/s per engine and the ratio ours/theirs (higher is better),
with p50 and p99 over prompts of the per-prompt ratio and of per-token latency.

The constrained rows also time the step with a batch's masks filled after the forward instead of
beside it (`searchdec.search.rows.OVERLAP_MASKS`), one prompt and a batch of prompts, in the same run.

Run:  python benchmarks/decode.py [--model smollm2-135m] [--max-tokens 64] [--repeats 3] [--batch 8]
      searchdec bench decode  (the quick rows: 3 prompts, 32 tokens, batch of 4)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from functools import partial

import torch

import searchdec as sd
from searchdec.bench.peers import alternate, pct, prompt_ids, transformers_generate
from searchdec.search import rows

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three laws of thermodynamics are",
    "Q: What is 17 times 3?\nA:",
    "The best way to learn a new language is",
    [{"role": "user", "content": "Write a Python function that reverses a string."}],
    [{"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "Summarize the plot of Romeo and Juliet."}],
    [{"role": "user", "content": "Explain recursion to a child."}],
]


def run_ours(model, prompt, max_tokens):
    start = time.perf_counter()
    out = sd.generate(model, prompt, max_tokens=max_tokens)
    return time.perf_counter() - start, out.tokens


def run_theirs(model, prompt, max_tokens):
    run = transformers_generate(model, [prompt], max_tokens)
    return run.seconds, run.tokens[0]


def run_batch_ours(model, prompts, max_tokens):
    start = time.perf_counter()
    outs = sd.generate(model, prompts, max_tokens=max_tokens)
    return time.perf_counter() - start, sum(len(o.tokens) for o in outs)


def run_batch_theirs(model, prompts, max_tokens):
    run = transformers_generate(model, prompts, max_tokens)  # tokens counted up to the first EOS, as ours
    return run.seconds, sum(len(tokens) for tokens in run.tokens)


PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string", "maxLength": 60},
        "address": {
            "type": "object",
            "properties": {
                "street": {"type": "string", "maxLength": 60},
                "city": {"type": "string", "maxLength": 40},
                "country": {"type": "string", "maxLength": 40},
            },
            "required": ["street", "city", "country"],
            "additionalProperties": False,
        },
        "verified": {"type": "boolean"},
    },
    "required": ["name", "age", "email", "address", "verified"],
    "additionalProperties": False,
}
JSON_PROMPTS = [
    [{"role": "user", "content": "Make up a customer record as JSON."}],
    [{"role": "user", "content": "Describe a person with their address, in JSON."}],
    [{"role": "user", "content": "Give a JSON profile of a fictional author."}],
]


def constrained_section(model, args, prompts) -> None:
    """Decode tokens/s (after the first token, so prompt length does not weigh in) of JSON-Schema-
    constrained greedy decoding, with and without jump-forward, beside unconstrained greedy decoding
    of the same prompts: the cost of the mask, and what forced text saves. The masks are filled beside
    the forward (rows.OVERLAP_MASKS) except in the rows that say "after the forward"; the batch rows
    decode all prompts together (one mask fill of several rows per step)."""
    constraint = sd.json_schema(PERSON_SCHEMA).compile(model)
    runs = {
        "unconstrained": ({}, True),
        "constrained, no jump-forward": ({"constraint": constraint, "jump_forward": False}, True),
        "  masks after the forward": ({"constraint": constraint, "jump_forward": False}, False),
        "constrained + jump-forward": ({"constraint": constraint, "jump_forward": True}, True),
    }
    figures = {}
    for label, (kwargs, overlap) in runs.items():
        rows.OVERLAP_MASKS = overlap
        tokens = elapsed = calls = 0
        for prompt in prompts:
            best = None
            for _ in range(args.repeats):
                before = model.stats.calls
                first: list[float] = []  # when the first token arrived: the prompt's forward is left out

                def on_token(_index, _node, first=first):
                    if not first:
                        first.append(time.perf_counter())

                out = sd.generate(model, prompt, max_tokens=args.max_tokens * 2, on_token=on_token, **kwargs)
                took = time.perf_counter() - first[0]
                decoded = len(out.tokens) - 1  # tokens produced after the first one
                if best is None or took / decoded < best[0] / best[1]:
                    best = (took, decoded, model.stats.calls - before - 1)
            elapsed, tokens, calls = elapsed + best[0], tokens + best[1], calls + best[2]
        figures[label] = (tokens / elapsed, tokens, calls)
    for label, (kwargs, overlap) in {
        "batch, unconstrained": ({}, True),
        "batch, constrained": ({"constraint": constraint, "jump_forward": False}, True),
        "  batch, masks after the forward": ({"constraint": constraint, "jump_forward": False}, False),
    }.items():
        rows.OVERLAP_MASKS = overlap
        best = None
        for _ in range(args.repeats):
            before = model.stats.calls
            start = time.perf_counter()
            outs = sd.generate(model, list(prompts), max_tokens=args.max_tokens * 2, **kwargs)
            took = time.perf_counter() - start
            if best is None or took < best[0]:
                best = (took, sum(len(o.tokens) for o in outs), model.stats.calls - before)
        figures[label] = (best[1] / best[0], best[1], best[2])
    rows.OVERLAP_MASKS = True
    base = figures["unconstrained"][0]
    print(f"\nJSON Schema ({len(prompts)} chat prompts, up to {args.max_tokens * 2} tokens, best of {args.repeats})")
    print(f"{'':<30} {'tok/s':>7} {'tokens':>7} {'forwards':>9} {'vs unconstrained':>17}  (after the first token)")
    for label, (tps, tokens, calls) in figures.items():
        if label == "batch, unconstrained":
            base = tps
            print("batch rows: all prompts decoded together, prompt forwards included")
        print(f"{label:<30} {tps:>7.1f} {tokens:>7} {calls:>9} {tps / base:>17.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="searchdec bench decode", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: the model's own choice)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8, help="prompts per batch in the batched comparison")
    parser.add_argument("--quick", action="store_true", help="3 prompts, 32 tokens, best of 2, batch of 4")
    args = parser.parse_args(argv)
    prompts = PROMPTS
    if args.quick:
        prompts = [PROMPTS[0], PROMPTS[4], PROMPTS[6]]
        args.max_tokens, args.repeats, args.batch = min(args.max_tokens, 32), min(args.repeats, 2), min(args.batch, 4)

    model = sd.load(args.model, device=args.device)
    print(
        f"model {args.model} | {model.dtype} | {model.device} | torch {torch.__version__} "
        f"threads={torch.get_num_threads()} | {platform.processor() or platform.machine()}"
    )
    run_ours(model, PROMPTS[0], 8)
    run_theirs(model, PROMPTS[0], 8)

    rows = []
    for i, prompt in enumerate(prompts):
        ours_runs, theirs_runs = alternate(
            partial(run_ours, model, prompt, args.max_tokens),
            partial(run_theirs, model, prompt, args.max_tokens),
            args.repeats,
            first=i,
            same=f"on prompt {i}",
        )
        n = len(ours_runs[-1][1])
        rows.append((i, n, min(t for t, _ in ours_runs), min(t for t, _ in theirs_runs)))

    print(f"\nsingle prompt, greedy, up to {args.max_tokens} new tokens, best of {args.repeats}")
    print(f"{'prompt':>6} {'tokens':>6} {'ours tok/s':>11} {'hf tok/s':>10} {'ratio':>6}")
    for i, n, ours, theirs in rows:
        print(f"{i:>6} {n:>6} {n / ours:>11.1f} {n / theirs:>10.1f} {theirs / ours:>6.3f}")
    ratios = [theirs / ours for _, _, ours, theirs in rows]
    ours_lat = [ours / n * 1000 for _, n, ours, _ in rows]
    theirs_lat = [theirs / n * 1000 for _, n, _, theirs in rows]
    total_tokens = sum(n for _, n, _, _ in rows)
    ours_tps = total_tokens / sum(o for _, _, o, _ in rows)
    theirs_tps = total_tokens / sum(t for _, _, _, t in rows)
    print(
        f"\noverall: ours {ours_tps:.1f} tok/s, transformers {theirs_tps:.1f} tok/s, "
        f"ratio {ours_tps / theirs_tps:.3f} (target >= 0.95)"
    )
    print(f"per-prompt ratio: p50 {pct(ratios, 50):.3f}  p99 {pct(ratios, 99):.3f}  min {min(ratios):.3f}")
    print(
        f"ms/token ours: p50 {pct(ours_lat, 50):.2f} p99 {pct(ours_lat, 99):.2f} | "
        f"transformers: p50 {pct(theirs_lat, 50):.2f} p99 {pct(theirs_lat, 99):.2f}"
    )

    long_prompt = " ".join(f"Item {i} costs {i * 3} dollars." for i in range(90)) + " The most expensive item is"
    ours_l, theirs_l = (
        [(elapsed, len(toks)) for elapsed, toks in runs]
        for runs in alternate(
            partial(run_ours, model, long_prompt, args.max_tokens),
            partial(run_theirs, model, long_prompt, args.max_tokens),
            args.repeats,
        )
    )
    (ours_lt, n_long), (theirs_lt, _) = min(ours_l), min(theirs_l)
    print(
        f"\nlong prompt ({len(prompt_ids(model, long_prompt))} tokens), {n_long} new tokens: "
        f"ours {n_long / ours_lt:.1f} tok/s, transformers {n_long / theirs_lt:.1f} tok/s, "
        f"ratio {theirs_lt / ours_lt:.3f}"
    )

    constrained_section(model, args, JSON_PROMPTS[:2] if args.quick else JSON_PROMPTS)

    batch = PROMPTS[: args.batch]
    ours_b = min(run_batch_ours(model, batch, args.max_tokens)[0] for _ in range(args.repeats))
    theirs_runs = [run_batch_theirs(model, batch, args.max_tokens) for _ in range(args.repeats)]
    theirs_b = min(t for t, _ in theirs_runs)
    produced = run_batch_ours(model, batch, args.max_tokens)[1]
    print(
        f"\nbatch of {len(batch)} prompts: ours {produced / ours_b:.1f} tok/s, transformers "
        f"{produced / theirs_b:.1f} tok/s (same useful tokens), ratio {theirs_b / ours_b:.3f}"
    )
    print(
        f"forward calls so far: {model.stats.calls}, tokens forwarded: {model.stats.tokens}; "
        f"median single-prompt ratio {statistics.median(ratios):.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
