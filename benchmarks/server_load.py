"""Load on the OpenAI-compatible server: C concurrent clients each send R chat requests back to back,
through the official `openai` async client. Requests mix plain answers, streamed answers, JSON Schema
output and required tool calls (each of those validated), and with `--kinds ...,beam` a JSON Schema
request searched by beam search (width 2, both beams returned and validated), which runs whole on the
engine thread while the batch keeps decoding. Reports errors, request latency p50/p99, time to first
streamed token, throughput, and the widest decoding batch the engine formed; then the same requests
one at a time (a single client) for comparison.

  python benchmarks/server_load.py                      # starts `searchdec serve`, 32 clients x 8 requests
  python benchmarks/server_load.py --url http://127.0.0.1:8000 --clients 8 --requests 2
  python benchmarks/server_load.py --kinds plain,stream,json,tools,beam
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jsonschema

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bfcl import _start_server  # noqa: E402

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Delhi", "Quito", "Rome"]


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)
    first_token: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    completion_tokens: int = 0


async def one_request(client, model: str, kind: str, i: int, max_tokens: int, results: Results) -> None:
    city = CITIES[i % len(CITIES)]
    messages = [{"role": "user", "content": f"Tell me about {city} in one sentence."}]
    start = time.perf_counter()
    try:
        if kind == "stream":
            stream = await client.chat.completions.create(
                model=model, messages=messages, temperature=0, max_tokens=max_tokens, stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            waiting = True
            async for chunk in stream:
                if waiting and chunk.choices and chunk.choices[0].delta.content:
                    results.first_token.append(time.perf_counter() - start)
                    waiting = False
                if chunk.usage:
                    results.completion_tokens += chunk.usage.completion_tokens
        elif kind == "json":
            r = await client.chat.completions.create(
                model=model, messages=messages, temperature=0, max_tokens=max_tokens + 16,
                response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}},
            )  # fmt: skip
            if r.choices[0].finish_reason == "stop":
                jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
            results.completion_tokens += r.usage.completion_tokens
        elif kind == "beam":
            r = await client.chat.completions.create(
                model=model, messages=messages, n=2, max_tokens=max_tokens + 16,
                response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}},
                extra_body={"search": {"algorithm": "beam", "width": 2}},
            )  # fmt: skip
            for choice in r.choices:
                if choice.finish_reason == "stop":
                    jsonschema.validate(json.loads(choice.message.content), PERSON)
            results.completion_tokens += r.usage.completion_tokens
        elif kind == "tools":
            r = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": f"Weather in {city}?"}], tools=[WEATHER],
                tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=max_tokens + 16,
            )  # fmt: skip
            if r.choices[0].finish_reason == "tool_calls":
                (call,) = r.choices[0].message.tool_calls
                jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
            results.completion_tokens += r.usage.completion_tokens
        else:
            r = await client.chat.completions.create(model=model, messages=messages, temperature=0,
                                                     max_tokens=max_tokens)  # fmt: skip
            results.completion_tokens += r.usage.completion_tokens
    except Exception as error:  # every failure is counted and shown, none stops the run
        results.errors.append(f"{kind} #{i}: {type(error).__name__}: {error}")
        return
    results.latencies.append(time.perf_counter() - start)


KINDS = ("plain", "stream", "json", "tools")
ALL_KINDS = (*KINDS, "beam")


async def run_load(
    base_url: str, clients: int, requests: int, max_tokens: int, kinds: tuple[str, ...] = KINDS
) -> tuple[Results, float]:
    import openai

    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=clients + 4), timeout=1800)
    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, http_client=http)
    model = (await client.models.list()).data[0].id
    results = Results()

    async def user(u: int) -> None:
        for r in range(requests):
            i = u * requests + r
            await one_request(client, model, kinds[i % len(kinds)], i, max_tokens, results)

    start = time.perf_counter()
    await asyncio.gather(*(user(u) for u in range(clients)))
    elapsed = time.perf_counter() - start
    await http.aclose()
    return results, elapsed


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(name: str, results: Results, elapsed: float) -> str:
    n = len(results.latencies)
    ttft = f"{statistics.median(results.first_token):.2f}" if results.first_token else "n/a"
    return (
        f"| {name} | {n + len(results.errors)} | {len(results.errors)} | {percentile(results.latencies, 50):.2f} | "
        f"{percentile(results.latencies, 99):.2f} | {ttft} | {results.completion_tokens / elapsed:.1f} | "
        f"{elapsed:.1f} |"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None, help="a running server (default: start one)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=8, help="per client, back to back")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--sequential", type=int, default=16, help="requests for the one-client comparison (0: skip)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"request kinds in turn, from {', '.join(ALL_KINDS)}")
    args = parser.parse_args(argv)
    kinds = tuple(args.kinds.split(","))
    if not kinds or set(kinds) - set(ALL_KINDS):
        parser.error(f"--kinds takes a comma-separated list from {', '.join(ALL_KINDS)}")
    server = None
    url = args.url
    if url is None:
        server = _start_server(args.model, args.port)
        url = f"http://127.0.0.1:{args.port}"
    try:
        loaded, elapsed = asyncio.run(run_load(url, args.clients, args.requests, args.max_tokens, kinds))
        batch = httpx.get(url + "/health", timeout=60).json()["max_batch_rows"]
        rows = [summary(f"{args.clients} clients x {args.requests}", loaded, elapsed)]
        if args.sequential:
            alone, alone_elapsed = asyncio.run(run_load(url, 1, args.sequential, args.max_tokens, kinds))
            rows.append(summary(f"1 client x {args.sequential}", alone, alone_elapsed))
    finally:
        if server is not None:
            server.terminate()
            server.wait(120)
    print(f"\nserver load, {args.model}, max_tokens={args.max_tokens} (+16 for JSON, tool calls and beam), "
          f"kinds {', '.join(kinds)} in turn\n")  # fmt: skip
    print("| run | requests | errors | latency p50 (s) | latency p99 (s) | first token p50 (s) | tokens/s | wall (s) |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nwidest decoding batch: {batch} hypotheses")
    for error in loaded.errors[:20]:
        print("error:", error)
    return 1 if loaded.errors else 0


if __name__ == "__main__":
    sys.exit(main())
