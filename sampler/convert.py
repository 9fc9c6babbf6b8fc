"""GGUF -> model folder: a Llama-architecture GGUF file becomes ONNX + tokenizer + manifest.

    convert_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2/")    # or: sampler convert

What it does, in order:

1. **Hyper-parameters** from the GGUF metadata (``llama.block_count``,
   ``llama.embedding_length``, ``llama.feed_forward_length``, ``llama.attention.head_count``
   and ``head_count_kv``, ``llama.rope.freq_base``, ``llama.attention.layer_norm_rms_epsilon``,
   ``llama.context_length``; the vocabulary size is the length of the token list).
2. **Weights**: every tensor is dequantised to float32 by ``gguf.quants.dequantize`` (F32,
   F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, the K-quants ...) and renamed to the Hugging Face
   names :func:`sampler.onnx_llama.build_llama` takes. llama.cpp's converter reorders the rows
   of each Q and K head so that its RoPE, which rotates adjacent pairs ``(2j, 2j+1)``, gives
   the same result as HF's ``rotate_half`` on pairs ``(j, j + hd/2)``; :func:`unpermute_rope_rows`
   undoes that, because our graph rotates like HF. No ``output.weight`` means the head is
   tied to the embedding.
3. **Tokenizer** from ``tokenizer.ggml.*`` as byte-level BPE ranks for tiktoken
   (:func:`sampler.gguf_vocab.gguf_vocab`): token strings are mapped back to bytes with
   GPT-2's byte<->unicode table, and the ids are the ranks, which is only right when merge
   ``k``'s result has a larger id than merge ``k-1``'s -- checked, as is every other
   assumption, with an error naming what was found.
4. The folder is written atomically (a temporary sibling, renamed when complete).

``gguf`` (the llama.cpp project's reader) is imported here only, so ``import sampler`` stays
light. Tests: ``tests/test_gguf.py`` checks converted logits against a NumPy forward pass that
reads the GGUF itself and applies llama.cpp's adjacent-pair RoPE to the GGUF-layout weights.

>>> unpermute_rope_rows(np.arange(8.0).reshape(8, 1), num_heads=2).ravel().tolist()
[0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .gguf_vocab import PRETOKENIZER_PATTERNS, GGUFVocab, byte_decoder, gguf_vocab
from .model import sha256_file
from .onnx_llama import ATTENTIONS, Int4Matrix, LlamaConfig, weight_shapes

if TYPE_CHECKING:  # pragma: no cover
    import gguf

__all__ = [
    "CONVERT_VERSION",
    "PRETOKENIZER_PATTERNS",
    "GGUFVocab",
    "GGUFLlama",
    "read_gguf",
    "gguf_vocab",
    "llama_config",
    "llama_weights",
    "llama_int4_weights",
    "int4_matrix",
    "unpermute_rope_rows",
    "byte_decoder",
    "convert_gguf",
]

#: Bumped whenever the output changes for the same input, through this module or through
#: sampler.onnx_llama's graph: the registry's folder names carry it, so a changed converter
#: never reuses an old folder.
CONVERT_VERSION = 2

# GGUF tensor name -> HF name (``blk.{i}.`` prefix for the per-layer ones)
_LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "q_proj",
    "attn_k": "k_proj",
    "attn_v": "v_proj",
    "attn_output": "o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "gate_proj",
    "ffn_up": "up_proj",
    "ffn_down": "down_proj",
}
_GLOBAL_TENSORS = {"token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head"}


# ---------------------------------------------------------------- the model


def unpermute_rope_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row order: GGUF rows ``(head, j, a)`` -> HF rows ``(head, a, j)``.

    llama.cpp's converter puts HF row ``a * hd/2 + j`` of each head (``a`` in {0, 1}, the
    half) at row ``2j + a``, so that its adjacent-pair RoPE rotates the pair HF's
    ``rotate_half`` rotates. ``w`` [heads * hd, in] -> the same shape, HF order.
    """
    rows, cols = w.shape
    hd = rows // num_heads
    if rows % num_heads or hd % 2:
        raise ValueError(f"cannot split {rows} rows into {num_heads} heads of even size")
    return np.ascontiguousarray(
        w.reshape(num_heads, hd // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)
    )


@dataclass
class GGUFLlama:
    """What a GGUF file says about a Llama model, before any weight is read."""

    path: Path
    reader: gguf.GGUFReader = field(repr=False)
    config: LlamaConfig
    vocab: GGUFVocab
    name: str  # general.name, or the file name

    @property
    def tensor_types(self) -> dict[str, str]:
        """GGUF tensor name -> its type name (``Q4_1``, ``F32``, ...)."""
        return {t.name: t.tensor_type.name for t in self.reader.tensors}


class _Meta:
    """Typed access to GGUF metadata; errors name the key."""

    def __init__(self, reader: gguf.GGUFReader, path: Path) -> None:
        self.reader, self.path = reader, path

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        f = self.reader.fields.get(key)
        if f is None:
            if default is ...:
                raise ValueError(f"{self.path}: metadata key {key!r} is missing")
            return default
        value = f.contents()
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise ValueError(
                f"{self.path}: metadata {key!r} is {value!r}, expected "
                f"{getattr(kind, '__name__', kind)}"
            )
        return value


def read_gguf(path: str | os.PathLike) -> GGUFLlama:
    """Open a GGUF file and read its hyper-parameters and tokenizer (weights stay on disk).

    Raises ``ValueError`` naming the key, tensor or type for anything not supported.
    """
    from gguf import GGUFReader

    path = Path(path)
    try:
        reader = GGUFReader(path)
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: not a readable GGUF file ({e})") from None
    meta = _Meta(reader, path)
    arch = meta.get("general.architecture", str)
    if arch != "llama":
        raise ValueError(
            f"{path}: general.architecture is {arch!r}; only 'llama' GGUF files convert"
        )
    tokens = meta.get("tokenizer.ggml.tokens", list)
    fim_keys = {"prefix": "fim_pre", "middle": "fim_mid", "suffix": "fim_suf"}
    fim = {k: meta.get(f"tokenizer.ggml.{v}_token_id", int, None) for k, v in fim_keys.items()}
    eos = [meta.get(f"tokenizer.ggml.{k}_token_id", int, None) for k in ("eos", "eot")]
    vocab = gguf_vocab(
        tokens,
        meta.get("tokenizer.ggml.token_type", list),
        meta.get("tokenizer.ggml.merges", list, []),
        model=meta.get("tokenizer.ggml.model", str),
        pre=meta.get("tokenizer.ggml.pre", str, "gpt-2"),
        eos_ids=[i for i in eos if i is not None],
        fim=fim if None not in fim.values() else None,
    )
    return GGUFLlama(
        path,
        reader,
        llama_config(meta, len(tokens)),
        vocab,
        meta.get("general.name", str, path.stem),
    )


def llama_config(meta: _Meta, vocab_size: int) -> LlamaConfig:
    """The :class:`LlamaConfig` of the ``llama.*`` metadata; unsupported variants refused."""
    scaling = meta.get("llama.rope.scaling.type", str, "none")
    if scaling != "none":
        raise ValueError(
            f"{meta.path}: llama.rope.scaling.type is {scaling!r}; RoPE scaling is not supported"
        )
    layers = meta.get("llama.block_count", int)
    width = meta.get("llama.embedding_length", int)
    ffn = meta.get("llama.feed_forward_length", int)
    heads = meta.get("llama.attention.head_count", int)
    kv_heads = meta.get("llama.attention.head_count_kv", int, heads)
    head_dim = meta.get("llama.attention.key_length", int, width // heads)
    value_dim = meta.get("llama.attention.value_length", int, head_dim)
    rotary = meta.get("llama.rope.dimension_count", int, head_dim)
    if value_dim != head_dim or rotary != head_dim:
        raise ValueError(
            f"{meta.path}: key length {head_dim}, value length {value_dim} and RoPE dimension "
            f"{rotary} differ; only full-head RoPE with equal key/value sizes is supported"
        )
    ctx = meta.get("llama.context_length", int)
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=ffn,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rope_theta=float(meta.get("llama.rope.freq_base", float, 10000.0)),
        rms_norm_eps=float(meta.get("llama.attention.layer_norm_rms_epsilon", float)),
        tie_word_embeddings="output.weight" not in {t.name for t in meta.reader.tensors},
        max_position=ctx,
    )


def _hf_name(gguf_name: str) -> str | None:
    base, _, suffix = gguf_name.rpartition(".")
    if suffix != "weight":
        return None
    if base in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[base]
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_TENSORS:
        return f"layers.{int(parts[1])}.{_LAYER_TENSORS[parts[2]]}"
    return None


def llama_weights(model: GGUFLlama, *, progress: bool = False) -> dict[str, np.ndarray]:
    """Every weight dequantised to float32, under HF names and shapes, Q/K un-permuted.

    This is the input of :func:`sampler.onnx_llama.build_llama` (and what any other
    exporter of the same GGUF needs).
    """
    from gguf.quants import dequantize

    c = model.config
    expected = weight_shapes(c)
    weights: dict[str, np.ndarray] = {}
    tensors = model.reader.tensors
    for t in _progress(tensors, "dequantise", progress):
        name = _hf_name(t.name)
        if name is None or name not in expected:
            hint = (
                " (Llama 3 RoPE frequency scaling is not supported)"
                if t.name == "rope_freqs.weight"
                else ""
            )
            raise ValueError(
                f"{model.path}: unexpected tensor {t.name!r} ({t.tensor_type.name}, "
                f"shape {t.shape.tolist()}){hint}; this converter handles the "
                "plain Llama architecture"
            )
        try:
            w = dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise ValueError(
                f"{model.path}: tensor {t.name!r} has type {t.tensor_type.name}, "
                "which gguf.quants cannot dequantise"
            ) from None
        w = np.array(w, dtype=np.float32, order="C")  # a copy: the file's map is read-only
        if w.shape != expected[name]:
            raise ValueError(
                f"{model.path}: tensor {t.name!r} has shape {w.shape} after "
                f"dequantisation, expected {expected[name]} for {name}"
            )
        if name.endswith(".q_proj"):
            w = unpermute_rope_rows(w, c.num_heads)
        elif name.endswith(".k_proj"):
            w = unpermute_rope_rows(w, c.num_kv_heads)
        weights[name] = w
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise ValueError(f"{model.path}: missing tensors for {missing[:5]}")
    return weights


#: GGUF block layouts that :class:`Int4Matrix` holds exactly: bytes per block of 32
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
        if name.endswith(".q_proj") or name.endswith(".k_proj"):
            heads = c.num_heads if name.endswith(".q_proj") else c.num_kv_heads
            order = unpermute_rope_rows(np.arange(rows)[:, None], heads)[:, 0]
            w = w.rows(order)
        out[name] = w
    return out


def _progress(items: Sequence, desc: str, on: bool):
    if not on:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="tensor", file=sys.stderr, leave=False)


# ---------------------------------------------------------------- the folder


def convert_gguf(
    gguf_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    name: str | None = None,
    weight_dtype: str = "float32",
    attention: str | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    int4_accuracy_level: int = 0,
) -> Path:
    """Convert a Llama GGUF file into a model folder ``out_dir`` (which must not exist).

    The folder holds ``model.onnx`` (float32 weights, or float16 storage with
    ``weight_dtype="float16"``), ``tokenizer.tiktoken`` and ``refsampler.json``; it appears
    atomically, so an interrupted conversion leaves nothing at ``out_dir``. ``name`` is the
    model id in responses (default: the folder's name). ``log`` gets progress lines.

    ``weight_dtype="int4"`` keeps the file's Q4_0/Q4_1 layer matrices as 4-bit blocks run by
    ONNX Runtime's ``com.microsoft.MatMulNBits`` (see :class:`sampler.onnx_graph.Int4Matrix`;
    same values as the float32 conversion, to float32 rounding); other tensors, the
    embedding and the head stay float32. ``int4_accuracy_level`` is passed to MatMulNBits:
    keep 0 (4 is faster but not reproducible; for measurement).

    ``attention`` is :func:`sampler.onnx_llama.build_llama`'s: ``"gqa"`` (ONNX Runtime's
    GroupQueryAttention on a KV cache updated in place), ``"exact"`` (the HF/Optimum I/O,
    float64 attention sums) or ``"fast"`` (the same I/O, float32 sums). The default, None,
    is ``"gqa"`` when the head size allows it (a multiple of 8), else ``"exact"``.
    """
    from .onnx_llama import build_llama, gqa_supported, save_model
    from .tokenizer import bpe_tokenizer, write_ranks

    say = log or (lambda _msg: None)
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} already exists; remove it or choose another output folder")
    if weight_dtype not in ("float32", "float16", "int4"):
        raise ValueError(f"weights must be 'float32', 'float16' or 'int4', got {weight_dtype!r}")
    if attention is not None and attention not in ATTENTIONS:
        raise ValueError(f"attention must be 'gqa', 'exact' or 'fast', got {attention!r}")
    t0 = time.perf_counter()
    model = read_gguf(gguf_path)
    c, v = model.config, model.vocab
    types = sorted(set(model.tensor_types.values()))
    say(
        f"{model.path.name}: {model.name}, {c.num_layers} layers, width {c.hidden_size}, "
        f"{c.num_heads}/{c.num_kv_heads} heads, vocab {c.vocab_size}, context "
        f"{c.max_position}, tensors {'/'.join(types)}"
    )
    name = name or out.name
    # Build the tokenizer now: a vocabulary tiktoken cannot load fails before any big work.
    bpe_tokenizer(
        name, v.ranks, pattern=v.pattern, special_tokens=v.special_tokens, vocab_size=v.vocab_size
    )
    weights: dict[str, Any] = dict(llama_weights(model, progress=progress))
    if weight_dtype == "int4":
        int4 = llama_int4_weights(model)
        if not int4:
            raise ValueError(
                f"{model.path}: no Q4_0 or Q4_1 layer matrices (tensor types "
                f"{'/'.join(types)}); --weights int4 has nothing to keep in 4 bits"
            )
        weights.update(int4)
        say(f"{len(int4)} Q4_0/Q4_1 matrices kept as 4-bit MatMulNBits blocks")
    if attention is None:
        attention = "gqa" if gqa_supported(c) else "exact"
        if attention == "exact":
            say(
                f"head size {c.head_dim} is not a multiple of 8: GroupQueryAttention cannot "
                "run it, using the exact attention graph (HF/Optimum cache I/O)"
            )
    say(f"building the ONNX graph ({weight_dtype} weights, {attention} attention)")
    graph = build_llama(
        weights,
        c,
        weight_dtype=weight_dtype,  # type: ignore[arg-type]
        attention=attention,  # type: ignore[arg-type]
        int4_accuracy_level=int4_accuracy_level,
    )
    del weights

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model folder should not be
    try:
        say(f"writing {out}")
        save_model(graph, tmp / "model.onnx")
        del graph
        ranks_sha = write_ranks(tmp / "tokenizer.tiktoken", v.ranks)
        manifest = {
            "format": "refsampler-model/1",
            "name": name,
            "onnx": "model.onnx",
            "tokenizer": {
                "name": name,
                "file": "tokenizer.tiktoken",
                "sha256": ranks_sha,
                "pattern": v.pattern,
                "special_tokens": v.special_tokens,
                "vocab_size": v.vocab_size,
                "pre": v.pre,
            },
            "context_length": c.max_position,
            "eos_token_ids": list(v.eos_token_ids),
            "fim": v.fim,
            "source": {
                "gguf": model.path.name,
                "sha256": sha256_file(model.path),
                "general.name": model.name,
                "tensor_types": types,
            },
            "weights": weight_dtype,
            "attention": attention,
            **({"int4_accuracy_level": int4_accuracy_level} if weight_dtype == "int4" else {}),
            "converter": f"refsampler convert/{CONVERT_VERSION}",
        }
        (tmp / "refsampler.json").write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            os.rename(tmp, out)
        except OSError:
            if out.exists():  # another converter finished first
                raise FileExistsError(f"{out} appeared while converting; left as it is") from None
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"converted in {time.perf_counter() - t0:.1f} s: {out}")
    return out
