"""A GGUF's vocabulary: a byte-level BPE for tiktoken, or a SentencePiece-style one.

``tokenizer.ggml.model = "gpt2"``: token strings are mapped back to bytes with GPT-2's
byte<->unicode table (:func:`byte_decoder`), and the ids are the ranks, which is only right
when merge ``k``'s result has a larger id than merge ``k-1``'s: :func:`gguf_vocab` checks
that, and every other assumption, with an error naming what was found.

``tokenizer.ggml.model = "llama"`` (Gemma's): tokens, scores and types as they are, for
:class:`sampler.spm.SentencePieceEncoding` (:func:`spm_vocab`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "PRETOKENIZER_PATTERNS",
    "GGUFVocab",
    "SPMVocab",
    "gguf_vocab",
    "spm_vocab",
    "byte_decoder",
]

#: Pre-tokenizer regex per ``tokenizer.ggml.pre``, as one tiktoken pattern. ``smollm`` is
#: llama.cpp's two-stage split (every digit alone, then GPT-2's regex inside each piece) in
#: one regex: the lookahead ``(?![^\s\p{N}])`` keeps a whitespace run before a digit whole,
#: as the two stages do (measured: 0 differences from llama.cpp on 7.8M tokens).
#: ``gpt-2``, ``llama-bpe`` and ``qwen2`` are the published GPT-2, Llama 3 and Qwen2 patterns
#: (Qwen2's is Llama 3's with every digit alone); all four give llama.cpp's own ids on 2,001
#: stress texts over a small vocabulary (tests/test_gguf_llama_cpp.py, with llama-cpp-python).
PRETOKENIZER_PATTERNS: dict[str, str] = {
    "smollm": r"\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+",
    "gpt-2": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    "llama-bpe": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
        r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
    "qwen2": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
        r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
}

# llama.cpp's token types (tokenizer.ggml.token_type)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


def byte_decoder() -> dict[str, int]:
    """GPT-2's map from the printable stand-in characters back to byte values.

    Bytes that are printable and not a space keep their own character; the other 68 get
    ``chr(256 + n)`` in byte order (so a space is ``Ġ`` and a newline ``Ċ``).

    >>> d = byte_decoder(); d["Ġ"], d["Ċ"], d["a"], len(d)
    (32, 10, 97, 256)
    """
    kept = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {chr(b): b for b in kept}
    extra = 0
    for b in range(256):
        if b not in kept:
            table[chr(256 + extra)] = b
            extra += 1
    return table


@dataclass(frozen=True)
class GGUFVocab:
    """A GGUF's tokenizer as tiktoken needs it: ids are ranks."""

    ranks: dict[bytes, int]  # ordinary tokens: bytes -> id
    special_tokens: dict[str, int]  # control and user-defined tokens: text -> id
    pattern: str
    pre: str
    vocab_size: int  # ids 0 .. vocab_size-1 (some may be unused)
    eos_token_ids: tuple[int, ...]  # <|endoftext|> first when present
    fim: dict[str, int] | None  # {"prefix", "middle", "suffix"} or None


def gguf_vocab(
    tokens: Sequence[str],
    types: Sequence[int],
    merges: Sequence[str],
    *,
    model: str = "gpt2",
    pre: str = "gpt-2",
    eos_ids: Sequence[int] = (),
    fim: Mapping[str, int] | None = None,
) -> GGUFVocab:
    """The tiktoken form of a GGUF byte-level BPE vocabulary, with its assumptions checked.

    ``tokens``, ``types`` and ``merges`` are ``tokenizer.ggml.tokens``/``token_type``/
    ``merges``; ``model`` and ``pre`` are ``tokenizer.ggml.model``/``pre``. Ordinary tokens
    become ranks (their ids), control and user-defined tokens become special tokens, unknown
    and unused ids are not tokens. tiktoken merges the adjacent pair whose concatenation
    has the lowest rank; that is the GGUF's merge order exactly when every multi-byte token
    is some merge's result and merge results have increasing ids -- both are checked.

    >>> v = gguf_vocab(["<|endoftext|>", "a", "b", "ab"], [3, 1, 1, 1], ["a b"], pre="smollm")
    >>> v.ranks, v.special_tokens, v.eos_token_ids
    ({b'a': 1, b'b': 2, b'ab': 3}, {'<|endoftext|>': 0}, (0,))
    """
    if model != "gpt2":
        raise ValueError(
            f"tokenizer.ggml.model is {model!r}; only 'gpt2' (byte-level BPE) "
            "tokenizers convert (SentencePiece 'llama' vocabularies do not)"
        )
    if pre not in PRETOKENIZER_PATTERNS:
        raise ValueError(
            f"tokenizer.ggml.pre is {pre!r}; supported pre-tokenizers: "
            f"{', '.join(PRETOKENIZER_PATTERNS)}"
        )
    if len(types) != len(tokens):
        raise ValueError(
            f"tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens"
        )
    decoder = byte_decoder()

    def to_bytes(text: str, what: str) -> bytes:
        try:
            return bytes(decoder[c] for c in text)
        except KeyError as e:
            raise ValueError(
                f"{what} {text!r} holds {e.args[0]!r}, which is not in GPT-2's "
                "byte<->unicode table (not a byte-level BPE token)"
            ) from None

    ranks: dict[bytes, int] = {}
    specials: dict[str, int] = {}
    for i, (text, kind) in enumerate(zip(tokens, types)):
        if kind == _NORMAL:
            data = to_bytes(text, f"token {i}")
            if not data or data in ranks:
                raise ValueError(f"token {i} {text!r} is empty or repeats token {ranks.get(data)}")
            ranks[data] = i
        elif kind in (_CONTROL, _USER_DEFINED):
            if text in specials:
                raise ValueError(
                    f"special token {text!r} appears twice (ids {specials[text]} and {i})"
                )
            specials[text] = i
        elif kind == _BYTE:
            raise ValueError(
                f"token {i} {text!r} has type BYTE (6), which byte-level BPE "
                "vocabularies do not use; this tokenizer is not supported"
            )
        elif kind not in (_UNKNOWN, _UNUSED):
            raise ValueError(f"token {i} {text!r} has unknown token type {kind}")

    merged: set[int] = set()
    previous = -1
    for k, line in enumerate(merges):
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"merge {k} {line!r} is not 'left right'")
        left, right = (to_bytes(p, f"merge {k}") for p in parts)
        result = ranks.get(left + right)
        if left not in ranks or right not in ranks or result is None:
            raise ValueError(f"merge {k} {line!r}: its parts or its result are not tokens")
        if result <= previous:
            raise ValueError(
                f"merge {k} {line!r} makes token {result}, but merge {k - 1} made token "
                f"{previous}: the ids are not in merge order, so they cannot serve as "
                "tiktoken ranks"
            )
        previous = result
        merged.add(result)
    orphans = [i for b, i in ranks.items() if len(b) > 1 and i not in merged]
    if orphans:
        raise ValueError(
            f"{len(orphans)} multi-byte tokens (first: id {orphans[0]} "
            f"{tokens[orphans[0]]!r}) are no merge's result; tiktoken would "
            "produce them where the GGUF's BPE does not"
        )

    ends: list[int] = []
    for i in ([specials["<|endoftext|>"]] if "<|endoftext|>" in specials else []) + list(eos_ids):
        if not 0 <= i < len(tokens) or types[i] in (_UNKNOWN, _UNUSED):
            raise ValueError(f"end-of-text id {i} is not a token")
        if i not in ends:
            ends.append(i)
    if not ends:
        raise ValueError(
            "no end-of-text token: neither <|endoftext|> nor tokenizer.ggml.eos_token_id"
        )
    return GGUFVocab(
        ranks=ranks,
        special_tokens=specials,
        pattern=PRETOKENIZER_PATTERNS[pre],
        pre=pre,
        vocab_size=len(tokens),
        eos_token_ids=tuple(ends),
        fim=dict(fim) if fim else None,
    )


#: Texts of control tokens that end a turn as llama.cpp treats them (its end-of-generation
#: set), for SentencePiece vocabularies: Gemma's ``<end_of_turn>``.
_SPM_END_TEXTS = ("<end_of_turn>",)


@dataclass(frozen=True)
class SPMVocab:
    """A GGUF's SentencePiece-style tokenizer: the arrays as the file holds them."""

    tokens: list[str]
    scores: list[float]
    types: list[int]
    add_space_prefix: bool
    bos_id: int | None  # read before every text prompt (tokenizer.ggml.add_bos_token)
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    fim: dict[str, int] | None = None


def spm_vocab(
    tokens: Sequence[str],
    scores: Sequence[float],
    types: Sequence[int],
    *,
    add_space_prefix: bool,
    bos_id: int | None,
    eos_ids: Sequence[int] = (),
) -> SPMVocab:
    """The SentencePiece-style vocabulary, checked: one score and type per token, every
    byte token ``<0xXX>``, ids in range; the end ids are ``eos_ids`` and ``<end_of_turn>``.

    >>> v = spm_vocab(["<eos>", "<bos>", "a"], [0, 0, -1], [3, 3, 1], add_space_prefix=False,
    ...               bos_id=1, eos_ids=[0])
    >>> v.eos_token_ids, v.bos_id
    ((0,), 1)
    """
    n = len(tokens)
    if len(scores) != n or len(types) != n:
        raise ValueError(
            f"tokenizer.ggml.scores has {len(scores)} and tokenizer.ggml.token_type "
            f"{len(types)} entries for {n} tokens"
        )
    for i, (text, kind) in enumerate(zip(tokens, types)):
        if kind not in (_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE):
            raise ValueError(f"token {i} {text!r} has unknown token type {kind}")
        if kind == _BYTE and not (len(text) == 6 and text.startswith("<0x") and text.endswith(">")):
            raise ValueError(f"token {i} {text!r} has type BYTE (6) but is not <0xXX>")
    ends: list[int] = []
    named = [i for i, t in enumerate(tokens) if t in _SPM_END_TEXTS and types[i] == _CONTROL]
    for i in [*eos_ids, *named]:
        if not 0 <= i < n or types[i] in (_UNKNOWN, _UNUSED):
            raise ValueError(f"end-of-text id {i} is not a token")
        if i not in ends:
            ends.append(i)
    if not ends:
        raise ValueError("no end-of-text token: tokenizer.ggml.eos_token_id is missing")
    if bos_id is not None and not 0 <= bos_id < n:
        raise ValueError(f"tokenizer.ggml.bos_token_id {bos_id} is not a token id")
    return SPMVocab(
        tokens=list(tokens),
        scores=[float(x) for x in scores],
        types=[int(k) for k in types],
        add_space_prefix=add_space_prefix,
        bos_id=bos_id,
        vocab_size=n,
        eos_token_ids=tuple(ends),
    )
