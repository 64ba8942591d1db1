"""Grammar engines side by side on JSONSchemaBench schemas, with the default model's tokenizer.

For each engine (searchdec, raw llguidance, outlines-core, XGrammar) and each schema: does it
compile (coverage), does a valid instance walk through token by token ("walked"), how many invalid
instances it accepts whole ("invalid ok": an engine that loosens a schema it cannot enforce shows up
here), time to first mask (compile + initial state + first mask), mask time per token
while walking a valid instance token by token, and fork time where the engine can fork a state.
Each engine runs in its own worker process, so a schema that hangs one engine (outlines-core can
take minutes on large schemas) is cut at --timeout seconds and counted as not compiled.

Run:  python benchmarks/grammars.py [--every 8] [--timeout 20] [--data ../shared/data/jsonschemabench]
      searchdec bench grammars  (the quick rows: the 8 schemas bundled in searchdec/bench/data, or every
      40th of the full set when it is at hand)
      (outlines-core and xgrammar are optional: `pip install outlines-core xgrammar`)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

from searchdec.bench.peers import pct

ENGINES = ["searchdec", "llguidance", "outlines-core", "xgrammar"]
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "jsonschemabench"  # beside a checkout
BUNDLED_DATA = Path(__file__).resolve().parent / "data" / "jsonschemabench"  # 8 schemas, in the package


def _tokenizer_and_vocab():
    import searchdec as sd

    model = sd.load("smollm2-135m")
    return model


class SearchdecEngine:
    def __init__(self, model):
        import llguidance.torch as lt

        import searchdec as sd

        self.sd, self.model, self.lt = sd, model, lt
        self.bitmask = lt.allocate_token_bitmask(1, model.vocab_size)
        sd.regex("warm-up").compile(model)  # wraps the tokenizer once, as LLGuidanceEngine does in __init__

    def compile(self, schema):
        return self.sd.json_schema(schema).compile(self.model).start()

    def mask(self, state):
        state.fill(self.bitmask)

    def advance(self, state, token):
        return state.advance(token)

    def fork(self, state):
        return state.fork()

    def accepting(self, state):
        return state.accepting


class LLGuidanceEngine:
    def __init__(self, model):
        import llguidance
        import llguidance.hf
        import llguidance.torch as lt

        self.llg, self.lt = llguidance, lt
        self.tokenizer = llguidance.hf.from_tokenizer(model.tokenizer, n_vocab=model.vocab_size)
        self.bitmask = lt.allocate_token_bitmask(1, model.vocab_size)

    def compile(self, schema):
        grammar = self.llg.LLMatcher.grammar_from_json_schema(schema)
        matcher = self.llg.LLMatcher(self.tokenizer, grammar)
        if matcher.is_error():
            raise ValueError(matcher.get_error())
        return matcher

    def mask(self, matcher):
        self.lt.fill_next_token_bitmask(matcher, self.bitmask, 0)

    def advance(self, matcher, token):
        if not matcher.consume_token(token):
            raise ValueError("token rejected")
        return matcher

    def fork(self, matcher):
        return matcher.deep_copy()

    def accepting(self, matcher):
        return matcher.is_accepting()


class OutlinesCoreEngine:
    def __init__(self, model):
        import outlines_core
        import torch

        self.oc, self.torch = outlines_core, torch
        eos = self.eos = sorted(model.eos_token_ids)[0]
        by_bytes: dict[bytes, list[int]] = {}
        for token_id, piece in enumerate(model.vocab_bytes):
            if piece and token_id != eos:
                by_bytes.setdefault(piece, []).append(token_id)
        self.vocabulary = outlines_core.Vocabulary(eos, by_bytes)
        self.mask_buffer = torch.zeros((model.vocab_size + 31) // 32, dtype=torch.int32)

    def compile(self, schema):
        regex = self.oc.json_schema.build_regex_from_schema(json.dumps(schema))
        return self.oc.Guide(self.oc.Index(regex, self.vocabulary))

    def mask(self, guide):
        guide.write_mask_into(self.mask_buffer.data_ptr(), self.mask_buffer.numel(), self.mask_buffer.element_size())

    def advance(self, guide, token):
        guide.advance(token, return_tokens=False)
        return guide

    fork = None  # a Guide has no copy; searches would rebuild it from the Index

    def accepting(self, guide):
        return self.eos in guide.get_tokens()


class XGrammarEngine:
    def __init__(self, model):
        import xgrammar

        self.xgr = xgrammar
        info = xgrammar.TokenizerInfo.from_huggingface(model.tokenizer, vocab_size=model.vocab_size)
        self.eos = sorted(model.eos_token_ids)[0]
        self.compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)
        self.bitmask = xgrammar.allocate_token_bitmask(1, model.vocab_size)

    def compile(self, schema):
        compiled = self.compiler.compile_json_schema(json.dumps(schema), strict_mode=False)
        return self.xgr.GrammarMatcher(compiled)

    def mask(self, matcher):
        matcher.fill_next_token_bitmask(self.bitmask)

    def advance(self, matcher, token):
        if not matcher.accept_token(token):
            raise ValueError("token rejected")
        return matcher

    fork = None  # GrammarMatcher has rollback but no copy

    def accepting(self, matcher):
        return matcher.accept_token(self.eos)


ENGINE_CLASSES = {
    "searchdec": SearchdecEngine,
    "llguidance": LLGuidanceEngine,
    "outlines-core": OutlinesCoreEngine,
    "xgrammar": XGrammarEngine,
}


def _measure(engine, model, case) -> dict:
    schema = case["schema"]
    instance = next((t["data"] for t in case["tests"] if t["valid"]), None)
    start = time.perf_counter()
    state = engine.compile(schema)
    engine.mask(state)
    first_mask = time.perf_counter() - start
    masks, forks, walked = [], [], True
    if instance is not None:
        for token in model.encode(json.dumps(instance, ensure_ascii=False), add_special_tokens=False):
            t0 = time.perf_counter()
            engine.mask(state)
            masks.append(time.perf_counter() - t0)
            if engine.fork is not None:
                t0 = time.perf_counter()
                engine.fork(state)
                forks.append(time.perf_counter() - t0)
            try:
                state = engine.advance(state, token)
            except Exception:
                walked = False
                break
    invalid_accepted = 0
    for case_test in case["tests"]:
        if case_test["valid"]:
            continue
        state = engine.compile(schema)
        try:
            for token in model.encode(json.dumps(case_test["data"], ensure_ascii=False), add_special_tokens=False):
                state = engine.advance(state, token)
            invalid_accepted += bool(engine.accepting(state))
        except Exception:
            pass  # refused somewhere along the way: correct
    return {
        "first_mask": first_mask,
        "masks": masks,
        "forks": forks,
        "walked": walked,
        "invalid_accepted": invalid_accepted,
    }


def _worker(engine_name: str, paths: list[str], queue) -> None:
    model = _tokenizer_and_vocab()
    try:
        engine = ENGINE_CLASSES[engine_name](model)
    except ImportError as error:
        queue.put(("unavailable", str(error)))
        return
    queue.put(("ready", None))
    for path in paths:
        case = json.loads(Path(path).read_text())
        try:
            queue.put(("ok", path, _measure(engine, model, case)))
        except Exception as error:  # an engine refusing a schema is a coverage figure, not a crash
            queue.put(("error", path, f"{type(error).__name__}: {str(error)[:120]}"))


def run_engine(engine_name: str, paths: list[str], timeout: float) -> dict:
    results: dict[str, dict | str] = {}
    remaining = list(paths)
    context = mp.get_context("spawn")
    while remaining:
        queue = context.Queue()
        process = context.Process(target=_worker, args=(engine_name, remaining, queue), daemon=True)
        process.start()
        status = queue.get(timeout=300)
        if status[0] == "unavailable":
            process.kill()
            return {"unavailable": status[1]}
        while remaining:
            try:
                message = queue.get(timeout=timeout)
            except Exception:
                results[remaining.pop(0)] = "timeout"
                process.kill()
                break
            kind, path, value = message
            results[path] = value if kind == "ok" else value
            remaining.remove(path)
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="searchdec bench grammars", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="default: ../shared/data, else bundled")
    parser.add_argument("--every", type=int, default=None, help="take every Nth schema (1 = all; default 8, quick 40)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per schema before giving up")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--quick", action="store_true", help="every 40th schema (the bundled ones: all 8)")
    args = parser.parse_args(argv)
    if args.data is None:
        args.data = SHARED_DATA if SHARED_DATA.is_dir() else BUNDLED_DATA
    if args.every is None:
        args.every = 1 if args.data == BUNDLED_DATA else 40 if args.quick else 8
    if not args.data.is_dir():
        sys.exit(f"no data at {args.data}; pass --data (tests/data/jsonschemabench is a small sample)")
    paths = [str(p) for p in sorted(args.data.glob("*.json"))[:: args.every]]
    print(f"{len(paths)} schemas from {args.data}, tokenizer: smollm2-135m, timeout {args.timeout:.0f} s per schema\n")

    table = {}
    for name in args.engines.split(","):
        start = time.perf_counter()
        table[name] = run_engine(name, paths, args.timeout)
        print(f"  {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)

    header = (
        f"{'engine':<14} {'compiled':>9} {'walked':>7} {'invalid ok':>10} {'TTFM p50 ms':>12} {'TTFM p99 ms':>12} "
        f"{'mask p50 us':>12} {'mask p99 us':>12} {'fork p50 us':>12}"
    )
    print(header)
    print("-" * len(header))
    summary = {}
    for name, results in table.items():
        if "unavailable" in results:
            print(f"{name:<14} not installed ({results['unavailable'][:60]})")
            continue
        ok = {p: r for p, r in results.items() if isinstance(r, dict)}
        ttfm = [r["first_mask"] * 1e3 for r in ok.values()]
        masks = [m * 1e6 for r in ok.values() for m in r["masks"]]
        forks = [f * 1e6 for r in ok.values() for f in r["forks"]]
        walked = sum(r["walked"] for r in ok.values())
        wrongly = sum(r["invalid_accepted"] for r in ok.values())
        summary[name] = (ttfm, masks)
        print(
            f"{name:<14} {len(ok):>5}/{len(paths):<3} {walked:>7} {wrongly:>10} {pct(ttfm, 50):>12.2f} "
            f"{pct(ttfm, 99):>12.2f} "
            f"{pct(masks, 50):>12.1f} {pct(masks, 99):>12.1f} {pct(forks, 50):>12.2f}"
        )
    if "searchdec" in summary and "llguidance" in summary:
        ours, raw = summary["searchdec"], summary["llguidance"]
        print(
            f"\nsearchdec / raw llguidance: TTFM p50 {statistics.median(ours[0]) / statistics.median(raw[0]):.2f}x, "
            f"mask p50 {statistics.median(ours[1]) / statistics.median(raw[1]):.2f}x (target <= 1.3x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
