"""The chat endpoint's shapes: ``chat.completion``, ``chat.completion.chunk`` and chat logprobs.

The tokens, their logprobs and the finish reasons are the Completions endpoint's for the
rendered prompt (:mod:`sampler.chat_request`); only the shapes differ. A choice's
``logprobs.content`` holds one entry per generated token that is part of the message, best
alternatives first, as OpenAI's chat API writes them; the end token that finished the
choice is left out (the Completions endpoint shows it), so that the entries' ``bytes``
join to the message's UTF-8 text.

>>> from sampler.tokenizer import get_tokenizer
>>> shape = ChatShape(get_tokenizer("cl100k_base"))
>>> e = TokenEntry("Hi", -0.5, None, 0, token=13347, alternatives=((13347, -0.5), (9906, -1.5)))
>>> shape.choice(0, "Hi", [e], "stop", False)["logprobs"]["content"][0]["top_logprobs"][1]
{'token': 'Hello', 'logprob': -1.5, 'bytes': [72, 101, 108, 108, 111]}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .response import TokenEntry, completion_id, completion_object
from .tokenizer import Tokenizer

__all__ = ["ChatShape", "chat_id"]


def chat_id() -> str:
    """``chatcmpl-`` + 29 random alphanumerics (never seeded: ids are not outputs)."""
    return completion_id("chatcmpl-")


class ChatShape:
    """The chat shapes of a response, its choices and its chunks (see
    :class:`sampler.response.CompletionShape`, whose methods these mirror)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def new_id(self) -> str:
        return chat_id()

    def choice(
        self,
        index: int,
        text: str,
        entries: Sequence[TokenEntry] | None,
        finish: str | None,
        trace: bool,
    ) -> dict[str, Any]:
        return {
            "index": index,
            "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
            "logprobs": self.logprobs(entries),
            "finish_reason": finish,
        }

    def chunk_choices(
        self,
        index: int,
        text: str,
        entries: Sequence[TokenEntry] | None,
        finish: str | None,
        trace: bool,
        first: bool,
    ) -> list[dict[str, Any]]:
        """The role first (once per choice), then the text with its logprobs, then the
        finish reason in a chunk of its own, as OpenAI streams them."""
        out = []
        if first:
            out.append(_delta(index, {"role": "assistant", "content": "", "refusal": None}))
        content = [e for e in entries or () if not e.end]
        if text or content:
            logprobs = self.logprobs(content) if entries is not None else None
            out.append(_delta(index, {"content": text}, logprobs))
        if finish is not None:
            out.append(_delta(index, {}, None, finish))
        return out

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
        kind = "chat.completion.chunk" if chunk else "chat.completion"
        return completion_object(
            id, created, model, fp, choices, use, with_usage_key=usage_key, object_type=kind
        )

    def logprobs(self, entries: Sequence[TokenEntry] | None) -> dict[str, Any] | None:
        """A choice's chat ``logprobs``: ``{"content": [...], "refusal": None}``."""
        if entries is None:
            return None
        return {"content": [self._entry(e) for e in entries if not e.end], "refusal": None}

    def _entry(self, e: TokenEntry) -> dict[str, Any]:
        return {
            **self._token(e.token, e.logprob),
            "top_logprobs": [self._token(i, lp) for i, lp in e.alternatives],
        }

    def _token(self, i: int, logprob: float | None) -> dict[str, Any]:
        tok = self.tokenizer
        return {"token": tok.token_text(i), "logprob": logprob, "bytes": list(tok.token_bytes(i))}


def _delta(
    index: int, delta: dict[str, Any], logprobs: Any = None, finish: str | None = None
) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
