"""Distributed search throughput: the in-process executor beside Ray with 1, 2 and 4 model workers.

1. Simulated latency: a tiny random-weight Llama whose every forward also sleeps `--latency` seconds,
   as a large model on its own GPU would take, so that this machine's cores do not bound the
   workers. Best-of-N over many prompts (tasks of `batch_rows` samples) and MCTS with `parallel`
   leaves per round. Prints wall time, throughput (tasks/s, and returned tokens/s), speed-up over
   one Ray worker and scaling efficiency (speed-up / workers; the target is >= 0.8), and p50/p99 of the time a task
   spends on its worker. Every executor must return the same outputs (checked).
2. The real default model (SmolLM2-135M-Instruct) on 1 and 2 Ray workers beside the in-process
   executor, best-of-N over 8 prompts; each worker and the in-process executor run tasks on one torch
   thread (speed-up here is over the in-process executor).

Run:  python benchmarks/distributed.py [--latency 0.01] [--workers 1 2 4] [--skip-real] [--skip-simulated]
Starts (and stops) its own local Ray cluster.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import time

import numpy as np
import torch

import searchdec as sd
from searchdec.distributed import InProcessExecutor

PROMPTS = [f"Item {i}: the {w} of" for i, w in enumerate(["colour", "size", "shape", "name"] * 4)]
REAL_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "Q: What is 17 times 3?\nA:",
    [{"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "List three fruits."}],
    [{"role": "user", "content": "Name a famous painter."}],
    [{"role": "user", "content": "What is the boiling point of water?"}],
]


def slow_tiny_model(latency: float):
    """A tiny random Llama (byte tokenizer, fixed seed: the same weights in every process) whose
    forwards each sleep `latency` seconds. Built on the worker: this factory is what is shipped."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(sorted(alphabet))}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    hf = LlamaForCausalLM(config)
    with torch.no_grad():
        hf.lm_head.weight.mul_(8.0)
    hf.register_forward_pre_hook(lambda *_: time.sleep(latency))
    return sd.Model(hf, tokenizer, name=f"tiny-llama-sleep-{latency * 1000:g}ms")


def length_reward(prompt: str, output: str) -> float:
    return -abs(len(output) - 10)


class Timed(sd.Executor):
    """An executor as it is, recording how long each task took on its worker."""

    def __init__(self, inner: sd.Executor) -> None:
        self.inner, self.batch_rows, self.threads = inner, inner.batch_rows, inner.threads
        self.seconds: list[float] = []

    def run(self, tasks, model, on_done=None):
        results = self.inner.run(tasks, model, on_done)
        self.seconds += [r.seconds for r in results]
        return results

    def score(self, reward, prompt, outputs):
        return self.inner.score(reward, prompt, outputs)


def measure(model, executor, prompts, search, max_tokens):
    timed = Timed(executor)
    start = time.perf_counter()
    outs = sd.generate(model, prompts, max_tokens=max_tokens, search=search, executor=timed)
    wall = time.perf_counter() - start
    generated = sum(len(h.tokens) for o in outs for h in o.hypotheses)
    return wall, generated, timed.seconds, [[h.tokens for h in o.hypotheses] for o in outs]


def table(title, rows, base_wall):
    print(f"\n## {title}")
    print("| executor | workers | wall s | tasks/s | out tokens/s | speed-up | efficiency | task p50 s | task p99 s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, workers, wall, generated, seconds in rows:
        speedup = base_wall / wall
        print(
            f"| {name} | {workers} | {wall:.2f} | {len(seconds) / wall:.1f} | {generated / wall:.0f} | {speedup:.2f} "
            f"| {speedup / workers:.2f} "
            f"| {np.percentile(seconds, 50):.3f} | {np.percentile(seconds, 99):.3f} |"
        )


def simulated(args, ray) -> None:
    factory = functools.partial(slow_tiny_model, args.latency)
    model = factory()
    searches = {
        f"BestOfN(8), {len(PROMPTS)} prompts, tasks of 2 rows, {args.max_tokens} tokens": (
            sd.BestOfN(8, length_reward, sample=sd.Sample(temperature=1.0, seed=0)),
            PROMPTS,
        ),
        f"MCTS(16, parallel=4), {len(PROMPTS) // 2} prompts, greedy rollouts, {args.max_tokens} tokens": (
            sd.MCTS(16, reward=length_reward, max_children=3, parallel=4),
            PROMPTS[: len(PROMPTS) // 2],
        ),
    }
    executors = {}
    for n in args.workers:
        executors[n] = sd.RayExecutor(factory, workers=n, batch_rows=2)
    try:
        for title, (search, prompts) in searches.items():
            rows, reference = [], None
            with InProcessExecutor(batch_rows=2) as local:
                wall, generated, seconds, outputs = measure(model, local, prompts, search, args.max_tokens)
            rows.append(("in-process", 1, wall, generated, seconds))
            reference = outputs
            for n, executor in executors.items():
                wall, generated, seconds, outputs = measure(model, executor, prompts, search, args.max_tokens)
                assert outputs == reference, f"Ray with {n} workers returned different outputs"
                rows.append(("Ray", n, wall, generated, seconds))
            base = next(r[2] for r in rows if r[0] == "Ray" and r[1] == 1) if 1 in executors else rows[0][2]
            table(f"Simulated {args.latency * 1000:g} ms/forward: {title}", rows, base)
            print("outputs identical on every executor: yes")
    finally:
        for executor in executors.values():
            executor.close()


def real(args, ray) -> None:
    model = sd.load(args.model)
    search = sd.BestOfN(4, length_reward, sample=sd.Sample(temperature=0.8, seed=0))
    executors = {n: sd.RayExecutor(args.model, workers=n, batch_rows=4) for n in args.real_workers}
    rows = []
    try:
        with InProcessExecutor(batch_rows=4) as local:
            for ex in [local, *executors.values()]:
                measure(model, ex, REAL_PROMPTS[:2], search, 4)  # warm-up: each worker's first forwards
            for name, ex, n in [("in-process", local, 1), *(("Ray", ex, n) for n, ex in executors.items())]:
                wall, generated, seconds, outputs = measure(model, ex, REAL_PROMPTS, search, args.real_tokens)
                rows.append((name, n, wall, generated, seconds, outputs))
    finally:
        for ex in executors.values():
            ex.close()
    assert all(row[5] == rows[0][5] for row in rows), "Ray returned different outputs from the in-process executor"
    title = f"{model.name}: BestOfN(4) over {len(REAL_PROMPTS)} prompts, {args.real_tokens} tokens, 1 thread/worker"
    table(title, [row[:5] for row in rows], rows[0][2])
    print("outputs identical on every executor: yes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--latency", type=float, default=0.01, help="seconds each simulated forward sleeps")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument("--real-tokens", type=int, default=32)
    parser.add_argument("--real-workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-simulated", action="store_true")
    parser.add_argument("--skip-real", action="store_true")
    args = parser.parse_args()
    import ray

    torch.set_num_threads(1)
    ray.init(num_cpus=max(8, 2 * max(args.workers)), include_dashboard=False, log_to_driver=False)
    print(
        f"# searchdec distributed benchmark — {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, ray {ray.__version__}, {time.strftime('%Y-%m-%d')}"
    )
    try:
        if not args.skip_simulated:
            simulated(args, ray)
        if not args.skip_real:
            real(args, ray)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
