"""Lexically constrained decoding on the real default model (SmolLM2-135M-Instruct): for 54 prompts with
1-3 required phrases each, the share of outputs that contain every phrase and their fluency (mean
token log-probability under the model), for `sd.includes` with Greedy (phrases forced in when the budget
requires it) and with `sd.LexicalBeam` (dynamic beam allocation), against forcing the phrases naively at
the start of the output (a regex prefix), in free text and inside a JSON document.

All prompts run as one batched search per method (each root carries its own constraint State, as the
search contract allows), so the 54 prompts cost one forward per step. Fluency is the mean log-probability
of the output tokens (end-of-sequence included) under the unconstrained model.

Run: `HF_HUB_OFFLINE=1 nice python benchmarks/lexical.py [--max-tokens 32] [--width 3] [--limit N] [--threads 1]`.
"""

from __future__ import annotations

import argparse
import json
import re
import time

import torch

import searchdec as sd
from searchdec.search.base import text_of
from searchdec.search.rows import Stopping
from searchdec.search.tree import Node
from searchdec.search.work import Work

TOPICS = [
    ("Write a sentence about travel.", ["Paris", "train"]),
    ("Write a sentence about a holiday.", ["beach"]),
    ("Describe your morning.", ["coffee", "sunrise"]),
    ("Write a sentence about cooking.", ["garlic", "pan", "dinner"]),
    ("Tell me about a pet.", ["dog"]),
    ("Write a sentence about the weather.", ["rain", "umbrella"]),
    ("Describe a city at night.", ["lights", "street"]),
    ("Write a sentence about school.", ["teacher", "homework"]),
    ("Write a sentence about sports.", ["football", "goal", "crowd"]),
    ("Describe a forest.", ["trees"]),
    ("Write a sentence about music.", ["guitar", "song"]),
    ("Write a sentence about the ocean.", ["waves", "blue"]),
    ("Describe a kitchen.", ["table", "bread"]),
    ("Write a sentence about friendship.", ["trust"]),
    ("Write a sentence about space.", ["Mars", "rocket"]),
    ("Describe a winter day.", ["snow", "cold", "fire"]),
    ("Write a sentence about a library.", ["books", "quiet"]),
    ("Write a sentence about a birthday.", ["cake"]),
    ("Describe a garden.", ["flowers", "bees"]),
    ("Write a sentence about work.", ["meeting", "email"]),
    ("Write a sentence about a river.", ["bridge", "fish"]),
    ("Describe a market.", ["fruit", "price", "busy"]),
    ("Write a sentence about a mountain.", ["climb"]),
    ("Write a sentence about computers.", ["keyboard", "screen"]),
    ("Describe a rainy afternoon.", ["window", "tea"]),
    ("Write a sentence about history.", ["Rome", "empire"]),
    ("Write a sentence about a farm.", ["cows", "barn", "morning"]),
    ("Describe a train station.", ["platform"]),
    ("Write a sentence about health.", ["exercise", "sleep"]),
    ("Write a sentence about a movie.", ["actor", "scene"]),
    ("Describe a desert.", ["sand", "heat", "camel"]),
    ("Write a sentence about shopping.", ["shoes"]),
    ("Write a sentence about a wedding.", ["bride", "dance"]),
    ("Describe a hospital.", ["doctor", "patient"]),
    ("Write a sentence about the internet.", ["website", "search", "phone"]),
    ("Write a sentence about art.", ["painting"]),
    ("Describe an airport.", ["plane", "gate"]),
    ("Write a sentence about a park.", ["children", "swing"]),
    ("Write a sentence about science.", ["experiment", "lab", "result"]),
    ("Describe a beach in summer.", ["sun"]),
    ("Write a sentence about a city.", ["London", "bus"]),
    ("Write a sentence about money.", ["bank", "save"]),
    ("Describe a storm.", ["thunder", "wind", "dark"]),
    ("Write a sentence about reading.", ["novel"]),
    ("Write a sentence about a restaurant.", ["waiter", "menu"]),
    ("Describe a village.", ["church", "houses"]),
    ("Write a sentence about a journey.", ["road", "car", "night"]),
    ("Write a sentence about a cat.", ["sofa"]),
    ("Describe autumn.", ["leaves", "orange"]),
    ("Write a sentence about a game.", ["chess", "win"]),
    ("Write a sentence about the sea.", ["ship", "storm", "captain"]),
    ("Describe a museum.", ["statue"]),
    ("Write a sentence about a teacher.", ["class", "lesson"]),
    ("Write a sentence about France.", ["Eiffel Tower", "Paris"]),
]
SCHEMA = {"type": "object", "properties": {"sentence": {"type": "string"}}, "required": ["sentence"]}


def _escape(text: str) -> str:
    return re.sub(r"([\\.^$|?*+()\[\]{}\"-])", r"\\\1", text)


def naive(phrases: list[str], json_doc: bool):
    """The phrases forced at the start of the output, then free decoding."""
    lead = _escape(" ".join(phrases))
    if json_doc:
        return sd.regex(r'\{"sentence": "' + lead + r'[^"\\\n]{0,200}"\}')
    return sd.regex(lead + r"[\s\S]*")


def decode_all(model, constraints, search, max_tokens: int) -> list:
    """Every prompt under its own constraint in one search run (one batched forward per step): the
    search contract's roots each carry their own State, so prompts with different phrases batch."""
    for constraint in constraints:
        constraint.compile(model).check_budget(max_tokens)  # what generate checks first
    roots = [
        Node(tuple(sd.chat_prompt(model, [{"role": "user", "content": prompt}])), state=c.compile(model).start())
        for (prompt, _), c in zip(TOPICS, constraints)
    ]
    stopping = Stopping(max_tokens, model.eos_token_ids, (), model.context_window)
    with Work(model, stopping, None) as work:
        results = search.run(work, roots)
    return [result.leaves[0] for result in results]


def run(model, methods, max_tokens: int) -> list[dict]:
    rows = []
    for name, make_constraint, search, json_doc in methods:
        started = time.perf_counter()
        leaves = decode_all(model, [make_constraint(phrases) for _, phrases in TOPICS], search, max_tokens)
        seconds = time.perf_counter() - started
        hits, finished, valid, logprob, tokens = 0, 0, 0, 0.0, 0
        texts = [text_of(model, leaf) for leaf in leaves]
        for (_, phrases), leaf, text in zip(TOPICS, leaves, texts):
            finished += leaf.finish_reason == "stop"
            hits += all(phrase in text for phrase in phrases)
            if json_doc:
                try:
                    valid += isinstance(json.loads(text).get("sentence"), str)
                except (json.JSONDecodeError, AttributeError):
                    pass
            logprobs = leaf.generated()[1]
            logprob += sum(logprobs)
            tokens += len(logprobs)
        n = len(TOPICS)
        row = {
            "method": name,
            "prompts": n,
            "every phrase %": 100.0 * hits / n,
            "stop %": 100.0 * finished / n,
            "valid JSON %": 100.0 * valid / n if json_doc else None,
            "mean token logprob": logprob / max(tokens, 1),
            "mean tokens": tokens / n,
            "seconds": seconds,
            "examples": texts[:3],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--width", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="first N prompts only (a smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (a shared machine: 1)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.limit:
        del TOPICS[args.limit :]
    model = sd.load("smollm2-135m")
    beam = sd.LexicalBeam(args.width)
    methods = [
        ("includes + Greedy", sd.includes, sd.Greedy(), False),
        (f"includes + LexicalBeam({args.width})", sd.includes, beam, False),
        ("naive prefix + Greedy", lambda p: naive(p, False), sd.Greedy(), False),
        ("JSON: includes + Greedy", lambda p: sd.includes(p, within=sd.json_schema(SCHEMA)), sd.Greedy(), True),
        (
            f"JSON: includes + LexicalBeam({args.width})",
            lambda p: sd.includes(p, within=sd.json_schema(SCHEMA)),
            beam,
            True,
        ),
        ("JSON: naive prefix + Greedy", lambda p: naive(p, True), sd.Greedy(), True),
        (
            f"includes + LexicalBeam({args.width}, lookahead=2)",
            sd.includes,
            sd.LexicalBeam(args.width, lookahead=2),
            False,
        ),
    ]
    rows = run(model, methods, args.max_tokens)
    print(f"\n{len(TOPICS)} prompts, max_tokens={args.max_tokens}, {model.name}")
    print(f"{'method':36} {'phrases%':>8} {'stop%':>6} {'JSON%':>6} {'logprob/token':>13} {'tokens':>6} {'s':>6}")
    for row in rows:
        valid = "" if row["valid JSON %"] is None else f"{row['valid JSON %']:.0f}"
        print(
            f"{row['method']:36} {row['every phrase %']:8.0f} {row['stop %']:6.0f} {valid:>6} "
            f"{row['mean token logprob']:13.3f} {row['mean tokens']:6.1f} {row['seconds']:6.1f}"
        )


if __name__ == "__main__":
    main()
