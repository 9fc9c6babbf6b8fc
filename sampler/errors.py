"""The one error type a request can raise, shaped like OpenAI's error body.

>>> e = RequestError("Invalid 'n': integer above maximum value.", param="n",
...                  code="integer_above_max_value")
>>> e.status, e.to_dict()["error"]["param"]
(400, 'n')
"""

from __future__ import annotations

import secrets
from typing import Any

__all__ = ["RequestError", "encodable", "request_id", "server_error"]


def encodable(text: str) -> str:
    """``text`` with every lone surrogate written as its ``\\udXXX`` escape: a string that
    always encodes as UTF-8 (JSON can carry ``"\\ud800"``, which UTF-8 cannot), so an
    error that quotes a request's text can always be sent.

    >>> encodable("mo\\ud800del")
    'mo\\\\ud800del'
    """
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class RequestError(Exception):
    """A request the API refuses: carries the fields of the HTTP error body.

    ``status`` is the HTTP status (400 for a bad request, 404 for an unknown model);
    ``message``, ``type``, ``param`` and ``code`` are exactly what OpenAI puts under
    ``{"error": {...}}``. All four keys are always present in :meth:`to_dict`.
    """

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int = 400,
        type: str = "invalid_request_error",
    ) -> None:
        message = encodable(message)
        super().__init__(message)
        self.message = message
        self.param = None if param is None else encodable(str(param))
        self.code = code
        self.status = status
        self.type = type

    def to_dict(self) -> dict[str, Any]:
        """The JSON error body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def __repr__(self) -> str:
        return (
            f"RequestError(status={self.status}, param={self.param!r}, "
            f"code={self.code!r}, message={self.message!r})"
        )


def request_id() -> str:
    """A request's id, as OpenAI's ``x-request-id``: ``req_`` and 32 random hex digits."""
    return "req_" + secrets.token_hex(16)


def server_error(exc: BaseException, rid: str) -> dict[str, Any]:
    """The 500 body for an unexpected error ``exc`` met by request ``rid`` (whose traceback
    the caller logs under that id).

    >>> server_error(ValueError("x"), "req_1")["error"]["type"]
    'server_error'
    """
    detail = str(exc)
    detail = detail if len(detail) <= 300 else detail[:300] + "…"
    return RequestError(
        "The server had an error while processing your request. Sorry about "
        f"that! ({type(exc).__name__}: {detail}) The server log has the "
        f"details under request id {rid}.",
        status=500,
        type="server_error",
    ).to_dict()
