"""The OpenAI-compatible HTTP server: a thin Starlette shell around the scheduler.

    sampler serve [--model M ...] [--host 127.0.0.1] [--port 8000] [--api-key KEY]

``POST /v1/completions`` and ``POST /v1/chat/completions`` (JSON or server-sent events;
the chat endpoint renders the messages by the model's template, :mod:`sampler.chat_request`),
``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health``, the tokenizer endpoints
(``/tokenizer_info``, ``/tokenize``, ``/detokenize``: :mod:`sampler.tokenizer_api`), the
playground page at ``GET /`` (:mod:`sampler.playground`), and OpenAI's Batch API
(``/v1/files``, ``/v1/batches``, see :mod:`sampler.batch_api`) when ``batch_dir`` is set.
Errors have OpenAI's shape and status codes. Model work runs on each model's scheduler
thread; the event loop only parses, validates and relays. Needs the ``server`` extra
(starlette, uvicorn, python-multipart).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HTTPRequest
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .chat_request import parse_chat_request
from .engine import Engine
from .errors import RequestError, request_id, server_error
from .params import EXTENSION_FIELDS, Limits, parse_request
from .playground import playground_routes
from .scheduler import Busy, Job, Scheduler
from .tokenizer_api import tokenizer_routes
from .web import JSON, dumps, error_response, log_failure, read_json, route, server_error_response

__all__ = ["ServerConfig", "create_app", "serve"]

log = logging.getLogger("sampler.server")


@dataclass(frozen=True)
class ServerConfig:
    api_key: str | None = None
    max_body_bytes: int = 8 * 2**20
    max_prompts: int = 256
    max_sequences: int = 64  # sequences in the shared batch
    max_waiting: int = 256  # requests queued for a place; beyond: 429
    batch_dir: str | None = None  # /v1/files and /v1/batches keep their state here (off: None)
    max_upload_bytes: int = 200 * 2**20  # the largest file /v1/files takes (OpenAI's limit)


class _Model:
    def __init__(self, engine: Engine, cfg: ServerConfig) -> None:
        self.engine = engine
        self.scheduler = Scheduler(
            engine, max_sequences=cfg.max_sequences, max_waiting=cfg.max_waiting
        )
        path = getattr(engine.decoder.config, "path", None)
        self.created = int(os.path.getmtime(path)) if path else 0

    def card(self) -> dict[str, Any]:
        cfg = self.engine.decoder.config
        return {
            "id": self.engine.name,
            "object": "model",
            "created": self.created,
            "owned_by": "refsampler",
            "refsampler": {
                "context_length": cfg.context_length,
                "tokenizer": self.engine.tokenizer.name,
                "system_fingerprint": self.engine.fingerprint,
                "suffix": self.engine.info.fim is not None,
                "extensions": {name: _EXTENSIONS[name] for name in EXTENSION_FIELDS},
            },
        }


_EXTENSIONS: dict[str, Any] = {
    "logprobs_mode": ["raw", "processed"],
    "sampling_trace": {"type": "integer", "minimum": 0, "maximum": 20, "needs": "logprobs"},
}


def create_app(engines: Engine | Sequence[Engine], config: ServerConfig | None = None) -> Starlette:
    """The ASGI app serving ``engines`` (one scheduler and worker thread per model)."""
    cfg = config or ServerConfig()
    engines = [engines] if isinstance(engines, Engine) else list(engines)
    models = {e.name: _Model(e, cfg) for e in engines}
    limits = Limits(max_prompts=cfg.max_prompts, max_sequences=cfg.max_sequences)

    def unauthorized(request: HTTPRequest) -> Response | None:
        if cfg.api_key is None:
            return None
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            return error_response(
                401,
                "You didn't provide an API key. Provide it in the Authorization "
                "header as 'Bearer YOUR_KEY'.",
                code="missing_api_key",
            )
        if header[len("Bearer ") :] != cfg.api_key:
            return error_response(401, "Incorrect API key provided.", code="invalid_api_key")
        return None

    async def answer(request: HTTPRequest, parse: Callable[..., Any]) -> Response:
        refused = unauthorized(request)
        if refused is not None:
            return refused
        body = await read_json(request, cfg.max_body_bytes)
        if isinstance(body, Response):
            return body
        name = body.get("model") if isinstance(body, dict) else None
        model = models.get(name) if isinstance(name, str) else None
        info = (model or next(iter(models.values()))).engine.info
        try:  # tokenising (and rendering) a large prompt takes a while: not on the loop
            req = await asyncio.to_thread(parse, body, info, limits)
        except RequestError as err:
            return JSON(err.to_dict(), status_code=err.status)
        assert model is not None  # the parser refused any other model with a 404
        return await _run(request, model.scheduler, req)

    @route
    async def completions(request: HTTPRequest) -> Response:
        return await answer(request, parse_request)

    @route
    async def chat_completions(request: HTTPRequest) -> Response:
        return await answer(request, parse_chat_request)

    @route
    async def list_models(request: HTTPRequest) -> Response:
        refused = unauthorized(request)
        return refused or JSON({"object": "list", "data": [m.card() for m in models.values()]})

    @route
    async def get_model(request: HTTPRequest) -> Response:
        refused = unauthorized(request)
        if refused is not None:
            return refused
        name = request.path_params["model"]
        if name not in models:
            return error_response(
                404,
                f"The model `{name}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return JSON(models[name].card())

    @route
    async def health(request: HTTPRequest) -> Response:
        load = {name: m.scheduler.load for name, m in models.items()}
        return JSON({"status": "ok", "models": load})

    async def http_error(request: HTTPRequest, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        where = f"({request.method} {request.url.path})"
        headers = {"x-request-id": request_id()}
        if exc.status_code == 404:
            return error_response(404, f"Invalid URL {where}", headers=headers)
        if exc.status_code == 405:
            return error_response(405, f"Invalid method for URL {where}", headers=headers)
        return error_response(exc.status_code, str(exc.detail), headers=headers)

    async def server_error(request: HTTPRequest, exc: Exception) -> Response:
        # (a route's own errors are caught by route; this is the last resort)
        rid = getattr(request.state, "request_id", None) or request_id()
        log_failure(rid, request, exc)
        return server_error_response(exc, rid)

    routes = [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        *playground_routes(),
        *tokenizer_routes(
            {name: m.engine for name, m in models.items()}, unauthorized, cfg.max_body_bytes
        ),
    ]
    runner = store = None
    if cfg.batch_dir is not None:
        from .batch_api import batch_routes
        from .batch_runner import Runner
        from .batch_store import Store

        try:
            store = Store(cfg.batch_dir)
        except Exception:  # (another server holds it): no worker threads left behind
            for m in models.values():
                m.scheduler.close()
            raise
        runner = Runner(store, {name: m.scheduler for name, m in models.items()}, limits)
        routes += batch_routes(store, runner, unauthorized, max_upload_bytes=cfg.max_upload_bytes)

    def shutdown() -> None:
        if runner is not None:  # first: its requests need the schedulers to finish
            runner.close()
        for m in models.values():
            m.scheduler.close()
        if store is not None:
            store.close()

    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.state.models = models
    app.state.shutdown = shutdown
    return app


#: Seconds a client told "busy" (429) should wait: about one admission round of a full
#: batch on a small model (the queue moves every decode step).
RETRY_AFTER = 1


async def _run(request: HTTPRequest, scheduler: Scheduler, req: Any) -> Response:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    rid = request.state.request_id

    def sink(event: tuple[str, Any]) -> None:  # on the worker thread
        loop.call_soon_threadsafe(queue.put_nowait, event)

    try:
        job = scheduler.submit(req, sink)
    except Busy as err:
        return error_response(
            429,
            str(err),
            type="rate_limit_exceeded",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(RETRY_AFTER)},
        )
    if req.stream:
        return StreamingResponse(
            _events(request, scheduler, job, queue),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    while True:  # wait for the response, noticing a client that goes away
        try:
            kind, value = await asyncio.wait_for(queue.get(), timeout=0.5)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                scheduler.cancel(job)
                return Response(status_code=499)
            continue
        if kind == "error":
            log_failure(rid, request, value)
            return server_error_response(value, rid)
        return JSON(value)


async def _events(
    request: HTTPRequest, scheduler: Scheduler, job: Job, queue: asyncio.Queue
) -> AsyncIterator[str]:
    """SSE frames of one stream. If the client leaves, the generator is closed here and
    the job is cancelled: its sequences leave the batch at the next step."""
    try:
        while True:
            kind, value = await queue.get()
            if kind == "chunks":
                for chunk in value:
                    yield f"data: {dumps(chunk)}\n\n"
            elif kind == "done":
                yield "data: [DONE]\n\n"
                return
            else:  # an error after the stream began: said in-band, then the stream ends
                rid = request.state.request_id
                log_failure(rid, request, value)
                yield f"data: {dumps(server_error(value, rid))}\n\n"
                return
    finally:
        scheduler.cancel(job)


def serve(
    models: Sequence[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    threads: int = 1,
    config: ServerConfig | None = None,
) -> None:
    """Load ``models`` and serve them until interrupted (uvicorn)."""
    import uvicorn

    engines = [Engine.load(m, threads=threads) for m in models]
    app = create_app(engines, config)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", log_config=log_config())
    finally:
        app.state.shutdown()


def log_config() -> dict[str, Any]:
    """uvicorn's logging setup, plus the ``sampler`` loggers on the same stderr handler:
    server errors with their tracebacks and request ids go next to the access lines."""
    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg["loggers"]["sampler"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return cfg
