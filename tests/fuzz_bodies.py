"""Hostile Completions request bodies, as a hostile client would send them (issue 13).

:func:`bodies` draws ``(obj, raw)``: ``obj`` is the body as a Python object when there is
one (None for bytes that are not JSON), ``raw`` the bytes on the wire. Each field is
omitted, valid, or wrong in one of many ways: wrong types, huge and tiny numbers, NaN and
infinities spelled every way Python's JSON parser accepts them (``NaN``, ``Infinity``,
``1e999``), lone surrogates, invalid UTF-8, deep nesting, unknown fields, and the four
prompt forms with ids that are not tokens. Valid requests stay cheap (a few tokens), so
thousands of examples run in minutes on the tiny model.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import strategies as st

MODEL = "tiny-random-cl100k"


class Raw:
    """A number written literally in the JSON text (``1e999``, ``NaN``, a 401-digit
    integer): what it parses to is what the server sees."""

    def __init__(self, text: str) -> None:
        self.text = text

    def parsed(self) -> Any:
        return json.loads(self.text)


def dump(obj: Any) -> str:
    """JSON text of ``obj``, with :class:`Raw` numbers spelled as given and lone
    surrogates as ``\\udXXX`` escapes (what a JavaScript client sends)."""
    if isinstance(obj, Raw):
        return obj.text
    if isinstance(obj, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{dump(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, list):
        return "[" + ",".join(dump(v) for v in obj) + "]"
    return json.dumps(obj)  # NaN and Infinity as Python writes them


def parsed(obj: Any) -> Any:
    """``obj`` as the server's parser reads :func:`dump`'s text back."""
    if isinstance(obj, Raw):
        return obj.parsed()
    if isinstance(obj, dict):
        return {k: parsed(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [parsed(v) for v in obj]
    return obj


_SPECIAL = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    "1E400",
    "0e-999",
    "1" + "0" * 400,
    "-1" + "0" * 400,
    "4.9e-324",
    "1e-300",
    "-0.0",
    "-0",
]
_LITERALS = st.sampled_from([None, True, False, "", "x", "1", "\ud800", [], {}, [1], {"a": 1}])
_NUMBERS = st.one_of(
    st.sampled_from(
        [
            0,
            1,
            -1,
            2,
            3,
            5,
            6,
            20,
            21,
            127,
            128,
            129,
            2**63 - 1,
            2**63,
            -(2**63),
            -(2**63) - 1,
            10**30,
            0.5,
            1.0,
            2.0,
            2.5,
            -2.5,
            1e-38,
            1e-45,
            5e-324,
            1e-300,
            math.nan,
            math.inf,
            -math.inf,
        ]
    ),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(_SPECIAL).map(Raw),
)
_TEXTS = st.one_of(
    st.sampled_from(
        [
            "",
            "x",
            "Hello",
            "<|endoftext|>",
            "<|fim_prefix|>",
            "😊",
            "\x00",
            "\ud800",
            "a\udfffb",
            "é" * 3,
            "a" * 300,
        ]
    ),
    st.text(max_size=12),
)


def _nested(leaf: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(_TEXTS, inner, max_size=3)
        ),
        max_leaves=6,
    )


_ANY = _nested(st.one_of(_LITERALS, _NUMBERS, _TEXTS))
_IDS = st.one_of(
    st.integers(0, 1000),
    st.sampled_from([100256, 100257, 100258, 100261, 100275, 100276, 100277, 2**31, -1, 10**30]),
    st.sampled_from(["1" + "0" * 400]).map(Raw),
    st.booleans(),
    st.floats(),
)


_VALID_TEXT = st.one_of(
    st.sampled_from(["", "x", "Hello", "<|endoftext|>", "😊", "é" * 3]),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=8),
)
_VALID_IDS = st.one_of(st.integers(0, 1000), st.sampled_from([100255, 100257, 100258]))
_VALID: dict[str, st.SearchStrategy] = {
    "model": st.just(MODEL),
    "prompt": st.one_of(
        _VALID_TEXT,
        st.lists(_VALID_TEXT, min_size=1, max_size=3),
        st.lists(_VALID_IDS, min_size=1, max_size=4),
        st.lists(st.lists(_VALID_IDS, min_size=1, max_size=3), min_size=1, max_size=2),
    ),
    "suffix": st.one_of(st.none(), _VALID_TEXT),
    "max_tokens": st.sampled_from([0, 1, 2, 3, None]),
    "temperature": st.one_of(st.floats(0, 2), st.sampled_from([0, 1e-300, 5e-324, 1e-40])),
    "top_p": st.floats(0, 1),
    "n": st.integers(1, 3),
    "best_of": st.integers(1, 4),
    "logprobs": st.one_of(st.none(), st.integers(0, 5)),
    "echo": st.booleans(),
    "stop": st.one_of(
        st.none(),
        _VALID_TEXT.filter(bool),
        st.lists(_VALID_TEXT.filter(bool), min_size=1, max_size=4),
    ),
    "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2),
    "logit_bias": st.dictionaries(
        st.integers(0, 100255).map(str), st.floats(-100, 100), max_size=4
    ),
    "seed": st.integers(-(2**63), 2**63 - 1),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "user": _VALID_TEXT,
    "logprobs_mode": st.sampled_from(["raw", "processed"]),
}
_PROMPTS = st.one_of(
    _TEXTS,
    st.lists(_TEXTS, min_size=0, max_size=3),
    st.lists(_IDS, min_size=0, max_size=4),
    st.lists(st.lists(_IDS, min_size=0, max_size=3), min_size=0, max_size=3),
    st.lists(st.one_of(_TEXTS, _IDS), min_size=1, max_size=3),  # mixed forms
    _ANY,
)
_BIAS_KEYS = st.one_of(
    st.integers(0, 100300).map(str),
    st.sampled_from(
        [
            "-1",
            "05",
            "100256",
            "100257",
            "100258",
            "1" * 30,
            "1" * 5000,
            "\ud800",
            "AI",
            " 5",
            "５",
            "1.5",
            "",
        ]
    ),
    _TEXTS,
)
_BAD: dict[str, st.SearchStrategy] = {
    "model": st.one_of(st.sampled_from(["gpt-4", "\ud800", "", MODEL + " "]), _LITERALS, _NUMBERS),
    "prompt": _PROMPTS,
    "logit_bias": st.one_of(
        st.dictionaries(_BIAS_KEYS, st.one_of(_NUMBERS, _ANY), min_size=1, max_size=4), _ANY
    ),
    "stop": st.one_of(_TEXTS, st.lists(_TEXTS, max_size=6), _ANY),
    "stream_options": _ANY,
}


def _bad(name: str) -> st.SearchStrategy:
    """Anything for a field: its own kinds of trouble, wrong types, odd numbers."""
    return st.one_of(_BAD.get(name, _ANY), _NUMBERS, _LITERALS, _ANY)


@st.composite
def body_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A body object: a random subset of the fields (model and prompt usually present),
    none, one or a few of them wrong, now and then an unknown field."""
    names = draw(st.lists(st.sampled_from(sorted(_VALID)), unique=True, max_size=8))
    if draw(st.integers(0, 9)):
        names = ["model", "prompt", *[n for n in names if n not in ("model", "prompt")]]
    wrong = set(draw(st.lists(st.sampled_from(names), max_size=3))) if names else set()
    obj = {name: draw(_bad(name) if name in wrong else _VALID[name]) for name in names}
    if draw(st.integers(0, 9)) == 0:
        obj[draw(st.one_of(st.sampled_from(["top_k", "mo\ud800", "", "x" * 500]), _TEXTS))] = draw(
            _ANY
        )
    return obj


_WHOLE = st.sampled_from(
    [
        b"",
        b"{",
        b"[]",
        b"null",
        b"5",
        b'"x"',
        b"{not json}",
        b'{"model": }',
        b"\xff\xfe",
        b"[" * 50_000 + b"]" * 50_000,
        b'{"a":' * 3000 + b"1" + b"}" * 3000,
        b'{"model":"' + MODEL.encode() + b'","prompt":"\xff\xc3"}',  # invalid UTF-8 inside
        b"\xef\xbb\xbf" + json.dumps({"model": MODEL, "prompt": "bom"}).encode(),
        json.dumps({"model": MODEL, "prompt": "utf16", "max_tokens": 1}).encode("utf-16"),
    ]
)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[Any, bytes]:
    """``(obj, raw)``: mostly a generated object written as JSON, sometimes whole-body
    trouble (not JSON, not an object, invalid UTF-8, nesting deeper than any parser's
    recursion limit); ``obj`` is None when the bytes do not parse to an object."""
    if draw(st.integers(0, 19)) == 0:
        raw = draw(_WHOLE)
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            obj = None
        return (obj if isinstance(obj, dict) else None), raw
    obj = draw(body_objects())
    return parsed(obj), dump(obj).encode("ascii")  # (json.dumps escapes non-ASCII)


# -- chat bodies (/v1/chat/completions, and /tokenize's messages)

_VALID_MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "developer", "user", "assistant"]),
        "content": st.one_of(
            _VALID_TEXT,
            st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": _VALID_TEXT})),
        ),
    },
    optional={"name": _VALID_TEXT},
)
_HOSTILE_MESSAGE = st.one_of(
    _ANY,
    st.fixed_dictionaries(
        {"role": st.one_of(_LITERALS, _TEXTS, _ANY), "content": st.one_of(_TEXTS, _ANY)},
        optional={"name": _ANY, "tool_calls": _ANY, "x" * 3: _ANY},
    ),
    st.fixed_dictionaries(
        {
            "role": st.just("user"),
            "content": st.lists(
                st.fixed_dictionaries(
                    {"type": st.one_of(st.sampled_from(["text", "image_url"]), _ANY)},
                    optional={"text": _ANY, "image_url": _ANY},
                ),
                max_size=3,
            ),
        }
    ),
)
_VALID_CHAT: dict[str, st.SearchStrategy] = {
    "model": st.just(MODEL),
    "messages": st.lists(_VALID_MESSAGE, min_size=1, max_size=3),
    "max_completion_tokens": st.sampled_from([1, 2, 3]),
    "max_tokens": st.sampled_from([1, 2, 3]),
    "temperature": _VALID["temperature"],
    "top_p": _VALID["top_p"],
    "n": _VALID["n"],
    "stop": _VALID["stop"],
    "presence_penalty": _VALID["presence_penalty"],
    "frequency_penalty": _VALID["frequency_penalty"],
    "logit_bias": _VALID["logit_bias"],
    "logprobs": st.booleans(),
    "top_logprobs": st.integers(0, 20),
    "seed": _VALID["seed"],
    "stream": st.booleans(),
    "stream_options": _VALID["stream_options"],
    "user": _VALID_TEXT,
    "logprobs_mode": _VALID["logprobs_mode"],
    "tools": st.sampled_from([None, [], [{"type": "function"}]]),
    "store": st.sampled_from([None, False, True]),
    "metadata": st.sampled_from([None, {}, {"a": "b"}, {"a": 1}]),
}


@st.composite
def chat_bodies(draw: st.DrawFn) -> tuple[Any, bytes]:
    """``(obj, raw)`` for the chat endpoint: like :func:`bodies`, with hostile messages."""
    if draw(st.integers(0, 19)) == 0:
        return draw(bodies())
    names = draw(st.lists(st.sampled_from(sorted(_VALID_CHAT)), unique=True, max_size=7))
    if draw(st.integers(0, 9)):
        names = ["model", "messages", *[n for n in names if n not in ("model", "messages")]]
    wrong = set(draw(st.lists(st.sampled_from(names), max_size=3))) if names else set()
    obj: dict[str, Any] = {}
    for name in names:
        if name == "messages" and name in wrong:
            obj[name] = draw(
                st.one_of(st.lists(st.one_of(_VALID_MESSAGE, _HOSTILE_MESSAGE), max_size=3), _ANY)
            )
        else:
            obj[name] = draw(_bad(name) if name in wrong else _VALID_CHAT[name])
    return parsed(obj), dump(obj).encode("ascii")
