"""The rules for each field of a Completions body (spec §1), in OpenAI's wording.

Each rule reads one field of the body and returns its typed value, or raises
:class:`~sampler.errors.RequestError` naming it; nothing is clamped silently. Numbers are
compared exactly (a 401-digit integer is out of range, not an overflow), and request text
quoted in a message is clipped (:func:`clip`; :class:`~sampler.errors.RequestError`
escapes lone surrogates). :func:`sampler.params.parse_request` applies them in order.

>>> number({"top_p": 0.5}, "top_p", 1.0, 0, 1)
0.5
>>> try:
...     integer({"n": 130}, "n", 1, 1, 128)
... except RequestError as e:
...     print(e.param, e.code)
n integer_above_max_value
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import RequestError

if TYPE_CHECKING:
    from .params import Limits, ModelInfo

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

#: Request fields beyond OpenAI's, validated like the rest (spec §11).
EXTENSION_FIELDS = ("logprobs_mode",)

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


def json_type(value: Any) -> str:
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


def type_error(name: str, expected: str, value: Any, *, param: str | None = None) -> RequestError:
    return RequestError(
        f"Invalid type for '{name}': expected {expected}, but got {json_type(value)} instead.",
        param=name if param is None else param,
        code="invalid_type",
    )


def show(value: Any) -> str:
    """A value as an error message quotes it: numbers as JSON writes them (an integer
    too long to be worth printing by its size), anything else clipped."""
    if is_int(value):
        v = int(value)
        if abs(v) < 10**21:
            return str(v)
        digits = math.floor((v.bit_length() - 1) * math.log10(2)) + 1  # (str() may refuse)
        return f"an integer of {digits} or more digits"
    if isinstance(value, (float, np.floating)):
        return json.dumps(float(value))
    return clip(value)


def clip(value: Any, limit: int = 80) -> str:
    """User text quoted in a message: at most ``limit`` characters (a non-string key is
    named by its type: its repr could be huge or recurse without end)."""
    text = value if isinstance(value, str) else f"<{json_type(value)}>"
    return text if len(text) <= limit else text[:limit] + "…"


def check_range(
    name: str,
    value: float | np.number,
    lo: float | None,
    hi: float | None,
    kind: str,
    *,
    param: str | None = None,
) -> None:
    """Raise OpenAI's range error when ``value`` is outside ``[lo, hi]`` (``name`` in the
    message; ``param``, default ``name``, in the body)."""
    param = name if param is None else param
    if lo is not None and value < lo:
        raise RequestError(
            f"Invalid '{name}': {kind} below minimum value. Expected a value >= {show(lo)}, "
            f"but got {show(value)} instead.",
            param=param,
            code=f"{kind}_below_min_value",
        )
    if hi is not None and value > hi:
        raise RequestError(
            f"Invalid '{name}': {kind} above maximum value. Expected a value <= {show(hi)}, "
            f"but got {show(value)} instead.",
            param=param,
            code=f"{kind}_above_max_value",
        )


def is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def integer(body: Mapping, param: str, default: int | None, lo: int | None, hi: int | None) -> Any:
    value = body.get(param)
    if value is None:
        return default
    if not is_int(value):
        raise type_error(param, "an integer", value)
    check_range(param, int(value), lo, hi, "integer")
    return int(value)


def number(body: Mapping, param: str, default: float, lo: float, hi: float) -> float:
    value = body.get(param)
    if value is None:
        return default
    return decimal(value, param, lo, hi)


def decimal(value: Any, name: str, lo: float, hi: float, *, param: str | None = None) -> float:
    """A JSON number in ``[lo, hi]`` as a float; errors say ``name`` and carry ``param``
    (default ``name``). An integer is compared exactly, never converted first: a
    401-digit one is out of range, not an overflow."""
    param = name if param is None else param
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise type_error(name, "a number", value, param=param)
    if not is_int(value) and not math.isfinite(value):
        raise RequestError(
            f"Invalid '{name}': expected a finite number, but got {show(value)} instead.",
            param=param,
            code="invalid_value",
        )
    check_range(name, value, lo, hi, "decimal", param=param)
    return float(value)


def boolean(body: Mapping, param: str) -> bool:
    value = body.get(param)
    if value is None:
        return False
    if not isinstance(value, (bool, np.bool_)):
        raise type_error(param, "a boolean", value)
    return bool(value)


def valid_text(param: str, value: str) -> str:
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


def empty_array(param: str) -> RequestError:
    return RequestError(
        f"Invalid '{param}': empty array. Expected an array with minimum length 1, "
        "but got an empty array instead.",
        param=param,
        code="empty_array",
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
        biases[token] = decimal(bias, f"logit_bias[{clip(key)}]", -100, 100, param="logit_bias")
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


def n_best_of(body: Mapping, stream: bool) -> tuple[int, int]:
    n = integer(body, "n", 1, 1, 128)
    best_of = integer(body, "best_of", None, 1, 20)
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
