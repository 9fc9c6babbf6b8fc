"""Step 4's kept set without sorting the row (docs/performance.md).

The definition (:func:`sampler.reference.nucleus`) sorts every id by its integer weight
``w = floor(e * 2**43)`` and keeps the shortest run, heaviest first (ties to the lower id),
whose exact sum reaches ``need = ceil(top_p * W)``, ``W`` the row's total weight. Here:

- **few candidates**: when a few ids hold the top of the row, their own weights decide
  the run against a bracket on ``W`` (from a float sum of ``e``: no exact pass), and only
  when the bracket straddles a boundary is ``W`` summed exactly;
- **any row**: one histogram of the weights by bucket (a weight's float32 exponent and 7
  mantissa bits), whose sums are exact in float64 because a bucket's weights share an
  exponent; the bucket where the running sum crosses ``need`` is the only one sorted.

>>> import numpy as np
>>> e = np.array([0.1, 0.4, 0.4, 0.1], dtype=np.float32)
>>> kept_ids(e, 0.5, np.empty(4, np.float32), np.empty(4, np.int64)).tolist()
[1, 2]
"""

from __future__ import annotations

import math

import numpy as np

from ..reference import WEIGHT_SCALE, need
from .sizes import BLOCK, FIRST_THRESHOLD, SMALL

__all__ = ["need", "weigh", "total_weight", "prefix", "few_candidates", "bucket_cut", "kept_ids"]

_SCALE32 = np.float32(WEIGHT_SCALE)


def weigh(e: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``floor(e * 2**43)`` into ``out`` (float32 [V]): exact integers, in float32 (below
    2**24 every integer is representable, above it every float32 is an integer)."""
    np.multiply(e, _SCALE32, out=out)
    return np.floor(out, out=out)


def total_weight(wf: np.ndarray) -> int:
    """The exact sum of integer weights ``wf`` (float32 [V]): blocks of 1024 sum exactly in
    float64 (< 2**53), whatever the order."""
    n_full = wf.size - wf.size % BLOCK
    blocks = wf[:n_full].reshape(-1, BLOCK).sum(axis=1, dtype=np.float64)  # [nb] exact
    return int(blocks.astype(np.int64).sum()) + int(wf[n_full:].sum(dtype=np.float64))


def prefix(ids: list[int], w: list[int], need_lo: int, need_hi: int) -> list[int] | None:
    """The kept ids (increasing) among candidates ``ids`` with weights ``w`` when every
    ``need`` in ``[need_lo, need_hi]`` keeps the same run; None when they do not, or the
    candidates fall short. The candidates must be the row's heaviest: every other id's
    weight below all of theirs.

    >>> prefix([1, 2], [10, 5], 11, 14), prefix([1, 2], [10, 5], 9, 11)
    ([1, 2], None)
    """
    order = sorted(range(len(ids)), key=lambda i: (-w[i], ids[i]))
    acc = 0
    for n, i in enumerate(order, start=1):
        acc += w[i]
        if acc >= need_lo:  # the run for the lowest need; the highest keeps it if reached
            return sorted(ids[j] for j in order[:n]) if acc >= need_hi else None
    return None


def few_candidates(
    e: np.ndarray,
    top_p: float,
    outside: tuple[np.ndarray, float] | None = None,
    total: float | None = None,
) -> tuple[list[int], list[int]] | None:
    """The nucleus as ``(ids, weights)`` (ids increasing, Python ints) when a few
    candidates hold it; None when they do not.

    The candidates: every id with ``e >= 1e-4`` (at most 64 of them), or, given
    ``outside = (ids, bound)`` (every id not in ``ids`` has ``e <= bound``), those of
    ``ids`` whose weight is above ``floor(bound * 2**43)``. ``W`` is bracketed from
    ``total`` (the float64 sum of ``e``, when known) or a float32 sum; summed exactly
    only when the bracket does not decide.
    """
    if outside is None:
        above = e >= FIRST_THRESHOLD  # [V]
        if np.count_nonzero(above) > SMALL:  # (a count is cheaper than the ids)
            return None
        cand = np.flatnonzero(above)  # [k] ids above the threshold
        ids, vals = cand.tolist(), e[cand].tolist()
        floor_out = -1  # every other id: e < 1e-4, so w < every candidate's
    else:
        known, bound = outside
        at = e[known]  # [m]
        keep = at > bound  # [m]
        pairs = dict(zip(known[keep].tolist(), at[keep].tolist()))  # dedupes the ids
        ids = sorted(pairs)
        vals = [pairs[i] for i in ids]
        if bound == math.inf:
            return None
        floor_out = math.floor(bound * WEIGHT_SCALE)
    w = [int(v * WEIGHT_SCALE) for v in vals]  # floor(e * 2**43): exact
    top = [(i, x) for i, x in zip(ids, w) if x > floor_out]  # heavier than any other id
    if not top:
        return None
    ids, w = [i for i, _ in top], [x for _, x in top]
    kept = None
    lo, hi = _bracket(e, total)
    if sum(w) < need(top_p, lo):  # short of even the lowest need: a larger nucleus
        return None
    if hi - lo < 0.5 * hi:
        kept = prefix(ids, w, need(top_p, lo), need(top_p, hi))
    if kept is None:  # the bracket straddles a boundary: the exact total decides
        exact = _exact_total(e)
        kept = prefix(ids, w, need(top_p, exact), need(top_p, exact))
        if kept is None:
            return None
    weight = dict(zip(ids, w))
    return kept, [weight[i] for i in kept]


def _bracket(e: np.ndarray, total: float | None) -> tuple[int, int]:
    """Integers ``lo <= W <= hi`` from a sum of ``e`` (float32 [V]): ``W = sum(floor(e *
    2**43))`` lies in ``(2**43 * sum(e) - V, 2**43 * sum(e)]``. A float32 sum of ``n``
    values is within ``(n-1) * 2**-24`` of the true sum, relatively; a float64 one within
    ``2**-30`` here; twice that for room."""
    if total is None:
        s, slack = float(e.sum()), 2.0 * e.size * 2.0**-24
    else:
        s, slack = total, 2.0**-29
    scaled = s * WEIGHT_SCALE
    return max(math.floor(scaled * (1.0 - slack)) - e.size - 1, 0), math.ceil(
        scaled * (1.0 + slack)
    ) + 1


def _exact_total(e: np.ndarray) -> int:
    return total_weight(np.floor(e * _SCALE32))  # [V] a temporary: the rare, ambiguous case


def bucket_cut(wf: np.ndarray, top_p: float, keys: np.ndarray) -> tuple[int, np.ndarray, int]:
    """The nucleus of any row from its integer weights ``wf`` (float32 [V]):
    ``(bucket, chosen, total)``. The kept ids are those whose bucket key (in ``keys``, an
    int64 [V] workspace, filled here) is above ``bucket``, plus ``chosen`` (ids of that
    bucket, increasing); ``total`` is ``W``.

    A key is the float32 bit pattern's top 16 bits: sign, exponent, 7 mantissa bits, so
    the keys order the weights. Bucket sums are exact in float64: a bucket's weights
    share an exponent, hence are multiples of one power of two, and fewer than 2**29 of
    them never need more than 53 bits.
    """
    np.right_shift(wf.view(np.int32), 16, out=keys)  # [V] int64 bucket keys
    sums = np.bincount(keys, weights=wf)  # [K] exact bucket sums
    full = np.flatnonzero(sums)[::-1]  # [n] non-empty buckets, heaviest first
    run = np.cumsum(sums[full].astype(np.int64))  # [n] exact
    total = int(run[-1])
    target = need(top_p, total)
    j = int(np.searchsorted(run, target, side="left"))  # the bucket where the run gets there
    bucket, before = int(full[j]), int(run[j - 1]) if j else 0
    members = np.flatnonzero(keys == bucket)  # [m] its ids, increasing
    mw = wf[members].astype(np.int64)  # [m]
    order = np.lexsort((members, -mw))  # heaviest first, ties to the lower id
    reach = np.cumsum(mw[order]) + before  # [m]
    size = int(np.searchsorted(reach, target, side="left")) + 1
    return bucket, np.sort(members[order[:size]]), total


def kept_ids(e: np.ndarray, top_p: float, wf: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The nucleus of a row of exps ``e`` (float32 [V], largest value 1): its kept ids,
    increasing; ``wf`` (float32 [V]) and ``keys`` (int64 [V]) are workspaces."""
    few = few_candidates(e, top_p)
    if few is not None:
        return np.array(few[0], dtype=np.int64)
    bucket, chosen, _ = bucket_cut(weigh(e, wf), top_p, keys)
    mask = keys > bucket  # [V]
    mask[chosen] = True
    return np.flatnonzero(mask)
