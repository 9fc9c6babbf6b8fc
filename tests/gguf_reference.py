"""Tiny GGUF files for tests, and independent references that read them (tests only).

- :func:`write_tiny_gguf` writes a random 2-layer Llama in any of F32/F16/Q8_0/Q4_0/Q4_1
  with a real byte-level BPE vocabulary (merges learnt here from a small corpus).
- :func:`forward` is a float64 NumPy forward pass that reads the GGUF itself and uses
  llama.cpp's conventions directly: GGUF-layout Q/K weights and RoPE on adjacent pairs
  ``(2j, 2j+1)``. It shares no code with ``sampler.convert`` (which un-permutes rows for an
  HF-style graph), so agreement checks the un-permutation.
- :func:`reference_encode` tokenizes the way llama.cpp does for ``smollm``: specials split
  out first, then every digit alone, then GPT-2's regex inside each piece (unmatched gaps
  kept), then BPE by merge priority on the GPT-2 unicode symbols.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import regex

# GPT-2's regex as llama.cpp spells it (no trailing \s+; unmatched gaps become pieces)
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
#: byte values the tiny vocabulary has no token for (as SmolLM2 has 21)
MISSING_BYTES = frozenset([0x04, 0x06, 0xC0, 0xC1, 0xF1, *range(0xF5, 0x100)])

CORPUS = (
    """\
The capital of France is Paris. The capital of Italy is Rome; the capital of Spain is Madrid.
In 2024 there were 12 or 123 or 1234 things, and it's the 2nd time we've said it: 2024, 2024!
def f(x):
    return x + 1  # two  spaces  here   and there    too
It's, they're, we'll, I'd, you've, I'm -- don't stop; "quoted" (paren) [bracket] {brace}
Ünïcödé wörds, ça va? naïve café, 東京 and 😀 emoji 😀 again.
"""
    * 3
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (written out again, independently)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    out, n = {}, 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


def train_vocab(n_merges: int = 160) -> tuple[list[str], list[int], list[str]]:
    """tokens, token types and merges: 3 control tokens, the byte tokens (minus
    MISSING_BYTES), then one token per merge learnt on CORPUS, so ids are ranks."""
    enc = bytes_to_unicode()
    words = Counter(
        tuple(enc[b] for b in piece.encode())
        for piece in regex.findall(GPT2_PATTERN + r"|\s+", CORPUS)
    )
    base = sorted(enc[b] for b in range(256) if b not in MISSING_BYTES)
    words = Counter({w: c for w, c in words.items() if all(s in base for s in w)})
    tokens = SPECIALS + base
    known = set(tokens)
    merges: list[str] = []
    banned: set[tuple[str, str]] = set()
    while len(merges) < n_merges:
        pairs: Counter = Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                if (a, b) not in banned:
                    pairs[a, b] += c
        if not pairs:
            break
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if a + b in known:  # another pair already makes this string
            banned.add((a, b))
            continue
        merges.append(f"{a} {b}")
        tokens.append(a + b)
        known.add(a + b)
        new = Counter()
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] += c
        words = new
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return tokens, types, merges


TINY_DIMS = dict(
    width=64, ffn=96, layers=2, heads=4, kv_heads=2, context=96, theta=100000.0, eps=1e-5
)
_GAIN = {
    "attn_q": 2.0,
    "attn_k": 2.0,
    "attn_v": 1.0,
    "attn_output": 1.0,
    "ffn_gate": 1.5,
    "ffn_up": 1.5,
    "ffn_down": 2.0,
    "output": 3.0,
}


def add_matrix(writer, name: str, x: np.ndarray, qtype: str) -> None:
    """Write float32 ``x`` as a tensor of type ``qtype`` (F32, F16, or what gguf.quants
    quantises)."""
    import gguf
    from gguf.quants import quantize

    qt = gguf.GGMLQuantizationType[qtype]
    if qt == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, x)
    elif qt == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, x.astype(np.float16))
    else:
        writer.add_tensor(name, quantize(x, qt), raw_dtype=qt)


def write_tiny_gguf(
    path: Path,
    qtype: str = "F32",
    *,
    tied: bool = False,
    seed: int = 0,
    arch: str = "llama",
    pre: str = "smollm",
    extra_tensors: dict[str, np.ndarray] | None = None,
    replace: dict[str, np.ndarray] | None = None,
    chat_template: str | None = None,
) -> Path:
    """A random Llama GGUF; matrices stored as ``qtype``, norms F32 (as llama.cpp does).
    ``extra_tensors`` are added as they are; ``replace`` swaps generated tensors by name;
    ``chat_template`` is written as ``tokenizer.chat_template`` (BOS 1, padding 2)."""
    import gguf

    d = TINY_DIMS
    tokens, types, merges = train_vocab()
    V, W, F = len(tokens), d["width"], d["ffn"]
    hd = W // d["heads"]
    rng = np.random.default_rng(seed)

    w = gguf.GGUFWriter(str(path), arch)
    p = arch
    w.add_uint32(f"{p}.block_count", d["layers"])
    w.add_uint32(f"{p}.context_length", d["context"])
    w.add_uint32(f"{p}.embedding_length", W)
    w.add_uint32(f"{p}.feed_forward_length", F)
    w.add_uint32(f"{p}.attention.head_count", d["heads"])
    w.add_uint32(f"{p}.attention.head_count_kv", d["kv_heads"])
    w.add_float32(f"{p}.rope.freq_base", d["theta"])
    w.add_float32(f"{p}.attention.layer_norm_rms_epsilon", d["eps"])
    w.add_uint32(f"{p}.rope.dimension_count", hd)
    w.add_string("general.name", "tiny test llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(2)  # <|im_end|>, as SmolLM2-Instruct
    if chat_template is not None:
        w.add_chat_template(chat_template)
        w.add_bos_token_id(1)
        w.add_pad_token_id(2)

    def matrix(name: str, rows: int, cols: int, gain: float | None) -> None:
        x = rng.standard_normal((rows, cols)).astype(np.float32)
        if gain is not None:
            x *= np.float32(gain / np.sqrt(cols))
        if name in (replace or {}):
            w.add_tensor(name, replace[name])
        else:
            add_matrix(w, name, x, qtype)

    def norm(name: str, size: int = W) -> None:
        x = (1.0 + 0.1 * rng.standard_normal(size)).astype(np.float32)
        w.add_tensor(name, (replace or {}).get(name, x))

    def bias(name: str, size: int) -> None:  # F32, as llama.cpp writes 1-D tensors
        w.add_tensor(name, (0.5 * rng.standard_normal(size)).astype(np.float32))

    matrix("token_embd.weight", V, W, None)
    for i in range(d["layers"]):
        b = f"blk.{i}."
        norm(b + "attn_norm.weight")
        matrix(b + "attn_q.weight", d["heads"] * hd, W, _GAIN["attn_q"])
        matrix(b + "attn_k.weight", d["kv_heads"] * hd, W, _GAIN["attn_k"])
        matrix(b + "attn_v.weight", d["kv_heads"] * hd, W, _GAIN["attn_v"])
        if arch == "qwen2":
            bias(b + "attn_q.bias", d["heads"] * hd)
            bias(b + "attn_k.bias", d["kv_heads"] * hd)
            bias(b + "attn_v.bias", d["kv_heads"] * hd)
        if arch == "qwen3":
            norm(b + "attn_q_norm.weight", hd)
            norm(b + "attn_k_norm.weight", hd)
        matrix(b + "attn_output.weight", W, d["heads"] * hd, _GAIN["attn_output"])
        norm(b + "ffn_norm.weight")
        matrix(b + "ffn_gate.weight", F, W, _GAIN["ffn_gate"])
        matrix(b + "ffn_up.weight", F, W, _GAIN["ffn_up"])
        matrix(b + "ffn_down.weight", W, F, _GAIN["ffn_down"])
    norm("output_norm.weight")
    if not tied:
        matrix("output.weight", V, W, _GAIN["output"])
    for name, x in (extra_tensors or {}).items():
        w.add_tensor(name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ---------------------------------------------------------------- the forward pass


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w  # [S, d]


def _rope_adjacent(x: np.ndarray, theta: float) -> np.ndarray:
    """llama.cpp's "normal" RoPE: rotate pairs (2j, 2j+1) by pos * theta^(-2j/hd).
    x [S, hd] at positions 0..S-1."""
    S, hd = x.shape
    out = np.empty_like(x)
    for j in range(hd // 2):
        angle = np.arange(S) * theta ** (-2.0 * j / hd)  # [S]
        c, s = np.cos(angle), np.sin(angle)
        x0, x1 = x[:, 2 * j], x[:, 2 * j + 1]
        out[:, 2 * j] = x0 * c - x1 * s
        out[:, 2 * j + 1] = x0 * s + x1 * c
    return out


def _rope_neox(x: np.ndarray, theta: float) -> np.ndarray:
    """llama.cpp's "neox" RoPE (its choice for Qwen2 and Qwen3): rotate pairs (j, j + hd/2)
    by pos * theta^(-2j/hd). x [S, hd] at positions 0..S-1."""
    S, hd = x.shape
    half = hd // 2
    out = np.empty_like(x)
    for j in range(half):
        angle = np.arange(S) * theta ** (-2.0 * j / hd)  # [S]
        c, s = np.cos(angle), np.sin(angle)
        x0, x1 = x[:, j], x[:, j + half]
        out[:, j] = x0 * c - x1 * s
        out[:, j + half] = x0 * s + x1 * c
    return out


def forward(path: Path, tokens, rope: Any = None) -> np.ndarray:
    """Logits float64 [S, V] of one sequence at positions 0..S-1, read from the GGUF: the
    architecture's metadata, its RoPE as llama.cpp applies it (adjacent pairs for llama,
    halves for qwen2/qwen3; ``rope`` overrides it), Qwen2's q/k/v biases, Qwen3's per-head
    q/k norms."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(str(path))
    arch = str(r.fields["general.architecture"].contents())
    meta = {
        k.split(".", 1)[1]: f.contents() for k, f in r.fields.items() if k.startswith(arch + ".")
    }
    W = {t.name: np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float64) for t in r.tensors}
    H, Hkv = meta["attention.head_count"], meta["attention.head_count_kv"]
    theta, eps = meta["rope.freq_base"], meta["attention.layer_norm_rms_epsilon"]
    rot = rope or (_rope_adjacent if arch == "llama" else _rope_neox)
    tokens = np.asarray(tokens)
    S = len(tokens)
    x = W["token_embd.weight"][tokens]  # [S, d]
    hd = x.shape[1] // H
    causal = np.tril(np.ones((S, S), dtype=bool))
    for i in range(meta["block_count"]):
        L = lambda name: W[f"blk.{i}.{name}.weight"]  # noqa: E731
        B = lambda name: W.get(f"blk.{i}.{name}.bias", 0.0)  # noqa: E731
        n = _rms_norm(x, L("attn_norm"), eps)
        q = (n @ L("attn_q").T + B("attn_q")).reshape(S, H, hd)
        k = (n @ L("attn_k").T + B("attn_k")).reshape(S, Hkv, hd)
        v = (n @ L("attn_v").T + B("attn_v")).reshape(S, Hkv, hd)
        if f"blk.{i}.attn_q_norm.weight" in W:  # each head's hd values
            q = _rms_norm(q, L("attn_q_norm"), eps)
            k = _rms_norm(k, L("attn_k_norm"), eps)
        heads = []
        for h in range(H):
            g = h // (H // Hkv)  # as ggml's broadcast in mul_mat: q head h reads KV head h/r
            scores = rot(q[:, h], theta) @ rot(k[:, g], theta).T
            scores = np.where(causal, scores / np.sqrt(hd), -np.inf)  # [S, S]
            p = np.exp(scores - scores.max(axis=-1, keepdims=True))
            heads.append((p / p.sum(axis=-1, keepdims=True)) @ v[:, g])  # [S, hd]
        x = x + np.concatenate(heads, axis=-1) @ L("attn_output").T
        m = _rms_norm(x, L("ffn_norm"), eps)
        gate = m @ L("ffn_gate").T
        x = x + (gate / (1.0 + np.exp(-gate)) * (m @ L("ffn_up").T)) @ L("ffn_down").T
    x = _rms_norm(x, W["output_norm.weight"], eps)
    head = W.get("output.weight", W["token_embd.weight"])
    return x @ head.T  # [S, V]


# ---------------------------------------------------------------- the tokenizer


def _split(pieces: list[str], pattern: str) -> list[str]:
    """Split each piece by the regex's matches, keeping unmatched gaps as pieces."""
    out = []
    for piece in pieces:
        pos = 0
        for m in regex.finditer(pattern, piece):
            if m.start() > pos:
                out.append(piece[pos : m.start()])
            out.append(m.group())
            pos = m.end()
        if pos < len(piece):
            out.append(piece[pos:])
    return out


def reference_encode(text: str, tokens: list[str], merges: list[str]) -> list[int]:
    """llama.cpp-style ``smollm`` tokenization, slow and literal."""
    ids = {t: i for i, t in enumerate(tokens)}
    rank = {tuple(m.split(" ")): k for k, m in enumerate(merges)}
    enc = bytes_to_unicode()
    out: list[int] = []
    special = regex.compile("(" + "|".join(regex.escape(s) for s in SPECIALS) + ")")
    for chunk in special.split(text):
        if chunk in SPECIALS:
            out.append(ids[chunk])
            continue
        for piece in _split(_split([chunk], r"\p{N}"), GPT2_PATTERN):
            symbols = [enc[b] for b in piece.encode()]
            while len(symbols) > 1:
                best = min(
                    range(len(symbols) - 1),
                    key=lambda i: rank.get((symbols[i], symbols[i + 1]), 1 << 30),
                )
                if (symbols[best], symbols[best + 1]) not in rank:
                    break
                symbols[best : best + 2] = [symbols[best] + symbols[best + 1]]
            out.extend(ids[s] for s in symbols)
    return out
