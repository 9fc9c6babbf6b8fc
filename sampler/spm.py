"""A SentencePiece-style vocabulary (GGUF ``tokenizer.ggml.model = "llama"``), as llama.cpp
tokenizes it: Gemma's tokenizer, read from the GGUF's tokens, scores and types alone.

:class:`SentencePieceEncoding` offers the part of ``tiktoken.Encoding`` that
:class:`sampler.tokenizer.Tokenizer` reads, so the rest of the sampler cannot tell the two
apart. Encoding a text is, in llama.cpp's order:

1. **Specials out.** Every control, user-defined and unknown token's text is cut out of the
   text, longest texts first (a user-defined token is an ordinary output token -- Gemma's
   newline and whitespace runs -- but is matched whole before anything else).
2. **Each remaining piece**: a space in front when ``add_space_prefix`` and the piece starts
   the text or follows a special; spaces become ``▁`` (U+2581); the piece is split into
   characters, and the adjacent pair whose concatenation is a token with the highest score
   (the leftmost among equal scores) is merged, until no pair is a token.
3. A character that is no token is written as its UTF-8 bytes' ``<0xXX>`` tokens.

A token's bytes are its text with ``▁`` read as a space (ordinary tokens), the byte
(``<0xXX>`` tokens), or its text as it is (control and user-defined tokens).

>>> enc = SentencePieceEncoding(
...     "toy", ["<unk>", "<eos>", "▁", "a", "b", "ab", "▁ab", "<0x63>"],
...     [0, 0, -3, -1, -1, -2, -1.5, 0], [3, 3, 1, 1, 1, 1, 1, 6])
>>> enc.encode("ab ab<eos>"), enc.encode("c"), enc.decode_single_token_bytes(6)
([5, 6, 1], [7], b' ab')
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .tokenizer import Tokenizer, UnrepresentableText, _read_checked

__all__ = [
    "SentencePieceEncoding",
    "spm_tokenizer",
    "write_spm",
    "NORMAL",
    "UNKNOWN",
    "CONTROL",
    "USER_DEFINED",
    "BYTE",
]

# llama.cpp's token types (tokenizer.ggml.token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_SPACE = "\u2581"  # ▁
_BYTE_TOKEN = re.compile(r"<0x([0-9A-F]{2})>")


class SentencePieceEncoding:
    """llama.cpp's SPM tokenizer over ``tokens``/``scores``/``types`` (the GGUF's arrays).

    ``special_tokens`` (the ``_special_tokens`` tiktoken keeps) are the control and unknown
    tokens, which the sampler masks except the end ids; user-defined tokens are ordinary.
    """

    def __init__(
        self,
        name: str,
        tokens: Sequence[str],
        scores: Sequence[float],
        types: Sequence[int],
        *,
        add_space_prefix: bool = False,
    ) -> None:
        if not len(tokens) == len(scores) == len(types):
            raise ValueError(
                f"tokenizer {name}: {len(tokens)} tokens, {len(scores)} scores and "
                f"{len(types)} types"
            )
        self.name = name
        self.add_space_prefix = add_space_prefix
        self.n_vocab = len(tokens)
        self.max_token_value = len(tokens) - 1
        self._scores = [float(s) for s in scores]
        self._ids = {text: i for i, text in enumerate(tokens)}  # repeats: the last id, as llama.cpp
        self._byte_ids: dict[int, int] = {}
        self._bytes: list[bytes | None] = [
            text.replace(_SPACE, " ").encode() if kind == NORMAL else None
            for text, kind in zip(tokens, types)
        ]
        matched: list[tuple[str, int]] = []  # cut out before the pieces are tokenized
        self._special_tokens: dict[str, int] = {}
        for i, kind in enumerate(types):
            if kind != NORMAL:
                self._bytes[i] = self._token_bytes(i, tokens[i], int(kind))
            if kind in (CONTROL, UNKNOWN, USER_DEFINED) and tokens[i]:
                matched.append((tokens[i], i))
            if kind in (CONTROL, UNKNOWN):
                self._special_tokens[tokens[i]] = i
        # llama.cpp sorts by length only (std::sort); equal lengths go by id here
        self._cut = sorted(matched, key=lambda t: (-len(t[0]), t[1]))
        self._cut_rank = {text: n for n, (text, _) in enumerate(self._cut)}
        self._cut_id = {text: i for text, i in reversed(self._cut)}  # a repeat: its first
        self._finder = _Finder([t for t, _ in self._cut])

    def _token_bytes(self, i: int, text: str, kind: int) -> bytes | None:
        if kind == NORMAL:
            return text.replace(_SPACE, " ").encode("utf-8")
        if kind == BYTE:
            m = _BYTE_TOKEN.fullmatch(text)
            if m is None:
                raise ValueError(f"token {i} {text!r} has type BYTE but is not <0xXX>")
            self._byte_ids.setdefault(int(m.group(1), 16), i)
            return bytes([int(m.group(1), 16)])
        if kind in (CONTROL, USER_DEFINED, UNKNOWN):
            return text.encode("utf-8")
        if kind == UNUSED:
            return None
        raise ValueError(f"token {i} {text!r} has unknown token type {kind}")

    # --- the part of tiktoken.Encoding the Tokenizer reads ------------------------------
    def decode_single_token_bytes(self, i: int) -> bytes:
        """Token ``i``'s bytes (``KeyError`` for an id that is no token)."""
        data = self._bytes[i] if 0 <= i < self.n_vocab else None
        if data is None:
            raise KeyError(i)
        return data

    def encode_single_token(self, data: bytes) -> int:
        """The ``<0xXX>`` token of a single byte (the fallback every character can use)."""
        if len(data) == 1 and data[0] in self._byte_ids:
            return self._byte_ids[data[0]]
        raise KeyError(data)

    def encode(self, text: str, allowed_special: object = "all") -> list[int]:
        """Every control, unknown and user-defined token's text becomes that token (the
        sampler's prompts allow all special tokens); then the pieces between them."""
        out: list[int] = []
        previous_special = True
        for piece in self._partition(text):
            if isinstance(piece, int):
                out.append(piece)
                previous_special = True
                continue
            if self.add_space_prefix and previous_special:
                piece = " " + piece
            try:
                self._merge(piece.replace(" ", _SPACE), out)
            except _NoByteToken as e:
                char = e.char if e.char in text else " "  # (a space became ▁)
                at = text.find(char)  # -1: the space add_space_prefix put in front
                raise UnrepresentableText(self.name, char, max(at, 0)) from None
            previous_special = False
        return out

    # --- the two stages -------------------------------------------------------------------
    def _partition(self, text: str) -> list[str | int]:
        """The text as raw pieces and special ids, cutting out one special text at a time,
        longest first, each at every place it occurs in a piece still raw (llama.cpp)."""
        present = self._finder.present(text)
        parts: list[str | int] = [text] if text else []
        for special in sorted(present, key=self._cut_rank.__getitem__):
            token = self._cut_id[special]
            cut: list[str | int] = []
            for part in parts:
                if isinstance(part, int) or special not in part:
                    cut.append(part)
                    continue
                for k, raw in enumerate(part.split(special)):
                    if k:
                        cut.append(token)
                    if raw:
                        cut.append(raw)
            parts = cut
        return parts

    def _merge(self, text: str, out: list[int]) -> None:
        """llama.cpp's SPM merge loop on one piece, appending its ids to ``out``."""
        ids, scores = self._ids, self._scores
        syms = list(text)  # the current symbols' texts; "" once merged into the left one
        n = len(syms)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prev = list(range(-1, n - 1))

        def pair(left: int, right: int) -> tuple[float, int, int, int] | None:
            """The queue entry of two adjacent symbols, if their concatenation is a token."""
            if left < 0 or right < 0:
                return None
            joined = syms[left] + syms[right]
            i = ids.get(joined)
            return None if i is None else (-scores[i], left, right, len(joined))

        heap = [e for k in range(1, n) if (e := pair(k - 1, k)) is not None]
        heapq.heapify(heap)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            a, b = syms[left], syms[right]
            if not a or not b or len(a) + len(b) != size:
                continue  # one side changed since this pair was queued
            syms[left], syms[right] = a + b, ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            for entry in (pair(prev[left], left), pair(left, nxt[left])):
                if entry is not None:
                    heapq.heappush(heap, entry)
        k = 0
        while k != -1:
            sym = syms[k]
            i = ids.get(sym)
            if i is not None:
                out.append(i)
            else:  # a character that is no token: its bytes
                for byte in sym.encode("utf-8", "surrogatepass"):
                    if byte not in self._byte_ids:
                        raise _NoByteToken(sym)
                    out.append(self._byte_ids[byte])
            k = nxt[k]


class _NoByteToken(ValueError):
    """A character that is no token, with a byte that has no ``<0xXX>`` token."""

    def __init__(self, char: str) -> None:
        self.char = char
        super().__init__(char)


class _Finder:
    """Where the special texts occur: a trie walked from each position holding one of
    their first characters (found by one character-class regex)."""

    def __init__(self, words: Sequence[str]) -> None:
        self.trie: dict[str, Any] = {}
        for w in words:
            node = self.trie
            for ch in w:
                node = node.setdefault(ch, {})
            node[""] = w
        firsts = "".join(sorted(self.trie))
        self.starts = re.compile(f"[{re.escape(firsts)}]") if firsts else None

    def present(self, text: str) -> set[str]:
        """Every word that occurs in ``text`` (overlaps included)."""
        found: set[str] = set()
        if self.starts is None:
            return found
        trie, n = self.trie, len(text)
        for m in self.starts.finditer(text):
            node: dict[str, Any] | None = trie
            k = m.start()
            while node is not None and k < n:
                node = node.get(text[k])
                if node is not None and "" in node:
                    found.add(node[""])
                k += 1
        return found


def folder_tokenizer(
    name: str, file: Path, sha: str, spec: Mapping[str, Any], where: str, end_ids: Iterable[int]
) -> Tokenizer:
    """A folder's ``tokenizer.spm.json`` (sha256-checked) against its manifest ``spec``."""
    data = _read_checked(file, sha)
    try:
        arrays = json.loads(data)
        tokens, scores, types = arrays["tokens"], arrays["scores"], arrays["types"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{file}: expected {{'tokens', 'scores', 'types'}} ({e})") from None
    if len(tokens) != spec.get("vocab_size"):
        raise ValueError(f"{where}: 'vocab_size' is not the file's {len(tokens)} tokens")
    prefix = spec.get("add_space_prefix", False)
    if not isinstance(prefix, bool):
        raise ValueError(f"{where}: 'add_space_prefix' must be true or false, got {prefix!r}")
    return spm_tokenizer(name, tokens, scores, types, add_space_prefix=prefix, end_ids=end_ids)


def spm_tokenizer(
    name: str,
    tokens: list[str],
    scores: list[float],
    types: list[int],
    *,
    add_space_prefix: bool = False,
    end_ids: Iterable[int] = (),
) -> Tokenizer:
    """A :class:`~sampler.tokenizer.Tokenizer` over a SentencePiece-style vocabulary."""
    encoding = SentencePieceEncoding(name, tokens, scores, types, add_space_prefix=add_space_prefix)
    return Tokenizer(encoding, end_ids=end_ids)  # type: ignore[arg-type]


def write_spm(
    path: str | os.PathLike, tokens: list[str], scores: list[float], types: list[int]
) -> str:
    """Write a SentencePiece-style vocabulary as JSON; return the file's sha256."""
    data = json.dumps(
        {"tokens": tokens, "scores": scores, "types": types}, ensure_ascii=False
    ).encode("utf-8")
    Path(path).write_bytes(data)
    return hashlib.sha256(data).hexdigest()
