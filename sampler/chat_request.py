"""The chat endpoint's boundary: a ``/v1/chat/completions`` body becomes the same
:class:`~sampler.params.Request` a Completions body does.

The messages are checked, rendered by the model's chat template
(:mod:`sampler.chat_template`) and tokenised as one prompt, special tokens included; every
sampling field has the Completions rule (:mod:`sampler.fields`), so a chat request samples
exactly as the Completions request for the rendered prompt with the same fields does
(``docs/chat.md``). What differs:

- ``logprobs`` is a boolean and ``top_logprobs`` (0-20) the number of alternatives;
- ``max_completion_tokens`` (or the older ``max_tokens``, not both) defaults to the rest of
  the context, as OpenAI's does;
- ``developer`` messages are rendered as ``system`` ones (templates know only ``system``);
  text parts of one message are joined with a newline;
- fields of OpenAI's chat API that this server does not implement (``tools``,
  ``response_format``, ``audio`` ...) are refused by name, never ignored, unless null or a
  value that asks for nothing more (``tools: []``, ``store: false``, ``metadata``, ...).

>>> from sampler.model import ChatConfig
>>> from sampler.tokenizer import get_tokenizer
>>> chat = ChatConfig("{% for m in messages %}{{ m.role }}: {{ m.content }}\\n{% endfor %}")
>>> info = ModelInfo("m", get_tokenizer("cl100k_base"), 64, (100257,), chat=chat)
>>> req = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}, info)
>>> req.prompts[0].text, req.max_tokens
('user: Hi\\n', 60)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .errors import RequestError
from .fields import (
    Limits,
    ModelInfo,
    check_limits,
    model_field,
    n_best_of,
    stop_field,
    stream_options_field,
)
from .params import Request, sampling_params
from .prompts import Prompt, check_context
from .tokenizer import UnrepresentableText
from .values import boolean, clip, integer, json_type, type_error, valid_text

__all__ = [
    "parse_chat_request",
    "chat_prompt",
    "messages_field",
    "CHAT_FIELDS",
    "CHAT_RANGES",
    "UNSUPPORTED_FIELDS",
    "ROLES",
]

#: The fields this endpoint reads.
CHAT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "n",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "seed",
        "stream",
        "stream_options",
        "user",
        "logprobs_mode",  # (the extension, spec §11)
    }
)

#: OpenAI chat fields this server does not implement: refused by name unless null.
UNSUPPORTED_FIELDS = (
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "response_format",
    "audio",
    "modalities",
    "prediction",
    "reasoning_effort",
    "verbosity",
    "web_search_options",
    "service_tier",
    "store",
    "metadata",
    "prompt_cache_key",
    "safety_identifier",
)

#: The chat endpoint's own numeric fields, as :data:`sampler.fields.RANGES` holds the
#: shared ones: ``(default, minimum, maximum)``.
CHAT_RANGES: dict[str, tuple[int | None, int | None, int | None]] = {
    "max_completion_tokens": (None, 1, None),
    "top_logprobs": (None, 0, 20),
}

#: Message roles, and the role each is rendered as.
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def parse_chat_request(body: Any, info: ModelInfo, limits: Limits | None = None) -> Request:
    """Validate a chat body against the model it names and render its messages: the
    :class:`~sampler.params.Request` the engine runs (with ``chat=True``: chat shapes)."""
    body = _check_fields(body)
    model = model_field(body, info)
    messages = messages_field(body)
    stream = boolean(body, "stream")
    n, _ = n_best_of(body, stream)
    stop = stop_field(body)
    include_usage = stream_options_field(body, stream)
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise type_error("user", "a string", user)
    plain = {k: v for k, v in body.items() if k != "logprobs"}  # (Completions' is a count)
    sampling = sampling_params(
        plain, max_bias_id=info.max_bias_id, masked=info._masked_set, tokenizer=info.tokenizer.name
    )
    sampling = dataclasses.replace(sampling, logprobs=_top_logprobs(body))
    limit = _max_tokens(body)
    if limits is not None:
        check_limits(1, n, n, False, limits)
    prompt = chat_prompt(info, messages)
    if limit is None:  # the rest of the context, which must hold at least one token
        room = info.context_length - len(prompt.tokens)
        if room < 1:
            raise RequestError(
                f"This model's maximum context length is {info.context_length} tokens, and "
                f"the rendered messages take {len(prompt.tokens)}, which leaves no room for "
                "a reply. Shorten the messages.",
                param="messages",
                code="context_length_exceeded",
            )
    max_tokens = room if limit is None else limit
    check_context((prompt,), max_tokens, info)
    return Request(
        model=model,
        prompts=(prompt,),
        sampling=sampling,
        max_tokens=max_tokens,
        n=n,
        best_of=n,
        stop=stop,
        stream=stream,
        include_usage=include_usage,
        chat=True,
    )


def _check_fields(body: Any) -> Mapping:
    if not isinstance(body, Mapping):
        raise RequestError(
            "We could not parse the JSON body of your request. The OpenAI API expects a JSON "
            f"object, but what was sent was {json_type(body)}."
        )
    for name in body:
        if name in UNSUPPORTED_FIELDS and not _neutral(name, body[name]):
            raise RequestError(
                f"Invalid '{name}': this server does not implement '{name}'; remove it "
                "(see docs/chat.md for the fields it takes).",
                param=name,
                code="unsupported_parameter",
            )
        if name not in CHAT_FIELDS and name not in UNSUPPORTED_FIELDS:
            raise RequestError(
                f"Unrecognized request argument supplied: {clip(name)}",
                param=name if isinstance(name, str) else None,
            )
    return body


#: Values of unimplemented fields that ask for nothing this server does not already do.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "tools": ([],),
    "functions": ([],),
    "parallel_tool_calls": (True, False),  # (no tools: nothing to call in parallel)
    "modalities": (["text"],),
    "store": (False,),
    "service_tier": ("auto", "default"),
}


def _neutral(name: str, value: Any) -> bool:
    if value is None:
        return True
    if name == "metadata":  # tags for OpenAI's stored completions: nothing is stored here
        return isinstance(value, Mapping) and all(isinstance(v, str) for v in value.values())
    return any(type(value) is type(v) and value == v for v in _NEUTRAL.get(name, ()))


def messages_field(body: Mapping) -> list[dict[str, str]]:
    """The messages as the template reads them: ``{"role", "content"}`` (and ``name``),
    every part checked; anything this server cannot render is a 400 naming it."""
    value = body.get("messages")
    if value is None:
        raise RequestError(
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    if not isinstance(value, list):
        raise type_error("messages", "an array of message objects", value)
    if not value:
        raise RequestError(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but "
            "got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    return [_message(m, f"messages.[{i}]") for i, m in enumerate(value)]


def _message(m: Any, where: str) -> dict[str, str]:
    if not isinstance(m, Mapping):
        raise type_error(where, "an object", m)
    role = m.get("role")
    if role is None:
        raise RequestError(
            f"Missing required parameter: '{where}.role'.",
            param=f"{where}.role",
            code="missing_required_parameter",
        )
    if not isinstance(role, str):
        raise type_error(f"{where}.role", "a string", role)
    if role not in ROLES:
        raise RequestError(
            f"Invalid value for '{where}.role': {clip(valid_text(f'{where}.role', role))}. "
            "This server takes 'system', 'developer', 'user' and 'assistant' messages "
            "(no tools, so no 'tool' or 'function' messages).",
            param=f"{where}.role",
            code="invalid_value",
        )
    out = {"role": ROLES[role], "content": _content(m.get("content"), f"{where}.content")}
    for key, value in m.items():
        if key in ("role", "content"):
            continue
        if key == "name":
            if not isinstance(value, str):
                raise type_error(f"{where}.name", "a string", value)
            out["name"] = valid_text(f"{where}.name", value)
        elif key in ("refusal", "tool_calls", "function_call", "audio") and value in (None, []):
            continue  # (what an SDK writes back when a message had none)
        elif key in ("tool_calls", "function_call", "audio", "refusal"):
            raise RequestError(
                f"Invalid '{where}.{key}': this server does not implement tools, audio or "
                "refusals; send the message's text only.",
                param=f"{where}.{key}",
                code="unsupported_parameter",
            )
        else:
            raise RequestError(
                f"Unrecognized request argument supplied: {where}.{clip(key)}",
                param=f"{where}.{key}" if isinstance(key, str) else where,
            )
    return out


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return valid_text(where, value)
    if value is None:
        raise RequestError(
            f"Missing required parameter: '{where}'.",
            param=where,
            code="missing_required_parameter",
        )
    if not isinstance(value, list):
        raise type_error(where, "a string or an array of content parts", value)
    texts = []
    for j, part in enumerate(value):
        at = f"{where}.[{j}]"
        if not isinstance(part, Mapping):
            raise type_error(at, "an object", part)
        kind = part.get("type")
        if kind != "text":
            shown = clip(kind) if isinstance(kind, str) else json_type(kind)
            raise RequestError(
                f"Invalid value for '{at}.type': {shown}. This server takes text parts only "
                "({'type': 'text', 'text': ...}); the model reads no images, audio or files.",
                param=f"{at}.type",
                code="invalid_value",
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise type_error(f"{at}.text", "a string", text)
        if set(part) - {"type", "text"}:
            extra = sorted(str(k) for k in set(part) - {"type", "text"})[0]
            raise RequestError(
                f"Unrecognized request argument supplied: {at}.{clip(extra)}", param=f"{at}.{extra}"
            )
        texts.append(valid_text(f"{at}.text", text))
    return "\n".join(texts)


def _top_logprobs(body: Mapping) -> int | None:
    """The alternatives to report per token (None: no logprobs)."""
    wanted = boolean(body, "logprobs")
    k = integer(body, "top_logprobs", *CHAT_RANGES["top_logprobs"])
    if k is not None and not wanted:
        raise RequestError(
            "Invalid 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.",
            param="top_logprobs",
            code="invalid_value",
        )
    return (k or 0) if wanted else None


def _max_tokens(body: Mapping) -> int | None:
    """``max_completion_tokens`` or ``max_tokens`` (None: the rest of the context)."""
    newer = integer(body, "max_completion_tokens", *CHAT_RANGES["max_completion_tokens"])
    older = integer(body, "max_tokens", *CHAT_RANGES["max_completion_tokens"])
    if newer is not None and older is not None:
        raise RequestError(
            "Invalid 'max_tokens': send either 'max_completion_tokens' or the older "
            "'max_tokens', not both.",
            param="max_tokens",
            code="invalid_value",
        )
    return newer if newer is not None else older


def chat_prompt(info: ModelInfo, messages: list[dict[str, str]]) -> Prompt:
    """The rendered messages as one prompt (400 naming ``messages`` if they cannot be)."""
    from .chat_template import render

    if info.chat is None:
        raise RequestError(
            f"Invalid 'messages': the model `{info.name}` has no chat template, so it cannot "
            "take messages. Send its prompt to /v1/completions instead.",
            param="messages",
            code="model_has_no_chat_template",
        )
    text = render(info.chat, messages)
    try:
        tokens = tuple(info.tokenizer.encode(text))
    except UnrepresentableText as err:
        raise RequestError(
            f"Invalid 'messages': {err}, so the model cannot read it.",
            param="messages",
            code="invalid_value",
        ) from None
    if not tokens:
        raise RequestError(
            "Invalid 'messages': the model's chat template wrote nothing for them.",
            param="messages",
            code="invalid_value",
        )
    return Prompt(tokens=tokens, shown=tokens, text=text, counted=len(tokens))
