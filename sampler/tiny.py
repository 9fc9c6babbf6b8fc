"""``tiny-random-cl100k``: a small random Llama over the full cl100k_base vocabulary, for tests.

Two layers, width 64, 4 query heads sharing 2 KV heads (so grouped-query attention is
exercised), FFN 128, V = 100,277, context 2048, untied head. Weights come from
``default_rng(SeedSequence(seed))`` with scales chosen so that logits are neither flat nor
one-hot (row std ~3) and depend on the context, not only on the last token.

``build_tiny_random(folder)`` writes ``model.onnx`` (~52 MB) and ``refsampler.json`` in ~1 s.

>>> TINY_CONFIG.vocab_size, TINY_CONFIG.num_kv_heads, TINY_CONFIG.head_dim
(100277, 2, 16)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .onnx_llama import LlamaConfig, weight_shapes

__all__ = [
    "TINY_BUILD_VERSION",
    "TINY_CHAT_TEMPLATE",
    "TINY_NAME",
    "TINY_CONFIG",
    "build_tiny_random",
    "tiny_weights",
]

TINY_BUILD_VERSION = 4  # 3: logits_to_keep; 4: a chat template
TINY_NAME = "tiny-random-cl100k"
TINY_CONFIG = LlamaConfig(
    vocab_size=100_277,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    max_position=2048,
)
#: The tiny model's chat template (it was never tuned on one: this one is ours, so that the
#: chat endpoint's tests run on it). Each message is ``role: content`` and the end-of-text
#: token; the reply begins after ``assistant:``, and the model's end token ends it.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] + ': ' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)
_MANIFEST = {
    "format": "refsampler-model/1",
    "name": TINY_NAME,
    "onnx": "model.onnx",
    "tokenizer": "cl100k_base",
    "context_length": TINY_CONFIG.max_position,
    "eos_token_ids": [100257],
    "fim": {"prefix": 100258, "middle": 100259, "suffix": 100260},
    "chat": {"template": TINY_CHAT_TEMPLATE, "eos_token": "<|endoftext|>", "source": "refsampler"},
}
# Standard deviation x sqrt(fan_in) per weight kind. The head's sets the logits' spread
# (rms-normed input, so row std ~ _GAIN["lm_head"]); q/k make attention non-uniform; v/o/mlp
# make each block's output comparable to the embedding, so the context matters.
_GAIN = {
    "embed_tokens": 1.0,
    "q_proj": 2.0,
    "k_proj": 2.0,
    "v_proj": 1.0,
    "o_proj": 1.0,
    "gate_proj": 1.5,
    "up_proj": 1.5,
    "down_proj": 2.0,
    "lm_head": 3.0,
}


def tiny_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """The random weights of ``tiny-random-cl100k`` (HF names and shapes)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    weights = {}
    for name, shape in weight_shapes(TINY_CONFIG).items():
        kind = name.rsplit(".", 1)[-1]
        if len(shape) == 1:  # norms: near 1, not exactly, so their scaling is exercised
            w = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
        elif kind == "embed_tokens":
            w = rng.standard_normal(shape, dtype=np.float32)
        else:
            w = rng.standard_normal(shape, dtype=np.float32) * np.float32(
                _GAIN[kind] / np.sqrt(shape[1])
            )
        weights[name] = w
    return weights


def build_tiny_random(out_dir: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write ``model.onnx`` and ``refsampler.json`` into ``out_dir``; return it.

    The folder appears atomically (built in a temporary sibling, then renamed), so a complete
    ``out_dir`` is returned as is, and concurrent builders (pytest-xdist workers) are safe.
    """
    from .onnx_llama import build_llama, save_model

    out = Path(out_dir)
    if _complete(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model folder should not be
    try:
        save_model(build_llama(tiny_weights(seed), TINY_CONFIG), tmp / "model.onnx")
        (tmp / "refsampler.json").write_text(json.dumps(_MANIFEST, indent=2) + "\n")
        try:
            os.rename(tmp, out)
        except OSError:
            if not _complete(out):  # someone else's finished folder is fine; anything else not
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _complete(folder: Path) -> bool:
    return (folder / "refsampler.json").is_file() and (folder / "model.onnx").is_file()
