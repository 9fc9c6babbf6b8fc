"""Starlette pieces every route shares: JSON that never fails to encode, OpenAI-shaped
errors, a request id on every response and a logged 500 for anything a handler raises.

>>> error_response(404, "No such file", param="file_id").status_code
404
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response

from .errors import RequestError, request_id, server_error

__all__ = [
    "JSON",
    "dumps",
    "error_response",
    "log_failure",
    "read_json",
    "route",
    "server_error_response",
]

log = logging.getLogger("sampler.server")


def dumps(obj: Any) -> str:
    """Compact JSON; a lone surrogate anywhere (UTF-8 cannot carry it) is written as its
    ``\\uXXXX`` escape instead of failing the response."""
    try:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))


class JSON(JSONResponse):
    """Starlette's JSON response, rendered by :func:`dumps` (never fails to encode)."""

    def render(self, content: Any) -> bytes:
        return dumps(content).encode("utf-8")


def error_response(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    err = RequestError(message, param=param, code=code, status=status, type=type)
    return JSON(err.to_dict(), status_code=status, headers=headers)


Handler = Callable[[HTTPRequest], Awaitable[Response]]


def route(handler: Handler) -> Handler:
    """Give every request an id (the ``x-request-id`` response header, as OpenAI's), and
    turn anything the handler raises into a logged 500 carrying that id."""

    @functools.wraps(handler)
    async def run(request: HTTPRequest) -> Response:
        request.state.request_id = rid = request_id()
        try:
            response = await handler(request)
        except Exception as exc:
            log_failure(rid, request, exc)
            response = server_error_response(exc, rid)
        response.headers["x-request-id"] = rid
        return response

    return run


def log_failure(rid: str, request: HTTPRequest, exc: BaseException) -> None:
    """A 500, in the server log with its traceback (raised on the worker thread or here)."""
    log.error(
        "request %s (%s %s) failed with a server error",
        rid,
        request.method,
        request.url.path,
        exc_info=(type(exc), exc, exc.__traceback__),
    )


def server_error_response(exc: BaseException, rid: str) -> JSONResponse:
    return JSON(server_error(exc, rid), status_code=500, headers={"x-request-id": rid})


async def read_json(request: HTTPRequest, limit: int) -> Any:
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
        return error_response(
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
    return error_response(
        400,
        "We could not parse the JSON body of your request. (HINT: This likely "
        "means you aren't using your HTTP library correctly. The OpenAI API "
        f"expects a JSON payload, but {why}.)",
    )
