"""Shared-prefix (cascade) attention on the real default model, with the peer in the same run.

1. Beam(W) over a long prompt (default 1,500 tokens, 64 new tokens, float32): searchdec with the
   shared prefix, searchdec with every row holding its own copy (`Model.shared_prefix = False`), and
   transformers `generate(num_beams=W, do_sample=False)`. All three must return the same tokens.
   Prints wall time and the KV memory each holds at peak: for searchdec the prefix cache's peak bytes
   (buffers counted once, spare capacity included), for transformers the bytes of the keys and values
   in the cache `generate` returns (W rows of the whole sequence; its reorders copy them at each step).
2. Best-of-N and MCTS over the same prompt: tokens forwarded (the prompt must be forwarded once) and
   the peak KV bytes against one copy of the prompt's keys and values (it must be stored once).

Run:  python benchmarks/prefix.py [--prompt-tokens 1500] [--max-tokens 64] [--width 8] [--skip-others]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

import searchdec as sd
from searchdec.bench.peers import transformers_generate


def long_prompt(model, n_tokens: int) -> str:
    """The first `n_tokens` tokens of the project's own documentation, as text (a fixed, natural prompt)."""
    root = Path(__file__).resolve().parent.parent
    text = "\n\n".join((root / name).read_text() for name in ("ARCHITECTURE.md", "README.md") if (root / name).exists())
    ids = model.encode(text, add_special_tokens=False)
    if len(ids) < n_tokens:
        raise SystemExit(f"the documentation has only {len(ids)} tokens; ask for at most that many")
    return model.decode(ids[:n_tokens])


def kv_bytes_per_position(model) -> int:
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * model.dtype.itemsize


def ours(model, prompt: str, max_tokens: int, search, shared: bool):
    model.shared_prefix, saved = shared, model.shared_prefix
    model.cache.clear()
    model.cache.peak_bytes = 0
    before = model.stats.tokens
    try:
        start = time.perf_counter()
        out = sd.generate(model, prompt, max_tokens=max_tokens, search=search)
        elapsed = time.perf_counter() - start
    finally:
        model.shared_prefix = saved
    return elapsed, out, model.cache.peak_bytes, model.stats.tokens - before


def theirs(model, ids: list[int], max_tokens: int, width: int):
    run = transformers_generate(model, [ids], max_tokens, num_beams=width)
    if run.kv_bytes is None:
        raise SystemExit("transformers returned a cache without `layers`: its keys and values cannot be counted")
    return run.seconds, run.tokens[0], run.kv_bytes


def beam(model, prompt: str, args) -> None:
    ids = model.encode(prompt)
    print(
        f"\n## Beam({args.width}) vs transformers num_beams={args.width}: one prompt of {len(ids)} tokens, "
        f"{args.max_tokens} new tokens, {model.dtype}"
    )
    search = sd.Beam(args.width)
    sd.generate(model, "Warm-up", max_tokens=4, search=search)  # first-call costs out of the timings
    t_shared, out_shared, kv_shared, fwd_shared = ours(model, prompt, args.max_tokens, search, shared=True)
    t_plain, out_plain, kv_plain, fwd_plain = ours(model, prompt, args.max_tokens, search, shared=False)
    t_hf, tokens_hf, kv_hf = theirs(model, ids, args.max_tokens, args.width)
    same = out_shared.tokens == tokens_hf and out_plain.tokens == tokens_hf
    print(f"token-identical to transformers: {same} ({len(tokens_hf)} tokens)")
    print("| engine | wall s | ratio to transformers | KV bytes at peak | ratio to transformers | tokens forwarded |")
    print("|---|---|---|---|---|---|")
    for name, t, kv, fwd in (
        ("searchdec, shared prefix", t_shared, kv_shared, fwd_shared),
        ("searchdec, a copy per row", t_plain, kv_plain, fwd_plain),
        ("transformers", t_hf, kv_hf, None),
    ):
        forwarded = "-" if fwd is None else str(fwd)
        print(f"| {name} | {t:.2f} | {t / t_hf:.2f}x | {kv / 2**20:.1f} MiB | {kv / kv_hf:.2f}x | {forwarded} |")
    if not same:
        raise SystemExit("outputs differ from transformers")


def others(model, prompt: str, args) -> None:
    n_prompt = len(model.encode(prompt))
    one_copy = kv_bytes_per_position(model) * n_prompt
    print(f"\n## Best-of-N and MCTS over the same prompt ({n_prompt} tokens, {args.other_tokens} new tokens)")
    print(f"one copy of the prompt's keys and values: {one_copy / 2**20:.1f} MiB")
    searches = {
        "BestOfN(8)": sd.BestOfN(8, reward=lambda prompt, text: float(len(text)), sample=sd.Sample(seed=0)),
        "MCTS(8, token)": sd.MCTS(8, reward=lambda prompt, text: float(len(text)), max_children=3),
    }
    print(
        "| search | shared prefix | tokens forwarded | beyond the prompt | KV bytes at peak | peak / one prompt copy |"
    )
    print("|---|---|---|---|---|---|")
    for name, search in searches.items():
        for shared in (True, False):
            _, _, peak, forwarded = ours(model, prompt, args.other_tokens, search, shared)
            print(
                f"| {name} | {shared} | {forwarded} | {forwarded - n_prompt} | {peak / 2**20:.1f} MiB "
                f"| {peak / one_copy:.2f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompt-tokens", type=int, default=1500)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--other-tokens", type=int, default=16, help="new tokens for best-of-N and MCTS")
    parser.add_argument("--skip-beam", action="store_true")
    parser.add_argument("--skip-others", action="store_true")
    args = parser.parse_args()
    model = sd.load(args.model, shared_prefix=True)
    print(f"{model}, shared prefix: {model.shared_prefix}; {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    prompt = long_prompt(model, args.prompt_tokens)
    if not args.skip_beam:
        beam(model, prompt, args)
    if not args.skip_others:
        others(model, prompt, args)


if __name__ == "__main__":
    main()
