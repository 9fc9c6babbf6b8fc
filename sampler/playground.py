"""The playground page ``sampler serve`` shows at ``/``: see each step's distribution.

One HTML page with its CSS and plain JavaScript, shipped in the package
(``sampler/playground/``): no build step, nothing fetched from elsewhere, so it works
offline. It talks to the same server through the public API only: ``/v1/models``, and
``/v1/completions`` streamed with ``logprobs`` and the ``sampling_trace`` extension
(:mod:`sampler.trace`). Its controls take their ranges and defaults from
``/playground/fields.json``, built here from the table the validation reads
(:data:`sampler.fields.RANGES`); the server's own error is shown at the field it names.

>>> [f["name"] for f in fields()][:3]
['max_tokens', 'temperature', 'top_p']
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from starlette.requests import Request as HTTPRequest
from starlette.responses import Response
from starlette.routing import Route

from .fields import RANGES
from .web import JSON, error_response, route

__all__ = ["fields", "playground_routes"]

#: The page's files and their media types (nothing else is served from the folder).
FILES = {
    "playground.css": "text/css; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
}

#: Every request field the page has a control for, in the order shown, with its kind.
#: (``model`` and ``prompt`` have their own places on the page.)
_CONTROLS: tuple[tuple[str, str, str], ...] = (
    ("max_tokens", "integer", "Tokens to generate for each choice."),
    ("temperature", "number", "Step 3: divide the logits by T (0: greedy)."),
    ("top_p", "number", "Step 4: keep the smallest most probable set with mass >= top_p."),
    ("n", "integer", "Choices returned for the prompt."),
    ("best_of", "integer", "Candidates generated; the n with the best mean logprob return."),
    ("presence_penalty", "number", "Step 2: subtract from every token already generated."),
    ("frequency_penalty", "number", "Step 2: subtract, times its count, from each token."),
    ("logit_bias", "bias", 'Step 1: JSON object of token id to bias, e.g. {"15": 5}.'),
    ("stop", "lines", "Up to 4 stop strings, one per line (\\n for a newline)."),
    ("seed", "integer", "The seed: the same request and seed give the same result."),
    ("logprobs", "integer", "Alternatives reported per token (needed for the token view)."),
    ("logprobs_mode", "choice", "Report the raw distribution or the processed one."),
    ("sampling_trace", "integer", "Ids traced per stage for the chart (extension)."),
    ("echo", "boolean", "Return the prompt too, with each prompt token's logprob."),
    ("stream", "boolean", "Stream the tokens as they are generated."),
    ("suffix", "text", "Text after the insertion point (models with FIM tokens only)."),
    ("user", "text", "An end-user id (recorded, no effect on sampling)."),
)

_CHOICES = {"logprobs_mode": ["raw", "processed"]}
_STEPS = {"temperature": 0.05, "top_p": 0.01, "presence_penalty": 0.1, "frequency_penalty": 0.1}
#: What the page sends unless changed (the API's defaults are shown next to them).
_PAGE_DEFAULTS = {"logprobs": 5, "sampling_trace": 8, "stream": True, "max_tokens": 24}


def fields() -> list[dict[str, Any]]:
    """The page's controls: name, kind, the API's default, range, step, help."""
    out = []
    for name, kind, help_text in _CONTROLS:
        default, lo, hi = RANGES.get(name, (False if kind == "boolean" else None, None, None))
        if name == "logprobs_mode":
            default = "raw"
        item: dict[str, Any] = {"name": name, "kind": kind, "default": default, "help": help_text}
        if name in RANGES:
            item.update(minimum=lo, maximum=hi)
        if name == "seed":  # beyond a double's exact integers: JavaScript reads strings
            item.update(minimum=str(lo), maximum=str(hi))
        if name in _STEPS:
            item["step"] = _STEPS[name]
        if name in _CHOICES:
            item["choices"] = _CHOICES[name]
        if name in _PAGE_DEFAULTS:
            item["initial"] = _PAGE_DEFAULTS[name]
        out.append(item)
    return out


def _read(name: str) -> bytes:
    return (resources.files("sampler") / "playground" / name).read_bytes()


def playground_routes() -> list[Route]:
    """``GET /`` (the page), ``GET /playground/{file}`` and ``/playground/fields.json``."""
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

    @route
    async def page(request: HTTPRequest) -> Response:
        return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=headers)

    @route
    async def asset(request: HTTPRequest) -> Response:
        name = request.path_params["name"]
        if name == "fields.json":
            return JSON({"fields": fields()}, headers=headers)
        if name not in FILES:
            return error_response(
                404, f"Invalid URL ({request.method} {request.url.path})", headers=headers
            )
        return Response(_read(name), media_type=FILES[name], headers=headers)

    return [
        Route("/", page, methods=["GET"]),
        Route("/playground/{name}", asset, methods=["GET"]),
    ]
