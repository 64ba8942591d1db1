"""Model load time: `sd.load` of a cached model vs transformers loading the same files, same run.

`sd.load("smollm2-135m")` reads the safetensors copy that its first call converted from the packaged
GGUF. The peer is what a transformers user runs on that same directory (`AutoTokenizer` and
`AutoModelForCausalLM.from_pretrained`, float32, local files only), and, timed once, transformers
loading the GGUF itself (`gguf_file=`), which is what every load would cost without the cache. Loads
alternate which side goes first; the table shows p50 and p99 seconds per side and the ratio
ours/theirs (lower is better; ours also builds the `Model` around the weights).

Run:  python benchmarks/load.py [--model smollm2-135m] [--repeats 10] [--no-gguf]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

import searchdec as sd


def load_ours(name: str) -> float:
    start = time.perf_counter()
    sd.load(name, device="cpu")
    return time.perf_counter() - start


def load_theirs(directory: str) -> float:
    start = time.perf_counter()
    AutoTokenizer.from_pretrained(directory, local_files_only=True)
    AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, local_files_only=True)
    return time.perf_counter() - start


def load_gguf(gguf: Path) -> float:
    start = time.perf_counter()
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    return time.perf_counter() - start


def pct(values, q):
    return float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="an alias or a .gguf file (converted once)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-gguf", action="store_true", help="skip the (slow) uncached GGUF load")
    args = parser.parse_args()

    directory = sd.load(args.model, device="cpu").hf.name_or_path  # converts on the very first call
    marker = Path(directory) / "searchdec.json"
    if not marker.exists():
        raise SystemExit(f"{args.model!r} is not a GGUF that searchdec caches as safetensors ({directory})")
    gguf = Path(json.loads(marker.read_text())["source"])
    hf_logging.disable_progress_bar()
    print(
        f"model {args.model} | cached copy {directory} | torch {torch.__version__} "
        f"threads={torch.get_num_threads()} | {platform.processor() or platform.machine()}"
    )
    load_theirs(directory)  # warm the page cache and imports on both sides alike

    ours, theirs = [], []
    for r in range(args.repeats):
        order = [(lambda: load_ours(args.model), ours), (lambda: load_theirs(directory), theirs)]
        for load, times in order if r % 2 == 0 else order[::-1]:
            gc.collect()
            times.append(load())

    print(f"\ncached load, float32, CPU, {args.repeats} loads each (seconds)")
    print(f"{'':<42} {'p50':>7} {'p99':>7}")
    print(f"{'searchdec sd.load (cached safetensors)':<42} {pct(ours, 50):>7.3f} {pct(ours, 99):>7.3f}")
    print(f"{'transformers from_pretrained (same dir)':<42} {pct(theirs, 50):>7.3f} {pct(theirs, 99):>7.3f}")
    print(
        f"{'ratio ours/transformers':<42} {pct(ours, 50) / pct(theirs, 50):>7.3f} "
        f"{pct(ours, 99) / pct(theirs, 99):>7.3f}"
    )
    if not args.no_gguf:
        took = load_gguf(gguf)
        print(
            f"\ntransformers loading the GGUF itself ({gguf.name}), once: {took:.2f} s "
            f"({took / pct(ours, 50):.0f}x our cached p50)"
        )


if __name__ == "__main__":
    main()
