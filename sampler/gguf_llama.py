"""A Llama-family GGUF (llama, qwen2, qwen3, gemma3) read into NumPy: hyper-parameters,
metadata, weights.

:func:`read_gguf` opens the file (``gguf``, llama.cpp's reader, imported here only);
:func:`llama_config` maps ``llama.*`` metadata to a :class:`~sampler.onnx_llama.LlamaConfig`;
:func:`llama_weights` dequantises every tensor to float32 (``gguf.quants.dequantize``) under
the Hugging Face names the graph builder takes, undoing llama.cpp's Q/K row order
(:func:`unpermute_rope_rows`); :mod:`sampler.gguf_int4` keeps Q4_0/Q4_1 matrices 4-bit.

>>> unpermute_rope_rows(np.arange(8.0).reshape(8, 1), num_heads=2).ravel().tolist()
[0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .gguf_vocab import GGUFVocab, SPMVocab, gguf_vocab, spm_vocab
from .onnx_llama import LlamaConfig, weight_shapes

if TYPE_CHECKING:  # pragma: no cover
    import gguf

__all__ = [
    "GGUFLlama",
    "read_gguf",
    "llama_config",
    "llama_weights",
    "unpermute_rope_rows",
    "ARCHITECTURES",
]


_LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "q_proj",
    "attn_k": "k_proj",
    "attn_v": "v_proj",
    "attn_output": "o_proj",
    "attn_q_norm": "q_norm",
    "attn_k_norm": "k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "gate_proj",
    "ffn_up": "up_proj",
    "ffn_down": "down_proj",
    "post_attention_norm": "attn_output_norm",  # (Gemma 3's post-norms)
    "post_ffw_norm": "mlp_output_norm",
}

_GLOBAL_TENSORS = {"token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head"}
_BIASED = ("q_proj", "k_proj", "v_proj")

#: The ``general.architecture`` values that convert. llama.cpp's converter reorders the
#: Q/K rows of ``llama`` files only (its RoPE for Qwen and Gemma is HF's ``rotate_half``).
ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3")

#: Gemma 3 as llama.cpp runs it: every 6th layer global, the others sliding-window, whose
#: RoPE base is 10000 (unless ``gemma3.attention.sliding_window_pattern`` and
#: ``gemma3.rope.freq_base_swa`` say otherwise).
GEMMA3_PATTERN, GEMMA3_LOCAL_THETA = 6, 10000.0


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
    vocab: GGUFVocab | SPMVocab
    name: str  # general.name, or the file name
    chat: dict[str, str | None] | None = None  # tokenizer.chat_template and its tokens

    @property
    def architecture(self) -> str:
        """``general.architecture``: one of :data:`ARCHITECTURES`."""
        return str(self.reader.fields["general.architecture"].contents())

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
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"{path}: general.architecture is {arch!r}; the GGUF files that convert are "
            f"{', '.join(repr(a) for a in ARCHITECTURES)}"
        )
    _check_tensor_types(reader, path)
    tokens = meta.get("tokenizer.ggml.tokens", list)
    vocab = _vocab(meta, tokens)
    return GGUFLlama(
        path,
        reader,
        llama_config(meta, len(tokens), arch),
        vocab,
        meta.get("general.name", str, path.stem),
        chat_template(meta, tokens),
    )


def _check_tensor_types(reader: gguf.GGUFReader, path: Path) -> None:
    """Every tensor type of the file is one ``gguf.quants`` dequantises (tried on one row of
    the first tensor of each type), so an unsupported one is named before any work."""
    from gguf.quants import dequantize

    seen: set[int] = set()
    for t in reader.tensors:
        if t.tensor_type in seen:
            continue
        seen.add(t.tensor_type)
        try:
            dequantize(t.data[:1] if t.data.ndim > 1 else t.data, t.tensor_type)
        except NotImplementedError:
            raise ValueError(
                f"{path}: tensor {t.name!r} has type {t.tensor_type.name}, "
                "which gguf.quants cannot dequantise"
            ) from None


def _vocab(meta: _Meta, tokens: list) -> GGUFVocab | SPMVocab:
    """The byte-level BPE (``gpt2``) or SentencePiece-style (``llama``) vocabulary."""
    model = meta.get("tokenizer.ggml.model", str)
    eos = [meta.get(f"tokenizer.ggml.{k}_token_id", int, None) for k in ("eos", "eot")]
    if model == "llama":
        add_bos = meta.get("tokenizer.ggml.add_bos_token", bool, True)  # llama.cpp's default
        return spm_vocab(
            tokens,
            meta.get("tokenizer.ggml.scores", list),
            meta.get("tokenizer.ggml.token_type", list),
            add_space_prefix=meta.get("tokenizer.ggml.add_space_prefix", bool, True),
            bos_id=meta.get("tokenizer.ggml.bos_token_id", int, None) if add_bos else None,
            eos_ids=[i for i in eos if i is not None],
        )
    fim_keys = {"prefix": "fim_pre", "middle": "fim_mid", "suffix": "fim_suf"}
    fim = {k: meta.get(f"tokenizer.ggml.{v}_token_id", int, None) for k, v in fim_keys.items()}
    return gguf_vocab(
        tokens,
        meta.get("tokenizer.ggml.token_type", list),
        meta.get("tokenizer.ggml.merges", list, []),
        model=model,
        pre=meta.get("tokenizer.ggml.pre", str, "gpt-2"),
        eos_ids=[i for i in eos if i is not None],
        fim=fim if None not in fim.values() else None,
    )


def chat_template(meta: _Meta, tokens: list) -> dict[str, str | None] | None:
    """The ``chat`` entry of the model folder: ``tokenizer.chat_template`` and the texts of
    the BOS, EOS, unknown and padding tokens it is rendered with (None: no template)."""
    template = meta.get("tokenizer.chat_template", str, None)
    if not template:
        return None

    def text(kind: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{kind}_token_id", int, None)
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    return {
        "template": template,
        "bos_token": text("bos"),
        "eos_token": text("eos"),
        "unk_token": text("unknown"),
        "pad_token": text("padding"),
        "source": "gguf tokenizer.chat_template",
    }


def llama_config(meta: _Meta, vocab_size: int, arch: str = "llama") -> LlamaConfig:
    """The :class:`LlamaConfig` of the ``{arch}.*`` metadata; unsupported variants refused.
    Qwen2 adds biases to the q, k and v projections; Qwen3 RMS-norms each q and k head."""
    a = arch
    scaling = meta.get(f"{a}.rope.scaling.type", str, "none")
    if scaling != "none":
        raise ValueError(
            f"{meta.path}: {a}.rope.scaling.type is {scaling!r}; RoPE scaling is not supported"
        )
    layers = meta.get(f"{a}.block_count", int)
    width = meta.get(f"{a}.embedding_length", int)
    ffn = meta.get(f"{a}.feed_forward_length", int)
    heads = meta.get(f"{a}.attention.head_count", int)
    kv_heads = meta.get(f"{a}.attention.head_count_kv", int, heads)
    head_dim = meta.get(f"{a}.attention.key_length", int, width // heads)
    value_dim = meta.get(f"{a}.attention.value_length", int, head_dim)
    rotary = meta.get(f"{a}.rope.dimension_count", int, head_dim)
    if value_dim != head_dim or rotary != head_dim:
        raise ValueError(
            f"{meta.path}: key length {head_dim}, value length {value_dim} and RoPE dimension "
            f"{rotary} differ; only full-head RoPE with equal key/value sizes is supported"
        )
    ctx = meta.get(f"{a}.context_length", int)
    gemma = _gemma3(meta, layers, width, heads, head_dim) if arch == "gemma3" else {}
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=ffn,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rope_theta=float(meta.get(f"{a}.rope.freq_base", float, 10000.0)),
        rms_norm_eps=float(meta.get(f"{a}.attention.layer_norm_rms_epsilon", float)),
        tie_word_embeddings="output.weight" not in {t.name for t in meta.reader.tensors},
        max_position=ctx,
        attention_bias=arch == "qwen2",
        qk_norm=arch in ("qwen3", "gemma3"),
        **gemma,
    )


def _gemma3(meta: _Meta, layers: int, width: int, heads: int, head_dim: int) -> dict[str, Any]:
    """Gemma 3's differences from Llama, as llama.cpp reads them. The (1 + w) of its
    RMSNorms is already in the file (llama.cpp's converter adds the 1)."""
    cap = meta.get("gemma3.final_logit_softcapping", float, 0.0)
    if cap:
        raise ValueError(
            f"{meta.path}: gemma3.final_logit_softcapping is {cap}; logit soft-capping "
            "is not supported"
        )
    window = meta.get("gemma3.attention.sliding_window", int, 0)
    pattern = meta.get("gemma3.attention.sliding_window_pattern", (int, list), GEMMA3_PATTERN)
    if not window:
        local: tuple[int, ...] = ()
    elif isinstance(pattern, list):  # one flag per layer (true: sliding window)
        local = tuple(i for i, flag in enumerate(pattern[:layers]) if flag)
    else:
        local = tuple(i for i in range(layers) if pattern == 0 or i % pattern < pattern - 1)
    # llama.cpp (after gemma_pytorch): 1/sqrt(head size), but 1/sqrt(width/heads) for 27B
    scale_dim = width // heads if layers == 62 else head_dim
    return {
        "embedding_scale": float(np.sqrt(np.float32(width), dtype=np.float32)),
        "post_norms": True,
        "activation": "gelu_tanh",
        "attention_scale": float(1.0 / np.sqrt(np.float32(scale_dim), dtype=np.float32)),
        "sliding_window": window,
        "local_layers": local,
        "rope_theta_local": float(meta.get("gemma3.rope.freq_base_swa", float, GEMMA3_LOCAL_THETA)),
    }


def _hf_name(gguf_name: str) -> str | None:
    base, _, suffix = gguf_name.rpartition(".")
    if suffix == "bias":  # (Qwen2's q, k and v biases)
        name = _hf_name(base + ".weight")
        return name + ".bias" if name and name.split(".")[-1] in _BIASED else None
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
                f"shape {t.shape.tolist()}){hint}; not a tensor of the "
                f"{model.architecture} architecture as this converter reads it"
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
        if model.architecture == "llama" and name.endswith(".q_proj"):
            w = unpermute_rope_rows(w, c.num_heads)
        elif model.architecture == "llama" and name.endswith(".k_proj"):
            w = unpermute_rope_rows(w, c.num_kv_heads)
        weights[name] = w
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise ValueError(f"{model.path}: missing tensors for {missing[:5]}")
    return weights


def _progress(items: Sequence, desc: str, on: bool):
    if not on:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="tensor", file=sys.stderr, leave=False)
