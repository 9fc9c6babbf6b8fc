"""A GGUF's Q4_0/Q4_1 layer matrices kept 4-bit, as :class:`~sampler.onnx_graph.Int4Matrix`
(ONNX Runtime's MatMulNBits in the int4 graph, ``convert_gguf(..., weight_dtype="int4")``).

A block is fp16 ``d``, (Q4_1) fp16 ``m``, then 16 bytes of nibbles: values 0-15 in the low
nibbles, 16-31 in the high ones.

>>> raw = np.zeros((1, 18), np.uint8)  # one Q4_0 row of 32 values, d = 0.5
>>> raw[0, :2] = np.frombuffer(np.float16(0.5).tobytes(), np.uint8)
>>> raw[0, 2:] = 0x31  # low nibbles 1 (values 0-15), high nibbles 3 (values 16-31)
>>> w = int4_matrix("Q4_0", raw, rows=1, cols=32)
>>> w.q.shape, w.dense()[0, [0, 15, 16, 31]].tolist()  # d * (q - 8)
((1, 1, 32), [-3.5, -3.5, -2.5, -2.5])
"""

from __future__ import annotations

import numpy as np

from .gguf_llama import GGUFLlama, _hf_name, unpermute_rope_rows
from .onnx_graph import Int4Matrix

__all__ = ["int4_matrix", "llama_int4_weights"]

_INT4_BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20}  # fp16 d [, fp16 m], 16 bytes of nibbles


def int4_matrix(kind: str, raw: np.ndarray, rows: int, cols: int) -> Int4Matrix:
    """A Q4_0/Q4_1 tensor's raw blocks (uint8, ``rows`` x ``cols`` values) as an Int4Matrix.

    A block is fp16 ``d``, (Q4_1) fp16 ``m``, then 16 bytes whose low nibbles are values
    0-15 and high nibbles values 16-31 -- the layout ``gguf.quants`` reads.
    """
    size = _INT4_BLOCK_BYTES[kind]
    nb = cols // 32
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(rows, nb, size)

    def half(at: int) -> np.ndarray:  # the fp16 at byte ``at`` of every block, as float32
        return blocks[:, :, at : at + 2].copy().view(np.float16)[:, :, 0].astype(np.float32)

    d = half(0)  # [rows, nb]
    m = half(2) if kind == "Q4_1" else None
    qs = blocks[:, :, size - 16 :]  # [rows, nb, 16]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=2)  # [rows, nb, 32]
    return Int4Matrix(kind, q, d, m)


def llama_int4_weights(model: GGUFLlama) -> dict[str, Int4Matrix]:
    """The Q4_0/Q4_1 layer matrices as :class:`Int4Matrix` (HF names, Q/K rows un-permuted).

    Replacing these entries of :func:`llama_weights` gives ``build_llama(...,
    weight_dtype="int4")`` its input; their :meth:`Int4Matrix.dense` equals the float32
    weights exactly. The embedding and the head are left out (they stay dense).
    """
    c = model.config
    out: dict[str, Int4Matrix] = {}
    for t in model.reader.tensors:
        name = _hf_name(t.name)
        kind = t.tensor_type.name
        if (
            name is None
            or not name.startswith("layers.")
            or kind not in _INT4_BLOCK_BYTES
            or len(t.shape) != 2
        ):
            continue
        cols, rows = (int(n) for n in t.shape)  # GGUF lists the fastest dimension first
        w = int4_matrix(kind, t.data, rows, cols)
        if model.architecture == "llama" and name.endswith((".q_proj", ".k_proj")):
            heads = c.num_heads if name.endswith(".q_proj") else c.num_kv_heads
            order = unpermute_rope_rows(np.arange(rows)[:, None], heads)[:, 0]
            w = w.rows(order)
        out[name] = w
    return out
