"""Typed values of a JSON body, checked with OpenAI's wording: the building blocks of
:mod:`sampler.fields` and :mod:`sampler.prompts`.

Numbers are compared exactly (a 401-digit integer is out of range, not an overflow), and
request text quoted in a message is clipped (:func:`clip`); every failure is a
:class:`~sampler.errors.RequestError` naming the field (which escapes lone surrogates).

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
from typing import Any

import numpy as np

from .errors import RequestError

__all__ = [
    "INT64_MIN",
    "INT64_MAX",
    "json_type",
    "type_error",
    "show",
    "clip",
    "check_range",
    "is_int",
    "integer",
    "number",
    "decimal",
    "boolean",
    "valid_text",
    "empty_array",
]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


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
