"""The rules for each field of a Completions body (spec §1), in OpenAI's wording, and what
they need to know: the model (:class:`ModelInfo`) and the server's limits (:class:`Limits`).

Each rule reads one field of the body and returns its typed value, or raises
:class:`~sampler.errors.RequestError` naming it; nothing is clamped silently.
:func:`sampler.params.parse_request` applies them in order; the typed values they are made
of are :mod:`sampler.values`'.

>>> stop_field({"stop": ["a", "b"]})
('a', 'b')
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import RequestError
from .model import ChatConfig
from .tokenizer import Tokenizer
from .values import (
    INT64_MAX,
    INT64_MIN,
    clip,
    decimal,
    empty_array,
    integer,
    is_int,
    json_type,
    show,
    type_error,
    valid_text,
)


@dataclass(frozen=True)
class ModelInfo:
    """What validation needs to know about the model a request names."""

    name: str
    tokenizer: Tokenizer
    context_length: int
    end_ids: tuple[int, ...]
    vocab_size: int | None = None  # logits width; defaults to the tokenizer's
    fim: tuple[int, int, int] | None = None  # prefix, middle, suffix ids
    chat: ChatConfig | None = None  # the chat template (None: no /v1/chat/completions)
    bos_id: int | None = None  # read before every text prompt, not part of it (Gemma)

    @functools.cached_property
    def masked_ids(self) -> np.ndarray:
        """Ids never sampled nor reported (spec §3), for a row of the model's width."""
        width = self.vocab_size or self.tokenizer.max_id + 1
        return self.tokenizer.masked_ids(width, self.end_ids)

    @functools.cached_property
    def _masked_set(self) -> frozenset[int]:
        return frozenset(self.masked_ids.tolist())

    @functools.cached_property
    def max_bias_id(self) -> int:
        """The largest id ``logit_bias`` accepts: the largest sampleable id."""
        allowed = np.ones(self.tokenizer.max_id + 1, dtype=bool)  # [ids]
        allowed[self.masked_ids[self.masked_ids < allowed.size]] = False
        return int(np.flatnonzero(allowed)[-1])


@dataclass(frozen=True)
class Limits:
    """Deployment limits a server adds to the API's own ranges (None: no limit)."""

    max_prompts: int | None = None  # prompts in one request
    max_sequences: int | None = None  # prompts x best_of: sequences one request runs


#: Request fields beyond OpenAI's, validated like the rest (spec §11).
EXTENSION_FIELDS = ("logprobs_mode", "sampling_trace")

#: Each numeric field's ``(default, minimum, maximum)`` (None: no default or no bound):
#: the one table the validation reads, and the playground's controls (``/playground``).
RANGES: dict[str, tuple[Any, Any, Any]] = {
    "max_tokens": (16, 0, None),
    "temperature": (1.0, 0, 2),
    "top_p": (1.0, 0, 1),
    "n": (1, 1, 128),
    "best_of": (None, 1, 20),
    "logprobs": (None, 0, 5),
    "presence_penalty": (0.0, -2, 2),
    "frequency_penalty": (0.0, -2, 2),
    "logit_bias": (None, -100, 100),
    "seed": (None, INT64_MIN, INT64_MAX),
    "sampling_trace": (None, 0, 20),
}

KNOWN_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "suffix",
        "max_tokens",
        "temperature",
        "top_p",
        "n",
        "best_of",
        "logprobs",
        "echo",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "seed",
        "stream",
        "stream_options",
        "user",
        *EXTENSION_FIELDS,
    }
)


def check_fields(body: Any) -> Mapping:
    if not isinstance(body, Mapping):
        raise RequestError(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
            f"but what was sent was not a JSON object: got {json_type(body)}.)"
        )
    for name in body:
        if name not in KNOWN_FIELDS:
            raise RequestError(
                f"Unrecognized request argument supplied: {clip(name)}",
                param=name if isinstance(name, str) else None,
            )
    return body


def model_field(body: Mapping, info: ModelInfo) -> str:
    value = body.get("model")
    if value is None:
        raise RequestError(
            "You must provide a model parameter.", param="model", code="missing_required_parameter"
        )
    if not isinstance(value, str):
        raise type_error("model", "a string", value)
    if value != info.name:
        raise RequestError(
            f"The model `{clip(value)}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
            status=404,
        )
    return value


def stop_field(body: Mapping) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise type_error("stop", "a string or an array of strings", value)
    if not items:
        raise empty_array("stop")
    if len(items) > 4:
        raise RequestError(
            "Invalid 'stop': array too long. Expected an array with maximum length 4, "
            f"but got an array with length {len(items)} instead.",
            param="stop",
            code="array_above_max_length",
        )
    for s in items:
        if not isinstance(s, str):
            raise type_error("stop", "a string or an array of strings", s)
        if s == "":
            raise RequestError(
                "Invalid 'stop': empty string. Every stop sequence needs at least one "
                "character; remove the empty one.",
                param="stop",
                code="invalid_value",
            )
    return tuple(valid_text("stop", s) for s in items)


def logit_bias_field(
    value: Any, *, max_id: int, masked: frozenset[int] = frozenset(), tokenizer: str = ""
) -> tuple[np.ndarray, np.ndarray] | None:
    """``logit_bias`` as unique ``(ids, float64 values)``, or None when empty.

    Keys are non-negative integers (or their digit strings) up to ``max_id`` and not in
    ``masked``; values −100 … 100, never clamped. Two keys naming one id ("5", "05"): the
    later wins.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise type_error("logit_bias", "an object mapping token ids to numbers", value)
    biases: dict[int, float] = {}
    for key, bias in value.items():
        token = _bias_key(key, max_id)
        if token in masked:
            raise RequestError(
                f"Invalid key in 'logit_bias': {key}. It is not a token this model can "
                f"produce (tokenizer {tokenizer}).",
                param="logit_bias",
                code="invalid_value",
            )
        _, lo, hi = RANGES["logit_bias"]
        biases[token] = decimal(bias, f"logit_bias[{clip(key)}]", lo, hi, param="logit_bias")
    if not biases:
        return None
    ids = np.fromiter(biases.keys(), dtype=np.int64, count=len(biases))  # [k]
    return ids, np.fromiter(biases.values(), dtype=np.float64, count=len(biases))


def _bias_key(key: Any, top: int) -> int:
    digits = isinstance(key, str) and key.isascii() and key.isdigit()
    if is_int(key):
        token, text = int(key), show(key)
    elif digits:  # (int() refuses over 4,300 digits; any key that long is above the top)
        token, text = (int(key) if len(key.lstrip("0")) <= 20 else top + 1), clip(key)
    else:
        token, text = -1, clip(key)
    if token < 0:
        raise RequestError(
            f"Invalid key in 'logit_bias': {text}. You should only be submitting "
            "non-negative integers.",
            param="logit_bias",
            code="invalid_value",
        )
    if token > top:
        raise RequestError(
            f"Invalid key in 'logit_bias': {text}. Maximum value is {top}.",
            param="logit_bias",
            code="invalid_value",
        )
    return token


def stream_options_field(body: Mapping, stream: bool) -> bool:
    value = body.get("stream_options")
    if value is None:
        return False
    if not stream:
        raise RequestError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    if not isinstance(value, Mapping):
        raise RequestError(
            f"Invalid type for 'stream_options': expected an object, but got "
            f"{json_type(value)} instead.",
            param="stream_options",
        )
    for key in value:
        if key != "include_usage":
            raise RequestError(
                f"Invalid 'stream_options': unknown key '{clip(key)}'. The only key is "
                "'include_usage'.",
                param="stream_options",
            )
    usage = value.get("include_usage")
    if usage is not None and not isinstance(usage, bool):
        raise RequestError(
            "Invalid type for 'stream_options.include_usage': expected a boolean, but got "
            f"{json_type(usage)} instead.",
            param="stream_options",
        )
    return bool(usage)


def logprobs_mode_field(body: Mapping) -> str:
    value = body.get("logprobs_mode")
    if value is None:
        return "raw"
    if not isinstance(value, str):
        raise type_error("logprobs_mode", "'raw' or 'processed'", value)
    if value not in ("raw", "processed"):
        raise RequestError(
            f"Invalid 'logprobs_mode': expected 'raw' or 'processed', but got '{clip(value)}'.",
            param="logprobs_mode",
            code="invalid_value",
        )
    return value


def suffix_field(body: Mapping, info: ModelInfo, echo: bool) -> str | None:
    value = body.get("suffix")
    if value is None:
        return None
    if not isinstance(value, str):
        raise type_error("suffix", "a string", value)
    if value == "":
        return None  # nothing after the insertion point: a plain completion [decided]
    if echo:
        raise RequestError(
            "Invalid 'suffix': echo is not supported together with suffix. Remove one of them.",
            param="suffix",
            code="invalid_value",
        )
    if info.fim is None:
        raise RequestError(
            f"Invalid 'suffix': the model `{info.name}` does not support insertion (its "
            "tokenizer has no fill-in-the-middle tokens). Remove suffix or use a model "
            "that has them.",
            param="suffix",
            code="invalid_value",
        )
    return valid_text("suffix", value)


def sampling_trace_field(body: Mapping, logprobs: int | None) -> int | None:
    """The ``sampling_trace`` extension: how many top ids of each stage to trace (0-20),
    or None. It rides in the ``logprobs`` object, so it needs ``logprobs``."""
    k = integer(body, "sampling_trace", *RANGES["sampling_trace"])
    if k is not None and logprobs is None:
        raise RequestError(
            "Invalid 'sampling_trace': the trace is carried in each choice's logprobs "
            "object, so it needs logprobs too (an integer 0 to 5).",
            param="sampling_trace",
            code="invalid_value",
        )
    return k


def n_best_of(body: Mapping, stream: bool) -> tuple[int, int]:
    n = integer(body, "n", *RANGES["n"])
    best_of = integer(body, "best_of", *RANGES["best_of"])
    if best_of is None:
        return n, n
    if best_of < n:
        raise RequestError(
            f"Invalid 'best_of': best_of must be greater than or equal to n, but got "
            f"best_of={best_of} and n={n}.",
            param="best_of",
            code="invalid_value",
        )
    if stream and best_of > n:
        raise RequestError(
            "Invalid 'best_of': cannot stream results when best_of is greater than n. "
            "Set stream to false, or best_of equal to n.",
            param="best_of",
            code="invalid_value",
        )
    return n, best_of


def check_limits(n_prompts: int, n: int, best_of: int, sent_best_of: bool, limits: Limits) -> None:
    if limits.max_prompts is not None and n_prompts > limits.max_prompts:
        raise RequestError(
            f"Invalid 'prompt': this server accepts at most {limits.max_prompts} prompts "
            f"in one request, but got {n_prompts}. Split the request.",
            param="prompt",
            code="array_above_max_length",
        )
    sequences = n_prompts * best_of
    if limits.max_sequences is not None and sequences > limits.max_sequences:
        # name what the request sent: best_of if given, else n (best_of defaults to it)
        param = "best_of" if sent_best_of else "n" if n > 1 else "prompt"
        per = f"best_of {best_of}" if sent_best_of else f"n {n}"
        raise RequestError(
            f"Invalid '{param}': this request needs {sequences} sequences ({n_prompts} "
            f"prompt{'s' if n_prompts > 1 else ''} x {per}), but this server's batch holds "
            f"at most {limits.max_sequences} sequences (its batch capacity, `sampler serve "
            "--max-batch`). Lower n or best_of, or send fewer prompts per request.",
            param=param,
            code="invalid_value",
        )
