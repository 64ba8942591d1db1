"""Sequential Monte Carlo with AWRS against full masking and plain masked sampling, with the real
default model (SmolLM2-135M-Instruct), in one run.

1. Distribution error, the issue's colour case: "Name a colour that starts with B. One word." under
   `sd.regex("(Blue|Black|Bronze|Beige|Brown)")`. The exact conditional comes from enumerating every
   tokenization (`smc.enumerate_outputs`, the end of the output included); reported: the total-variation
   distance to it of plain masked sampling (exact, from the same enumeration, and empirical over the
   same number of outputs), and of SMC with each proposal (independent runs pooled by their Z-hat).
2. Cost, JSON-Schema generation (a small person schema, chat prompts): constraint evaluations per
   generated token (tokens checked by AWRS vs the vocabulary per node for a full mask), and tokens/s of
   plain masked sampling, SMC-mask and SMC-AWRS, same particles and seeds.

Run:  python benchmarks/smc.py [--runs 4] [--particles 16] [--prompts 2] [--max-tokens 48] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from collections import Counter, defaultdict

import torch

import searchdec as sd
from searchdec.search.smc import enumerate_outputs

COLOURS = ("Blue", "Black", "Bronze", "Beige", "Brown")
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
PEOPLE = ["Describe a person as JSON.", "Give me a JSON record of a friend.", "A user profile in JSON, please."]


def tv(a: dict, b: dict) -> float:
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


def distribution_error(model, runs: int, particles: int) -> None:
    messages = [{"role": "user", "content": "Name a colour that starts with B. One word."}]
    spec = sd.regex("(" + "|".join(COLOURS) + ")")
    found = enumerate_outputs(model, sd.chat_prompt(model, messages), spec, 8)
    z = sum(math.exp(p) for p, _ in found.values())
    exact, masked = defaultdict(float), defaultdict(float)
    for tokens, (p, q) in found.items():
        exact[model.decode(list(tokens))] += math.exp(p) / z
        masked[model.decode(list(tokens))] += math.exp(q)
    rows = [("exact p(x | C)", dict(exact), 0.0, None)]
    rows.append(("masked sampling (exact)", dict(masked), tv(masked, exact), None))
    start = time.perf_counter()
    drawn = sd.generate(model, messages, max_tokens=8, constraint=spec, search=sd.Sample(n=runs * particles, seed=0))
    counts = Counter(h.text for h in drawn.hypotheses)
    empirical = {w: c / counts.total() for w, c in counts.items()}
    rows.append(("masked sampling (drawn)", empirical, tv(empirical, exact), time.perf_counter() - start))
    for proposal in ("mask", "awrs"):
        start = time.perf_counter()
        search = sd.SMC(particles, proposal=proposal, seed=0)
        out = sd.generate(model, [messages] * runs, max_tokens=8, constraint=spec, search=search)
        zs = [math.exp(g.stats.log_z) for g in out]
        pooled: dict = defaultdict(float)
        for g, weight in zip(out, zs):
            for h in g.hypotheses:
                pooled[h.text] += h.weight * weight / sum(zs)
        seconds = time.perf_counter() - start
        rows.append((f"SMC-{proposal} ({runs}x{particles})", dict(pooled), tv(pooled, exact), seconds))
    print(f"\nColour case: exact allowed mass Z = {z:.3g}; TV to the exact conditional")
    print(f"{'system':28s} " + " ".join(f"{w:>7s}" for w in COLOURS) + "      TV   seconds")
    for name, dist, distance, seconds in rows:
        cells = " ".join(f"{dist.get(w, 0.0):7.3f}" for w in COLOURS)
        print(f"{name:28s} {cells} {distance:7.3f} " + ("" if seconds is None else f"{seconds:9.1f}"))


def cost(model, particles: int, prompts: int, max_tokens: int) -> None:
    spec = sd.json_schema(PERSON)
    chats = [[{"role": "user", "content": text}] for text in (PEOPLE * prompts)[:prompts]]
    print(f"\nJSON-Schema generation: {prompts} prompts x {particles} particles, max_tokens {max_tokens}")
    print(f"{'system':22s} {'tokens':>7s} {'tok/s':>7s} {'checks/step':>13s} {'mask/step':>11s} {'ratio':>7s} valid")
    systems = [("masked sampling", sd.Sample(n=particles, seed=0))]
    systems += [(f"SMC-{p}", sd.SMC(particles, proposal=p, seed=0)) for p in ("mask", "awrs")]
    for name, search in systems:
        start = time.perf_counter()
        out = sd.generate(model, chats, max_tokens=max_tokens, constraint=spec, search=search)
        seconds = time.perf_counter() - start
        tokens = sum(len(h.tokens) for g in out for h in g.hypotheses)
        valid = sum(h.finish_reason == "stop" for g in out for h in g.hypotheses)
        total = sum(len(g.hypotheses) for g in out)
        if isinstance(search, sd.SMC):
            checks = sum(g.stats.constraint_evaluations for g in out)
            masks = sum(g.stats.full_mask_evaluations for g in out)
            steps = sum(g.stats.expansions for g in out) or 1
            line = f"{checks / steps:13.1f} {masks / steps:11.0f} {masks / max(checks, 1):7.1f}"
        else:
            line = f"{model.vocab_size:13d} {model.vocab_size:11d} {1.0:7.1f}"
        print(f"{name:22s} {tokens:7d} {tokens / seconds:7.1f} {line} {valid}/{total}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4, help="independent SMC runs pooled in the colour case")
    parser.add_argument("--particles", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=2, help="JSON-Schema prompts")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = sd.load("smollm2-135m")
    print(f"searchdec {sd.__version__}, {model.name} on {model.device}, {platform.processor() or platform.machine()}")
    distribution_error(model, args.runs, args.particles)
    cost(model, args.particles, args.prompts, args.max_tokens)


if __name__ == "__main__":
    main()
