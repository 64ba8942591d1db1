"""JSON Schema end to end with the real default model: constrained outputs finish and validate.

For JSONSchemaBench schemas (evenly spaced over the folder, those searchdec compiles), the model is
asked for a document that follows the schema and generates it constrained by `sd.json_schema`, once
greedy and once sampled (temperature 1.0, seeded). Every output that finishes ("stop") is parsed and
validated with `jsonschema`; outputs cut by `max_tokens` ("length") are counted, and split into those
where the budget left room to close the document (the shortest completion of the schema, measured by
`State.closing`, fit in `max_tokens`: budget-aware completion should make this 0) and those where no
document fits at all.

Run:  python benchmarks/json_e2e.py [--schemas 100] [--max-tokens 160] [--data ../shared/data/jsonschemabench]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jsonschema

import searchdec as sd

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "jsonschemabench"


def prompt(schema: dict) -> list[dict]:
    text = json.dumps(schema, separators=(",", ":"))
    if len(text) > 3000:
        text = text[:3000] + " ..."
    return [{"role": "user", "content": f"Write a JSON document that follows this JSON Schema:\n{text}"}]


def pick(data: Path, count: int, model) -> list[tuple[str, dict, object]]:
    paths = sorted(data.glob("*.json"))
    step = max(1, len(paths) // (count * 2))  # compile coverage is ~80%: oversample, keep the first `count`
    picked = []
    for path in paths[::step]:
        schema = json.loads(path.read_text())["schema"]
        try:
            constraint = sd.json_schema(schema).compile(model)
        except sd.ConstraintError:
            continue
        picked.append((path.name, schema, constraint))
        if len(picked) == count:
            break
    return picked


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--schemas", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"no JSONSchemaBench data at {args.data} (pass --data)", file=sys.stderr)
        return 2
    model = sd.load("smollm2-135m")
    cases = pick(args.data, args.schemas, model)
    searches = {"greedy": sd.Greedy(), "sampled": sd.Sample(temperature=1.0, seed=args.seed)}
    print(f"{len(cases)} schemas from {args.data.name}, SmolLM2-135M-Instruct, max_tokens={args.max_tokens}")
    columns = ["finished", "valid", "invalid", "length: room", "no room", "tokens p50", "tok/s"]
    print(f"{'':8} " + " ".join(f"{c:>{w}}" for c, w in zip(columns, (9, 9, 8, 13, 8, 11, 6))))
    failures = []
    for name, search in searches.items():
        finished = valid = room = no_room = tokens = 0
        lengths = []
        start = time.perf_counter()
        for file, schema, constraint in cases:
            out = sd.generate(model, prompt(schema), max_tokens=args.max_tokens, constraint=constraint, search=search)
            tokens += len(out.tokens)
            lengths.append(len(out.tokens))
            if out.finish_reason == "stop":
                finished += 1
                try:
                    jsonschema.validators.validator_for(schema)(schema).validate(json.loads(out.text))
                    valid += 1
                except (ValueError, jsonschema.ValidationError) as error:
                    failures.append((name, file, out.text[:200], str(error)[:200]))
            else:
                shortest = constraint.start().closing(args.max_tokens)
                if shortest is not None:
                    room += 1
                    why = f"cut by max_tokens though {shortest[0]} tokens close it"
                    failures.append((name, file, out.text[-200:], why))
                else:
                    no_room += 1
        speed = tokens / (time.perf_counter() - start)
        n = len(cases)
        print(
            f"{name:8} {finished:>5}/{n} {valid:>5}/{finished} {finished - valid:>8} {room:>13} {no_room:>8}"
            f" {statistics.median(lengths):>11.0f} {speed:>6.1f}"
        )
    for name, file, text, why in failures:
        print(f"\n{name} {file}: {why}\n  {text!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
