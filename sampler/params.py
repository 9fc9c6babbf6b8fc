"""The request boundary: parse and validate a Completions body once, into frozen params.

Every rule of spec §1 lives here and nowhere else. Each failure raises
:class:`~sampler.errors.RequestError` naming the parameter, in OpenAI's wording where
OpenAI has one; nothing is clamped silently and nothing reaches the model first.

>>> from sampler.tokenizer import get_tokenizer
>>> info = ModelInfo("m", get_tokenizer("cl100k_base"), context_length=64, end_ids=(100257,))
>>> parse_request({"model": "m", "prompt": "Hi", "n": 2}, info).prompts[0].tokens
(13347,)
>>> try:
...     parse_request({"model": "m", "prompt": "Hi", "n": 130}, info)
... except RequestError as e:
...     print(e.param, e.code, e.message)
n integer_above_max_value Invalid 'n': integer above maximum value. Expected a value <= 128, but got 130 instead.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .errors import RequestError
from .tokenizer import Tokenizer, UnrepresentableText

__all__ = ["ModelInfo", "Prompt", "Request", "Limits", "parse_request", "sampling_fields",
           "logit_bias_field", "SAMPLING_FIELDS", "EXTENSION_FIELDS"]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

#: Request fields beyond OpenAI's, validated like the rest (spec §11).
EXTENSION_FIELDS = ("logprobs_mode",)

_KNOWN_FIELDS = frozenset(
    {
        "model", "prompt", "suffix", "max_tokens", "temperature", "top_p", "n",
        "best_of", "logprobs", "echo", "stop", "presence_penalty", "frequency_penalty",
        "logit_bias", "seed", "stream", "stream_options", "user", *EXTENSION_FIELDS,
    }
)  # fmt: skip


@dataclass(frozen=True)
class ModelInfo:
    """What validation needs to know about the model a request names."""

    name: str
    tokenizer: Tokenizer
    context_length: int
    end_ids: tuple[int, ...]
    vocab_size: int | None = None  # logits width; defaults to the tokenizer's
    fim: tuple[int, int, int] | None = None  # prefix, middle, suffix ids

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


@dataclass(frozen=True)
class Prompt:
    """One prompt as the model reads it and as the response shows it."""

    tokens: tuple[int, ...]  # what the model reads (FIM-wrapped; [eot] for an empty one)
    shown: tuple[int, ...]  # the prompt's own tokens: echoed and scored
    text: str  # the prompt text (echo, text_offset)
    counted: int  # its share of usage.prompt_tokens


@dataclass(frozen=True)
class Request:
    """A validated request: every field typed, defaulted and in range."""

    model: str
    prompts: tuple[Prompt, ...]
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    best_of: int = 1
    logprobs: int | None = None
    echo: bool = False
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[np.ndarray, np.ndarray] | None = field(default=None, compare=False)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    logprobs_mode: str = "raw"
    suffix: str | None = None


# --- small checks, each with OpenAI's wording --------------------------------------------
def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _type_error(name: str, expected: str, value: Any, *, param: str | None = None) -> RequestError:
    return RequestError(
        f"Invalid type for '{name}': expected {expected}, but got {_json_type(value)} instead.",
        param=name if param is None else param,
        code="invalid_type",
    )


def _show(value: Any) -> str:
    """A value as an error message quotes it: numbers as JSON writes them (an integer
    too long to be worth printing by its size), anything else clipped."""
    if _is_int(value):
        v = int(value)
        if abs(v) < 10**21:
            return str(v)
        digits = math.floor((v.bit_length() - 1) * math.log10(2)) + 1  # (str() may refuse)
        return f"an integer of {digits} or more digits"
    if isinstance(value, (float, np.floating)):
        return json.dumps(float(value))
    return _clip(value)


def _clip(value: Any, limit: int = 80) -> str:
    """User text quoted in a message: at most ``limit`` characters (a non-string key is
    named by its type: its repr could be huge or recurse without end)."""
    text = value if isinstance(value, str) else f"<{_json_type(value)}>"
    return text if len(text) <= limit else text[:limit] + "…"


def _range(name: str, value: float, lo: float | None, hi: float | None, kind: str, *,
           param: str | None = None) -> None:  # fmt: skip
    """Raise OpenAI's range error when ``value`` is outside ``[lo, hi]`` (``name`` in the
    message; ``param``, default ``name``, in the body)."""
    param = name if param is None else param
    if lo is not None and value < lo:
        raise RequestError(
            f"Invalid '{name}': {kind} below minimum value. Expected a value >= {_show(lo)}, "
            f"but got {_show(value)} instead.",
            param=param,
            code=f"{kind}_below_min_value",
        )
    if hi is not None and value > hi:
        raise RequestError(
            f"Invalid '{name}': {kind} above maximum value. Expected a value <= {_show(hi)}, "
            f"but got {_show(value)} instead.",
            param=param,
            code=f"{kind}_above_max_value",
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _int(body: Mapping, param: str, default: int | None, lo: int | None, hi: int | None) -> Any:
    value = body.get(param)
    if value is None:
        return default
    if not _is_int(value):
        raise _type_error(param, "an integer", value)
    _range(param, int(value), lo, hi, "integer")
    return int(value)


def _number(body: Mapping, param: str, default: float, lo: float, hi: float) -> float:
    value = body.get(param)
    if value is None:
        return default
    return _decimal(value, param, lo, hi)


def _decimal(value: Any, name: str, lo: float, hi: float, *, param: str | None = None) -> float:
    """A JSON number in ``[lo, hi]`` as a float; errors say ``name`` and carry ``param``
    (default ``name``). An integer is compared exactly, never converted first: a
    401-digit one is out of range, not an overflow."""
    param = name if param is None else param
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise _type_error(name, "a number", value, param=param)
    if not _is_int(value) and not math.isfinite(value):
        raise RequestError(
            f"Invalid '{name}': expected a finite number, but got {_show(value)} instead.",
            param=param,
            code="invalid_value",
        )
    _range(name, value, lo, hi, "decimal", param=param)
    return float(value)


def _bool(body: Mapping, param: str) -> bool:
    value = body.get(param)
    if value is None:
        return False
    if not isinstance(value, (bool, np.bool_)):
        raise _type_error(param, "a boolean", value)
    return bool(value)


def _text(param: str, value: str) -> str:
    """A string that is valid Unicode (JSON can carry lone surrogates; UTF-8 cannot)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(
            f"Invalid '{param}': the string contains a lone surrogate, which is not valid "
            "Unicode. Send valid UTF-8 text.",
            param=param,
            code="invalid_value",
        ) from None
    return value


def _empty_array(param: str) -> RequestError:
    return RequestError(
        f"Invalid '{param}': empty array. Expected an array with minimum length 1, "
        "but got an empty array instead.",
        param=param,
        code="empty_array",
    )


# --- the fields -----------------------------------------------------------------------------
def _check_fields(body: Any) -> Mapping:
    if not isinstance(body, Mapping):
        raise RequestError(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
            f"but what was sent was not a JSON object: got {_json_type(body)}.)"
        )
    for name in body:
        if name not in _KNOWN_FIELDS:
            raise RequestError(f"Unrecognized request argument supplied: {_clip(name)}",
                               param=name if isinstance(name, str) else None)  # fmt: skip
    return body


def _model(body: Mapping, info: ModelInfo) -> str:
    value = body.get("model")
    if value is None:
        raise RequestError(
            "You must provide a model parameter.", param="model", code="missing_required_parameter"
        )
    if not isinstance(value, str):
        raise _type_error("model", "a string", value)
    if value != info.name:
        raise RequestError(
            f"The model `{_clip(value)}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
            status=404,
        )
    return value


def _stop(body: Mapping) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise _type_error("stop", "a string or an array of strings", value)
    if not items:
        raise _empty_array("stop")
    if len(items) > 4:
        raise RequestError(
            "Invalid 'stop': array too long. Expected an array with maximum length 4, "
            f"but got an array with length {len(items)} instead.",
            param="stop",
            code="array_above_max_length",
        )
    for s in items:
        if not isinstance(s, str):
            raise _type_error("stop", "a string or an array of strings", s)
        if s == "":
            raise RequestError(
                "Invalid 'stop': empty string. Every stop sequence needs at least one "
                "character; remove the empty one.",
                param="stop",
                code="invalid_value",
            )
    return tuple(_text("stop", s) for s in items)


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
        raise _type_error("logit_bias", "an object mapping token ids to numbers", value)
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
        biases[token] = _decimal(bias, f"logit_bias[{_clip(key)}]", -100, 100,
                                 param="logit_bias")  # fmt: skip
    if not biases:
        return None
    ids = np.fromiter(biases.keys(), dtype=np.int64, count=len(biases))  # [k]
    return ids, np.fromiter(biases.values(), dtype=np.float64, count=len(biases))


#: The fields that shape one step of sampling (spec §3–4, §6, §11), as
#: :func:`sampling_fields` validates them.
SAMPLING_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty",
                   "logit_bias", "seed", "logprobs", "logprobs_mode")  # fmt: skip


def sampling_fields(
    body: Mapping[str, Any],
    *,
    max_bias_id: int = INT64_MAX,
    masked: frozenset[int] = frozenset(),
    tokenizer: str = "",
) -> dict[str, Any]:
    """Validate the sampling fields of ``body`` (absent or null: the default), with the
    API's errors; returns them by name (see :data:`SAMPLING_FIELDS`). Other runtimes'
    adapters use this without a model; :func:`parse_request` with the model's limits.

    >>> sampling_fields({"temperature": 0.5, "logit_bias": {"7": 2}})["logit_bias"][0]
    array([7])
    """
    return {
        "temperature": _number(body, "temperature", 1.0, 0, 2),
        "top_p": _number(body, "top_p", 1.0, 0, 1),
        "presence_penalty": _number(body, "presence_penalty", 0.0, -2, 2),
        "frequency_penalty": _number(body, "frequency_penalty", 0.0, -2, 2),
        "logit_bias": logit_bias_field(body.get("logit_bias"), max_id=max_bias_id,
                                       masked=masked, tokenizer=tokenizer),  # fmt: skip
        "seed": _int(body, "seed", None, INT64_MIN, INT64_MAX),
        "logprobs": _int(body, "logprobs", None, 0, 5),
        "logprobs_mode": _logprobs_mode(body),
    }


def _bias_key(key: Any, top: int) -> int:
    digits = isinstance(key, str) and key.isascii() and key.isdigit()
    if _is_int(key):
        token, text = int(key), _show(key)
    elif digits:  # (int() refuses over 4,300 digits; any key that long is above the top)
        token, text = (int(key) if len(key.lstrip("0")) <= 20 else top + 1), _clip(key)
    else:
        token, text = -1, _clip(key)
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


def _stream_options(body: Mapping, stream: bool) -> bool:
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
            f"{_json_type(value)} instead.",
            param="stream_options",
        )
    for key in value:
        if key != "include_usage":
            raise RequestError(
                f"Invalid 'stream_options': unknown key '{_clip(key)}'. The only key is "
                "'include_usage'.",
                param="stream_options",
            )
    usage = value.get("include_usage")
    if usage is not None and not isinstance(usage, bool):
        raise RequestError(
            "Invalid type for 'stream_options.include_usage': expected a boolean, but got "
            f"{_json_type(usage)} instead.",
            param="stream_options",
        )
    return bool(usage)


def _logprobs_mode(body: Mapping) -> str:
    value = body.get("logprobs_mode")
    if value is None:
        return "raw"
    if not isinstance(value, str):
        raise _type_error("logprobs_mode", "'raw' or 'processed'", value)
    if value not in ("raw", "processed"):
        raise RequestError(
            f"Invalid 'logprobs_mode': expected 'raw' or 'processed', but got '{_clip(value)}'.",
            param="logprobs_mode",
            code="invalid_value",
        )
    return value


def _suffix(body: Mapping, info: ModelInfo, echo: bool) -> str | None:
    value = body.get("suffix")
    if value is None:
        return None
    if not isinstance(value, str):
        raise _type_error("suffix", "a string", value)
    if value == "":
        return None  # nothing after the insertion point: a plain completion [decided]
    if echo:
        raise RequestError(
            "Invalid 'suffix': echo is not supported together with suffix. Remove one of "
            "them.",
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
    return _text("suffix", value)


def _n_best_of(body: Mapping, stream: bool) -> tuple[int, int]:
    n = _int(body, "n", 1, 1, 128)
    best_of = _int(body, "best_of", None, 1, 20)
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


# --- prompts ---------------------------------------------------------------------------------
_PROMPT_TYPES = "a string, an array of strings, an array of integers, or an array of arrays of integers"


def _raw_prompts(body: Mapping) -> list[str | list[int]]:
    """The prompts as given: strings or token-id lists (form checked, ids not yet)."""
    value = body.get("prompt")
    if value is None:
        raise RequestError(
            "Missing required parameter: 'prompt'.",
            param="prompt",
            code="missing_required_parameter",
        )
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise _type_error("prompt", _PROMPT_TYPES, value)
    if not value:
        raise _empty_array("prompt")
    if all(isinstance(v, str) for v in value):
        return list(value)
    if all(_is_int(v) for v in value):
        return [list(value)]
    if all(isinstance(v, (list, tuple)) for v in value):
        for tokens in value:
            if not tokens:
                raise _empty_array("prompt")
            if not all(_is_int(t) for t in tokens):
                raise _type_error("prompt", _PROMPT_TYPES, value)
        return [list(v) for v in value]
    raise _type_error("prompt", _PROMPT_TYPES, value)


def _encode(param: str, text: str, tok: Tokenizer) -> list[int]:
    """The text's tokens; text holding a byte that no token holds names ``param``."""
    try:
        return tok.encode(text)
    except UnrepresentableText as err:
        raise RequestError(
            f"Invalid '{param}': {err}, so the model cannot read it. Remove or replace "
            "that character.",
            param=param,
            code="invalid_value",
        ) from None


def _prompt(raw: str | list[int], info: ModelInfo, suffix: str | None) -> Prompt:
    tok = info.tokenizer
    if isinstance(raw, str):
        text = _text("prompt", raw)
        shown = tuple(_encode("prompt", text, tok))
    else:
        for t in raw:
            if not tok.is_token(int(t)):
                raise RequestError(
                    f"Invalid 'prompt': {_show(t)} is not a token id of the model's tokenizer "
                    f"({tok.name}, ids 0 to {tok.max_id}, some of which are not tokens).",
                    param="prompt",
                    code="invalid_value",
                )
        shown = tuple(int(t) for t in raw)
        text = tok.decode_bytes(shown).decode("utf-8", "replace")
    if suffix is not None:
        assert info.fim is not None
        prefix_id, middle_id, suffix_id = info.fim
        tokens = (prefix_id, *shown, suffix_id, *_encode("suffix", suffix, tok), middle_id)
        return Prompt(tokens=tokens, shown=shown, text=text, counted=len(tokens))
    if not shown:  # conditioned on end-of-text, which is neither echoed nor counted
        return Prompt(tokens=(info.end_ids[0],), shown=(), text=text, counted=0)
    return Prompt(tokens=shown, shown=shown, text=text, counted=len(shown))


def _check_context(prompts: tuple[Prompt, ...], max_tokens: int, info: ModelInfo) -> None:
    for p in prompts:
        if len(p.tokens) + max_tokens > info.context_length:
            raise RequestError(
                f"This model's maximum context length is {info.context_length} tokens, "
                f"however you requested {len(p.tokens) + max_tokens} tokens "
                f"({len(p.tokens)} in your prompt; {max_tokens} for the completion). "
                "Please reduce your prompt; or completion length."
            )


# --- the whole request ------------------------------------------------------------------------
def _check_limits(n_prompts: int, n: int, best_of: int, sent_best_of: bool,
                  limits: Limits) -> None:  # fmt: skip
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


def parse_request(body: Any, info: ModelInfo, limits: Limits | None = None) -> Request:
    """Validate a Completions request body against the model it names (spec §1–2), and
    against a server's ``limits`` if given."""
    body = _check_fields(body)
    model = _model(body, info)
    raw_prompts = _raw_prompts(body)
    max_tokens = _int(body, "max_tokens", 16, 0, None)
    stream = _bool(body, "stream")
    n, best_of = _n_best_of(body, stream)
    echo = _bool(body, "echo")
    stop = _stop(body)
    include_usage = _stream_options(body, stream)
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _type_error("user", "a string", user)
    sampling = sampling_fields(body, max_bias_id=info.max_bias_id, masked=info._masked_set,
                               tokenizer=info.tokenizer.name)  # fmt: skip
    if limits is not None:
        _check_limits(len(raw_prompts), n, best_of, body.get("best_of") is not None, limits)
    suffix = _suffix(body, info, echo)
    prompts = tuple(_prompt(raw, info, suffix) for raw in raw_prompts)
    _check_context(prompts, max_tokens, info)
    return Request(
        model=model,
        prompts=prompts,
        max_tokens=max_tokens,
        n=n,
        best_of=best_of,
        echo=echo,
        stop=stop,
        stream=stream,
        include_usage=include_usage,
        suffix=suffix,
        **sampling,
    )
