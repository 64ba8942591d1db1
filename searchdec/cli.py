"""Command line: `searchdec generate "prompt"` (also `python -m searchdec generate ...`), `searchdec serve`
and `searchdec bench NAME` (searchdec/bench).

Text streams to stdout as it is generated; model conversion reports its progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from searchdec.errors import SearchdecError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="searchdec", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="generate text from a prompt or chat messages")
    gen.add_argument("prompt", nargs="?", help="the prompt text (or use --messages)")
    gen.add_argument("--messages", help="chat messages as JSON, or @file.json")
    gen.add_argument(
        "--raw",
        action="store_true",
        help="complete the prompt as plain text instead of sending it as a chat user message",
    )
    gen.add_argument("--model", default="smollm2-135m", help="alias, local path, .gguf file or HF id")
    gen.add_argument("--max-tokens", type=int, default=256)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily")
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--min-p", type=float, default=0.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--stop", action="append", default=None, help="a stop string (repeatable)")
    _loading_flags(gen)
    gen.add_argument("--json", action="store_true", help="print the result as JSON instead of streaming text")
    serve = commands.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API")
    serve.add_argument("--model", default="smollm2-135m", help="alias, local path, .gguf file or HF id")
    serve.add_argument("--served-model-name", default=None, help="the name clients pass as `model` (default: --model)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    _loading_flags(serve)
    serve.add_argument(
        "--tool-format",
        default="auto",
        choices=["auto", "hermes", "json"],
        help="how the model writes calls (auto: hermes if the chat template renders tools, else a JSON list)",
    )
    serve.add_argument("--max-batch-rows", type=int, default=64, help="hypotheses decoded together per step")
    serve.add_argument(
        "--default-max-tokens", type=int, default=None, help="when a request gives none (default: the context window)"
    )
    serve.add_argument(
        "--database",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a SQLite database requests may constrain SQL to (structured_outputs.sql.database: NAME); repeatable",
    )
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    from searchdec.bench import BENCHES

    bench = commands.add_parser(
        "bench",
        help="run a benchmark's quick rows on this machine, ours beside the peer (--full: all rows)",
        description="Benches: " + "; ".join(f"{name}: {what}" for name, what in BENCHES.items()),
    )
    bench.add_argument("name", choices=list(BENCHES))
    bench.add_argument("--full", action="store_true", help="all rows, as benchmarks/NAME.py runs them")
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "bench":
            from searchdec.bench import run

            return run(args.name, rest, full=args.full)
        if args.command == "serve":
            return _serve(args)
        return _generate(args)
    except (SearchdecError, ValueError, TypeError) as error:
        print(f"searchdec: error: {error}", file=sys.stderr)
        return 2


def _generate(args) -> int:
    import searchdec as sd

    if (args.prompt is None) == (args.messages is None):
        raise ValueError("give either a prompt or --messages (one of them)")
    prompt = _messages(args.messages) if args.messages is not None else args.prompt
    if args.max_tokens < 0:
        raise ValueError(f"--max-tokens must be >= 0, got {args.max_tokens}")
    search = (
        sd.Greedy()
        if args.temperature == 0
        else sd.Sample(args.temperature, args.top_k, args.top_p, args.min_p, seed=args.seed)
    )
    model = sd.load(args.model, dtype=args.dtype, runtime=args.runtime, threads=args.threads)
    if isinstance(prompt, str) and not args.raw and getattr(model.tokenizer, "chat_template", None):
        prompt = [{"role": "user", "content": prompt}]
    if args.json:
        counter = _TokenCounter(args.max_tokens) if sys.stderr.isatty() else None
        out = sd.generate(
            model,
            prompt,
            max_tokens=args.max_tokens,
            search=search,
            stop=args.stop,
            on_token=counter.on_token if counter else None,
        )
        if counter:
            print(file=sys.stderr)
        fields = ("text", "tokens", "logprob", "finish_reason", "prompt_tokens")
        print(json.dumps({name: getattr(out, name) for name in fields}))
    else:
        stream = _Stream(model)
        out = sd.generate(
            model, prompt, max_tokens=args.max_tokens, search=search, stop=args.stop, on_token=stream.on_token
        )
        stream.finish(out.text)
        print(f"[{len(out.tokens)} tokens, finish_reason={out.finish_reason}]", file=sys.stderr)
    return 0


def _loading_flags(parser) -> None:
    """How a command loads its model: the torch runtime's dtype, or llama.cpp and its threads."""
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--runtime", default="torch", choices=["torch", "llama.cpp"], help="llama.cpp runs the GGUF itself"
    )
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")


def _serve(args) -> int:
    missing = _missing_server_module()
    if missing:
        print(
            f"searchdec: error: `searchdec serve` needs the server extra; module {missing!r} is not installed. "
            "Install it with: pip install 'searchdec[server]'",
            file=sys.stderr,
        )
        return 2
    from searchdec.server import serve

    serve(
        args.model,
        host=args.host,
        port=args.port,
        dtype=args.dtype,
        runtime=args.runtime,
        threads=args.threads,
        served_name=args.served_model_name,
        tool_format=args.tool_format,
        max_rows=args.max_batch_rows,
        default_max_tokens=args.default_max_tokens,
        log_level=args.log_level,
        databases=_databases(args.database),
    )
    return 0


def _databases(given: list[str]) -> dict[str, str]:
    """`--database NAME=PATH` flags as a dict; a bare PATH is named after its file (`shop.sqlite`: shop)."""
    out = {}
    for item in given:
        name, _, path = item.partition("=") if "=" in item else (Path(item).stem, "", item)
        if not name or not path:
            raise ValueError(f"--database takes NAME=PATH or PATH, got {item!r}")
        if name in out:
            raise ValueError(f"--database names {name!r} twice")
        out[name] = path
    return out


def _missing_server_module() -> str | None:
    """The first module of the `server` extra (uvicorn; FastAPI and what it needs, as the app imports
    them) that cannot be imported, or None: checked before the model loads, so a missing extra is one
    clear line instead of a traceback after the load."""
    try:
        import uvicorn  # noqa: F401

        import searchdec.server.app  # noqa: F401
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] == "searchdec":
            raise  # a module of our own is missing: a broken install, not a missing extra
        return error.name
    return None


def _messages(raw: str) -> list[dict]:
    text = Path(raw[1:]).read_text() if raw.startswith("@") else raw
    try:
        messages = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--messages is not valid JSON: {error}") from error
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ValueError("--messages must be a JSON list of objects with 'role' and 'content'")
    return messages


class _TokenCounter:
    """Progress on stderr while the output itself waits to be printed whole (--json)."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens

    def on_token(self, _prompt_index: int, node) -> None:
        print(f"\rsearchdec: {node.depth}/{self.max_tokens} tokens", end="", file=sys.stderr, flush=True)


class _Stream:
    """Prints text as tokens arrive, holding back what a stop string could still remove."""

    def __init__(self, model) -> None:
        self.model = model
        self.tokens: list[int] = []
        self.printed = 0

    def on_token(self, _prompt_index: int, node) -> None:
        if node.new_tokens[-1] in self.model.eos_token_ids:
            return
        self.tokens.extend(node.new_tokens)  # one hypothesis: nodes arrive in order
        text = self.model.decode(self.tokens)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for the rest
            return
        self._emit(text)

    def finish(self, text: str) -> None:
        self._emit(text)
        print(flush=True)

    def _emit(self, text: str) -> None:
        if len(text) > self.printed and text.startswith(text[: self.printed]):
            sys.stdout.write(text[self.printed :])
            sys.stdout.flush()
            self.printed = len(text)


if __name__ == "__main__":
    sys.exit(main())
