"""The FastAPI routes: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``, ``/v1/feedback``, ``/health``.

With a :class:`~lorahive.serve.keys.KeyStore` holding a key, every ``/v1`` request needs
``Authorization: Bearer KEY`` (401 without a valid one); an agent's key may use that agent
only (403 otherwise, before anything is decoded or recorded). Every refusal has the OpenAI error shape ``{"error": {"message", "type", "param", "code"}}``;
the model itself is only ever touched by the :class:`~lorahive.serve.engine.Engine`'s thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lorahive.serve import protocol as p
from lorahive.serve.engine import Engine, Event, Feedback, Sequence_, ServeError
from lorahive.serve.keys import ADMIN, KeyStore

log = logging.getLogger("lorahive.serve")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "the request body is not valid", None
    first = errors[0]
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    where = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('msg', '')}", None
    msg = str(first.get("msg", "invalid value"))
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return (f"{where}: {msg}{more}" if where else f"{msg}{more}"), where


def _bearer(request: Request) -> str | None:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return key.strip() or None


def create_app(engine: Engine, keys: KeyStore | None = None) -> FastAPI:
    """The ASGI app over a started ``engine``; with ``keys`` holding a key, every ``/v1`` request needs one."""
    app = FastAPI(title="lorahive", docs_url=None, redoc_url=None)
    created = int(time.time())

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Any:
        request.state.role = None  # None: no keys, every agent
        if keys is not None and request.url.path.startswith("/v1") and keys.enabled:
            key = _bearer(request)
            role = keys.role(key) if key is not None else None
            if role is None:
                msg = "no API key given (send Authorization: Bearer KEY)" if key is None else "the API key is not valid for this server"
                return JSONResponse(p.error_body(msg, "invalid_request_error", None, "invalid_api_key"), status_code=401, headers={"WWW-Authenticate": "Bearer"})
            request.state.role = None if role == ADMIN else role
        return await call_next(request)

    def _only(request: Request) -> str | None:
        """The one agent this request's key may use, or None for every agent."""
        return getattr(request.state, "role", None)

    def _may(request: Request, agent: str) -> None:
        only = _only(request)
        if only is not None and agent != only:
            raise ServeError(403, f"this API key is for agent {only!r}, not for model {agent!r}", "permission_error", "model", "permission_denied")

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return JSONResponse(p.error_body(exc.message, exc.type, exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        msg, param = _validation_message(exc)
        return JSONResponse(p.error_body(msg, "invalid_request_error", param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(p.error_body(str(exc.detail), type_), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse(p.error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "agents": len(engine.agents)}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(p.metrics_text(dict(engine.stats), engine.queued), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        only = _only(request)
        return p.models_response([a for a in engine.agents if only is None or a == only], created)

    @app.get("/v1/models/{model}")
    async def model(model: str, request: Request) -> dict[str, Any]:
        _may(request, model)
        engine.check_agent(model)
        return p.models_response([model], created)["data"][0]

    def _start(agent: str, prompt: str, max_tokens: int | None, stop: list[str], kind: str) -> tuple[Sequence_, asyncio.Queue[Event]]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def emit(ev: Event) -> None:
            with contextlib.suppress(RuntimeError):  # the client's loop is gone
                loop.call_soon_threadsafe(events.put_nowait, ev)

        seq = engine.make_sequence(agent, prompt, max_tokens, emit, stop, kind)
        engine.submit(seq)
        return seq, events

    async def _collect(seq: Sequence_, events: asyncio.Queue[Event]) -> tuple[str, str]:
        parts: list[str] = []
        try:
            while True:
                kind, value = await events.get()
                if kind == "delta":
                    parts.append(value)
                elif kind == "done":
                    return "".join(parts), value
                else:
                    raise ServeError(500, value, "server_error")
        finally:
            seq.cancelled = True  # a client that went away stops being decoded

    async def _sse(seq: Sequence_, events: asyncio.Queue[Event], chunk: Any) -> AsyncIterator[str]:
        try:
            first = chunk(None, None, True)
            if first is not None:
                yield f"data: {json.dumps(first)}\n\n"
            while True:
                kind, value = await events.get()
                if kind == "delta":
                    yield f"data: {json.dumps(chunk(value, None, False))}\n\n"
                elif kind == "done":
                    yield f"data: {json.dumps(chunk(None, value, False))}\n\n"
                    break
                else:
                    yield f"data: {json.dumps(p.error_body(value, 'server_error'))}\n\n"
                    break
            yield "data: [DONE]\n\n"
        finally:
            seq.cancelled = True

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: p.ChatRequest, request: Request) -> dict[str, Any] | StreamingResponse:
        _may(request, body.model)
        engine.check_agent(body.model)
        prompt = engine.chat_prompt(body.messages)
        seq, events = _start(body.model, prompt, body.limit(), body.stops(), "chatcmpl")
        if body.stream:
            now = int(time.time())

            def chunk(text: str | None, finish: str | None, first: bool) -> dict[str, Any]:
                delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text is not None else {})
                return p.chat_chunk(seq.id, seq.agent, now, delta, finish)

            return StreamingResponse(_sse(seq, events, chunk), media_type="text/event-stream")
        text, finish = await _collect(seq, events)
        return p.chat_response(seq.id, seq.agent, text, finish, seq.prompt_tokens, len(seq.out))

    @app.post("/v1/completions", response_model=None)
    async def completions(body: p.CompletionRequest, request: Request) -> dict[str, Any] | StreamingResponse:
        _may(request, body.model)
        engine.check_agent(body.model)
        try:
            prompt = body.text()
        except ValueError as e:
            raise ServeError(400, str(e), param="prompt") from None
        seq, events = _start(body.model, prompt, body.max_tokens, body.stops(), "cmpl")
        if body.stream:
            now = int(time.time())

            def chunk(text: str | None, finish: str | None, first: bool) -> dict[str, Any] | None:
                if first:
                    return None
                return p.completion_response(seq.id, seq.agent, text or "", finish, created=now)

            return StreamingResponse(_sse(seq, events, chunk), media_type="text/event-stream")
        text, finish = await _collect(seq, events)
        return p.completion_response(seq.id, seq.agent, text, finish, seq.prompt_tokens, len(seq.out))

    @app.post("/v1/feedback")
    async def feedback(body: p.FeedbackRequest, request: Request) -> dict[str, Any]:
        if body.reward is None and body.correction is None:
            raise ServeError(400, "give a reward, a correction, or both", param="reward")
        if body.correction is not None and len(body.correction) > 16 * engine.hive.core.max_length:
            raise ServeError(400, f"the correction has {len(body.correction)} characters; the model's context holds {engine.hive.core.max_length} tokens", param="correction", code="context_length_exceeded")
        fut = engine.feedback(Feedback(body.completion_id, body.reward, body.correction, _only(request)))
        return await asyncio.wrap_future(fut)

    return app
