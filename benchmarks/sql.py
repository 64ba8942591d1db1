"""Text-to-SQL on the Spider dev subset with the real default model: does every generated query compile?

For each question, the model (greedy) writes a SQLite query from the database's schema: constrained by
`sd.sql(tables=entry)` (the grammar specialized to that database's names, plus its checks beyond the
grammar: word boundaries and EXPLAIN on the schema, grammars/sql_checks.py, with backtracking), by the
grammar alone (`checks=False`), and
unconstrained (the baseline: the first statement of its reply, code fences stripped). Each query is
checked with `EXPLAIN` on an empty SQLite database built from `tables.json` (`spider_database`),
which compiles the query against the schema without data. Also reported: exact string match with the
gold query after whitespace/case normalisation (a rough quality signal for a 135M model), the gold
queries' own parse rate under their grammar (token by token), and tokens/s of both runs. A third
row retries the questions whose greedy query fails EXPLAIN with --samples constrained samples and
keeps the most probable that compiles (execution-guided decoding: grammar and reward together).

Run:  python benchmarks/sql.py [--limit 100] [--max-tokens 96] [--data ../shared/data/spider]
      [--modes constrained,grammar-only,unconstrained] [--runtime llama.cpp --threads 1]
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
import time
from pathlib import Path

import searchdec as sd
from searchdec.grammars.sql import spider_database

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "spider"


def schema_text(entry: dict) -> str:
    lines = []
    for index, table in enumerate(entry["table_names_original"]):
        columns = [name for t, name in entry["column_names_original"] if t == index]
        lines.append(f"{table}({', '.join(columns)})")
    return "\n".join(lines)


def messages(entry: dict, question: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": f"SQLite tables:\n{schema_text(entry)}\n\nWrite one SQLite query that answers: {question}\n"
            "Reply with the SQL only.",
        }
    ]


def first_statement(text: str) -> str:
    """The unconstrained reply's query: inside a code fence if there is one, up to the first ';'."""
    fence = re.search(r"```(?:sql|sqlite)?\s*(.*?)(```|$)", text, re.S | re.I)
    body = fence.group(1) if fence else text
    return body.split(";")[0].strip()


def compiles(db: sqlite3.Connection, query: str) -> bool:
    if not query:
        return False
    try:
        db.execute("EXPLAIN " + query)
    except (sqlite3.Error, sqlite3.Warning, ValueError):
        return False
    return True


def normal(query: str) -> str:
    return " ".join(query.lower().replace(";", " ").split())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=100, help="questions, evenly spaced over the subset")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--show", type=int, default=5, help="print this many examples")
    parser.add_argument("--samples", type=int, default=8, help="execution-guided retry: samples per failed question")
    parser.add_argument("--modes", default="constrained,grammar-only,unconstrained", help="comma-separated rows to run")
    parser.add_argument("--runtime", default="torch", choices=["torch", "llama.cpp"])
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads")
    args = parser.parse_args()
    modes = [mode.replace("-", " ") for mode in args.modes.split(",")]
    unknown = set(modes) - {"constrained", "grammar only", "unconstrained"}
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}")
    if not (args.data / "dev_subset.json").is_file():
        print(f"no Spider data at {args.data} (pass --data)", file=sys.stderr)
        return 2
    gold = json.loads((args.data / "dev_subset.json").read_text())
    entries = {e["db_id"]: e for e in json.loads((args.data / "tables.json").read_text())}
    step = max(1, len(gold) // args.limit)
    items = gold[::step][: args.limit]
    loading = {"runtime": "llama.cpp", "threads": args.threads} if args.runtime == "llama.cpp" else {}
    model = sd.load("smollm2-135m", **loading)
    dbs = {db_id: spider_database(entries[db_id]) for db_id in {item["db_id"] for item in items}}
    specs = {db_id: sd.sql(tables=entries[db_id]) for db_id in dbs}
    grammar_only = {db_id: sd.sql(tables=entries[db_id], checks=False) for db_id in dbs}

    gold_parse = sum(_parses(model, specs[item["db_id"]], item["query"]) for item in items)
    rows = {"constrained": [], "grammar only": [], "unconstrained": [], "constrained + EXPLAIN": []}
    cost = {}
    for mode in modes:
        tokens, forwarded, backtracks, start = 0, 0, 0, time.perf_counter()
        for done, item in enumerate(items):
            if done and done % 50 == 0:
                print(f"{mode}: {done}/{len(items)} questions, {time.perf_counter() - start:.0f} s", file=sys.stderr)
            entry = entries[item["db_id"]]
            constraint = {"constrained": specs, "grammar only": grammar_only}.get(mode, {}).get(item["db_id"])
            prompt = messages(entry, item["question"])
            out = sd.generate(model, prompt, max_tokens=args.max_tokens, constraint=constraint)
            tokens += len(out.tokens)
            forwarded += out.stats.tokens_forwarded
            backtracks += out.stats.backtracks
            query = out.text.strip() if constraint is not None else first_statement(out.text)
            if constraint is not None and out.finish_reason != "stop":
                query = ""  # cut by max_tokens, or a check unsatisfied: not a finished query
            rows[mode].append((item, query, compiles(dbs[item["db_id"]], query), out.finish_reason))
        seconds = time.perf_counter() - start
        rows[mode + "_speed"] = tokens / seconds
        cost[mode] = (forwarded / len(items), seconds / len(items), backtracks / len(items))

    # Execution-guided: where the greedy constrained query does not compile, sample `--samples`
    # constrained queries in one batch and keep the most probable one that compiles (the grammar and
    # a reward working together; Wang et al. 2018, "Robust Text-to-SQL Generation with
    # Execution-Guided Decoding", arXiv 1807.03100).
    tokens, start = 0, time.perf_counter()
    for item, query, ok, reason in rows["constrained"]:
        if not ok and args.samples and "constrained" in modes:
            entry = entries[item["db_id"]]
            search = sd.Sample(temperature=0.7, n=args.samples, seed=0)
            out = sd.generate(
                model,
                messages(entry, item["question"]),
                max_tokens=args.max_tokens,
                constraint=specs[item["db_id"]],
                search=search,
            )
            tokens += sum(len(h.tokens) for h in out.hypotheses)
            finished = sorted((h for h in out.hypotheses if h.finish_reason == "stop"), key=lambda h: -h.logprob)
            good = [h.text.strip() for h in finished if compiles(dbs[item["db_id"]], h.text.strip())]
            if good:
                query, ok, reason = good[0], True, "stop"
        rows["constrained + EXPLAIN"].append((item, query, ok, reason))
    rows["constrained + EXPLAIN_speed"] = tokens / max(time.perf_counter() - start, 1e-9)

    n = len(items)
    print(
        f"Spider dev subset: {n} questions ({len(dbs)} databases), SmolLM2-135M-Instruct on {args.runtime}, "
        f"greedy, max_tokens={args.max_tokens}"
    )
    print(f"gold queries parsing under their grammar: {gold_parse}/{n}")
    print(
        f"{'':22} {'compiles (EXPLAIN)':>19} {'finished':>9} {'exact match':>12} {'tok/s':>7}"
        f" {'fwd/query':>9} {'s/query':>8} {'backtracks':>10}"
    )
    for mode in [*modes, "constrained + EXPLAIN"]:
        result = rows[mode]
        if not result:
            continue
        ok = sum(r[2] for r in result)
        done = sum(r[3] == "stop" for r in result)
        exact = sum(normal(r[1]) == normal(r[0]["query"]) for r in result)
        extra = "".join(f" {v:>{w}.1f}" for v, w in zip(cost[mode], (9, 8, 10))) if mode in cost else ""
        print(f"{mode:22} {ok:>10}/{n} {ok / n:6.1%} {done:>5}/{n} {exact:>8}/{n} {rows[mode + '_speed']:7.1f}{extra}")
    finished = [r for r in rows["constrained"] if r[3] == "stop"]
    print(f"finished constrained queries that compile: {sum(r[2] for r in finished)}/{len(finished)}")
    for item, query, ok, _ in rows["constrained"][: args.show]:
        verdict = "ok" if ok else "FAIL"
        print(f"\nQ: {item['question']}\n  gold:        {item['query']}\n  constrained: {query}  [{verdict}]")
    failures = [(item, query) for item, query, ok, reason in rows["constrained"] if not ok and reason == "stop"]
    for item, query in failures:
        print(f"\nconstrained query that does not compile: {query!r} ({item['db_id']})")
    return 0


def _parses(model, spec, query: str) -> bool:
    try:
        return spec.compile(model).start().advance_many(model.encode(query, add_special_tokens=False)).accepting
    except ValueError:
        return False


if __name__ == "__main__":
    sys.exit(main())
