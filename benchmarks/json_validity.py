"""JSONSchemaBench validity token by token, and its cost, against another searchdec checkout in the same run.

For every schema in the folder: does `sd.json_schema` compile it (for the default model's tokenizer), does
each valid instance walk through the compiled constraint token by token as given and with every object's
properties shuffled (seeded), and is any invalid instance accepted. Every instance of a schema goes through
one compiled constraint (the cached one a server would reuse). For the schemas with none of the keywords a
check enforces beyond the grammar (`json_checks.CHECKED`, `format: date`), it also times the time to first
mask (compile, start, first mask) and, walking the first valid instance, the mask (`fill`) and the advance
of each token.

With `--against DIR` the same runs on the searchdec checkout in DIR (e.g. `git archive <commit> | tar -x -C
DIR`), schema by schema in turn with this one (never at the same time), and the table ends with the ratios of
the timings, this checkout over the other.

Run:  python benchmarks/json_validity.py [--data ../shared/data/jsonschemabench] [--every 1] [--against DIR]
      [--property-order any|schema] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
DEFAULT_DATA = HERE.parent / "shared" / "data" / "jsonschemabench"
# `shuffled` from this checkout's searchdec/bench/documents.py, loaded by path: a worker over another checkout
# (--against) imports that checkout's searchdec, which may not hold the module
_DOCUMENTS = importlib.util.spec_from_file_location("_documents", HERE / "searchdec" / "bench" / "documents.py")
_documents = importlib.util.module_from_spec(_DOCUMENTS)
_DOCUMENTS.loader.exec_module(_documents)
shuffled = _documents.shuffled
NEW_KEYWORDS = {"uniqueItems", "not", "contains", "if", "then", "else", "dependentRequired", "dependentSchemas"}


def plain(schema) -> bool:
    """Whether no keyword a check enforces appears anywhere in `schema` (nor a date format)."""
    if isinstance(schema, dict):
        if NEW_KEYWORDS & set(schema) or schema.get("format") == "date":
            return False
        return all(plain(value) for value in schema.values())
    if isinstance(schema, list):
        return all(plain(value) for value in schema)
    return True


# --- the worker: one checkout, one schema at a time ------------------------------------------------------


def measure(model, path: str, shuffles: int, timed: bool, options: dict) -> dict:
    import searchdec as sd
    from searchdec.grammars.base import allocate_bitmask

    case = json.loads(Path(path).read_text())
    bitmask = allocate_bitmask(1, model.vocab_size)
    start = time.perf_counter()
    try:
        state = sd.json_schema(case["schema"], **options).compile(model).start()
        state.fill(bitmask)
    except sd.ConstraintError as error:
        return {"error": type(error).__name__}
    first_mask = time.perf_counter() - start
    constraint = sd.json_schema(case["schema"], **options).compile(model)  # the cached one, for every instance

    def accepted(data) -> bool:
        tokens = model.encode(json.dumps(data, ensure_ascii=False), add_special_tokens=False)
        try:
            return constraint.start().advance_many(tokens).accepting
        except ValueError:
            return False

    out = {"first_mask": first_mask, "masks": [], "advances": [], "refused": 0, "refused_shuffled": 0, "invalid": 0}
    rng = random.Random(0)
    for test in case["tests"]:
        if not test["valid"]:
            out["invalid"] += accepted(test["data"])
            continue
        out["refused"] += not accepted(test["data"])
        out["refused_shuffled"] += any(not accepted(shuffled(test["data"], rng)) for _ in range(shuffles))
    valid = [test["data"] for test in case["tests"] if test["valid"]]
    if timed and valid:
        state = constraint.start()
        for token in model.encode(json.dumps(valid[0], ensure_ascii=False), add_special_tokens=False):
            t0 = time.perf_counter()
            state.fill(bitmask)
            t1 = time.perf_counter()
            try:
                state = state.advance(token)
            except ValueError:
                break
            out["masks"].append(t1 - t0)
            out["advances"].append(time.perf_counter() - t1)
    return out


def worker(shuffles: int, options: dict) -> None:
    import searchdec as sd

    model = sd.load("smollm2-135m")
    print(json.dumps({"ready": sd.__file__}), flush=True)
    for line in sys.stdin:
        path, timed = json.loads(line)
        try:
            result = measure(model, path, shuffles, timed, options)
        except Exception as error:  # a crash is a finding, reported per schema
            result = {"error": f"crash {type(error).__name__}: {str(error)[:100]}"}
        print(json.dumps(result), flush=True)


# --- the driver ------------------------------------------------------------------------------------------


class Worker:
    """A worker process over the searchdec checkout in `root`, restarted after a schema that hangs."""

    def __init__(self, root: Path, shuffles: int, options: dict) -> None:
        self.root, self.shuffles, self.options, self.process = root, shuffles, options, None

    def _start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(self.root), "HF_HUB_OFFLINE": "1"}
        command = [sys.executable, __file__, "--worker", "--shuffles", str(self.shuffles)]
        command += ["--options", json.dumps(self.options)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        ready = json.loads(self.process.stdout.readline())
        if not ready["ready"].startswith(str(self.root)):
            sys.exit(f"the worker for {self.root} imported searchdec from {ready['ready']}")

    def run(self, path: str, timed: bool, timeout: float) -> dict:
        if self.process is None:
            self._start()
        self.process.stdin.write(json.dumps([path, timed]) + "\n")
        self.process.stdin.flush()
        readable, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not readable:
            self.process.kill()
            self.process = None
            return {"error": "timeout"}
        return json.loads(self.process.stdout.readline())


def summary(label: str, results: dict[str, dict], total: int) -> dict:
    ok = {name: r for name, r in results.items() if "error" not in r}
    timed = [r for r in ok.values() if r["masks"]]
    row = {
        "compiled": len(ok),
        "invalid": sum(r["invalid"] for r in ok.values()),
        "refused": sum(r["refused"] for r in ok.values()),
        "refused_shuffled": sum(r["refused_shuffled"] for r in ok.values()),
        "ttfm": [r["first_mask"] * 1e3 for r in timed],
        "masks": [m * 1e6 for r in timed for m in r["masks"]],
        "advances": [a * 1e6 for r in timed for a in r["advances"]],
    }
    print(
        f"{label:<40} {row['compiled']:>4}/{total:<4} {row['invalid']:>8} {row['refused']:>8} "
        f"{row['refused_shuffled']:>9} {pct(row['ttfm'], 50):>9.2f} {pct(row['masks'], 50):>9.1f} "
        f"{pct(row['masks'], 99):>9.1f} {pct(row['advances'], 50):>9.1f}"
    )
    return row


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--every", type=int, default=1, help="take every Nth schema (1: all)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only the schemas whose file name holds one of these")
    parser.add_argument("--against", type=Path, help="another searchdec checkout, measured in the same run")
    parser.add_argument("--shuffles", type=int, default=1, help="shuffled copies walked per valid instance")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per schema before giving up")
    parser.add_argument(
        "--property-order", choices=["any", "schema"], help="sd.json_schema(property_order=...) for this checkout"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.shuffles, json.loads(args.options))
    if not args.data.is_dir():
        sys.exit(f"no data at {args.data}; pass --data (tests/data/jsonschemabench is a small sample)")
    paths = [str(p) for p in sorted(args.data.glob("*.json"))[:: args.every]]
    if args.only:
        paths = [path for path in paths if any(part in Path(path).name for part in args.only)]
    roots = {"this checkout": HERE} | ({"against": args.against.resolve()} if args.against else {})
    ours = {"property_order": args.property_order} if args.property_order else {}
    workers = {label: Worker(root, args.shuffles, ours if root == HERE else {}) for label, root in roots.items()}
    results: dict[str, dict] = {label: {} for label in roots}
    failures: dict[str, dict] = {label: {} for label in roots}
    for index, path in enumerate(paths):
        timed = plain(json.loads(Path(path).read_text())["schema"])
        order = list(workers) if index % 2 == 0 else list(reversed(workers))  # neither always runs first
        for label in order:
            result = workers[label].run(path, timed, args.timeout)
            results[label][Path(path).name] = result
            if "error" not in result and (result["invalid"] or result["refused"] or result["refused_shuffled"]):
                failures[label][Path(path).name] = result
        print(f"{index + 1}/{len(paths)}", end="\r", file=sys.stderr)
    print(f"{len(paths)} schemas from {args.data}, tokenizer smollm2-135m, {args.shuffles} shuffle(s) per instance")
    print("timings: schemas without checked keywords; TTFM ms, mask and advance us per token\n")
    header = (
        f"{'checkout':<40} {'compiled':>9} {'invalid':>8} {'refused':>8} {'shuffled':>9} {'TTFM p50':>9} "
        f"{'mask p50':>9} {'mask p99':>9} {'adv p50':>9}"
    )
    print(header + "\n" + "-" * len(header))
    for label in roots:
        summary(f"{label} ({roots[label]})"[:40], results[label], len(paths))
    for label in roots:
        for name, result in failures[label].items():
            print(
                f"  {label}: {name}: invalid {result['invalid']}, refused {result['refused']}, "
                f"shuffled {result['refused_shuffled']}"
            )
    if args.against:
        common = [
            name
            for name, result in results["this checkout"].items()
            if result.get("masks") and results["against"][name].get("masks")
        ]
        print(f"\nratios, this checkout over the other, on the {len(common)} schemas both time:")
        for key, scale in (("first_mask", 1e3), ("masks", 1e6), ("advances", 1e6)):
            ours, theirs = ([], [])
            for name in common:
                for label, into in (("this checkout", ours), ("against", theirs)):
                    value = results[label][name][key]
                    into.extend(v * scale for v in (value if isinstance(value, list) else [value]))
            print(
                f"  {key}: p50 {pct(ours, 50):.2f} / {pct(theirs, 50):.2f} = {pct(ours, 50) / pct(theirs, 50):.3f}, "
                f"mean {statistics.mean(ours) / statistics.mean(theirs):.3f}"
            )


if __name__ == "__main__":
    main()
