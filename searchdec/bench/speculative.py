"""Speculative decoding vs target-only greedy decoding on the real default model, same run.

For each draft source (prompt lookup; the target's first layers as a self-speculative draft) and
each prompt set (extraction: JSON out of a given text, where the output copies spans of the prompt;
free text), prints tokens/s of target-only greedy decoding and of `sd.Speculative`, their ratio
(speedup), tokens per target call (acceptance length) and the fraction of drafted tokens accepted.
Outputs are checked token-identical to target-only greedy (speculative greedy is lossless).

"adaptive k" is `schedule="heuristic"` (the draft length grows by 2 while all is accepted, shrinks by 1
otherwise, as transformers' assisted generation). Issue 16's lossless methods: "lookup x3" (three
lookup matches verified as a token tree in one forward), "suffix" and "suffix x3" (suffix-automaton
drafts over the prompt and output so far, `draft="suffix"`; the history of earlier calls is not
used: each row gets a fresh spec, so repeats do not draft from the previous repeat's outputs) and
"lookahead" (`sd.Lookahead()`, Jacobi window and n-gram pool). `--quick` runs only the rows of issue
16 with prompt lookup as the reference row, and skips the per-prompt table.

Run:  python benchmarks/speculative.py [--max-tokens 96] [--k 4] [--repeats 2] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import sys
import time

import searchdec as sd
from searchdec.search import speculative

RECORDS = [
    "Invoice 4471 from Northwind Traders, 12 Harbour Street, Portland, issued to Maria Anders on 2024-03-18 "
    "for 3 cases of Chai at 18.00 each, total 54.00, payable to account DE89 3704 0044 0532 0130 00.",
    "Patient: Thomas Hardy, born 1961-07-02, admitted to St. Mary's Hospital, Ward 7B, on 2023-11-05 with "
    "a fractured left wrist; attending physician Dr. Elena Petrova; discharged 2023-11-09.",
    "Order #A-99812 placed by Jonathan Okafor (jonathan.okafor@example.com, +1 415 555 0199) for a "
    "Lenovo ThinkPad X1 Carbon Gen 11, shipped via UPS Ground to 2100 Mission Street, San Francisco, CA 94110.",
    "Flight LH 454 from Frankfurt (FRA) to San Francisco (SFO), departing 2024-06-14 at 13:25, arriving "
    "15:55 local time, seat 32K, passenger Ingrid Johansson, booking reference QX7T2M.",
]
EXTRACTION = [
    [
        {
            "role": "user",
            "content": f"Text: {record}\n\nCopy every detail of the text into a JSON object, using the exact "
            "words and numbers from the text as values.",
        }
    ]
    for record in RECORDS
]
FREE = [
    [{"role": "user", "content": "Write a short story about a lighthouse keeper."}],
    [{"role": "user", "content": "Explain how a refrigerator works."}],
    [{"role": "user", "content": "Give advice to someone starting to learn the piano."}],
    [{"role": "user", "content": "Describe a walk through a forest in autumn."}],
]


def total(stats: list) -> speculative.SpeculativeStats:
    """Per-prompt SpeculativeStats summed over a batch."""
    fields = [f.name for f in dataclasses.fields(speculative.SpeculativeStats)]
    return speculative.SpeculativeStats(**{f: sum(getattr(s, f) for s in stats) for f in fields})


def build(options: dict):
    """A fresh spec per prompt (a suffix source would otherwise draft from the earlier prompts' outputs)."""
    return sd.Lookahead() if options.get("lookahead") else sd.Speculative(**options)


def timed(model, prompts, search, max_tokens, repeats):
    """Best wall time over `repeats` and the last outputs; `search` is a spec or a callable making one."""
    best, outs = None, None
    for _ in range(repeats):
        start = time.perf_counter()
        outs = [
            sd.generate(model, p, max_tokens=max_tokens, search=search() if callable(search) else search)
            for p in prompts
        ]
        elapsed = time.perf_counter() - start
        best = elapsed if best is None else min(best, elapsed)
    return best, outs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="searchdec bench speculative", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: the model's own choice)")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--self-layers", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="issue 16's rows and prompt lookup only")
    args = parser.parse_args(argv)
    model = sd.load("smollm2-135m", device=args.device)
    sd.generate(model, "warm up", max_tokens=4)
    sources = {
        "prompt lookup": {"draft": "prompt_lookup", "k": args.k},
        "lookup, adaptive k": {"draft": "prompt_lookup", "k": args.k, "schedule": "heuristic"},
        f"self ({args.self_layers} layers)": {"draft": sd.SelfSpeculative(args.self_layers), "k": args.k},
        "lookup x3": {"draft": "prompt_lookup", "k": args.k, "drafts": 3},
        "suffix": {"draft": "suffix", "k": args.k},
        "suffix x3": {"draft": "suffix", "k": args.k, "drafts": 3},
        "lookahead": {"lookahead": True},
    }
    if args.quick:
        sources = {name: sources[name] for name in ("prompt lookup", "lookup x3", "suffix", "suffix x3", "lookahead")}
    print(f"SmolLM2-135M-Instruct, greedy, max_tokens={args.max_tokens}, k={args.k}, best of {args.repeats}")
    header = [("prompts", 11, "<"), ("draft", 18, "<"), ("target tok/s", 12, ">"), ("spec tok/s", 11, ">")]
    header += [("speedup", 8, ">"), ("tok/call", 9, ">"), ("accepted", 9, ">"), ("identical", 9, ">")]
    print(" ".join(f"{name:{align}{width}}" for name, width, align in header))
    for name, prompts in (("extraction", EXTRACTION), ("free text", FREE)):
        base_time, base = timed(model, prompts, sd.Greedy(), args.max_tokens, args.repeats)
        tokens = sum(len(o.tokens) for o in base)
        for label, options in sources.items():
            spec_time, outs = timed(model, prompts, functools.partial(build, options), args.max_tokens, args.repeats)
            same = all(a.tokens == b.tokens for a, b in zip(base, outs))
            s = total([o.stats for o in outs])  # the last repeat's, over its prompts
            print(
                f"{name:11} {label:18} {tokens / base_time:12.1f} {tokens / spec_time:11.1f} "
                f"{base_time / spec_time:7.2f}x {s.tokens_per_target_call:9.2f} {s.acceptance_rate:8.0%} {str(same):>9}"
            )
    for label in () if args.quick else ("prompt lookup", "lookup, adaptive k"):
        per_prompt = []
        for p in EXTRACTION:
            t0, _ = timed(model, [p], sd.Greedy(), args.max_tokens, args.repeats)
            t1, _ = timed(model, [p], functools.partial(build, sources[label]), args.max_tokens, args.repeats)
            per_prompt.append(t0 / t1)
        print(
            f"extraction, {label}, per-prompt speedup: p50 {statistics.median(per_prompt):.2f}x, "
            f"min {min(per_prompt):.2f}x, max {max(per_prompt):.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
