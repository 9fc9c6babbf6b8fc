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

import functools
import math

import numpy as np

__all__ = [
    "NEG_INF_LOGPROB", "log_normalizer", "log_softmax", "top_k", "top_k_ids", "top_logprobs",
    "reported",
]

NEG_INF_LOGPROB = -9999.0


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

    Ties go to the lower id. No sort: :func:`top_k_ids` searches only the blocks that
    can hold the answer (``k`` is at most 5 in the API). Returns ``(ids [B, k], logprobs [B, k])``.
    """
    if lognorm is None:
        lognorm = log_normalizer(logits)
    batch, k = logits.shape[0], min(k, logits.shape[1])  # (a row narrower than k: all of it)
    ids = np.empty((batch, k), dtype=np.int64)  # [B, k]
    vals = np.empty((batch, k), dtype=np.float64)  # [B, k]
    for b, row in enumerate(logits):
        ids[b], vals[b] = _top_k_row(row, k)
    return ids, vals - lognorm[:, None]


_BLOCK = 1024  # block maxima: ~100 per cl100k row, each block one SIMD max


def top_k_ids(row: np.ndarray, k: int, *, block: int = _BLOCK) -> np.ndarray:
    """The ids of the ``k`` largest values of one row, largest first, ties to the lower id.

    Exactly the first ``k`` of a stable sort by decreasing value (``-inf`` values last, by
    id). The maxima of blocks of ``block`` ids give a threshold that keeps them all: the
    ``k``-th largest block maximum is at most the ``k``-th largest value, and a block
    holding one of the top ``k`` has a maximum at least that. Only those blocks (usually
    ``k``) are searched, and the few values above the threshold sorted: one pass over the
    row, a handful of NumPy calls.

    >>> top_k_ids(np.array([1.0, 3.0, 2.0, 3.0, -np.inf], dtype=np.float32), 3, block=2)
    array([1, 3, 2])
    """
    ids, _ = top_k(row, k, block=block)
    return np.array(ids, dtype=np.int64)


def top_k(row: np.ndarray, k: int, *, block: int = _BLOCK) -> tuple[list[int], list[float]]:
    """:func:`top_k_ids` and the values at those ids, as Python lists (the hot path's form)."""
    size = row.shape[0]
    k = min(k, size)
    if k <= 0:
        return [], []
    starts = _block_starts(size, block)  # [nb]
    if starts.size <= k:  # a short row: a stable sort of the whole row
        ids = np.argsort(-row, kind="stable")[:k].tolist()
        return ids, row[ids].tolist()
    maxima = np.maximum.reduceat(row, starts).tolist()  # [nb] block maxima
    kth = sorted(maxima, reverse=True)[k - 1]  # the k-th largest block maximum
    if kth == -math.inf:  # -inf among the top k: the exact rule, by a stable sort
        ids = np.argsort(-row, kind="stable")[:k].tolist()
        return ids, row[ids].tolist()
    blocks = [b for b, v in enumerate(maxima) if v >= kth]  # usually k, increasing
    if len(blocks) > 4 * k:  # many tied maxima: search the whole row
        at = np.flatnonzero(row >= kth)  # [n] ids
        vals, ids = row[at].tolist(), at.tolist()
    else:  # the blocks side by side; only the last block of the row can be short
        full = size // block
        if blocks[-1] < full:  # whole blocks only: one gather
            w = row[: full * block].reshape(full, block)[blocks].ravel()  # [k'*block]
        else:
            w = np.concatenate([row[b * block : (b + 1) * block] for b in blocks])  # [~k*block]
        at = (w >= kth).nonzero()[0]  # [n] positions in w
        vals = w[at].tolist()
        ids = [blocks[i // block] * block + i % block for i in at.tolist()]
    best = sorted(range(len(ids)), key=lambda i: (-vals[i], ids[i]))[:k]
    return [ids[i] for i in best], [vals[i] for i in best]


@functools.lru_cache(maxsize=8)
def _block_starts(size: int, block: int) -> np.ndarray:
    starts = np.arange(0, size, block)  # [nb]
    starts.flags.writeable = False
    return starts


def _top_k_row(row: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    ids, vals = top_k(row, k)  # [k] each
    return np.array(ids, dtype=np.int64), np.array(vals, dtype=np.float64)


def reported(logprob: float) -> float:
    """A logprob as JSON carries it: a finite float, ``-inf`` as ``-9999.0``."""
    value = float(logprob)
    return NEG_INF_LOGPROB if value == -math.inf else value
