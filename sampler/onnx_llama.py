"""Build a Llama-architecture decoder as a plain ONNX graph from NumPy weights.

The graph uses standard ONNX ops only (opset 17) and the HF/Optimum KV-cache I/O names:

inputs
  ``input_ids`` int64 [batch, sequence_length]
  ``attention_mask`` int64 [batch, total_sequence_length]   (0 = key excluded)
  ``position_ids`` int64 [batch, sequence_length]
  ``past_key_values.{i}.key`` / ``.value``
      float32 [batch, num_kv_heads, past_sequence_length, head_dim]
  ``logits_to_keep`` int64 [1], optional (default 0; required in the GQA graph): logits for
      the last K positions only, all of them when 0 (HF's argument of that name; a prefill
      that needs only the next token's logits passes 1 and skips ``lm_head`` on the rest)
outputs
  ``logits`` float32 [batch, logits_length, vocab] (``sequence_length``, or K)
  ``present.{i}.key`` / ``.value``
      float32 [batch, num_kv_heads, total_sequence_length, head_dim]

The math (per layer ``i``, ``x`` the residual stream)::

    h = x + o_proj(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n)))  with n = rms_norm(x)
    x' = h + down_proj(silu(gate_proj(m)) * up_proj(m))                       with m = rms_norm(h)

and ``logits = lm_head(rms_norm(x_last))``. Qwen2 adds q/k/v biases; Qwen3 RMS-norms each q
and k head before RoPE; Gemma 3 also scales the embedding by sqrt(d), RMS-norms each
sublayer's output before its residual add, gates with tanh-GELU, and runs sliding-window
layers with their own RoPE base (see :class:`LlamaConfig`). RoPE uses the HF "rotate_half"
pairing (j, j + hd/2) with ``inv_freq = theta ** (-2j / hd)``; cos/sin tables are computed
in float64 and stored in float32. Masked scores are replaced by -1e30 (finite), so a fully
masked query row (a padding position) yields finite garbage instead of NaN, which would
otherwise reach real rows through the padding's keys and values in the next layer. By
default the attention sums run in float64 (``attention="exact"``) and the scores are
computed with the keys as rows, which makes a row's logits bit-identical whatever its batch,
padding or prefill chunking (measured; it relies on ORT's CPU GEMM computing each row the
same way however many rows there are).

The graph pieces are :mod:`sampler.onnx_graph`'s; this module is the Llama assembly. It
imports onnx lazily: ``import sampler.onnx_llama`` costs only NumPy.

>>> import numpy as np
>>> cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_layers=1,
...                   num_heads=4, num_kv_heads=2, max_position=64)
>>> model = build_llama(random_weights(cfg, np.random.default_rng(0)), cfg)
>>> [i.name for i in model.graph.input][:3]
['input_ids', 'attention_mask', 'position_ids']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from .onnx_attention import attention_mask, gqa_attention, rope_inputs, rope_tables, self_attention
from .onnx_graph import (
    MS_DOMAIN,
    OPSET,
    Graph,
    Int4Matrix,
    WeightDtype,
    Weights,
    dense,
    gelu_tanh,
    linear,
    rms_norm,
    save_model,
)

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = [
    "LlamaConfig",
    "Int4Matrix",
    "build_llama",
    "save_model",
    "random_weights",
    "weight_shapes",
    "rope_tables",
    "ATTENTIONS",
    "gqa_supported",
]


Attention = Literal["exact", "fast", "gqa"]
ATTENTIONS = ("exact", "fast", "gqa")


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
    attention_bias: bool = False  # q, k and v projections with biases (Qwen2)
    qk_norm: bool = False  # each head of q and k RMS-normed before RoPE (Qwen3, Gemma 3)
    # Gemma 3:
    embedding_scale: float = 1.0  # the embedding times this (Gemma: sqrt(hidden_size))
    post_norms: bool = False  # RMS-norm the attention and MLP outputs before each residual add
    activation: str = "silu"  # the MLP's gate: "silu" (SwiGLU) or "gelu_tanh" (GeGLU)
    attention_scale: float = 0.0  # q's scale before q k^T; 0 means 1/sqrt(head_dim)
    sliding_window: int = 0  # local layers see the last this many positions, their own included
    local_layers: tuple[int, ...] = ()  # the sliding-window layers
    rope_theta_local: float = 10000.0  # the local layers' RoPE base

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_position",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"LlamaConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"LlamaConfig.num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig.head_dim must be even for RoPE, got {self.head_dim}")
        if self.activation not in ("silu", "gelu_tanh"):
            raise ValueError(
                f"LlamaConfig.activation must be 'silu' or 'gelu_tanh', got {self.activation!r}"
            )
        if self.local_layers and self.sliding_window < 1:
            raise ValueError("LlamaConfig.local_layers needs a sliding_window >= 1")
        if not set(self.local_layers) <= set(range(self.num_layers)):
            raise ValueError(f"LlamaConfig.local_layers {self.local_layers} are not layers")

    @property
    def query_scale(self) -> float:
        """What q is multiplied by before the scores (1/sqrt(head_dim) unless set)."""
        return self.attention_scale or 1.0 / float(np.sqrt(self.head_dim))


def weight_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """The expected weight names and HF shapes (out_features x in_features)."""
    c = config
    d, ffn = c.hidden_size, c.intermediate_size
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens": (c.vocab_size, d)}
    for i in range(c.num_layers):
        p = f"layers.{i}."
        shapes |= {
            p + "input_layernorm": (d,),
            p + "q_proj": (q, d),
            p + "k_proj": (kv, d),
            p + "v_proj": (kv, d),
            p + "o_proj": (d, q),
            p + "post_attention_layernorm": (d,),
            p + "gate_proj": (ffn, d),
            p + "up_proj": (ffn, d),
            p + "down_proj": (d, ffn),
        }
        if c.attention_bias:
            shapes |= {p + "q_proj.bias": (q,), p + "k_proj.bias": (kv,), p + "v_proj.bias": (kv,)}
        if c.qk_norm:
            shapes |= {p + "q_norm": (c.head_dim,), p + "k_norm": (c.head_dim,)}
        if c.post_norms:
            shapes |= {p + "attn_output_norm": (d,), p + "mlp_output_norm": (d,)}
    shapes["norm"] = (d,)
    if not c.tie_word_embeddings:
        shapes["lm_head"] = (c.vocab_size, d)
    return shapes


def random_weights(
    config: LlamaConfig, rng: np.random.Generator, *, scale: float = 1.0
) -> dict[str, np.ndarray]:
    """Gaussian weights for tests: matrices N(0, scale/sqrt(fan_in)), norms 1 + N(0, 0.1)."""
    weights = {}
    for name, shape in weight_shapes(config).items():
        if len(shape) == 1:
            w = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            w = rng.standard_normal(shape) * (scale / np.sqrt(shape[1]))
        weights[name] = w.astype(np.float32)
    return weights


def build_llama(
    weights: Mapping[str, np.ndarray | Int4Matrix],
    config: LlamaConfig,
    *,
    weight_dtype: WeightDtype = "float32",
    int4_accuracy_level: int = 0,
    attention: Attention = "exact",
) -> onnx.ModelProto:
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
      row differently from many). See :class:`sampler.kvcache.SharedKVCache`.

    ``weight_dtype="float16"`` stores the matrices as fp16 and casts them to fp32 inside the
    graph (ORT folds the Cast at load); norm vectors stay fp32. Compute and KV cache are fp32.

    ``"exact"`` (the default) sums softmax and the weighted values in float64 so that a
    row's logits are bit-identical whatever its padding, batch or chunking (see ``attend``);
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
        raise ValueError(
            f"weight_dtype must be 'float32', 'float16' or 'int4', got {weight_dtype!r}"
        )
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    if attention == "gqa" and not gqa_supported(config):
        raise ValueError(
            f"attention='gqa' needs a head size that is a multiple of 8 (ONNX "
            f"Runtime's GroupQueryAttention), got {config.head_dim}"
        )
    if int4_accuracy_level not in (0, 1, 2, 3, 4):
        raise ValueError(f"int4_accuracy_level must be 0-4, got {int4_accuracy_level!r}")
    _check_weights(weights, config)
    if weight_dtype != "int4":
        weights = {k: dense(v) for k, v in weights.items()}
    g = Graph(weight_dtype, int4_accuracy_level)
    c = config
    ids, mask_in, pos = "input_ids", "attention_mask", "position_ids"

    x = _embed(g, weights, c, ids)  # [B, S, d]
    shared = attention == "gqa"
    # per kind of layer (global; local = sliding window): RoPE rows and, unless GQA, the mask
    kinds = {False: 0, True: c.sliding_window} if c.local_layers else {False: 0}
    ropes = {
        local: rope_inputs(g, c, pos, c.rope_theta_local if local else c.rope_theta)
        for local in kinds
    }  # [B, S, 1, hd] each
    masks = {
        local: None if shared else attention_mask(g, c, ids, mask_in, window)
        for local, window in kinds.items()
    }  # [B, 1, G*S, T]
    for i in range(c.num_layers):
        w = {
            k[len(f"layers.{i}.") :]: v for k, v in weights.items() if k.startswith(f"layers.{i}.")
        }
        local = i in c.local_layers
        cos, sin = ropes[local]
        n = rms_norm(
            g, x, g.weight(f"layers.{i}.input_layernorm", w["input_layernorm"]), c.rms_norm_eps
        )
        if shared:
            window = c.sliding_window if local else 0
            attn = gqa_attention(g, i, n, w, c, cos, sin, window)  # [B, S, d]
        else:
            allowed = masks[local]
            assert allowed is not None  # (the mask of the non-GQA graphs)
            attn = self_attention(g, i, n, w, c, cos, sin, allowed, attention == "exact")
        x = g.op("Add", x, _post_norm(g, c, i, "attn_output_norm", attn, w))
        m = rms_norm(
            g,
            x,
            g.weight(f"layers.{i}.post_attention_layernorm", w["post_attention_layernorm"]),
            c.rms_norm_eps,
        )
        x = g.op("Add", x, _post_norm(g, c, i, "mlp_output_norm", _mlp(g, c, i, m, w), w))
        # [B, S, d]
    x = rms_norm(g, x, g.weight("norm", weights["norm"]), c.rms_norm_eps)
    # logits_to_keep (default 0: every position): the last K positions' logits only, so a
    # prefill that needs only the next token's logits skips lm_head on the rest
    # [1]; an input (below). The HF-style graph gives it a default (an initializer of the
    # same name) for runtimes that do not know it; the in-place (GQA) graph, run only
    # through IOBinding, which cannot bind an initializer, requires it.
    keep = KEEP if shared else g.ints(KEEP, [0])
    x = g.op("Slice", x, g.op("Neg", keep), g.ints("slice_end", [2**62]), g.ints("axis_1", [1]))
    g.nodes.append(helper.make_node("MatMul", [x, _head(g, weights, c)], ["logits"]))

    inputs, outputs = _io_specs(c, shared)
    graph = helper.make_graph(g.nodes, "llama", inputs, outputs, list(g.initializers.values()))
    opsets = [helper.make_opsetid("", OPSET)]
    if any(n.domain == MS_DOMAIN for n in g.nodes):  # contrib ops: MatMulNBits, GQA
        opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
    return helper.make_model(graph, opset_imports=opsets, producer_name="refsampler", ir_version=8)


#: The input that selects how many last positions get logits (0: all), as HF's argument.
KEEP = "logits_to_keep"


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
        inputs += [
            spec("position_ids", i64, ["batch", "sequence_length"]),
            spec("seqlens_k", i32, ["batch"]),
            spec("total_sequence_length", i32, []),
        ]
        past_len = total_len = "max_sequence_length"
    else:
        inputs += [
            spec("attention_mask", i64, ["batch", "total_sequence_length"]),
            spec("position_ids", i64, ["batch", "sequence_length"]),
        ]
        past_len, total_len = "past_sequence_length", "total_sequence_length"
    outputs = [spec("logits", f32, ["batch", "logits_length", c.vocab_size])]
    for i in range(c.num_layers):
        for part in ("key", "value"):
            inputs.append(
                spec(
                    f"past_key_values.{i}.{part}",
                    f32,
                    ["batch", c.num_kv_heads, past_len, c.head_dim],
                )
            )
            outputs.append(
                spec(f"present.{i}.{part}", f32, ["batch", c.num_kv_heads, total_len, c.head_dim])
            )
    inputs.append(spec(KEEP, i64, [1]))
    return inputs, outputs


def _check_weights(weights: Weights, config: LlamaConfig) -> None:
    expected = weight_shapes(config)
    for name, shape in expected.items():
        if name not in weights:
            raise ValueError(f"missing weight {name!r} (expected shape {shape})")
        w = weights[name]
        found = w.shape if isinstance(w, Int4Matrix) else tuple(np.shape(w))
        if found != shape:
            raise ValueError(f"weight {name!r} has shape {found}, expected {shape}")
        if isinstance(w, Int4Matrix) and name in ("embed_tokens", "lm_head"):
            raise ValueError(
                f"weight {name!r}: the embedding and the head must be dense "
                "arrays (Int4Matrix is for the layer matrices)"
            )
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise ValueError(f"unexpected weights {extra[:5]} for this config")


def _embed(g: Graph, weights: Weights, c: LlamaConfig, ids: str) -> str:
    if not c.tie_word_embeddings:
        x = g.op("Gather", g.weight("embed_tokens", weights["embed_tokens"]), ids, axis=0)
    else:
        # Tied: store E^T [d, V] once, for the head's MatMul; gather its columns here.
        et = g.weight("embed_tokens.T", dense(weights["embed_tokens"]).T)  # [d, V]
        cols = g.op("Gather", et, ids, axis=1)  # [d, B, S]
        x = g.op("Transpose", cols, perm=[1, 2, 0])  # [B, S, d]
    if c.embedding_scale != 1.0:  # (Gemma: sqrt(d), rounded to float32 as llama.cpp and HF)
        x = g.op("Mul", x, g.scalar("embedding_scale", c.embedding_scale))
    return x


def _post_norm(g: Graph, c: LlamaConfig, i: int, name: str, x: str, w: Weights) -> str:
    """Gemma 3's RMSNorm of a sublayer's output before the residual add (else ``x``)."""
    if not c.post_norms:
        return x
    return rms_norm(g, x, g.weight(f"layers.{i}.{name}", w[name]), c.rms_norm_eps)


def _head(g: Graph, weights: Weights, c: LlamaConfig) -> str:
    if c.tie_word_embeddings:
        return g.weight(
            "embed_tokens.T", dense(weights["embed_tokens"]).T
        )  # the one made in _embed
    return g.weight("lm_head.T", dense(weights["lm_head"]).T)  # [d, V]


def _mlp(g: Graph, c: LlamaConfig, i: int, x: str, w: Weights) -> str:
    """down(act(gate x) * up x), gate and up in one MatMul; act is SiLU or tanh-GELU."""
    ffn = w["gate_proj"].shape[0]
    gu = linear(g, x, f"layers.{i}.gate_up_proj", [w["gate_proj"], w["up_proj"]])
    # [B, S, 2*ffn]
    gate, up = g.ops("Split", gu, g.ints("gate_up_split", [ffn, ffn]), axis=-1, n_out=2)
    act = (
        gelu_tanh(g, gate)
        if c.activation == "gelu_tanh"
        else g.op("Mul", gate, g.op("Sigmoid", gate))
    )
    return linear(g, g.op("Mul", act, up), f"layers.{i}.down_proj", [w["down_proj"]])
