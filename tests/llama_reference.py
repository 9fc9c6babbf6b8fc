"""An obviously-correct Llama forward pass in float64 NumPy, written from the definitions.

One sequence at a time, full causal attention, no cache, no padding. Deliberately shares no
code with ``sampler.onnx_llama`` (it repeats KV heads, uses rotate_half literally, loops over
heads) so the two can check each other.
"""

from __future__ import annotations

import numpy as np


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w  # [S, d]


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """x [S, hd] rotated by angle pos * theta^(-2j/hd) on pairs (j, j + hd/2)."""
    hd = x.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, hd, 2) / hd)  # [hd/2]
    angles = positions[:, None] * inv_freq[None, :]  # [S, hd/2]
    emb = np.concatenate([angles, angles], axis=-1)  # [S, hd]
    return x * np.cos(emb) + rotate_half(x) * np.sin(emb)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def forward(weights: dict, cfg, tokens) -> np.ndarray:
    """Logits float64 [S, V] for one sequence, positions 0..S-1.

    ``cfg`` needs vocab_size, num_layers, num_heads, num_kv_heads, head_dim, rope_theta,
    rms_norm_eps, tie_word_embeddings.
    """
    W = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    tokens = np.asarray(tokens)
    S, H, Hkv, hd = len(tokens), cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    positions = np.arange(S, dtype=np.float64)
    causal = np.tril(np.ones((S, S), dtype=bool))
    x = W["embed_tokens"][tokens]  # [S, d]
    for i in range(cfg.num_layers):
        L = lambda name: W[f"layers.{i}.{name}"]  # noqa: E731
        n = rms_norm(x, L("input_layernorm"), cfg.rms_norm_eps)
        q = (n @ L("q_proj").T).reshape(S, H, hd)
        k = (n @ L("k_proj").T).reshape(S, Hkv, hd)
        v = (n @ L("v_proj").T).reshape(S, Hkv, hd)
        heads = []
        for h in range(H):
            kv = h // (H // Hkv)  # repeat_kv: each KV head serves H/Hkv consecutive q heads
            qh = rope(q[:, h], positions, cfg.rope_theta)
            kh = rope(k[:, kv], positions, cfg.rope_theta)
            scores = qh @ kh.T / np.sqrt(hd)  # [S, S]
            scores = np.where(causal, scores, -np.inf)
            heads.append(softmax(scores) @ v[:, kv])  # [S, hd]
        x = x + np.concatenate(heads, axis=-1) @ L("o_proj").T
        m = rms_norm(x, L("post_attention_layernorm"), cfg.rms_norm_eps)
        x = x + (silu(m @ L("gate_proj").T) * (m @ L("up_proj").T)) @ L("down_proj").T
    x = rms_norm(x, W["norm"], cfg.rms_norm_eps)
    head = W["embed_tokens"] if cfg.tie_word_embeddings else W["lm_head"]
    return x @ head.T  # [S, V]
