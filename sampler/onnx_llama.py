"""Build a Llama-architecture decoder as a plain ONNX graph from NumPy weights.

The graph uses standard ONNX ops only (opset 17) and the HF/Optimum KV-cache I/O names:

inputs
  ``input_ids`` int64 [batch, sequence_length]
  ``attention_mask`` int64 [batch, total_sequence_length]   (0 = key excluded)
  ``position_ids`` int64 [batch, sequence_length]
  ``past_key_values.{i}.key`` / ``.value``
      float32 [batch, num_kv_heads, past_sequence_length, head_dim]
outputs
  ``logits`` float32 [batch, sequence_length, vocab]
  ``present.{i}.key`` / ``.value``
      float32 [batch, num_kv_heads, total_sequence_length, head_dim]

The math (per layer ``i``, ``x`` the residual stream)::

    h = x + o_proj(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n)))  with n = rms_norm(x)
    x' = h + down_proj(silu(gate_proj(m)) * up_proj(m))                       with m = rms_norm(h)

and ``logits = lm_head(rms_norm(x_last))``. RoPE uses the HF "rotate_half" pairing (j, j + hd/2)
with ``inv_freq = theta ** (-2j / hd)``; cos/sin tables are computed in float64 and stored in
float32. Masked scores are replaced by -1e30 (finite), so a fully masked query row (a padding
position) yields finite garbage instead of NaN, which would otherwise reach real rows through
the padding's keys and values in the next layer. By default the attention sums run in float64
(``attention="exact"``) and the scores are computed with the keys as rows, which makes a row's
logits bit-identical whatever its batch, padding or prefill chunking (measured; it relies
on ORT's CPU GEMM computing each row the same way however many rows there are).

This module imports onnx lazily: ``import sampler.onnx_llama`` costs only NumPy.

>>> import numpy as np
>>> cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_layers=1,
...                   num_heads=4, num_kv_heads=2, max_position=64)
>>> model = build_llama(random_weights(cfg, np.random.default_rng(0)), cfg)
>>> [i.name for i in model.graph.input][:3]
['input_ids', 'attention_mask', 'position_ids']
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Mapping

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["LlamaConfig", "Int4Matrix", "build_llama", "save_model", "random_weights",
           "weight_shapes", "rope_tables", "ATTENTIONS", "gqa_supported"]

OPSET = 17
_MASKED = -1e30  # finite: a fully masked row softmaxes to uniform, not NaN
_PROTO_LIMIT = 2**31 - 1  # protobuf's hard limit; above it weights go to an external file

WeightDtype = Literal["float32", "float16", "int4"]
Attention = Literal["exact", "fast", "gqa"]
ATTENTIONS = ("exact", "fast", "gqa")
_MS_DOMAIN = "com.microsoft"  # ONNX Runtime's contrib ops: MatMulNBits, GroupQueryAttention
INT4_BLOCK = 32  # elements per block along the input dimension (GGUF's Q4_0/Q4_1 block)


@dataclass(frozen=True)
class LlamaConfig:
    """Shape hyper-parameters of a Llama decoder.

    >>> LlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=16, num_layers=1,
    ...             num_heads=2, num_kv_heads=1).head_dim
    4
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int = field(default=0)  # 0 means hidden_size // num_heads
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    max_position: int = 2048

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                     "num_heads", "num_kv_heads", "head_dim", "max_position"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"LlamaConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"LlamaConfig.num_heads ({self.num_heads}) must be a multiple of "
                             f"num_kv_heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig.head_dim must be even for RoPE, got {self.head_dim}")


def weight_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """The expected weight names and HF shapes (out_features x in_features)."""
    c = config
    d, ffn = c.hidden_size, c.intermediate_size
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens": (c.vocab_size, d)}
    for i in range(c.num_layers):
        p = f"layers.{i}."
        shapes |= {p + "input_layernorm": (d,), p + "q_proj": (q, d), p + "k_proj": (kv, d),
                   p + "v_proj": (kv, d), p + "o_proj": (d, q),
                   p + "post_attention_layernorm": (d,), p + "gate_proj": (ffn, d),
                   p + "up_proj": (ffn, d), p + "down_proj": (d, ffn)}
    shapes["norm"] = (d,)
    if not c.tie_word_embeddings:
        shapes["lm_head"] = (c.vocab_size, d)
    return shapes


def random_weights(config: LlamaConfig, rng: np.random.Generator, *,
                   scale: float = 1.0) -> dict[str, np.ndarray]:
    """Gaussian weights for tests: matrices N(0, scale/sqrt(fan_in)), norms 1 + N(0, 0.1)."""
    weights = {}
    for name, shape in weight_shapes(config).items():
        if len(shape) == 1:
            w = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            w = rng.standard_normal(shape) * (scale / np.sqrt(shape[1]))
        weights[name] = w.astype(np.float32)
    return weights


def rope_tables(config: LlamaConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin, float32 [max_position, head_dim/2], computed in float64 and rounded once."""
    half = config.head_dim // 2
    inv_freq = config.rope_theta ** (-2.0 * np.arange(half) / config.head_dim)  # [hd/2]
    angles = np.outer(np.arange(config.max_position), inv_freq)  # [P, hd/2]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


@dataclass(frozen=True, eq=False)
class Int4Matrix:
    """A weight matrix [N, K] (HF layout: out x in) held as 4-bit blocks of 32 along K::

        w[n, 32 b + j] = scale[n, b] * (q[n, b, j] - 8) + offset[n, b]

    which is GGUF's Q4_0 (``offset`` None: ``d * (q - 8)``) and, with ``offset = m + 8 d``,
    Q4_1 (``d * q + m``). ``kind`` names the source type; :meth:`dense` is the float32 matrix
    computed exactly as ``gguf.quants`` dequantises the source (``d*(q-8)``, ``d*q + m``).
    ``build_llama(..., weight_dtype="int4")`` runs it with ONNX Runtime's
    ``com.microsoft.MatMulNBits`` (zero point 8) plus, for Q4_1, the exact correction
    ``sum_b offset[n, b] * sum_j x[32 b + j]`` (see :func:`_int4_matmul`).

    >>> q = np.arange(32, dtype=np.uint8).reshape(1, 1, 32) % 16
    >>> d, m = np.full((1, 1), 0.5, np.float32), np.full((1, 1), -1.0, np.float32)
    >>> w = Int4Matrix("Q4_1", q, d, m)
    >>> w.shape, w.dense()[0, :3].tolist()
    ((1, 32), [-1.0, -0.5, 0.0])
    """

    kind: str  # "Q4_0" or "Q4_1"
    q: np.ndarray  # uint8 [N, K/32, 32], values 0..15
    scale: np.ndarray  # float32 [N, K/32]: d
    m: np.ndarray | None  # float32 [N, K/32]: Q4_1's block minimum; None for Q4_0

    def __post_init__(self) -> None:
        if self.kind not in ("Q4_0", "Q4_1") or (self.m is None) != (self.kind == "Q4_0"):
            given = "absent" if self.m is None else "given"
            raise ValueError(f"Int4Matrix: kind {self.kind!r} with m {given} (Q4_0 has no m, "
                             "Q4_1 needs one)")
        n, nb, block = self.q.shape
        if block != INT4_BLOCK or self.scale.shape != (n, nb) or (
                self.m is not None and self.m.shape != (n, nb)):
            raise ValueError(f"Int4Matrix: q {self.q.shape}, scale {self.scale.shape} do not "
                             f"describe [N, K/{INT4_BLOCK}, {INT4_BLOCK}] blocks")

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape[0], self.q.shape[1] * INT4_BLOCK

    @property
    def offset(self) -> np.ndarray | None:
        """Per-block term added to ``scale * (q - 8)``: ``m + 8 d`` (float64, rounded once)."""
        if self.m is None:
            return None
        offset = self.m.astype(np.float64) + 8.0 * self.scale.astype(np.float64)
        return offset.astype(np.float32)

    def dense(self) -> np.ndarray:
        """float32 [N, K], the same arithmetic (and so the same values) as gguf.quants."""
        d = self.scale[:, :, None]
        if self.m is None:
            w = d * (self.q.astype(np.int8) - np.int8(8)).astype(np.float32)
        else:
            w = d * self.q.astype(np.float32) + self.m[:, :, None]
        return np.ascontiguousarray(w.reshape(self.shape), dtype=np.float32)

    def rows(self, index: np.ndarray) -> "Int4Matrix":
        """The matrix of rows ``index`` (e.g. a row permutation)."""
        return Int4Matrix(self.kind, self.q[index], self.scale[index],
                          None if self.m is None else self.m[index])

    @staticmethod
    def stack(parts: "list[Int4Matrix]") -> "Int4Matrix":
        """Rows of ``parts`` one after the other (Q4_0 parts become Q4_1-like when mixed)."""
        if all(p.kind == "Q4_0" for p in parts):
            return Int4Matrix("Q4_0", np.concatenate([p.q for p in parts]),
                              np.concatenate([p.scale for p in parts]), None)
        # a Q4_0 part as d*q + (-8d): its offset m + 8d is then exactly 0
        zeros = [p.m if p.m is not None else (-8.0 * p.scale).astype(np.float32) for p in parts]
        return Int4Matrix("Q4_1", np.concatenate([p.q for p in parts]),
                          np.concatenate([p.scale for p in parts]), np.concatenate(zeros))

    def packed(self) -> np.ndarray:
        """MatMulNBits' B: uint8 [N, K/32, 16], byte i = q[2i] | q[2i+1] << 4."""
        q = self.q
        return np.ascontiguousarray(q[:, :, 0::2] | (q[:, :, 1::2] << 4), dtype=np.uint8)


def _dense(w) -> np.ndarray:
    """A weight as a float32 array (an :class:`Int4Matrix` dequantised)."""
    return w.dense() if isinstance(w, Int4Matrix) else w


class _Graph:
    """Accumulates nodes and initializers; every helper returns the name of its output."""

    def __init__(self, weight_dtype: WeightDtype, int4_accuracy_level: int = 0) -> None:
        from onnx import helper
        self.helper = helper
        self.nodes: list = []
        self.initializers: dict = {}
        self.weight_dtype = weight_dtype
        self.int4_accuracy_level = int4_accuracy_level
        self._fp32: dict[str, str] = {}  # initializer name -> name of its fp32 value

    def op(self, op_type: str, *inputs: str, n_out: int = 1, domain: str | None = None,
           **attrs) -> str | list[str]:
        outs = [f"{op_type.lower()}_{len(self.nodes)}_{k}" for k in range(n_out)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), outs, domain=domain,
                                                **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, name: str, value) -> str:
        """An initializer; constants used by every layer are stored once, under one name."""
        from onnx import numpy_helper
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(value), name)
        return name

    def ints(self, name: str, values) -> str:
        return self.const(name, np.asarray(values, dtype=np.int64))

    def scalar(self, name: str, value: float) -> str:
        return self.const(name, np.array(value, dtype=np.float32))

    def weight(self, name: str, value: np.ndarray) -> str:
        """A float32 weight; matrices are stored as fp16 (and Cast back in-graph) when asked."""
        if name not in self._fp32:
            if self.weight_dtype in ("float32", "int4") or value.ndim < 2:
                self._fp32[name] = self.const(name, value.astype(np.float32))
            else:
                from onnx import TensorProto
                self.const(name, value.astype(np.float16))
                self._fp32[name] = self.op("Cast", name, to=TensorProto.FLOAT)
        return self._fp32[name]


def build_llama(weights: Mapping[str, np.ndarray | Int4Matrix], config: LlamaConfig, *,
                weight_dtype: WeightDtype = "float32",
                int4_accuracy_level: int = 0,
                attention: Attention = "exact") -> "onnx.ModelProto":
    """The decoder graph for ``weights`` (HF names and shapes, see :func:`weight_shapes`).

    ``attention`` picks the attention and its KV-cache I/O (default ``"exact"``):

    - ``"exact"`` and ``"fast"``: the HF/Optimum convention (``attention_mask``, left
      padding, ``present`` = past and new keys concatenated), with the sums in float64
      (exact) or plain float32 (fast), as described below.
    - ``"gqa"``: ONNX Runtime's ``com.microsoft.GroupQueryAttention`` with a KV cache
      updated in place: ``past_key_values.{i}.key/value`` are buffers [B, Hkv, capacity,
      hd] that the caller binds as the ``present`` outputs too, each row's keys starting at
      position 0; ``seqlens_k`` (int32 [B], each row's length after this call minus one)
      and ``total_sequence_length`` (int32 scalar, the longest) replace ``attention_mask``.
      No copy of the cache per step, and no padding: a row's attention sees only its own
      keys, so its logits are bit-identical whatever else is in the batch (measured); they
      differ from a one-call prefill of the same tokens by ~1e-6 (ORT computes one query
      row differently from many). See :class:`sampler.model.SharedKVCache`.

    ``weight_dtype="float16"`` stores the matrices as fp16 and casts them to fp32 inside the
    graph (ORT folds the Cast at load); norm vectors stay fp32. Compute and KV cache are fp32.

    ``"exact"`` (the default) sums softmax and the weighted values in float64 so that a
    row's logits are bit-identical whatever its padding, batch or chunking (see ``_attend``);
    it costs a float64 copy of V and a float64 P @ V per layer per step. Measured on
    SmolLM2-135M shapes, 1 thread: +0-10% per decode step at batch 1 (context 30-1000),
    +40-55% at batch 8 (context 300-1000). ``"fast"``: plain float32 Softmax + MatMul, whose
    results shift with padding by ~1e-6 relative (up to ~1e-5 absolute on logits).

    A layer matrix may be an :class:`Int4Matrix` (GGUF Q4_0/Q4_1 blocks). With
    ``weight_dtype="int4"`` such matrices run as ``com.microsoft.MatMulNBits`` (an ONNX
    Runtime contrib op: 4-bit storage, ~1/5 of the float32 bytes) and everything else is
    float32; the embedding and the output head are always dense. With the other dtypes they
    are dequantised first, so the same ``weights`` give the dense graph of the same values.
    ``int4_accuracy_level`` is MatMulNBits' ``accuracy_level``: 0 (default) computes in
    float32; 4 quantises the activations to int8 per block -- faster, but a row's logits
    then depend on how the sequence was chunked and batched (incremental != full, by ~1 on
    SmolLM2), so it is for measurement only. Even at 0, MatMulNBits rounds differently for
    one row and for many (~1e-4 on SmolLM2's logits): int4 graphs are not bit-reproducible
    across batch composition as the float32 graph with exact attention is.
    """
    from onnx import helper

    if weight_dtype not in ("float32", "float16", "int4"):
        raise ValueError("weight_dtype must be 'float32', 'float16' or 'int4', got "
                         f"{weight_dtype!r}")
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    if attention == "gqa" and not gqa_supported(config):
        raise ValueError(f"attention='gqa' needs a head size that is a multiple of 8 (ONNX "
                         f"Runtime's GroupQueryAttention), got {config.head_dim}")
    if int4_accuracy_level not in (0, 1, 2, 3, 4):
        raise ValueError(f"int4_accuracy_level must be 0-4, got {int4_accuracy_level!r}")
    _check_weights(weights, config)
    if weight_dtype != "int4":
        weights = {k: _dense(v) for k, v in weights.items()}
    g = _Graph(weight_dtype, int4_accuracy_level)
    c = config
    ids, mask_in, pos = "input_ids", "attention_mask", "position_ids"

    x = _embed(g, weights, c, ids)  # [B, S, d]
    cos, sin = _rope_inputs(g, c, pos)  # [B, S, 1, hd] each
    shared = attention == "gqa"
    allowed = None if shared else _attention_mask(g, c, ids, mask_in)  # [B, 1, G*S, T]
    for i in range(c.num_layers):
        w = {k[len(f"layers.{i}."):]: v for k, v in weights.items() if k.startswith(f"layers.{i}.")}
        n = _rms_norm(g, x, g.weight(f"layers.{i}.input_layernorm", w["input_layernorm"]), c)
        if shared:
            attn = _gqa_attention(g, i, n, w, c, cos, sin)  # [B, S, d]
        else:
            attn = _attention(g, i, n, w, c, cos, sin, allowed, attention == "exact")
        x = g.op("Add", x, attn)
        m = _rms_norm(g, x, g.weight(f"layers.{i}.post_attention_layernorm",
                                     w["post_attention_layernorm"]), c)
        x = g.op("Add", x, _mlp(g, i, m, w))  # [B, S, d]
    x = _rms_norm(g, x, g.weight("norm", weights["norm"]), c)
    g.nodes.append(helper.make_node("MatMul", [x, _head(g, weights, c)], ["logits"]))

    inputs, outputs = _io_specs(c, shared)
    graph = helper.make_graph(g.nodes, "llama", inputs, outputs, list(g.initializers.values()))
    opsets = [helper.make_opsetid("", OPSET)]
    if any(n.domain == _MS_DOMAIN for n in g.nodes):  # contrib ops: MatMulNBits, GQA
        opsets.append(helper.make_opsetid(_MS_DOMAIN, 1))
    return helper.make_model(graph, opset_imports=opsets, producer_name="refsampler",
                             ir_version=8)


def gqa_supported(config: LlamaConfig) -> bool:
    """Whether ``attention="gqa"`` can run this shape: ORT's GroupQueryAttention kernel
    takes head sizes that are multiples of 8 (checked when it runs)."""
    return config.head_dim % 8 == 0


def _io_specs(c: LlamaConfig, shared: bool = False) -> tuple[list, list]:
    """Graph inputs and outputs in the HF/Optimum KV-cache convention, symbolic dims named;
    ``shared``: the in-place cache convention of ``attention="gqa"`` (see build_llama)."""
    from onnx import TensorProto
    from onnx.helper import make_tensor_value_info as spec

    f32, i64, i32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32
    inputs = [spec("input_ids", i64, ["batch", "sequence_length"])]
    if shared:
        inputs += [spec("position_ids", i64, ["batch", "sequence_length"]),
                   spec("seqlens_k", i32, ["batch"]), spec("total_sequence_length", i32, [])]
        past_len = total_len = "max_sequence_length"
    else:
        inputs += [spec("attention_mask", i64, ["batch", "total_sequence_length"]),
                   spec("position_ids", i64, ["batch", "sequence_length"])]
        past_len, total_len = "past_sequence_length", "total_sequence_length"
    outputs = [spec("logits", f32, ["batch", "sequence_length", c.vocab_size])]
    for i in range(c.num_layers):
        for part in ("key", "value"):
            inputs.append(spec(f"past_key_values.{i}.{part}", f32,
                               ["batch", c.num_kv_heads, past_len, c.head_dim]))
            outputs.append(spec(f"present.{i}.{part}", f32,
                                ["batch", c.num_kv_heads, total_len, c.head_dim]))
    return inputs, outputs


def _check_weights(weights: Mapping[str, np.ndarray], config: LlamaConfig) -> None:
    expected = weight_shapes(config)
    for name, shape in expected.items():
        if name not in weights:
            raise ValueError(f"missing weight {name!r} (expected shape {shape})")
        w = weights[name]
        found = w.shape if isinstance(w, Int4Matrix) else tuple(np.shape(w))
        if found != shape:
            raise ValueError(f"weight {name!r} has shape {found}, expected {shape}")
        if isinstance(w, Int4Matrix) and name in ("embed_tokens", "lm_head"):
            raise ValueError(f"weight {name!r}: the embedding and the head must be dense "
                             "arrays (Int4Matrix is for the layer matrices)")
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise ValueError(f"unexpected weights {extra[:5]} for this config")


def _embed(g: _Graph, weights: Mapping[str, np.ndarray], c: LlamaConfig, ids: str) -> str:
    if not c.tie_word_embeddings:
        return g.op("Gather", g.weight("embed_tokens", weights["embed_tokens"]), ids, axis=0)
    # Tied: store E^T [d, V] once, for the head's MatMul; gather its columns for the embedding.
    et = g.weight("embed_tokens.T", weights["embed_tokens"].T)  # [d, V]
    cols = g.op("Gather", et, ids, axis=1)  # [d, B, S]
    return g.op("Transpose", cols, perm=[1, 2, 0])  # [B, S, d]


def _head(g: _Graph, weights: Mapping[str, np.ndarray], c: LlamaConfig) -> str:
    if c.tie_word_embeddings:
        return g.weight("embed_tokens.T", weights["embed_tokens"].T)  # the one made in _embed
    return g.weight("lm_head.T", weights["lm_head"].T)  # [d, V]


def _rms_norm(g: _Graph, x: str, w: str, c: LlamaConfig) -> str:
    """x / sqrt(mean(x^2) + eps) * w over the last axis (the pattern ORT fuses)."""
    ms = g.op("ReduceMean", g.op("Pow", x, g.scalar("two", 2.0)), axes=[-1])  # [B, S, 1]
    rms = g.op("Sqrt", g.op("Add", ms, g.scalar("rms_eps", c.rms_norm_eps)))
    return g.op("Mul", g.op("Div", x, rms), w)  # [B, S, d]


def _rope_inputs(g: _Graph, c: LlamaConfig, pos: str) -> tuple[str, str]:
    """cos and signed sin rows for the positions, [B, S, 1, hd], shared by all layers.

    rotate_half(x) * sin == swap_halves(x) * [-sin, sin], so one table holds the sign.
    """
    cos, sin = rope_tables(c)  # [P, hd/2]
    cos_t = g.const("rope_cos", np.concatenate([cos, cos], axis=1))  # [P, hd]
    sin_t = g.const("rope_sin", np.concatenate([-sin, sin], axis=1))  # [P, hd]
    axis2 = g.ints("axes_2", [2])
    return (g.op("Unsqueeze", g.op("Gather", cos_t, pos, axis=0), axis2),
            g.op("Unsqueeze", g.op("Gather", sin_t, pos, axis=0), axis2))


def _rope(g: _Graph, x: str, cos: str, sin: str, c: LlamaConfig) -> str:
    """x * cos + swap_halves(x) * signed_sin, x [B, S, heads, hd]."""
    half = g.ints("rope_split", [c.head_dim // 2] * 2)
    x1, x2 = g.op("Split", x, half, axis=-1, n_out=2)  # [B, S, heads, hd/2] each
    swapped = g.op("Concat", x2, x1, axis=-1)  # [B, S, heads, hd]
    return g.op("Add", g.op("Mul", x, cos), g.op("Mul", swapped, sin))


def _attention_mask(g: _Graph, c: LlamaConfig, ids: str, mask_in: str) -> str:
    """bool [B, 1, G*S, T]: causal among the new tokens AND attention_mask over all keys.

    Rows are ordered (group g, query s), matching the query layout in :func:`_attention`.
    """
    from onnx import TensorProto
    one, two = g.ints("one", [1]), g.ints("two_i", [2])
    s = g.op("Slice", g.op("Shape", ids), one, two)  # [1] = [S]
    t = g.op("Slice", g.op("Shape", mask_in), one, two)  # [1] = [T]
    zero, step = g.ints("zero_s", 0), g.ints("one_s", 1)
    t0 = g.op("Squeeze", t)  # scalar T
    q_pos = g.op("Range", g.op("Squeeze", g.op("Sub", t, s)), t0, step)  # [S] absolute
    k_pos = g.op("Range", zero, t0, step)  # [T]
    causal = g.op("LessOrEqual", g.op("Unsqueeze", k_pos, g.ints("axes_0", [0])),
                  g.op("Unsqueeze", q_pos, g.ints("axes_1", [1])))  # [S, T]
    keep = g.op("Unsqueeze", g.op("Cast", mask_in, to=TensorProto.BOOL),
                g.ints("axes_12", [1, 2]))  # [B, 1, 1, T]
    allowed = g.op("And", causal, keep)  # [B, 1, S, T]
    groups = c.num_heads // c.num_kv_heads
    if groups == 1:
        return allowed
    return g.op("Tile", allowed, g.ints("mask_tile", [1, 1, groups, 1]))  # [B, 1, G*S, T]


def _attention(g: _Graph, i: int, x: str, w: Mapping[str, np.ndarray], c: LlamaConfig,
               cos: str, sin: str, allowed: str, exact: bool) -> str:
    """Grouped-query attention with the KV cache; returns [B, S, d] (after o_proj).

    Queries of the G heads sharing one KV head are stacked as rows ([B, Hkv, G*S, hd]), so
    K and V are never repeated.
    """
    H, Hkv, hd = c.num_heads, c.num_kv_heads, c.head_dim
    G = H // Hkv
    qk, v = _qkv_roped(g, i, x, w, c, cos, sin)  # [B, S, H+Hkv, hd], [B, S, Hkv, hd]
    q, k = g.op("Split", qk, g.ints("qk_split", [H, Hkv]), axis=2, n_out=2)

    q = g.op("Mul", q, g.scalar("attn_scale", 1.0 / np.sqrt(hd)))
    q = g.op("Reshape", q, g.ints("q5_shape", [0, 0, Hkv, G, hd]))  # [B, S, Hkv, G, hd]
    q = g.op("Transpose", q, perm=[0, 2, 3, 1, 4])  # [B, Hkv, G, S, hd]
    q = g.op("Reshape", q, g.ints("q4_shape", [0, 0, -1, hd]))  # [B, Hkv, G*S, hd]

    def cache(new: str, part: str) -> str:
        new = g.op("Transpose", new, perm=[0, 2, 1, 3])  # [B, Hkv, S, hd]
        g.nodes.append(g.helper.make_node(
            "Concat", [f"past_key_values.{i}.{part}", new], [f"present.{i}.{part}"], axis=2))
        return f"present.{i}.{part}"  # [B, Hkv, T, hd]

    k_all, v_all = cache(k, "key"), cache(v, "value")
    out = _attend(g, q, k_all, v_all, allowed, exact)  # [B, Hkv, G*S, hd]
    out = g.op("Reshape", out, g.ints("o5_shape", [0, Hkv, G, -1, hd]))  # [B, Hkv, G, S, hd]
    out = g.op("Transpose", out, perm=[0, 3, 1, 2, 4])  # [B, S, Hkv, G, hd]
    out = g.op("Reshape", out, g.ints("o3_shape", [0, 0, H * hd]))  # [B, S, H*hd]
    return _linear(g, out, f"layers.{i}.o_proj", [w["o_proj"]])  # [B, S, d]


def _qkv_roped(g: _Graph, i: int, x: str, w: Mapping[str, np.ndarray], c: LlamaConfig,
               cos: str, sin: str) -> tuple[str, str]:
    """One MatMul for q, k and v; RoPE on q and k together: ([B, S, H+Hkv, hd], v [B, S,
    Hkv, hd])."""
    H, Hkv, hd = c.num_heads, c.num_kv_heads, c.head_dim
    qkv = _linear(g, x, f"layers.{i}.qkv_proj", [w["q_proj"], w["k_proj"], w["v_proj"]])
    # [B, S, (H+2Hkv)*hd]
    qkv = g.op("Reshape", qkv, g.ints("qkv_shape", [0, 0, H + 2 * Hkv, hd]))
    qk, v = g.op("Split", qkv, g.ints("qkv_split", [H + Hkv, Hkv]), axis=2, n_out=2)
    return _rope(g, qk, cos, sin, c), v


def _gqa_attention(g: _Graph, i: int, x: str, w: Mapping[str, np.ndarray], c: LlamaConfig,
                   cos: str, sin: str) -> str:
    """Grouped-query attention by ONNX Runtime's GroupQueryAttention on the in-place cache;
    returns [B, S, d] (after o_proj). RoPE is ours, as in :func:`_attention`."""
    H, Hkv, hd = c.num_heads, c.num_kv_heads, c.head_dim
    qk, v = _qkv_roped(g, i, x, w, c, cos, sin)  # [B, S, H+Hkv, hd], [B, S, Hkv, hd]
    flat = g.ints("bsh_shape", [0, 0, -1])
    qk = g.op("Reshape", qk, flat)  # [B, S, (H+Hkv)*hd]
    q, k = g.op("Split", qk, g.ints("qk_flat_split", [H * hd, Hkv * hd]), axis=2, n_out=2)
    g.nodes.append(g.helper.make_node(
        "GroupQueryAttention",
        [q, k, g.op("Reshape", v, flat), f"past_key_values.{i}.key",
         f"past_key_values.{i}.value", "seqlens_k", "total_sequence_length"],
        [f"gqa_{i}", f"present.{i}.key", f"present.{i}.value"],
        domain=_MS_DOMAIN, num_heads=H, kv_num_heads=Hkv))  # scale 1/sqrt(hd) by default
    return _linear(g, f"gqa_{i}", f"layers.{i}.o_proj", [w["o_proj"]])  # [B, S, d]


def _attend(g: _Graph, q: str, k: str, v: str, allowed: str, exact: bool) -> str:
    """softmax(q k^T, masked) @ v; q [.., G*S, hd], k and v [.., T, hd] -> [.., G*S, hd].

    ``exact``: a row's result must not depend on its left padding (the number of keys T).
    The scores are computed as k q^T, keys as rows: ORT's float32 GEMM computes each row
    the same way however many rows there are (a float32 q k^T rounds differently at the
    column-block tail, seen as 6e-6 on the tiny model's logits). The exps are elementwise;
    the sums over the keys, whose grouping does shift with T, run in float64, so the shift
    changes them by ~1e-16 and the final rounding to float32 absorbs it.
    """
    if not exact:
        kt = g.op("Transpose", k, perm=[0, 1, 3, 2])  # [.., hd, T]
        scores = g.op("Where", allowed, g.op("MatMul", q, kt), g.scalar("masked", _MASKED))
        return g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
    from onnx import TensorProto

    def f64(x: str) -> str:
        return g.op("Cast", x, to=TensorProto.DOUBLE)

    # Keys as the rows of the product: each score is then one row of a MatMul whose other
    # rows are other keys, which ORT's GEMM computes the same way however many there are.
    qt = g.op("Transpose", q, perm=[0, 1, 3, 2])  # [.., hd, G*S]
    scores = g.op("Transpose", g.op("MatMul", k, qt), perm=[0, 1, 3, 2])  # [.., G*S, T]
    scores = g.op("Where", allowed, scores, g.scalar("masked", _MASKED))
    e = g.op("Exp", g.op("Sub", scores, g.op("ReduceMax", scores, axes=[-1])))  # [.., T]
    e64 = f64(e)
    p = g.op("Div", e64, g.op("ReduceSum", e64, g.ints("axes_m1", [-1])))  # [.., G*S, T]
    return g.op("Cast", g.op("MatMul", p, f64(v)), to=TensorProto.FLOAT)


def _mlp(g: _Graph, i: int, x: str, w: Mapping[str, np.ndarray]) -> str:
    """down(silu(gate x) * up x), gate and up in one MatMul."""
    ffn = w["gate_proj"].shape[0]
    gu = _linear(g, x, f"layers.{i}.gate_up_proj", [w["gate_proj"], w["up_proj"]])
    # [B, S, 2*ffn]
    gate, up = g.op("Split", gu, g.ints("gate_up_split", [ffn, ffn]), axis=-1, n_out=2)
    act = g.op("Mul", g.op("Mul", gate, g.op("Sigmoid", gate)), up)  # [B, S, ffn]
    return _linear(g, act, f"layers.{i}.down_proj", [w["down_proj"]])


def _linear(g: _Graph, x: str, name: str, parts: list) -> str:
    """x @ concat(parts, rows)^T: one MatMul over the stacked [out, in] matrices.

    Dense parts: a float32 (or fp16-stored) weight ``{name}.T`` [in, out]. All parts
    :class:`Int4Matrix` (only with ``weight_dtype="int4"``): :func:`_int4_matmul`. A mix is
    run dense (the 4-bit parts dequantised).
    """
    if all(isinstance(p, Int4Matrix) for p in parts):
        return _int4_matmul(g, x, name, Int4Matrix.stack(parts))
    dense = [_dense(p) for p in parts]
    w = (dense[0] if len(dense) == 1 else np.concatenate(dense, axis=0)).T  # [in, out]
    return g.op("MatMul", x, g.weight(f"{name}.T", w))


def _int4_matmul(g: _Graph, x: str, name: str, w: Int4Matrix) -> str:
    """x [B, S, K] @ w^T -> [B, S, N] with MatMulNBits, exact up to float32 rounding.

    MatMulNBits (bits 4, block 32, no zero-point input, so zero point 8) computes
    ``sum_k x_k * scale (q_k - 8)``. Q4_1's ``d q + m`` is ``d (q - 8) + (m + 8 d)``: the
    second term is ``offset[n, b]`` times the block sum of x, one small MatMul
    ``blocksum(x) [.., K/32] @ offset^T [K/32, N]`` added to the result (Q4_0 needs none).
    """
    N, K = w.shape
    b = g.const(f"{name}.q4", w.packed())  # uint8 [N, K/32, 16]
    s = g.const(f"{name}.scales", np.ascontiguousarray(w.scale, dtype=np.float32).reshape(-1))
    y = g.op("MatMulNBits", x, b, s, domain=_MS_DOMAIN, K=K, N=N, bits=4,
             block_size=INT4_BLOCK, accuracy_level=g.int4_accuracy_level)  # [.., N]
    offset = w.offset
    if offset is None or not offset.any():
        return y
    blocks = g.op("Reshape", x, g.ints(f"int4_blocks_{K}", [0, 0, K // INT4_BLOCK, INT4_BLOCK]))
    sums = g.op("ReduceSum", blocks, g.ints("axes_m1", [-1]), keepdims=0)  # [B, S, K/32]
    corr = g.op("MatMul", sums, g.const(f"{name}.offset.T", np.ascontiguousarray(offset.T)))
    return g.op("Add", y, corr)  # [B, S, N]


def save_model(model: "onnx.ModelProto", path: str | os.PathLike) -> Path:
    """Write ``model`` to ``path`` atomically (temp file in the same folder, then rename).

    A model whose weights pass protobuf's 2 GB limit gets them in ``<name>.data`` next to it;
    that file is rewritten in place before the model file is renamed over (so only the small
    model file is atomic in that case).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    external = _weight_bytes(model) > _PROTO_LIMIT - 2**26  # leave 64 MB for the graph
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if not external:
                f.write(model.SerializeToString())
        if external:
            _save_external(model, Path(tmp), path.name + ".data")
        os.chmod(tmp, 0o644)  # mkstemp files are private; a model file is not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _weight_bytes(model: "onnx.ModelProto") -> int:
    """Bytes of the initializers (model.ByteSize() is 15x slower and close to this)."""
    return sum(len(t.raw_data) for t in model.graph.initializer)


def _save_external(model: "onnx.ModelProto", tmp: Path, location: str) -> None:
    import onnx
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # save_model converts tensors in place; keep the caller's model intact
    (tmp.parent / location).unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(copy, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=1024)
