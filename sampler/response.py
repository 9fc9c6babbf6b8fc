"""OpenAI-shaped response and stream-chunk objects (spec §10), and the logprobs object.

>>> resp = completion_object("cmpl-x", 0, "m", "fp_1", [], usage(3, 5))
>>> resp["object"], resp["usage"]["total_tokens"]
('text_completion', 8)
"""

from __future__ import annotations

import hashlib
import json
import secrets
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .logprobs import reported
from .tokenizer import Tokenizer

__all__ = [
    "TokenEntry",
    "completion_id",
    "fingerprint",
    "top_dict",
    "logprobs_object",
    "choice_object",
    "completion_object",
    "usage",
    "CompletionShape",
]

_ALPHANUM = string.ascii_letters + string.digits


def completion_id(prefix: str = "cmpl-") -> str:
    """``prefix`` + 29 random alphanumerics (never seeded: ids are not outputs)."""
    return prefix + "".join(secrets.choice(_ALPHANUM) for _ in range(29))


def now() -> int:
    return int(time.time())


def fingerprint(model_digest: str, tokenizer: object = "") -> str:
    """A short stable hash of what determines outputs: model file, tokenizer (its name or
    its description with the rank file's sha256), library, NumPy."""
    from . import __version__

    tok = json.dumps(tokenizer, sort_keys=True)
    key = f"{model_digest}|{tok}|refsampler {__version__}|numpy {np.__version__}"
    return "fp_" + hashlib.sha256(key.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class TokenEntry:
    """One token of a choice's ``logprobs`` arrays."""

    text: str  # as logprobs writes it (``bytes:\\xNN`` form when needed)
    logprob: float | None  # None for the first echoed prompt token
    top: dict[str, float] | None
    offset: int  # character offset in prompt + completion
    trace: dict[str, Any] | None = None  # the sampling_trace of a generated token
    token: int = -1  # its id (-1: not kept, as for echoed prompt tokens)
    alternatives: tuple[tuple[int, float], ...] = ()  # the top ids and logprobs, best first
    end: bool = False  # an end token: ends the choice, shown in logprobs only


def top_dict(
    tokenizer: Tokenizer,
    ids: np.ndarray,
    lps: np.ndarray,
    chosen: int,
    chosen_lp: float,
) -> dict[str, float]:
    """The ``top_logprobs`` entry: the top ids plus the chosen one, by text, best first.

    Alternatives with the same text collapse to one key holding the larger logprob.
    """
    best: dict[str, tuple[float, int]] = {}
    for i, lp in (*zip(ids.tolist(), lps.tolist()), (int(chosen), float(chosen_lp))):
        key = tokenizer.token_text(i)
        value = reported(lp)
        if key not in best or (value, -i) > (best[key][0], -best[key][1]):
            best[key] = (value, i)
    ordered = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[1][1]))
    return {key: value for key, (value, _) in ordered}


def logprobs_object(entries: Sequence[TokenEntry], trace: bool = False) -> dict[str, Any]:
    """A choice's ``logprobs``; with ``trace``, the ``sampling_trace`` array too (one
    entry per token, null for an echoed prompt token)."""
    obj: dict[str, Any] = {
        "tokens": [e.text for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [e.top for e in entries],
        "text_offset": [e.offset for e in entries],
    }
    if trace:
        obj["sampling_trace"] = [e.trace for e in entries]
    return obj


def choice_object(
    index: int,
    text: str,
    entries: Sequence[TokenEntry] | None,
    finish_reason: str | None,
    trace: bool = False,
) -> dict[str, Any]:
    return {
        "text": text,
        "index": index,
        "logprobs": None if entries is None else logprobs_object(entries, trace),
        "finish_reason": finish_reason,
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_object(
    id: str,
    created: int,
    model: str,
    system_fingerprint: str,
    choices: list[dict[str, Any]],
    usage: dict[str, int] | None,
    *,
    with_usage_key: bool = True,
    object_type: str = "text_completion",
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": id,
        "object": object_type,
        "created": created,
        "model": model,
        "system_fingerprint": system_fingerprint,
        "choices": choices,
    }
    if with_usage_key:
        obj["usage"] = usage
    return obj


class CompletionShape:
    """The Completions endpoint's shapes of a response, its choices and its stream chunks.

    :class:`sampler.engine.Completion` builds every object through a shape, so that the
    chat endpoint (:class:`sampler.chat_response.ChatShape`) differs in shape only.
    """

    def new_id(self) -> str:
        return completion_id()

    def choice(
        self,
        index: int,
        text: str,
        entries: Sequence[TokenEntry] | None,
        finish: str | None,
        trace: bool,
    ) -> dict[str, Any]:
        """A choice of the whole response."""
        return choice_object(index, text, entries, finish, trace)

    def chunk_choices(
        self,
        index: int,
        text: str,
        entries: Sequence[TokenEntry] | None,
        finish: str | None,
        trace: bool,
        first: bool,
    ) -> list[dict[str, Any]]:
        """The choices of the chunks one step adds to a choice, one chunk each (none when
        the step shows nothing)."""
        if not (text or entries or finish is not None):
            return []
        return [choice_object(index, text, entries, finish, trace)]

    def object(
        self,
        id: str,
        created: int,
        model: str,
        fp: str,
        choices: list[dict[str, Any]],
        use: dict[str, int] | None,
        *,
        chunk: bool,
        usage_key: bool = True,
    ) -> dict[str, Any]:
        return completion_object(id, created, model, fp, choices, use, with_usage_key=usage_key)
