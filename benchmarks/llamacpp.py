"""The GGUF-native runtime against llama.cpp's own decode and against our torch runtime, in one run.

Rows (the default model, SmolLM2-135M-Instruct Q4_1, same thread count for all):
1. Greedy, batch 1: llama.cpp's own loop through llama-cpp-python (`llama_decode` of one token per
   call, argmax over its logits: no grammar, no search, no bookkeeping), searchdec on llama.cpp
   (`sd.generate`, Greedy), searchdec on torch (the GGUF dequantized to float32). Tokens/s, and p50/p99
   of the time per token; ratios to llama.cpp's own loop and to the torch runtime.
2. Constrained greedy (a JSON schema) on llama.cpp, beside the unconstrained row.
3. Beam(4) on each runtime: wall time, tokens forwarded (both forward only new tokens).
4. Memory: the weights each runtime holds.

Needs llama-cpp-python (`pip install 'searchdec[llamacpp]'`).
Usage: python benchmarks/llamacpp.py [--threads N] [--max-tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import searchdec as sd

PROMPTS = [
    [{"role": "user", "content": "Write a short poem about the sea."}],
    [{"role": "user", "content": "Explain what a hash table is."}],
    [{"role": "user", "content": "List three uses of copper."}],
]
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "uses": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "uses"],
}


def raw_greedy(model, ids: list[int], n: int, flash_attention: bool | None) -> tuple[list[float], list[int]]:
    """llama.cpp's own greedy loop in a context of its own: per-token seconds and the tokens."""
    import llama_cpp as L

    params = L.llama_context_default_params()
    params.n_ctx, params.n_threads, params.n_threads_batch = 2048, model.threads, model.threads
    if flash_attention is not None:
        params.flash_attn_type = int(flash_attention)
    ctx = L.llama_init_from_model(model._model, params)
    try:
        start = time.perf_counter()
        prompt = (L.llama_token * len(ids))(*ids)
        assert L.llama_decode(ctx, L.llama_batch_get_one(prompt, len(ids))) == 0
        times, tokens = [], []
        for _ in range(n):
            logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(model.vocab_size,))
            tokens.append(int(logits.argmax()))
            one = (L.llama_token * 1)(tokens[-1])
            assert L.llama_decode(ctx, L.llama_batch_get_one(one, 1)) == 0
            now = time.perf_counter()
            times.append(now - start)
            start = now
        return times, tokens
    finally:
        L.llama_free(ctx)


def ours(model, messages, n: int, constraint=None) -> tuple[list[float], list[int]]:
    stamps = [time.perf_counter()]

    def on_token(_index, _node):
        stamps.append(time.perf_counter())

    out = sd.generate(model, messages, max_tokens=n, constraint=constraint, on_token=on_token)
    return [b - a for a, b in zip(stamps, stamps[1:])], out.tokens


def summary(per_token: list[list[float]]) -> tuple[float, float, float]:
    """Tokens/s over all runs (the first token, which includes the prompt, left out), p50 and p99 ms."""
    steady = [t for run in per_token for t in run[1:]]
    ordered = sorted(steady)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return len(steady) / sum(steady), 1000 * statistics.median(steady), 1000 * p99


def best_of(repeats: int, run) -> list[list[float]]:
    return [run()[0] for _ in range(repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--flash-attention", choices=["auto", "on", "off"], default="auto")
    args = parser.parse_args()
    flash = {"auto": None, "on": True, "off": False}[args.flash_attention]
    llama = sd.load("smollm2-135m", runtime="llama.cpp", threads=args.threads, flash_attention=flash)
    torch.set_num_threads(llama.threads)
    torch_model = sd.load("smollm2-135m")
    n = args.max_tokens
    print(f"default model, {llama.threads} threads, {n} new tokens, {len(PROMPTS)} prompts x {args.repeats} runs")
    print(f"llama.cpp flash attention: {args.flash_attention}; torch {torch.__version__}, float32\n")

    ids = [llama.apply_chat_template(m) for m in PROMPTS]
    ours(llama, PROMPTS[0], 4)  # warm-up
    ours(torch_model, PROMPTS[0], 4)
    rows = {}
    raw_runs, our_runs, torch_runs, same = [], [], [], 0
    for messages, prompt in zip(PROMPTS, ids):
        for _ in range(args.repeats):
            times, reference = raw_greedy(llama, prompt, n, flash)
            raw_runs.append(times)
            times, tokens = ours(llama, messages, n)
            our_runs.append(times)
            same += tokens == reference[: len(tokens)]
            torch_runs.append(ours(torch_model, messages, n)[0])
    rows["llama.cpp's own loop"] = summary(raw_runs)
    rows["searchdec on llama.cpp"] = summary(our_runs)
    rows["searchdec on torch"] = summary(torch_runs)
    constrained = [ours(llama, m, n, sd.json_schema(SCHEMA))[0] for m in PROMPTS for _ in range(args.repeats)]
    rows["searchdec on llama.cpp, JSON schema"] = summary(constrained)

    base = rows["llama.cpp's own loop"][0]
    torch_rate = rows["searchdec on torch"][0]
    print("## Greedy, batch 1 (first token, which includes the prompt, excluded)\n")
    print("| decoder | tokens/s | p50 ms/token | p99 ms/token | vs llama.cpp's loop | vs torch runtime |")
    print("|---|---|---|---|---|---|")
    for name, (rate, p50, p99) in rows.items():
        print(f"| {name} | {rate:.1f} | {p50:.2f} | {p99:.2f} | {rate / base:.3f}x | {rate / torch_rate:.2f}x |")
    print(f"\nsearchdec's greedy tokens equal llama.cpp's own greedy on {same}/{len(our_runs)} runs\n")

    print("## Beam(4), 32 new tokens, first prompt\n")
    print("| runtime | seconds | tokens forwarded |")
    print("|---|---|---|")
    for name, model in (("llama.cpp", llama), ("torch", torch_model)):
        before, start = model.stats.tokens, time.perf_counter()
        sd.generate(model, PROMPTS[0], max_tokens=32, search=sd.Beam(4))
        print(f"| {name} | {time.perf_counter() - start:.2f} | {model.stats.tokens - before} |")

    gguf = Path(llama.path).stat().st_size
    weights = sum(p.numel() * p.element_size() for p in torch_model.hf.parameters())
    print("\n## Weights held\n")
    print(f"llama.cpp: {gguf / 2**20:.0f} MiB (the GGUF, Q4_1); torch: {weights / 2**20:.0f} MiB (float32)")


if __name__ == "__main__":
    main()
