"""Log-probabilities as the Completions API reports them, without full sorts.

Values are natural logs of a row's softmax, in float64, computed from float32 logits
with one exp pass for the normaliser. ``-inf`` is reported as ``-9999.0`` (spec §4).

>>> import numpy as np
>>> z = np.log(np.array([[0.5, 0.25, 0.25]], dtype=np.float32))
>>> np.round(np.exp(log_normalizer(z)), 6)
array([1.])
>>> ids, lps = top_logprobs(z, 2)
>>> ids.tolist(), np.round(np.exp(lps), 3).tolist()
([[0, 1]], [[0.5, 0.25]])
"""

from __future__ import annotations

import math

import numpy as np

from ._fast.topk import top_k
from .reference import NEG_INF_LOGPROB, reported

__all__ = ["NEG_INF_LOGPROB", "log_normalizer", "log_softmax", "top_logprobs", "reported"]


def log_normalizer(logits: np.ndarray) -> np.ndarray:
    """``log(sum(exp(z)))`` per row, float64: ``[B, V] -> [B]``.

    One max, one exp and one float64 sum per row; rows may hold ``-inf``.
    """
    out = np.empty(logits.shape[0], dtype=np.float64)  # [B]
    with np.errstate(over="ignore"):  # a value far below the max: exp(-inf) = 0
        for b, row in enumerate(logits):
            m = row.max()
            out[b] = float(m) + math.log(float(np.exp(row - m).sum(dtype=np.float64)))
    return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64: ``[B, V] -> [B, V]``."""
    return logits.astype(np.float64) - log_normalizer(logits)[:, None]  # [B, V]


def top_logprobs(
    logits: np.ndarray, k: int, *, lognorm: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most probable ids of each row and their logprobs, most probable first.

    Ties go to the lower id. No sort: block maxima (:mod:`sampler._fast.topk`) search only
    the blocks that can hold the answer (``k`` is at most 20 in the API: chat's
    ``top_logprobs``). Returns ``(ids [B, k], logprobs [B, k])``.
    """
    if lognorm is None:
        lognorm = log_normalizer(logits)
    batch, k = logits.shape[0], min(k, logits.shape[1])  # (a row narrower than k: all of it)
    ids = np.empty((batch, k), dtype=np.int64)  # [B, k]
    vals = np.empty((batch, k), dtype=np.float64)  # [B, k]
    for b, row in enumerate(logits):
        ids[b], vals[b] = _top_k_row(row, k)
    return ids, vals - lognorm[:, None]


def _top_k_row(row: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    ids, vals = top_k(row, k)  # [k] each
    return np.array(ids, dtype=np.int64), np.array(vals, dtype=np.float64)
