"""Step 4's kept set, found without sorting the whole row (docs/performance.md).

The definition (:func:`sampler.reference.nucleus`) sorts every id; here thresholds find
the few candidates that can be in the nucleus, a bracket on the row's total settles the
boundary from a float32 sum when it can, and only the candidates are sorted.

>>> import numpy as np
>>> e = np.array([0.1, 0.4, 0.4, 0.1], dtype=np.float32)
>>> nucleus(e, float(e.sum(dtype=np.float64)), 0.5)[0]
array([1, 2])
"""

from __future__ import annotations

import numpy as np

from .sizes import FIRST_THRESHOLD, LISTED, SMALL


def nucleus(
    e: np.ndarray,
    total: float | None,
    p: float,
    *,
    outside: tuple[np.ndarray, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The minimal nucleus of one row of unnormalised probabilities ``e`` (float32, [V]).

    Returns ``(ids, weights)``: the kept token ids in increasing id order and their
    ``e`` values. The nucleus is the smallest set of most probable tokens whose mass is
    ``>= p * total`` (``total`` = float64 sum of ``e``), ties ordered by lower id first,
    never empty. The float64 running sum over values in decreasing order is the
    definition; only tokens above a safe threshold are sorted (performance.md).
    ``total=None``: found here (see :func:`few_candidates_nucleus`). ``outside = (ids,
    bound)``: the caller knows that every id not in ``ids`` has ``e <= bound``, so the
    candidates above it are found without a pass over the row.

    >>> e = np.array([0.1, 0.4, 0.4, 0.1], dtype=np.float32)
    >>> nucleus(e, float(e.sum(dtype=np.float64)), 0.5)[0]
    array([1, 2])
    """
    quick = few_candidates_nucleus(e, p, outside, total)
    if quick is not None:
        return np.array(quick[0], dtype=np.int64), np.array(quick[1], dtype=np.float32)
    return sorted_nucleus(e, float(e.sum(dtype=np.float64)) if total is None else total, p)


def sorted_nucleus(e: np.ndarray, total: float, p: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`nucleus` by thresholds and a sort of the candidates, for any row: the path
    for rows whose nucleus is not among a few candidates (``total`` is required).

    >>> e = np.array([0.1, 0.4, 0.4, 0.1], dtype=np.float32)
    >>> sorted_nucleus(e, float(e.sum(dtype=np.float64)), 0.9)[0]
    array([0, 1, 2])
    """
    cut, ties, _, cand = nucleus_cut(e, total, p)
    return nucleus_kept(e, cut, ties, cand)


def nucleus_cut(
    e: np.ndarray, total: float, p: float, *, scratch: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.float32, int, int, np.ndarray | None]:
    """The nucleus of a row as ``(cut, ties, size, cand)``: every id with ``e > cut`` and
    the ``ties`` lowest ids with ``e == cut`` (``size`` ids in all), by thresholds and a
    sort. ``cand``: the sorted candidates' ids (increasing, every kept id among them) when
    there were few enough to list (up to 16,384), else None.

    ``scratch = (float32 [V], float64 [V])`` buffers to work in: with them no V-sized float
    array is allocated, only boolean masks (a fresh 400 KB temporary can cost ~100 page
    faults, more than the sort).

    >>> e = np.array([0.1, 0.4, 0.4, 0.1], dtype=np.float32)
    >>> nucleus_cut(e, float(e.sum(dtype=np.float64)), 0.3)[:3]  # one of the tied 0.4s
    (np.float32(0.4), 1, 1)
    """
    target = p * total
    f32, f64 = (
        scratch
        if scratch is not None
        else (np.empty(e.size, np.float32), np.empty(e.size, np.float64))
    )
    cand: np.ndarray | None = None
    for t in _thresholds(p, total, e.size):
        above_t = e >= t  # [V]
        n = int(np.count_nonzero(above_t))
        if n <= SMALL:
            cand = np.flatnonzero(above_t)  # [n] ids above the threshold, increasing
            kept = _small_nucleus(cand.tolist(), e[cand].tolist(), target, last=t == 0)
            if kept is not None:
                vals = e[kept]  # [k]
                cut = vals.min()
                return cut, int(np.count_nonzero(vals == cut)), len(kept), cand
            continue
        cand = np.flatnonzero(above_t) if n <= LISTED else None  # [n]
        vals = f32[:n]  # [n] the candidates' values
        if cand is not None:
            np.take(e, cand, out=vals)
        elif n == e.size:  # every id a candidate (flat rows)
            np.copyto(vals, e)
        else:
            np.compress(above_t, e, out=vals)
        if n < e.size and vals.sum(dtype=np.float64) < target * (1 - 1e-12) and t > 0:
            continue  # clearly not enough mass: try a lower threshold
        vals.sort()  # increasing
        csum = f64[:n]  # [n] the float64 running sum, largest first
        np.copyto(csum, vals[::-1])
        np.cumsum(csum, out=csum)  # (a cumsum casting a reversed float32 view is ~4x slower)
        if csum[-1] >= target or t == 0:
            break
    k = min(int(np.searchsorted(csum, target, side="left")), n - 1)
    cut = vals[n - 1 - k]  # the smallest kept value
    n_above = n - int(np.searchsorted(vals, cut, side="right"))  # values > cut
    return cut, k + 1 - n_above, k + 1, cand


def nucleus_kept(
    e: np.ndarray, cut: np.float32, ties: int, cand: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The kept ids of :func:`nucleus_cut`, increasing, and their values, found among
    ``cand`` when given (else by one compare over the row)."""
    ids = np.flatnonzero(e >= cut) if cand is None else cand[e[cand] >= cut]  # [n]
    vals = e[ids]  # [n]
    tied = np.flatnonzero(vals == cut)  # [t] positions of the ties, lowest ids first
    if tied.size > ties:  # drop the ties beyond the first ``ties``
        keep = vals > cut  # [n]
        keep[tied[:ties]] = True
        ids, vals = ids[keep], vals[keep]
    return ids, vals


def nucleus_mask(e: np.ndarray, cut: np.float32, ties: int) -> np.ndarray:
    """The kept ids of :func:`nucleus_cut` as a boolean mask ``[V]``."""
    mask = e > cut  # [V]
    if ties:
        mask[np.flatnonzero(e == cut)[:ties]] = True  # the lowest ids among the ties
    return mask


def few_candidates_nucleus(
    e: np.ndarray,
    p: float,
    outside: tuple[np.ndarray, float] | None = None,
    total: float | None = None,
) -> tuple[list[int], list[float]] | None:
    """:func:`nucleus` when a few candidates hold it, as Python lists ``(ids, values)``,
    ids increasing; None when they do not (too many candidates, or too little mass).

    The candidates form a top set: every id with ``e >= 1e-4`` (at most 64 of them) or,
    given ``outside = (ids, bound)``, those of ``ids`` above ``bound`` (all ids above it
    are among them). With ``total`` unknown, a float32 sum stands in for it first: a
    float32 sum of ``n`` non-negative values, in any order, is within ``(n-1) * 2**-24``
    of the true sum, relatively (the float64 sum far closer still), and the kept set only
    grows with the target, so when the targets at both ends of that interval keep the same
    set, it is the set the float64 total keeps. Only when they differ is the float64 sum
    taken.

    >>> few_candidates_nucleus(np.array([0.1, 1.0, 0.5, 1e-6], dtype=np.float32), 0.7)
    ([1, 2], [1.0, 0.5])
    """
    if outside is None:
        above = e >= FIRST_THRESHOLD  # [V]
        if np.count_nonzero(above) > SMALL:  # (a count is cheaper than the ids)
            return None
        cand = np.flatnonzero(above)  # [k] ids above the threshold
        ids, vals = cand.tolist(), e[cand].tolist()
    else:
        known, bound = outside
        at = e[known]  # [m]
        above = at > bound  # [m]
        pairs = dict(zip(known[above].tolist(), at[above].tolist()))  # dedupes the ids
        ids = sorted(pairs)
        vals = [pairs[i] for i in ids]
    kept = None
    if total is None:
        s32 = float(e.sum())  # float32 pairwise sum
        slack = 2.0 * e.size * 2.0**-24  # twice the bound: room for the float64 total too
        if slack < 0.5:
            if sum(vals) < p * s32 * (1.0 - slack):  # short even for the lowest target
                return None
            kept = bracketed_nucleus(ids, vals, p, s32 * (1.0 - slack), s32 * (1.0 + slack))
        if kept is None:  # the interval straddles a boundary: the float64 total decides
            total = float(e.sum(dtype=np.float64))
    if kept is None:
        assert total is not None
        kept = _small_nucleus(ids, vals, p * total)
        if kept is None:
            return None
    value = dict(zip(ids, vals))
    return kept, [value[i] for i in kept]


def bracketed_nucleus(
    ids: list[int], vals: list[float], p: float, lo: float, hi: float
) -> list[int] | None:
    """The nucleus among candidates when the row's float64 total is known only to lie in
    ``[lo, hi]``: the kept ids (increasing) if every total in that interval keeps the same
    set, else None (also when the candidates' mass is short of ``p * lo``).

    ``ids`` (increasing) and ``vals`` must be the row's largest values: every id left out
    has a value below all of theirs. The kept set only grows with the target
    ``p * total``, so the two ends of the interval decide for every total between them.

    >>> bracketed_nucleus([1, 2], [1.0, 0.5], 0.7, 1.6, 1.7)  # targets 1.12 .. 1.19
    [1, 2]
    >>> bracketed_nucleus([1, 2], [1.0, 0.5], 0.7, 1.4, 1.5) is None  # 0.98 .. 1.05
    True
    """
    order = _by_value(ids, vals)
    lo, hi, acc = p * lo, p * hi, 0.0
    for n, i in enumerate(order, start=1):
        acc += vals[i]
        if acc >= lo:  # the set for the lowest target; the highest keeps it if reached too
            return sorted(ids[j] for j in order[:n]) if acc >= hi else None
    return None


def _thresholds(p: float, total: float, size: int) -> tuple[float, ...]:
    # e = exp(z - max) so the largest value is 1. Everything below (1-p)*total/size sums
    # to less than (1-p)*total, so that threshold always leaves >= p*total; 0 is the
    # belt-and-braces end for rounding at the edge.
    return (FIRST_THRESHOLD, (1.0 - p) * total / size, 0.0)


def _small_nucleus(
    ids: list[int], vals: list[float], target: float, *, last: bool = False
) -> list[int] | None:
    """The nucleus among a few candidates (ids increasing), or None if their mass is short
    (with ``last``, the candidates are the whole row: then all of them).

    Same definition as the array path: float64 running sum in decreasing order of value,
    ties by lower id, until it reaches ``target``.
    """
    order = _by_value(ids, vals)
    acc = 0.0
    for n, i in enumerate(order, start=1):
        acc += vals[i]
        if acc >= target:
            return sorted(ids[j] for j in order[:n])
    return list(ids) if last else None


def _by_value(ids: list[int], vals: list[float]) -> list[int]:
    """Positions in decreasing order of value, ties by lower id."""
    return sorted(range(len(ids)), key=lambda i: (-vals[i], ids[i]))
