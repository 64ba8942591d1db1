"""The HTTP API: FastAPI routes in OpenAI's shapes over one `Engine`.

`/v1/chat/completions`, `/v1/completions` (both streaming as server-sent events ending in
`data: [DONE]`), `/v1/models`, `/health`. Requests are checked and their constraints compiled in a
worker thread before anything is queued, so a bad request is refused with OpenAI's error body
before any generation. Every error the app can answer, validation included, uses that body
(`{"error": {"message", "type", "param", "code"}}`); a malformed body is a 400, as OpenAI answers,
not FastAPI's 422. A client that goes away cancels its jobs (streaming or not).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from searchdec.server.engine import Done, Engine, Failed, Finished, Job, Tokens
from searchdec.server.errors import APIError
from searchdec.server.output import ChoiceOutput, chat_logprobs, completion_logprobs
from searchdec.server.prepare import Plan, ServedModel, chat_plan, completion_plan
from searchdec.server.protocol import ChatCompletionRequest, CompletionRequest
from searchdec.version import __version__

FINGERPRINT = f"searchdec-{__version__}"


def create_app(
    model,
    name: str,
    *,
    tool_format: str = "auto",
    max_rows: int = 64,
    default_max_tokens: int | None = None,
    max_n: int = 16,
    databases: dict[str, str] | None = None,
) -> FastAPI:
    """The ASGI app serving `model` as `name`; its engine starts and stops with the app's lifespan.
    `databases` (name -> SQLite file) are those a request may name in `structured_outputs.sql.database`;
    each is opened now, so a missing or unreadable file fails here, not in a request."""
    served = ServedModel(model, name, tool_format, default_max_tokens, max_n, _databases(databases))
    model.vocab_bytes  # noqa: B018 - computed once now, not inside the first request that reports logprobs
    engine = Engine(model, max_rows=max_rows)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            await run_in_threadpool(engine.stop)  # in-flight and queued requests finish first

    app = FastAPI(title="searchdec", version=__version__, lifespan=lifespan)
    app.state.engine = engine
    app.state.served = served
    _error_handlers(app)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": name, **asdict(engine.stats)}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [_model_card(name, created)]}

    @app.get("/v1/models/{model_id:path}")
    async def model_card(model_id: str) -> dict:
        if model_id != name:
            raise APIError(f"The model {model_id!r} does not exist", 404, param="model", code="model_not_found")
        return _model_card(name, created)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        plan = await run_in_threadpool(_locked, served, chat_plan, body)
        return await _respond(request, engine, served, plan, "chat")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        plan = await run_in_threadpool(_locked, served, completion_plan, body)
        return await _respond(request, engine, served, plan, "text")

    return app


_PREPARE = threading.Lock()


def _databases(databases: dict[str, str] | None) -> dict[str, str]:
    from searchdec.grammars.sql import sql

    checked = {}
    for name, path in (databases or {}).items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"a database needs a non-empty name, got {name!r} for {path!r}")
        sql(db=path)  # DatabaseNotFoundError (a file SQLite cannot read) or ConstraintError (no tables)
        checked[name] = str(path)
    return checked


def _locked(served: ServedModel, prepare, body) -> Plan:
    with _PREPARE:  # one tokenizer, one grammar compiler: requests are prepared one at a time
        return prepare(served, body)


def _model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "searchdec"}


# --- running a plan -------------------------------------------------------------------------


class _Run:
    """The jobs of one request (one per prompt) and their events, merged into one asyncio queue."""

    def __init__(self, engine: Engine, served: ServedModel, plan: Plan) -> None:
        self.engine = engine
        self.plan = plan
        self.queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.outputs = [
            ChoiceOutput(served.model, plan.stops, plan.tools, plan.top_logprobs is not None)
            for _ in range(len(plan.prompts) * plan.n)
        ]
        self.jobs = []
        for p, prompt in enumerate(plan.prompts):

            def emit(event, offset=p * plan.n):
                with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening
                    loop.call_soon_threadsafe(self.queue.put_nowait, (offset, event))

            self.jobs.append(Job(prompt, plan.search, plan.n, plan.stopping, emit, plan.constraint, plan.top_logprobs))
        self.open = len(self.jobs)

    def start(self) -> None:
        for job in self.jobs:
            self.engine.submit(job)

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancel()
        self.engine.wake()

    async def events(self) -> AsyncIterator[tuple[int, object]]:
        """(choice index or -1, event) until every job is done; a failure raises."""
        while self.open:
            offset, event = await self.queue.get()
            if isinstance(event, Tokens):
                self.outputs[offset + event.choice].add(event.tokens, event.logprobs)
                yield offset + event.choice, event
            elif isinstance(event, Finished):
                self.outputs[offset + event.choice].finish(event.reason, event.tokens)
                yield offset + event.choice, event
            elif isinstance(event, Done):
                self.open -= 1
            elif isinstance(event, Failed):
                raise APIError(f"generation failed: {event.error}", 500, "server_error", code="generation_failed")

    def usage(self) -> dict:
        prompt = sum(len(p) for p in self.plan.prompts)
        completion = sum(o.completion_tokens for o in self.outputs)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _respond(request: Request, engine: Engine, served: ServedModel, plan: Plan, kind: str):
    run = _Run(engine, served, plan)
    run.start()
    ident = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
    created = int(time.time())
    if plan.stream:
        stream = _chat_stream if kind == "chat" else _text_stream
        return StreamingResponse(
            _sse(run, stream(run, served, ident, created)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        collect = asyncio.ensure_future(_drain(run))
        done, _ = await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
        if collect not in done:
            collect.cancel()
            run.cancel()
            return JSONResponse({}, status_code=499)  # the client is gone; nobody reads this
        collect.result()
    except BaseException:
        run.cancel()
        raise
    finally:
        gone.cancel()
    base = {"id": ident, "created": created, "model": served.name, "system_fingerprint": FINGERPRINT}
    if kind == "chat":
        choices = [
            {
                "index": i,
                "message": out.chat_message(),
                "logprobs": chat_logprobs(served.model, out.logprobs) if out.logprobs is not None else None,
                **out.finish_fields(plan.named_tool),
            }
            for i, out in enumerate(run.outputs)
        ]
        return {**base, "object": "chat.completion", "choices": choices, "usage": run.usage()}
    choices = [
        {
            "index": i,
            "text": out.text,
            "logprobs": completion_logprobs(served.model, out.logprobs) if out.logprobs is not None else None,
            **out.finish_fields(),
        }
        for i, out in enumerate(run.outputs)
    ]
    return {**base, "object": "text_completion", "choices": choices, "usage": run.usage()}


async def _drain(run: _Run) -> None:
    async for _ in run.events():
        pass


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _sse(run: _Run, chunks: AsyncIterator[dict]) -> AsyncIterator[str]:
    """Server-sent events; an error after the stream began is sent as an error event."""
    try:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
    except APIError as error:
        yield f"data: {json.dumps(error.body())}\n\n"
    except Exception as error:  # a bug must not cut the stream without an answer or its [DONE]
        body = APIError(f"internal error: {type(error).__name__}: {error}", 500, "server_error").body()
        yield f"data: {json.dumps(body)}\n\n"
    finally:
        run.cancel()  # a no-op when the jobs are done; frees them when the client went away
    yield "data: [DONE]\n\n"


async def _chat_stream(run: _Run, served: ServedModel, ident: str, created: int) -> AsyncIterator[dict]:
    plan = run.plan
    base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": served.name,
            "system_fingerprint": FINGERPRINT}  # fmt: skip
    if plan.include_usage:
        base["usage"] = None

    def chunk(index: int, delta: dict, finish: dict | None = None, logprobs=None) -> dict:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, **(finish or {"finish_reason": None})}
        return {**base, "choices": [choice]}

    for i in range(len(run.outputs)):
        yield chunk(i, {"role": "assistant", "content": "", "refusal": None})
    async for index, event in run.events():
        out = run.outputs[index]
        final = isinstance(event, Finished)
        delta = out.delta(final=final)
        entries = out.take_logprobs() if out.logprobs is not None else None
        logprobs = chat_logprobs(served.model, entries) if entries else None
        if delta or logprobs:
            yield chunk(index, delta, logprobs=logprobs)
        if final:
            yield chunk(index, {}, out.finish_fields(plan.named_tool))
    if plan.include_usage:
        yield {**base, "choices": [], "usage": run.usage()}


async def _text_stream(run: _Run, served: ServedModel, ident: str, created: int) -> AsyncIterator[dict]:
    plan = run.plan
    base = {"id": ident, "object": "text_completion", "created": created, "model": served.name,
            "system_fingerprint": FINGERPRINT}  # fmt: skip
    if plan.include_usage:
        base["usage"] = None
    offsets = [0] * len(run.outputs)
    async for index, event in run.events():
        out = run.outputs[index]
        final = isinstance(event, Finished)
        piece = out.delta(final=final).get("content", "")
        entries = out.take_logprobs() if out.logprobs is not None else None
        logprobs = completion_logprobs(served.model, entries, offsets[index]) if entries else None
        offsets[index] += len(piece)
        if piece or logprobs or final:
            finish = out.finish_fields() if final else {"finish_reason": None}
            choice = {"index": index, "text": piece, "logprobs": logprobs, **finish}
            yield {**base, "choices": [choice]}
    if plan.include_usage:
        yield {**base, "choices": [], "usage": run.usage()}


# --- errors ---------------------------------------------------------------------------------


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_request, error: APIError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, error: RequestValidationError):
        return JSONResponse(_validation(error).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, error: StarletteHTTPException):
        if isinstance(error.__cause__, RecursionError):  # FastAPI's body parser gave up on a deep body
            message = (
                "could not parse the JSON body of the request: it nests deeper than the server's JSON parser reads"
            )
            return JSONResponse(APIError(message, code="invalid_json").body(), status_code=400)
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        body = APIError(str(error.detail), error.status_code, kind).body()
        return JSONResponse(body, status_code=error.status_code, headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(_request, error: Exception):
        body = APIError(f"internal error: {type(error).__name__}: {error}", 500, "server_error").body()
        return JSONResponse(body, status_code=500)


def _validation(error: RequestValidationError) -> APIError:
    problems = error.errors()
    first = problems[0] if problems else {"loc": (), "msg": "invalid request", "type": ""}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = _param(loc)
    if first.get("type") == "json_invalid":
        return APIError(f"could not parse the JSON body of the request: {first.get('msg')}", code="invalid_json")
    if first.get("type") == "extra_forbidden":
        name = loc[-1] if loc else "?"
        hint = ""
        if name.startswith("guided_") or (loc and loc[0] == "structured_outputs"):
            hint = (
                "; constraint fields are structured_outputs {json, regex, choice, grammar, json_object, sql} and "
                "guided_json, guided_regex, guided_choice, guided_grammar"
            )
        return APIError(f"Unrecognized request argument supplied: {param}{hint}", param=param,
                        code="unknown_parameter")  # fmt: skip
    if first.get("type") == "missing":
        return APIError(f"Missing required parameter: {param!r}", param=param, code="missing_required_parameter")
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return APIError(f"Invalid value for {param!r}: {first.get('msg')}{more}", param=param, code="invalid_value")


def _param(loc: list[str]) -> str | None:
    out = ""
    for part in loc:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out or None
