"""GGUF -> model folder: a Llama, Qwen2, Qwen3 or Gemma 3 GGUF file becomes ONNX + tokenizer +
manifest.

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
3. **Chat template**: ``tokenizer.chat_template`` and the texts of the BOS, EOS and padding
   tokens, kept as the folder's ``chat`` (:mod:`sampler.chat_template` renders it).
4. **Tokenizer** from ``tokenizer.ggml.*``: a byte-level BPE (``gpt2``) as ranks for
   tiktoken (:func:`sampler.gguf_vocab.gguf_vocab`): token strings are mapped back to bytes
   with GPT-2's byte<->unicode table, and the ids are the ranks, which is only right when
   merge ``k``'s result has a larger id than merge ``k-1``'s -- checked, as is every other
   assumption, with an error naming what was found. A SentencePiece-style vocabulary
   (``llama``: Gemma's) is kept as its tokens, scores and types for :mod:`sampler.spm`, with
   the BOS token every text prompt is read after (``tokenizer.ggml.add_bos_token``).
5. The folder is written atomically (a temporary sibling, renamed when complete).

``gguf`` (the llama.cpp project's reader) is imported here only, so ``import sampler`` stays
light. Tests: ``tests/test_gguf.py`` checks converted logits against a NumPy forward pass that
reads the GGUF itself and applies llama.cpp's adjacent-pair RoPE to the GGUF-layout weights.

The reading is :mod:`sampler.gguf_llama`'s and the vocabulary :mod:`sampler.gguf_vocab`'s;
this module writes the folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .gguf_int4 import llama_int4_weights
from .gguf_llama import llama_weights, read_gguf
from .model import sha256_file
from .onnx_llama import ATTENTIONS

__all__ = ["CONVERT_VERSION", "convert_gguf"]

#: Bumped whenever the output changes for the same input, through this module or through
#: sampler.onnx_llama's graph: the registry's folder names carry it, so a changed converter
#: never reuses an old folder.
CONVERT_VERSION = 5  # 3: logits_to_keep; 4: the chat template; 5: half RoPE tables, Gemma 3

# GGUF tensor name -> HF name (``blk.{i}.`` prefix for the per-layer ones)


# ---------------------------------------------------------------- the model


#: GGUF block layouts that :class:`Int4Matrix` holds exactly: bytes per block of 32


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
    from .gguf_vocab import SPMVocab
    from .onnx_llama import build_llama, gqa_supported, save_model
    from .spm import spm_tokenizer, write_spm
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
    # Build the tokenizer now: a vocabulary that cannot load fails before any big work.
    if isinstance(v, SPMVocab):
        spm_tokenizer(name, v.tokens, v.scores, v.types, add_space_prefix=v.add_space_prefix)
    else:
        bpe_tokenizer(
            name,
            v.ranks,
            pattern=v.pattern,
            special_tokens=v.special_tokens,
            vocab_size=v.vocab_size,
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
        if isinstance(v, SPMVocab):
            tokenizer: dict[str, Any] = {
                "kind": "sentencepiece",
                "name": name,
                "file": "tokenizer.spm.json",
                "sha256": write_spm(tmp / "tokenizer.spm.json", v.tokens, v.scores, v.types),
                "vocab_size": v.vocab_size,
                "add_space_prefix": v.add_space_prefix,
            }
        else:
            tokenizer = {
                "name": name,
                "file": "tokenizer.tiktoken",
                "sha256": write_ranks(tmp / "tokenizer.tiktoken", v.ranks),
                "pattern": v.pattern,
                "special_tokens": v.special_tokens,
                "vocab_size": v.vocab_size,
                "pre": v.pre,
            }
        manifest = {
            "format": "refsampler-model/1",
            "name": name,
            "onnx": "model.onnx",
            "tokenizer": tokenizer,
            "context_length": c.max_position,
            "eos_token_ids": list(v.eos_token_ids),
            **(
                {"bos_token_id": v.bos_id}
                if isinstance(v, SPMVocab) and v.bos_id is not None
                else {}
            ),
            "fim": v.fim,
            "chat": model.chat,
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
