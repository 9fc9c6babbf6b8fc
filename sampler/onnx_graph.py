"""ONNX graph pieces for decoder-only transformers, written with ``onnx.helper``.

:class:`Graph` accumulates nodes and initializers; each piece (:func:`rms_norm`,
:func:`gelu_tanh`, :func:`rope`, :func:`attend`, :func:`linear`, :func:`int4_matmul`) adds
its nodes and returns the name of its output, with a shape comment on every line. An
architecture's assembly (:mod:`sampler.onnx_llama`) composes them; :func:`save_model` writes
the result.
onnx is imported lazily: importing this module costs only NumPy.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = [
    "OPSET",
    "INT4_BLOCK",
    "Int4Matrix",
    "Graph",
    "rms_norm",
    "gelu_tanh",
    "rope",
    "attend",
    "linear",
    "int4_matmul",
    "save_model",
]

OPSET = 17
MASKED = -1e30  # finite: a fully masked row softmaxes to uniform, not NaN
PROTO_LIMIT = 2**31 - 1  # protobuf's hard limit; above it weights go to an external file
MS_DOMAIN = "com.microsoft"  # ONNX Runtime's contrib ops: MatMulNBits, GroupQueryAttention
INT4_BLOCK = 32  # elements per block along the input dimension (GGUF's Q4_0/Q4_1 block)
WeightDtype = Literal["float32", "float16", "int4"]
#: A model's weights by Hugging Face name: float32 arrays, or 4-bit matrices.
Weights = Mapping[str, "np.ndarray | Int4Matrix"]


@dataclass(frozen=True, eq=False)
class Int4Matrix:
    """A weight matrix [N, K] (HF layout: out x in) held as 4-bit blocks of 32 along K::

        w[n, 32 b + j] = scale[n, b] * (q[n, b, j] - 8) + offset[n, b]

    which is GGUF's Q4_0 (``offset`` None: ``d * (q - 8)``) and, with ``offset = m + 8 d``,
    Q4_1 (``d * q + m``). ``kind`` names the source type; :meth:`dense` is the float32 matrix
    computed exactly as ``gguf.quants`` dequantises the source (``d*(q-8)``, ``d*q + m``).
    ``build_llama(..., weight_dtype="int4")`` runs it with ONNX Runtime's
    ``com.microsoft.MatMulNBits`` (zero point 8) plus, for Q4_1, the exact correction
    ``sum_b offset[n, b] * sum_j x[32 b + j]`` (see :func:`int4_matmul`).

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
            raise ValueError(
                f"Int4Matrix: kind {self.kind!r} with m {given} (Q4_0 has no m, Q4_1 needs one)"
            )
        n, nb, block = self.q.shape
        if (
            block != INT4_BLOCK
            or self.scale.shape != (n, nb)
            or (self.m is not None and self.m.shape != (n, nb))
        ):
            raise ValueError(
                f"Int4Matrix: q {self.q.shape}, scale {self.scale.shape} do not "
                f"describe [N, K/{INT4_BLOCK}, {INT4_BLOCK}] blocks"
            )

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

    def rows(self, index: np.ndarray) -> Int4Matrix:
        """The matrix of rows ``index`` (e.g. a row permutation)."""
        return Int4Matrix(
            self.kind, self.q[index], self.scale[index], None if self.m is None else self.m[index]
        )

    @staticmethod
    def stack(parts: list[Int4Matrix]) -> Int4Matrix:
        """Rows of ``parts`` one after the other (Q4_0 parts become Q4_1-like when mixed)."""
        if all(p.kind == "Q4_0" for p in parts):
            return Int4Matrix(
                "Q4_0",
                np.concatenate([p.q for p in parts]),
                np.concatenate([p.scale for p in parts]),
                None,
            )
        # a Q4_0 part as d*q + (-8d): its offset m + 8d is then exactly 0
        zeros = [p.m if p.m is not None else (-8.0 * p.scale).astype(np.float32) for p in parts]
        return Int4Matrix(
            "Q4_1",
            np.concatenate([p.q for p in parts]),
            np.concatenate([p.scale for p in parts]),
            np.concatenate(zeros),
        )

    def packed(self) -> np.ndarray:
        """MatMulNBits' B: uint8 [N, K/32, 16], byte i = q[2i] | q[2i+1] << 4."""
        q = self.q
        return np.ascontiguousarray(q[:, :, 0::2] | (q[:, :, 1::2] << 4), dtype=np.uint8)


def dense(w) -> np.ndarray:
    """A weight as a float32 array (an :class:`Int4Matrix` dequantised)."""
    return w.dense() if isinstance(w, Int4Matrix) else w


class Graph:
    """Accumulates nodes and initializers; every helper returns the name of its output."""

    def __init__(self, weight_dtype: WeightDtype, int4_accuracy_level: int = 0) -> None:
        from onnx import helper

        self.helper = helper
        self.nodes: list = []
        self.initializers: dict = {}
        self.weight_dtype = weight_dtype
        self.int4_accuracy_level = int4_accuracy_level
        self._fp32: dict[str, str] = {}  # initializer name -> name of its fp32 value

    def op(self, op_type: str, *inputs: str, domain: str | None = None, **attrs: Any) -> str:
        """One node with one output; returns the output's name."""
        return self.ops(op_type, *inputs, n_out=1, domain=domain, **attrs)[0]

    def ops(
        self, op_type: str, *inputs: str, n_out: int, domain: str | None = None, **attrs: Any
    ) -> list[str]:
        """One node with ``n_out`` outputs (``Split``); returns their names."""
        outs = [f"{op_type.lower()}_{len(self.nodes)}_{k}" for k in range(n_out)]
        self.nodes.append(
            self.helper.make_node(op_type, list(inputs), outs, domain=domain, **attrs)
        )
        return outs

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

    def weight(self, name: str, value: np.ndarray | Int4Matrix) -> str:
        """A float32 weight (an :class:`Int4Matrix` dequantised); matrices are stored as
        fp16 (and Cast back in-graph) when asked."""
        value = dense(value)
        if name not in self._fp32:
            if self.weight_dtype in ("float32", "int4") or value.ndim < 2:
                self._fp32[name] = self.const(name, value.astype(np.float32))
            else:
                from onnx import TensorProto

                self.const(name, value.astype(np.float16))
                self._fp32[name] = self.op("Cast", name, to=TensorProto.FLOAT)
        return self._fp32[name]


def rms_norm(g: Graph, x: str, w: str, eps: float) -> str:
    """x / sqrt(mean(x^2) + eps) * w over the last axis (the pattern ORT fuses)."""
    ms = g.op("ReduceMean", g.op("Pow", x, g.scalar("two", 2.0)), axes=[-1])  # [B, S, 1]
    rms = g.op("Sqrt", g.op("Add", ms, g.scalar("rms_eps", eps)))
    return g.op("Mul", g.op("Div", x, rms), w)  # [B, S, d]


def rope(g: Graph, x: str, cos: str, sin: str, head_dim: int) -> str:
    """x * cos + swap_halves(x) * signed_sin, x [B, S, heads, hd]."""
    half = g.ints("rope_split", [head_dim // 2] * 2)
    x1, x2 = g.ops("Split", x, half, axis=-1, n_out=2)  # [B, S, heads, hd/2] each
    swapped = g.op("Concat", x2, x1, axis=-1)  # [B, S, heads, hd]
    return g.op("Add", g.op("Mul", x, cos), g.op("Mul", swapped, sin))


def attend(g: Graph, q: str, k: str, v: str, allowed: str, exact: bool) -> str:
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
        scores = g.op("Where", allowed, g.op("MatMul", q, kt), g.scalar("masked", MASKED))
        return g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
    from onnx import TensorProto

    def f64(x: str) -> str:
        return g.op("Cast", x, to=TensorProto.DOUBLE)

    # Keys as the rows of the product: each score is then one row of a MatMul whose other
    # rows are other keys, which ORT's GEMM computes the same way however many there are.
    qt = g.op("Transpose", q, perm=[0, 1, 3, 2])  # [.., hd, G*S]
    scores = g.op("Transpose", g.op("MatMul", k, qt), perm=[0, 1, 3, 2])  # [.., G*S, T]
    scores = g.op("Where", allowed, scores, g.scalar("masked", MASKED))
    e = g.op("Exp", g.op("Sub", scores, g.op("ReduceMax", scores, axes=[-1])))  # [.., T]
    e64 = f64(e)
    p = g.op("Div", e64, g.op("ReduceSum", e64, g.ints("axes_m1", [-1])))  # [.., G*S, T]
    return g.op("Cast", g.op("MatMul", p, f64(v)), to=TensorProto.FLOAT)


def linear(g: Graph, x: str, name: str, parts: list) -> str:
    """x @ concat(parts, rows)^T: one MatMul over the stacked [out, in] matrices.

    Dense parts: a float32 (or fp16-stored) weight ``{name}.T`` [in, out]. All parts
    :class:`Int4Matrix` (only with ``weight_dtype="int4"``): :func:`int4_matmul`. A mix is
    run dense (the 4-bit parts dequantised).
    """
    if all(isinstance(p, Int4Matrix) for p in parts):
        return int4_matmul(g, x, name, Int4Matrix.stack(parts))
    mats = [dense(p) for p in parts]
    w = (mats[0] if len(mats) == 1 else np.concatenate(mats, axis=0)).T  # [in, out]
    return g.op("MatMul", x, g.weight(f"{name}.T", w))


def int4_matmul(g: Graph, x: str, name: str, w: Int4Matrix) -> str:
    """x [B, S, K] @ w^T -> [B, S, N] with MatMulNBits, exact up to float32 rounding.

    MatMulNBits (bits 4, block 32, no zero-point input, so zero point 8) computes
    ``sum_k x_k * scale (q_k - 8)``. Q4_1's ``d q + m`` is ``d (q - 8) + (m + 8 d)``: the
    second term is ``offset[n, b]`` times the block sum of x, one small MatMul
    ``blocksum(x) [.., K/32] @ offset^T [K/32, N]`` added to the result (Q4_0 needs none).
    """
    N, K = w.shape
    b = g.const(f"{name}.q4", w.packed())  # uint8 [N, K/32, 16]
    s = g.const(f"{name}.scales", np.ascontiguousarray(w.scale, dtype=np.float32).reshape(-1))
    y = g.op(
        "MatMulNBits",
        x,
        b,
        s,
        domain=MS_DOMAIN,
        K=K,
        N=N,
        bits=4,
        block_size=INT4_BLOCK,
        accuracy_level=g.int4_accuracy_level,
    )  # [.., N]
    offset = w.offset
    if offset is None or not offset.any():
        return y
    blocks = g.op("Reshape", x, g.ints(f"int4_blocks_{K}", [0, 0, K // INT4_BLOCK, INT4_BLOCK]))
    sums = g.op("ReduceSum", blocks, g.ints("axes_m1", [-1]), keepdims=0)  # [B, S, K/32]
    corr = g.op("MatMul", sums, g.const(f"{name}.offset.T", np.ascontiguousarray(offset.T)))
    return g.op("Add", y, corr)  # [B, S, N]


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write ``model`` to ``path`` atomically (temp file in the same folder, then rename).

    A model whose weights pass protobuf's 2 GB limit gets them in ``<name>.data`` next to it;
    that file is rewritten in place before the model file is renamed over (so only the small
    model file is atomic in that case).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    external = _weight_bytes(model) > PROTO_LIMIT - 2**26  # leave 64 MB for the graph
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


def _weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers (model.ByteSize() is 15x slower and close to this)."""
    return sum(len(t.raw_data) for t in model.graph.initializer)


def _save_external(model: onnx.ModelProto, tmp: Path, location: str) -> None:
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # save_model converts tensors in place; keep the caller's model intact
    (tmp.parent / location).unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(
        copy,
        str(tmp),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=1024,
    )


def gelu_tanh(g: Graph, x: str) -> str:
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): the tanh GELU of Gemma (HF's
    ``gelu_pytorch_tanh``, llama.cpp's ``ggml_gelu``), in plain ops (opset 17 has no Gelu)."""
    cube = g.op("Mul", g.op("Mul", x, x), x)  # [..., n] like x
    inner = g.op("Add", x, g.op("Mul", cube, g.scalar("gelu_c", 0.044715)))  # [..., n]
    t = g.op("Tanh", g.op("Mul", inner, g.scalar("gelu_k", float(np.sqrt(2.0 / np.pi)))))
    half_x = g.op("Mul", x, g.scalar("half", 0.5))  # [..., n]
    return g.op("Mul", half_x, g.op("Add", t, g.scalar("one_f", 1.0)))  # [..., n]
