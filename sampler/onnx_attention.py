"""Attention for decoder graphs: RoPE tables, the causal mask, and the two attention
kinds, with the per-layer Q/K/V projections (``onnx.helper`` nodes, via :mod:`.onnx_graph`).

``self_attention`` is plain ONNX (``exact``: keys as the rows of the score product and float64
sums, so a row's result does not depend on its batch; ``fast``: float32 ``q k^T``);
``gqa_attention`` is ONNX Runtime's GroupQueryAttention over a cache updated in place. The
shapes come from any config with ``num_heads``, ``num_kv_heads``, ``head_dim``,
``rope_theta`` and ``max_position`` (:class:`HeadShape`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .onnx_graph import MS_DOMAIN, Graph, Weights, attend, dense, linear, rms_norm, rope

__all__ = [
    "HeadShape",
    "rope_tables",
    "rope_inputs",
    "attention_mask",
    "self_attention",
    "qkv_roped",
    "gqa_attention",
]


class HeadShape(Protocol):
    """What attention needs to know of a model's configuration."""

    @property
    def num_heads(self) -> int: ...
    @property
    def num_kv_heads(self) -> int: ...
    @property
    def head_dim(self) -> int: ...
    @property
    def rope_theta(self) -> float: ...
    @property
    def max_position(self) -> int: ...
    @property
    def rms_norm_eps(self) -> float: ...
    @property
    def query_scale(self) -> float: ...


def rope_tables(config: HeadShape, theta: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin, float32 [max_position, head_dim/2], computed in float64 and rounded once
    (base ``theta``, default the config's ``rope_theta``)."""
    half = config.head_dim // 2
    base = config.rope_theta if theta is None else theta
    inv_freq = base ** (-2.0 * np.arange(half) / config.head_dim)  # [hd/2]
    angles = np.outer(np.arange(config.max_position), inv_freq)  # [P, hd/2]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def rope_inputs(g: Graph, c: HeadShape, pos: str, theta: float | None = None) -> tuple[str, str]:
    """cos and signed sin rows for the positions, [B, S, 1, hd], shared by the layers of
    one RoPE base ``theta`` (default the config's).

    rotate_half(x) * sin == swap_halves(x) * [-sin, sin], so the rows carry the sign; the
    tables hold half rows [P, hd/2], doubled after the gather (the same values, half the
    bytes: Gemma 3's are 32768 x 128 per base).
    """
    base = c.rope_theta if theta is None else theta
    cos, sin = rope_tables(c, base)  # [P, hd/2]
    tag = "" if base == c.rope_theta else f"_{base:g}"
    cos_h = g.op("Gather", g.const(f"rope_cos{tag}", cos), pos, axis=0)  # [B, S, hd/2]
    sin_h = g.op("Gather", g.const(f"rope_sin{tag}", sin), pos, axis=0)  # [B, S, hd/2]
    cos_r = g.op("Concat", cos_h, cos_h, axis=-1)  # [B, S, hd]
    sin_r = g.op("Concat", g.op("Neg", sin_h), sin_h, axis=-1)  # [B, S, hd]
    axis2 = g.ints("axes_2", [2])
    return g.op("Unsqueeze", cos_r, axis2), g.op("Unsqueeze", sin_r, axis2)


def attention_mask(g: Graph, c: HeadShape, ids: str, mask_in: str, window: int = 0) -> str:
    """bool [B, 1, G*S, T]: causal among the new tokens AND attention_mask over all keys;
    with a ``window``, also only the keys less than ``window`` columns before the query
    (its own included: a sliding-window layer; left padding keeps a row's real keys
    contiguous, so columns measure positions).

    Rows are ordered (group g, query s), matching the query layout in :func:`self_attention`.
    """
    from onnx import TensorProto

    one, two = g.ints("one", [1]), g.ints("two_i", [2])
    s = g.op("Slice", g.op("Shape", ids), one, two)  # [1] = [S]
    t = g.op("Slice", g.op("Shape", mask_in), one, two)  # [1] = [T]
    zero, step = g.ints("zero_s", 0), g.ints("one_s", 1)
    t0 = g.op("Squeeze", t)  # scalar T
    q_pos = g.op("Range", g.op("Squeeze", g.op("Sub", t, s)), t0, step)  # [S] absolute
    k_pos = g.op("Range", zero, t0, step)  # [T]
    k_row = g.op("Unsqueeze", k_pos, g.ints("axes_0", [0]))  # [1, T]
    q_col = g.op("Unsqueeze", q_pos, g.ints("axes_1", [1]))  # [S, 1]
    causal = g.op("LessOrEqual", k_row, q_col)  # [S, T]
    if window:
        near = g.op("Less", g.op("Sub", q_col, k_row), g.ints(f"window_{window}", window))
        causal = g.op("And", causal, near)  # [S, T]
    keep = g.op(
        "Unsqueeze", g.op("Cast", mask_in, to=TensorProto.BOOL), g.ints("axes_12", [1, 2])
    )  # [B, 1, 1, T]
    allowed = g.op("And", causal, keep)  # [B, 1, S, T]
    groups = c.num_heads // c.num_kv_heads
    if groups == 1:
        return allowed
    return g.op("Tile", allowed, g.ints("mask_tile", [1, 1, groups, 1]))  # [B, 1, G*S, T]


def self_attention(
    g: Graph,
    i: int,
    x: str,
    w: Weights,
    c: HeadShape,
    cos: str,
    sin: str,
    allowed: str,
    exact: bool,
) -> str:
    """Grouped-query attention with the KV cache; returns [B, S, d] (after o_proj).

    Queries of the G heads sharing one KV head are stacked as rows ([B, Hkv, G*S, hd]), so
    K and V are never repeated.
    """
    H, Hkv, hd = c.num_heads, c.num_kv_heads, c.head_dim
    G = H // Hkv
    qk, v = qkv_roped(g, i, x, w, c, cos, sin)  # [B, S, H+Hkv, hd], [B, S, Hkv, hd]
    q, k = g.ops("Split", qk, g.ints("qk_split", [H, Hkv]), axis=2, n_out=2)

    q = g.op("Mul", q, g.scalar("attn_scale", c.query_scale))
    q = g.op("Reshape", q, g.ints("q5_shape", [0, 0, Hkv, G, hd]))  # [B, S, Hkv, G, hd]
    q = g.op("Transpose", q, perm=[0, 2, 3, 1, 4])  # [B, Hkv, G, S, hd]
    q = g.op("Reshape", q, g.ints("q4_shape", [0, 0, -1, hd]))  # [B, Hkv, G*S, hd]

    def cache(new: str, part: str) -> str:
        new = g.op("Transpose", new, perm=[0, 2, 1, 3])  # [B, Hkv, S, hd]
        g.nodes.append(
            g.helper.make_node(
                "Concat", [f"past_key_values.{i}.{part}", new], [f"present.{i}.{part}"], axis=2
            )
        )
        return f"present.{i}.{part}"  # [B, Hkv, T, hd]

    k_all, v_all = cache(k, "key"), cache(v, "value")
    out = attend(g, q, k_all, v_all, allowed, exact)  # [B, Hkv, G*S, hd]
    out = g.op("Reshape", out, g.ints("o5_shape", [0, Hkv, G, -1, hd]))  # [B, Hkv, G, S, hd]
    out = g.op("Transpose", out, perm=[0, 3, 1, 2, 4])  # [B, S, Hkv, G, hd]
    out = g.op("Reshape", out, g.ints("o3_shape", [0, 0, H * hd]))  # [B, S, H*hd]
    return linear(g, out, f"layers.{i}.o_proj", [w["o_proj"]])  # [B, S, d]


def qkv_roped(
    g: Graph, i: int, x: str, w: Weights, c: HeadShape, cos: str, sin: str
) -> tuple[str, str]:
    """One MatMul for q, k and v (plus their biases, Qwen2's); each head of q and k
    RMS-normed when the weights have ``q_norm``/``k_norm`` (Qwen3's); RoPE on q and k
    together: ([B, S, H+Hkv, hd], v [B, S, Hkv, hd])."""
    H, Hkv, hd = c.num_heads, c.num_kv_heads, c.head_dim
    qkv = linear(g, x, f"layers.{i}.qkv_proj", [w["q_proj"], w["k_proj"], w["v_proj"]])
    # [B, S, (H+2Hkv)*hd]
    if "q_proj.bias" in w:
        bias = np.concatenate([dense(w[f"{p}_proj.bias"]) for p in "qkv"])  # [(H+2Hkv)*hd]
        qkv = g.op("Add", qkv, g.weight(f"layers.{i}.qkv_bias", bias))
    qkv = g.op("Reshape", qkv, g.ints("qkv_shape", [0, 0, H + 2 * Hkv, hd]))
    qk, v = g.ops("Split", qkv, g.ints("qkv_split", [H + Hkv, Hkv]), axis=2, n_out=2)
    if "q_norm" in w:  # over each head's hd values, before RoPE
        q, k = g.ops("Split", qk, g.ints("qk_split", [H, Hkv]), axis=2, n_out=2)
        q = rms_norm(g, q, g.weight(f"layers.{i}.q_norm", w["q_norm"]), c.rms_norm_eps)
        k = rms_norm(g, k, g.weight(f"layers.{i}.k_norm", w["k_norm"]), c.rms_norm_eps)
        qk = g.op("Concat", q, k, axis=2)  # [B, S, H+Hkv, hd]
    return rope(g, qk, cos, sin, c.head_dim), v


def gqa_attention(
    g: Graph, i: int, x: str, w: Weights, c: HeadShape, cos: str, sin: str, window: int = 0
) -> str:
    """Grouped-query attention by ONNX Runtime's GroupQueryAttention on the in-place cache;
    returns [B, S, d] (after o_proj). RoPE is ours, as in :func:`self_attention`. A
    ``window`` (a sliding-window layer: the last ``window`` positions, the query's own
    included) is GQA's ``local_window_size``; ONNX Runtime counts the query's own key in it
    (measured: ``window`` equals the exact graph's mask, ``window - 1`` does not)."""
    H, Hkv, hd = c.num_heads, c.num_kv_heads, c.head_dim
    qk, v = qkv_roped(g, i, x, w, c, cos, sin)  # [B, S, H+Hkv, hd], [B, S, Hkv, hd]
    flat = g.ints("bsh_shape", [0, 0, -1])
    qk = g.op("Reshape", qk, flat)  # [B, S, (H+Hkv)*hd]
    q, k = g.ops("Split", qk, g.ints("qk_flat_split", [H * hd, Hkv * hd]), axis=2, n_out=2)
    g.nodes.append(
        g.helper.make_node(
            "GroupQueryAttention",
            [
                q,
                k,
                g.op("Reshape", v, flat),
                f"past_key_values.{i}.key",
                f"past_key_values.{i}.value",
                "seqlens_k",
                "total_sequence_length",
            ],
            [f"gqa_{i}", f"present.{i}.key", f"present.{i}.value"],
            domain=MS_DOMAIN,
            num_heads=H,
            kv_num_heads=Hkv,
            **({"scale": float(c.query_scale)} if getattr(c, "attention_scale", 0) else {}),
            **({"local_window_size": window} if window else {}),
        )
    )  # scale: 1/sqrt(hd) unless the config sets another
    return linear(g, f"gqa_{i}", f"layers.{i}.o_proj", [w["o_proj"]])  # [B, S, d]
