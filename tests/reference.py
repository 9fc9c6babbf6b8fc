"""Slow, obviously-correct reference implementations, for tests only.

One row at a time, full sorts, Python loops, written from the spec's definitions and
sharing no code with ``sampler``. Where the spec defines float rounding (float32 logits,
float64 sums, the draw rule) the reference follows the same definition, so results can
be compared exactly.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np


def bias_row(z: np.ndarray, bias: dict[int, float]) -> np.ndarray:
    out = z.astype(np.float32).copy()
    for j, v in bias.items():
        out[j] = np.float32(out[j] + np.float32(v))
    return out


def penalties_row(z: np.ndarray, generated: list[int], presence: float, frequency: float):
    out = z.astype(np.float32).copy()
    for j, c in Counter(generated).items():
        amount = np.float32(c * frequency + (presence if c > 0 else 0.0))
        out[j] = np.float32(out[j] - amount)
    return out


def temperature_row(z: np.ndarray, t: float) -> np.ndarray:
    """``z / float32(t)`` in float32; when that overflows at the row's maximum (or
    ``float32(t)`` is 0), the limit T -> 0+: 0 at the maxima, -inf elsewhere."""
    z = z.astype(np.float32)
    if t in (0.0, 1.0):
        return z.copy()
    t32 = np.float32(t)
    m = max(float(v) for v in z)
    with np.errstate(all="ignore"):
        scaled_max = np.float32(m) / t32 if t32 != 0 else np.float32(np.nan)
        if not math.isfinite(float(scaled_max)):
            return np.array([0.0 if float(v) == m else -math.inf for v in z], dtype=np.float32)
        return (z / t32).astype(np.float32)


def unnormalised(z: np.ndarray) -> np.ndarray:
    """``exp(z - max z)`` in float32, the spec's unnormalised probabilities."""
    z = np.asarray(z, dtype=np.float32)
    with np.errstate(over="ignore"):  # a huge range: z - max z overflows to -inf, exp 0
        return np.exp(z - z.max()).astype(np.float32)


def nucleus_ids(z: np.ndarray, p: float) -> list[int]:
    """The minimal nucleus by a full sort: decreasing probability, ties by lower id."""
    e = unnormalised(z)
    total = float(np.sum(e, dtype=np.float64))
    if p >= 1.0:
        return [j for j in range(e.size)]
    order = sorted(range(e.size), key=lambda j: (-float(e[j]), j))
    kept, acc = [], 0.0
    for j in order:
        kept.append(j)
        acc += float(e[j])
        if acc >= p * total:
            break
    return sorted(kept)


def draw_row(z: np.ndarray, t: float, p: float, u: float) -> int:
    """Greedy at T = 0; else the spec's draw: integer weights over the nucleus, id order."""
    z = np.asarray(z, dtype=np.float32)
    if t == 0.0:
        best = max(range(z.size), key=lambda j: (float(z[j]), -j))
        return best
    zt = temperature_row(z, t)
    kept = nucleus_ids(zt, p)
    e = unnormalised(zt)
    weights = [int(float(e[j]) * 2**43) for j in kept]  # floor(e * 2**43), exact
    r = (int(u * 2**53) * sum(weights)) // 2**53
    acc = 0
    for j, w in zip(kept, weights):
        acc += w
        if acc > r:
            return j
    raise AssertionError("r < sum(weights) always")


def log_softmax_row(z: np.ndarray) -> np.ndarray:
    """float64 log-softmax, the plain way (``-inf`` stays ``-inf``)."""
    z64 = np.asarray(z, dtype=np.float64)
    finite = z64[np.isfinite(z64)]
    m = finite.max()
    return z64 - (m + math.log(sum(math.exp(v - m) for v in finite)))


def top_k_row(z: np.ndarray, k: int) -> list[int]:
    """The k most probable ids by a full sort (ties: lower id first)."""
    return sorted(range(len(z)), key=lambda j: (-float(z[j]), j))[:k]


def first_stop_cut(pieces: list[str], stops: list[str]) -> tuple[int, int | None]:
    """Given the text after each token, (tokens consumed, cut) by the spec's stop rule."""
    for n, text in enumerate(pieces, start=1):
        hits = [text.find(s) for s in stops if s in text]
        if hits:
            return n, min(hits)
    return len(pieces), None
