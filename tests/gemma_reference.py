"""Tiny Gemma 3 GGUFs for tests, and independent references that read them (tests only).

- :func:`spm_vocab` is a small SentencePiece-style vocabulary as Gemma's is laid out:
  control tokens, user-defined newline and space runs, the 256 ``<0xXX>`` byte tokens, then
  pieces (``▁`` for a space) scored by frequency on :data:`gguf_reference.CORPUS`.
- :func:`write_tiny_gemma3` writes a random 6-layer Gemma 3 (5 sliding-window layers, then a
  global one, as llama.cpp lays them out) in any quant type ``gguf.quants`` writes.
- :func:`forward` is a float64 NumPy forward pass reading the GGUF, written from llama.cpp's
  ``gemma3`` graph: embedding times sqrt(d), RMSNorm with the file's weights (which hold
  the 1 + w), q/k norms, RoPE on halves with the local or global base, the window mask,
  post-attention and post-feed-forward norms, tanh-GELU gate, tied head.
- :func:`reference_encode` tokenizes as llama.cpp's SPM tokenizer does, slowly: specials cut
  out longest first, then the best-scoring adjacent pair merged, leftmost among equals,
  by scanning every pair each time; byte tokens for what is left.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from gguf_reference import _GAIN, CORPUS, _rms_norm, _rope_neox, add_matrix

SPACE = "\u2581"
CONTROL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
USER_DEFINED = ["\n", "\n\n", "  ", "   "]
GEMMA_DIMS = dict(
    width=256,  # every row a whole number of K-quant blocks (256 values)
    ffn=512,
    layers=6,
    heads=4,
    kv_heads=1,
    head_dim=128,  # heads * head_dim != width, as Gemma 3 270M (4 x 256 for 640)
    context=96,
    theta=1000000.0,
    eps=1e-6,
    window=8,
)


def spm_vocab(n_pieces: int = 300) -> tuple[list[str], list[float], list[int]]:
    """tokens, scores and types (control 3, user-defined 4, byte 6, normal 1)."""
    tokens = CONTROL + USER_DEFINED + [f"<0x{b:02X}>" for b in range(256)]
    types = [3] * len(CONTROL) + [4] * len(USER_DEFINED) + [6] * 256
    scores = [-1000.0] * (len(CONTROL) + len(USER_DEFINED)) + [0.0] * 256
    words = Counter(SPACE + w for w in CORPUS.replace("\n", " ").split(" ") if w)
    chars = sorted({c for w in words for c in w})
    counts: Counter = Counter()
    for w, n in words.items():
        for a in range(len(w)):
            for b in range(a + 2, min(len(w), a + 7) + 1):
                counts[w[a:b]] += n * (b - a)
    pieces = [p for p, _ in counts.most_common(n_pieces)]
    for k, piece in enumerate(chars + pieces):
        tokens.append(piece)
        types.append(1)
        scores.append(-float(k) / 4.0 if piece in pieces else -100.0 - k)
    return tokens, scores, types


def write_tiny_gemma3(
    path: Path,
    qtype: str = "F32",
    *,
    seed: int = 0,
    window: int | None = None,
    extra_meta: dict | None = None,
) -> Path:
    """A random Gemma 3 GGUF; matrices as ``qtype``, norms F32 around 1 (the file's 1 + w)."""
    import gguf

    d = GEMMA_DIMS
    tokens, scores, types = spm_vocab()
    V, W, F, hd = len(tokens), d["width"], d["ffn"], d["head_dim"]
    H, Hkv = d["heads"], d["kv_heads"]
    rng = np.random.default_rng(seed)
    qt = gguf.GGMLQuantizationType[qtype]

    w = gguf.GGUFWriter(str(path), "gemma3")
    p = "gemma3"
    w.add_uint32(f"{p}.block_count", d["layers"])
    w.add_uint32(f"{p}.context_length", d["context"])
    w.add_uint32(f"{p}.embedding_length", W)
    w.add_uint32(f"{p}.feed_forward_length", F)
    w.add_uint32(f"{p}.attention.head_count", H)
    w.add_uint32(f"{p}.attention.head_count_kv", Hkv)
    w.add_uint32(f"{p}.attention.key_length", hd)
    w.add_uint32(f"{p}.attention.value_length", hd)
    w.add_float32(f"{p}.rope.freq_base", d["theta"])
    w.add_float32(f"{p}.attention.layer_norm_rms_epsilon", d["eps"])
    w.add_uint32(f"{p}.attention.sliding_window", d["window"] if window is None else window)
    for key, value in (extra_meta or {}).items():
        if isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_uint32(key, value)
    w.add_string("general.name", "tiny test gemma3")
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)

    def matrix(name: str, rows: int, cols: int, gain: float | None) -> None:
        x = rng.standard_normal((rows, cols)).astype(np.float32)
        if gain is not None:
            x *= np.float32(gain / np.sqrt(cols))
        if qtype in _KQUANTS:
            w.add_tensor(name, random_kquant(rows, cols, qtype, float(x.std()), rng), raw_dtype=qt)
        else:
            add_matrix(w, name, x, qtype)

    def norm(name: str, size: int = W) -> None:
        w.add_tensor(name, (1.0 + 0.2 * rng.standard_normal(size)).astype(np.float32))

    matrix("token_embd.weight", V, W, 4.8)  # logits of std ~5
    for i in range(d["layers"]):
        b = f"blk.{i}."
        norm(b + "attn_norm.weight")
        matrix(b + "attn_q.weight", H * hd, W, _GAIN["attn_q"])
        matrix(b + "attn_k.weight", Hkv * hd, W, _GAIN["attn_k"])
        matrix(b + "attn_v.weight", Hkv * hd, W, _GAIN["attn_v"])
        norm(b + "attn_q_norm.weight", hd)
        norm(b + "attn_k_norm.weight", hd)
        matrix(b + "attn_output.weight", W, H * hd, _GAIN["attn_output"])
        norm(b + "post_attention_norm.weight")
        norm(b + "ffn_norm.weight")
        matrix(b + "ffn_gate.weight", F, W, _GAIN["ffn_gate"])
        matrix(b + "ffn_up.weight", F, W, _GAIN["ffn_up"])
        matrix(b + "ffn_down.weight", W, F, _GAIN["ffn_down"])
        norm(b + "post_ffw_norm.weight")
    norm("output_norm.weight")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


#: K-quant blocks: bytes per 256 values, where its fp16 d (and dmin) are, and the ratios
#: that make random blocks' values centred with std ~1 per unit of d
_KQUANTS = {
    "Q4_K": (144, 0, 2, 7.5, 226.0),
    "Q5_K": (176, 0, 2, 15.5, 441.0),
    "Q6_K": (210, 208, None, 0.0, 1411.0),
}


def random_kquant(rows: int, cols: int, qtype: str, std: float, rng) -> np.ndarray:
    """Random raw K-quant blocks (uint8 [rows, bytes]) whose values have about ``std``:
    gguf.quants cannot quantise K-quants, but reads them, as llama.cpp does."""
    size, d_at, m_at, m_ratio, spread = _KQUANTS[qtype]
    raw = rng.integers(0, 256, (rows, cols // 256, size), dtype=np.uint8)

    def put(at: int, value: float) -> None:
        raw[:, :, at : at + 2] = np.frombuffer(np.float16(value).tobytes(), np.uint8)

    d = std / spread
    put(d_at, d)
    if m_at is not None:
        put(m_at, m_ratio * d)
    return raw.reshape(rows, -1)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def forward(path: Path, tokens, *, window: int | None = None) -> np.ndarray:
    """Logits float64 [S, V] of one sequence at positions 0..S-1, read from the GGUF as
    llama.cpp's gemma3 graph computes them. ``window`` overrides the width of the local
    layers' mask (which keep their RoPE base)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(str(path))
    meta = {
        k[len("gemma3.") :]: f.contents() for k, f in r.fields.items() if k.startswith("gemma3.")
    }
    W = {t.name: np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float64) for t in r.tensors}
    H, Hkv, hd = (
        meta["attention.head_count"],
        meta["attention.head_count_kv"],
        meta["attention.key_length"],
    )
    eps = meta["attention.layer_norm_rms_epsilon"]
    n_swa = meta.get("attention.sliding_window", 0)
    pattern = meta.get("attention.sliding_window_pattern", 6)
    tokens = np.asarray(tokens)
    S = len(tokens)
    E = W["token_embd.weight"]
    x = E[tokens] * np.sqrt(E.shape[1])  # [S, d]
    pos = np.arange(S)
    for i in range(meta["block_count"]):
        L = lambda name: W[f"blk.{i}.{name}.weight"]  # noqa: E731
        local = n_swa > 0 and i % pattern < pattern - 1
        theta = meta.get("rope.freq_base_swa", 10000.0) if local else meta["rope.freq_base"]
        allowed = pos[None, :] <= pos[:, None]  # [S, S] key j for query i
        if local:
            allowed &= pos[:, None] - pos[None, :] < (n_swa if window is None else window)
        n = _rms_norm(x, L("attn_norm"), eps)
        q = _rms_norm((n @ L("attn_q").T).reshape(S, H, hd), L("attn_q_norm"), eps)
        k = _rms_norm((n @ L("attn_k").T).reshape(S, Hkv, hd), L("attn_k_norm"), eps)
        v = (n @ L("attn_v").T).reshape(S, Hkv, hd)
        heads = []
        for h in range(H):
            g = h // (H // Hkv)
            scores = _rope_neox(q[:, h], theta) / np.sqrt(hd) @ _rope_neox(k[:, g], theta).T
            scores = np.where(allowed, scores, -np.inf)
            p = np.exp(scores - scores.max(axis=-1, keepdims=True))
            heads.append((p / p.sum(axis=-1, keepdims=True)) @ v[:, g])
        attn = np.concatenate(heads, axis=-1) @ L("attn_output").T
        x = x + _rms_norm(attn, L("post_attention_norm"), eps)
        m = _rms_norm(x, L("ffn_norm"), eps)
        mlp = (_gelu_tanh(m @ L("ffn_gate").T) * (m @ L("ffn_up").T)) @ L("ffn_down").T
        x = x + _rms_norm(mlp, L("post_ffw_norm"), eps)
    x = _rms_norm(x, W["output_norm.weight"], eps)
    return x @ E.T  # [S, V]


def reference_encode(
    text: str, tokens: list[str], scores: list[float], types: list[int]
) -> list[int]:
    """llama.cpp's SPM tokenization (no space prefix, specials parsed), slow and literal."""
    ids = {t: i for i, t in enumerate(tokens)}
    specials = sorted((t for t, k in zip(tokens, types) if k in (2, 3, 4)), key=lambda t: -len(t))
    parts: list = [text] if text else []
    for s in specials:  # longest first, each cut wherever it is in a raw part
        new: list = []
        for part in parts:
            if isinstance(part, int):
                new.append(part)
                continue
            pieces = part.split(s)
            for j, raw in enumerate(pieces):
                if j:
                    new.append(ids[s])
                if raw:
                    new.append(raw)
        parts = new
    out: list[int] = []
    for part in parts:
        if isinstance(part, int):
            out.append(part)
            continue
        symbols = list(part.replace(" ", SPACE))
        while True:
            best = None
            for j in range(len(symbols) - 1):
                t = ids.get(symbols[j] + symbols[j + 1])
                if t is not None and (best is None or scores[t] > best[0]):
                    best = (scores[t], j)
            if best is None:
                break
            j = best[1]
            symbols[j : j + 2] = [symbols[j] + symbols[j + 1]]
        for s in symbols:
            if s in ids:
                out.append(ids[s])
            else:
                out.extend(ids[f"<0x{b:02X}>"] for b in s.encode())
    return out
