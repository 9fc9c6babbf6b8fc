"""The OpenAI-compatible HTTP server: a thin Starlette shell around the scheduler.

    sampler serve [--model M ...] [--host 127.0.0.1] [--port 8000] [--api-key KEY]

``POST /v1/completions`` (JSON or server-sent events), ``GET /v1/models``,
``GET /v1/models/{id}``, ``GET /health``. Errors have OpenAI's shape and status codes.
Model work runs on each model's scheduler thread; the event loop only parses, validates
and relays. Needs the ``server`` extra (starlette, uvicorn).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .engine import Engine
from .errors import RequestError, request_id, server_error
from .params import EXTENSION_FIELDS, Limits, parse_request
from .scheduler import Busy, Job, Scheduler

__all__ = ["ServerConfig", "create_app", "serve"]

log = logging.getLogger("sampler.server")


@dataclass(frozen=True)
class ServerConfig:
    api_key: str | None = None
    max_body_bytes: int = 8 * 2**20
    max_prompts: int = 256
    max_sequences: int = 64  # sequences in the shared batch
    max_waiting: int = 256  # requests queued for a place; beyond: 429


def _dumps(obj: Any) -> str:
    """Compact JSON; a lone surrogate anywhere (UTF-8 cannot carry it) is written as its
    ``\\uXXXX`` escape instead of failing the response."""
    try:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))


class _JSON(JSONResponse):
    """Starlette's JSON response, rendered by :func:`_dumps` (never fails to encode)."""

    def render(self, content: Any) -> bytes:
        return _dumps(content).encode("utf-8")


def _error(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    err = RequestError(message, param=param, code=code, status=status, type=type)
    return _JSON(err.to_dict(), status_code=status, headers=headers)


Handler = Callable[[HTTPRequest], Awaitable[Response]]


def _route(handler: Handler) -> Handler:
    """Give every request an id (the ``x-request-id`` response header, as OpenAI's), and
    turn anything the handler raises into a logged 500 carrying that id."""

    @functools.wraps(handler)
    async def run(request: HTTPRequest) -> Response:
        request.state.request_id = rid = request_id()
        try:
            response = await handler(request)
        except Exception as exc:
            _log_failure(rid, request, exc)
            response = _server_error(exc, rid)
        response.headers["x-request-id"] = rid
        return response

    return run


def _log_failure(rid: str, request: HTTPRequest, exc: BaseException) -> None:
    """A 500, in the server log with its traceback (raised on the worker thread or here)."""
    log.error(
        "request %s (%s %s) failed with a server error",
        rid,
        request.method,
        request.url.path,
        exc_info=(type(exc), exc, exc.__traceback__),
    )


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


_EXTENSIONS = {"logprobs_mode": ["raw", "processed"]}


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
            return _error(
                401,
                "You didn't provide an API key. Provide it in the Authorization "
                "header as 'Bearer YOUR_KEY'.",
                code="missing_api_key",
            )
        if header[len("Bearer ") :] != cfg.api_key:
            return _error(401, "Incorrect API key provided.", code="invalid_api_key")
        return None

    @_route
    async def completions(request: HTTPRequest) -> Response:
        refused = unauthorized(request)
        if refused is not None:
            return refused
        body = await _read_json(request, cfg.max_body_bytes)
        if isinstance(body, Response):
            return body
        name = body.get("model") if isinstance(body, dict) else None
        model = models.get(name) if isinstance(name, str) else None
        info = (model or next(iter(models.values()))).engine.info
        try:  # tokenising a large prompt takes a while: not on the event loop
            req = await asyncio.to_thread(parse_request, body, info, limits)
        except RequestError as err:
            return _JSON(err.to_dict(), status_code=err.status)
        assert model is not None  # parse_request refused any other model with a 404
        return await _run(request, model.scheduler, req)

    @_route
    async def list_models(request: HTTPRequest) -> Response:
        refused = unauthorized(request)
        return refused or _JSON({"object": "list", "data": [m.card() for m in models.values()]})

    @_route
    async def get_model(request: HTTPRequest) -> Response:
        refused = unauthorized(request)
        if refused is not None:
            return refused
        name = request.path_params["model"]
        if name not in models:
            return _error(
                404,
                f"The model `{name}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return _JSON(models[name].card())

    @_route
    async def health(request: HTTPRequest) -> Response:
        load = {name: m.scheduler.load for name, m in models.items()}
        return _JSON({"status": "ok", "models": load})

    async def http_error(request: HTTPRequest, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        where = f"({request.method} {request.url.path})"
        headers = {"x-request-id": request_id()}
        if exc.status_code == 404:
            return _error(404, f"Invalid URL {where}", headers=headers)
        if exc.status_code == 405:
            return _error(405, f"Invalid method for URL {where}", headers=headers)
        return _error(exc.status_code, str(exc.detail), headers=headers)

    async def server_error(request: HTTPRequest, exc: Exception) -> Response:
        # (a route's own errors are caught by _route; this is the last resort)
        rid = getattr(request.state, "request_id", None) or request_id()
        _log_failure(rid, request, exc)
        return _server_error(exc, rid)

    def shutdown() -> None:
        for m in models.values():
            m.scheduler.close()

    app = Starlette(
        routes=[
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", get_model, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.state.models = models
    app.state.shutdown = shutdown
    return app


def _server_error(exc: BaseException, rid: str) -> JSONResponse:
    return _JSON(server_error(exc, rid), status_code=500, headers={"x-request-id": rid})


async def _read_json(request: HTTPRequest, limit: int) -> Any:
    """The parsed body, or the error response (413 too large, 400 not JSON).

    A body over the limit is still read to its end (and dropped) before the 413 goes out:
    answering mid-upload makes many clients see a reset connection instead of the error.
    """
    data = bytearray()
    too_large, dropped = False, 0
    async for part in request.stream():
        if too_large or len(data) + len(part) > limit:
            too_large, dropped = True, dropped + len(data) + len(part)
            data.clear()
            if dropped > 4 * limit:  # not worth reading further: answer now
                break
            continue
        data += part
    if too_large:
        return _error(
            413,
            f"The request body is larger than this server accepts ({limit} "
            "bytes). Send fewer or shorter prompts.",
        )
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:  # (JSONDecodeError is a ValueError)
        why = f"what was sent was not valid JSON: {str(err)[:200]}"
    except RecursionError:
        why = "what was sent nests arrays or objects too deeply to read"
    return _error(
        400,
        "We could not parse the JSON body of your request. (HINT: This likely "
        "means you aren't using your HTTP library correctly. The OpenAI API "
        f"expects a JSON payload, but {why}.)",
    )


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
        return _error(
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
            _log_failure(rid, request, value)
            return _server_error(value, rid)
        return _JSON(value)


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
                    yield f"data: {_dumps(chunk)}\n\n"
            elif kind == "done":
                yield "data: [DONE]\n\n"
                return
            else:  # an error after the stream began: said in-band, then the stream ends
                rid = request.state.request_id
                _log_failure(rid, request, value)
                yield f"data: {_dumps(server_error(value, rid))}\n\n"
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
