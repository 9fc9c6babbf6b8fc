"""The tokenizer endpoints evaluation harnesses call: ``/tokenizer_info``, ``/tokenize``,
``/detokenize`` (at the server's root, beside ``/v1``, where vLLM serves them).

lm-evaluation-harness's ``local-completions`` model (``tokenizer_backend=remote``, and its
default ``auto``, which probes these) counts context lengths with ``/tokenize`` and finds
the end and start tokens' ids by tokenising their texts, so that those texts must come back
as their one special id: here they do, because text is tokenised as a Completions string
prompt is, special tokens included (spec §2). ``/tokenize`` returns exactly the ids the
Completions endpoint reads for that prompt; ``add_special_tokens`` is accepted and adds
nothing, as no prompt here ever gets a token it did not write.

Each takes an optional ``model`` (in the body, or ``?model=`` for ``/tokenizer_info``); by
default the server's first model. Bad input is a 400 naming the field.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request as HTTPRequest
from starlette.responses import Response
from starlette.routing import Route

from .chat_request import chat_prompt, messages_field
from .errors import RequestError
from .prompts import check_token_ids, prompt_tokens
from .values import boolean, clip, is_int, show, type_error, valid_text
from .web import JSON, read_json, route

__all__ = ["tokenizer_routes", "tokenizer_info", "tokenize", "detokenize"]


def tokenizer_info(engine: Any) -> dict[str, Any]:
    """What ``GET /tokenizer_info`` says about ``engine``'s model."""
    info, tok = engine.info, engine.tokenizer
    chat = info.chat
    eos = chat.eos_token if chat is not None and chat.eos_token else tok.token_text(info.end_ids[0])
    return {
        "model": engine.name,
        "tokenizer": tok.name,
        "eos_token": eos,
        "bos_token": chat.bos_token if chat is not None else None,
        "pad_token": chat.pad_token if chat is not None else None,
        "unk_token": chat.unk_token if chat is not None else None,
        "eos_token_ids": list(info.end_ids),
        "add_bos_token": False,
        "chat_template": chat.template if chat is not None else None,
        "chat_template_source": chat.source if chat is not None else None,
        "max_model_len": info.context_length,
        "model_max_length": info.context_length,
        "vocab_size": info.vocab_size,
    }


def tokenize(engine: Any, body: Any) -> dict[str, Any]:
    """``POST /tokenize``: ``{"prompt": str}`` or ``{"messages": [...]}`` (rendered by the
    chat template, as ``/v1/chat/completions`` renders them) -> ``{"tokens", "count",
    "max_model_len"}``."""
    body = _fields(body, {"model", "prompt", "messages", "add_special_tokens"})
    boolean(body, "add_special_tokens")
    prompt, messages = body.get("prompt"), body.get("messages")
    if (  # lm-eval sends chat messages as "prompt"
        isinstance(prompt, list)
        and prompt
        and all(isinstance(m, Mapping) for m in prompt)
        and messages is None
    ):
        prompt, messages = None, prompt
        body = {"messages": messages}
    if prompt is None and messages is None:
        raise RequestError(
            "Missing required parameter: 'prompt' (a string), or 'messages' (chat messages).",
            param="prompt",
            code="missing_required_parameter",
        )
    if prompt is not None and messages is not None:
        raise RequestError(
            "Send one of 'prompt' (a string) and 'messages' (chat messages), not both.",
            param="messages",
            code="invalid_value",
        )
    if messages is not None:
        ids = list(chat_prompt(engine.info, messages_field(body)).tokens)
    else:
        if not isinstance(prompt, str):
            raise type_error("prompt", "a string", prompt)
        ids = list(prompt_tokens(prompt, engine.info, None).shown)
    return {"tokens": ids, "count": len(ids), "max_model_len": engine.info.context_length}


def detokenize(engine: Any, body: Any) -> dict[str, Any]:
    """``POST /detokenize``: ``{"tokens": [id, ...]}`` -> ``{"prompt": text}`` (bytes that
    are not UTF-8 become U+FFFD, as the Completions endpoint writes token-id prompts)."""
    body = _fields(body, {"model", "tokens"})
    tokens = body.get("tokens")
    if tokens is None:
        raise RequestError(
            "Missing required parameter: 'tokens'.",
            param="tokens",
            code="missing_required_parameter",
        )
    if not isinstance(tokens, list):
        raise type_error("tokens", "an array of integers", tokens)
    for t in tokens:
        if not is_int(t):
            raise type_error("tokens", "an array of integers", t)
    tok = engine.tokenizer
    check_token_ids("tokens", tokens, tok)
    text = tok.decode_bytes(int(t) for t in tokens).decode("utf-8", "replace")
    return {"prompt": text}


def _fields(body: Any, known: set[str]) -> Mapping:
    if not isinstance(body, Mapping):
        raise RequestError("The request body must be a JSON object.")
    for name in body:
        if name not in known:
            raise RequestError(
                f"Unrecognized request argument supplied: {clip(name)}",
                param=name if isinstance(name, str) else None,
            )
    if isinstance(body.get("prompt"), str):
        valid_text("prompt", body["prompt"])
    return body


def tokenizer_routes(
    engines: Mapping[str, Any],
    unauthorized: Callable[[HTTPRequest], Response | None],
    max_body_bytes: int,
) -> list[Route]:
    """The three routes over ``engines`` (model id -> :class:`~sampler.engine.Engine`)."""

    def engine_for(name: Any) -> Any:
        if name is None:
            return next(iter(engines.values()))
        if not isinstance(name, str) or name not in engines:
            shown = clip(name) if isinstance(name, str) else show(name)
            raise RequestError(
                f"The model `{shown}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
                status=404,
            )
        return engines[name]

    @route
    async def info(request: HTTPRequest) -> Response:
        refused = unauthorized(request)
        if refused is not None:
            return refused
        try:
            return JSON(tokenizer_info(engine_for(request.query_params.get("model"))))
        except RequestError as err:
            return JSON(err.to_dict(), status_code=err.status)

    def post(work: Callable[[Any, Any], dict[str, Any]]) -> Callable:
        @route
        async def handler(request: HTTPRequest) -> Response:
            refused = unauthorized(request)
            if refused is not None:
                return refused
            body = await read_json(request, max_body_bytes)
            if isinstance(body, Response):
                return body
            try:
                engine = engine_for(body.get("model") if isinstance(body, Mapping) else None)
                return JSON(await asyncio.to_thread(work, engine, body))
            except RequestError as err:
                return JSON(err.to_dict(), status_code=err.status)

        return handler

    return [
        Route("/tokenizer_info", info, methods=["GET"]),
        Route("/tokenize", post(tokenize), methods=["POST"]),
        Route("/detokenize", post(detokenize), methods=["POST"]),
    ]
