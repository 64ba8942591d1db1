"""OpenAI-compatible HTTP API over one model: `searchdec serve --model smollm2-135m --port 8000`.

Tool calls and structured output are enforced by the grammar layer (`sd.tool_calls`,
`sd.json_schema`, ...), not requested in the prompt; requests share one continuously batched engine.
FastAPI and uvicorn come with the `server` extra: `pip install "searchdec[server]"`.
"""

from __future__ import annotations


def create_app(model, name: str, **options):
    """The ASGI app (see `searchdec.server.app.create_app` for the options)."""
    from searchdec.server.app import create_app as _create_app

    return _create_app(model, name, **options)


def serve(
    model_name: str = "smollm2-135m",
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    dtype: str = "float32",
    served_name: str | None = None,
    log_level: str = "info",
    runtime: str = "torch",
    threads: int | None = None,
    **options,
) -> None:
    """Load `model_name` and serve it until SIGINT or SIGTERM; in-flight and queued requests finish
    first, and then this returns (the process exits 0: the shutdown was asked for and clean).
    `runtime="llama.cpp"` serves the GGUF through llama.cpp (`sd.load(..., runtime=...)`)."""
    import uvicorn

    from searchdec.models.loading import load

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            # uvicorn re-raises a captured signal once it has drained, which would end the process
            # by that signal (exit -15) after a clean shutdown; a second SIGINT still forces exit.
            getattr(self, "_captured_signals", []).clear()

    model = load(model_name, dtype=dtype, runtime=runtime, threads=threads)
    app = create_app(model, served_name or model_name, **options)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=None)
    server = Server(config)
    server.run()
    if not server.started:
        raise SystemExit(3)  # as uvicorn.run answers a server that could not start (e.g. its port is taken)
