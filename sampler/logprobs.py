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

__all__ = ["NEG_INF_LOGPROB", "log_normalizer", "log_softmax", "top_logprobs", "reported"]

NEG_INF_LOGPROB = -9999.0


def log_normalizer(logits: np.ndarray) -> np.ndarray:
    """``log(sum(exp(z)))`` per row, float64: ``[B, V] -> [B]``.

    One max, one exp and one float64 sum per row; rows may hold ``-inf``.
    """
    out = np.empty(logits.shape[0], dtype=np.float64)  # [B]
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

    Ties go to the lower id. ``k`` argmax passes over one copy of the row instead of a
    sort (``k`` is at most 5 in the API). Returns ``(ids [B, k], logprobs [B, k])``.
    """
    if lognorm is None:
        lognorm = log_normalizer(logits)
    batch = logits.shape[0]
    ids = np.empty((batch, k), dtype=np.int64)  # [B, k]
    vals = np.empty((batch, k), dtype=np.float64)  # [B, k]
    for b, row in enumerate(logits):
        ids[b], vals[b] = _top_k_row(row, k)
    return ids, vals - lognorm[:, None]


def _top_k_row(row: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    work = row.copy()  # [V]
    ids = np.empty(k, dtype=np.int64)  # [k]
    vals = np.full(k, -np.inf)  # [k]
    for i in range(k):
        j = int(np.argmax(work))  # first occurrence: lowest id among ties
        if work[j] == -np.inf:  # only -inf is left: the lowest ids not yet taken
            taken = set(ids[:i].tolist())
            ids[i:] = [x for x in range(i + k) if x not in taken][: k - i]
            break
        ids[i], vals[i] = j, work[j]
        work[j] = -np.inf
    return ids, vals


def reported(logprob: float) -> float:
    """A logprob as JSON carries it: a finite float, ``-inf`` as ``-9999.0``."""
    value = float(logprob)
    return NEG_INF_LOGPROB if value == -math.inf else value
