"""The top-k ids of a row without sorting it: block maxima (docs/performance.md).

>>> import numpy as np
>>> top_k_ids(np.array([1.0, 3.0, 2.0, 3.0, -np.inf], dtype=np.float32), 3, block=2)
array([1, 3, 2])
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .sizes import BLOCK


def top_k_ids(row: np.ndarray, k: int, *, block: int = BLOCK) -> np.ndarray:
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


def top_k(row: np.ndarray, k: int, *, block: int = BLOCK) -> tuple[list[int], list[float]]:
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
