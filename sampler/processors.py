"""Logits processors: one batched function per Completions parameter.

Every function takes logits ``[B, V]`` (float32) and per-row parameters, and returns the
processed logits. They are pure by default; pass ``out=`` (the NumPy ufunc convention,
``out=logits`` for in place) to reuse a buffer on a hot path. A parameter at its neutral
value changes nothing, and the sparse ones (``logit_bias``, ``penalties``) cost nothing
but a copy when ``out`` is not the input.

The order is part of the contract (spec §3) and is written once, here::

    0. mask       ids that are not sampleable tokens -> -inf   (engine; tokenizer.masked_ids)
    1. logit_bias z[j] += bias[j]
    2. penalties  z[j] -= c[j]*frequency_penalty + (c[j] > 0)*presence_penalty,
                  c = counts among this sequence's GENERATED tokens only
    3. temperature z /= T          (T = 0: greedy, the row is left as is)
    4. top_p      keep the smallest most-probable set with mass >= top_p
    5. select     argmax (T = 0) or inverse CDF with one uniform       (sampler.select)

Reported logprobs come from the row after step 0 only ("raw"), unless the request asks
for ``logprobs_mode: "processed"``, which reports the distribution of step 5.

>>> import numpy as np
>>> z = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
>>> logit_bias(z, [{0: 5.0}])
array([[6., 2., 3.]], dtype=float32)
>>> temperature(z, [0.5])
array([[2., 4., 6.]], dtype=float32)
"""

from __future__ import annotations

from typing import Mapping, Sequence, Union

import numpy as np

__all__ = [
    "STEP_ORDER",
    "SparseRow",
    "TokenCounts",
    "count_tokens",
    "logit_bias",
    "penalties",
    "temperature",
    "scaled_max_overflows",
    "limit_row",
    "top_p",
    "nucleus",
    "sorted_nucleus",
    "nucleus_cut",
    "nucleus_kept",
    "nucleus_mask",
    "few_candidates_nucleus",
    "bracketed_nucleus",
]

STEP_ORDER = ("logit_bias", "penalties", "temperature", "top_p")

#: A sparse per-row parameter: ``(ids, values)`` arrays, a ``{id: value}`` mapping, or None.
SparseRow = Union[None, Mapping[int, float], "tuple[np.ndarray, np.ndarray]"]


def _out(logits: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """The array to write into: a copy of ``logits`` unless ``out`` is given."""
    if out is None:
        return np.array(logits, dtype=np.float32, copy=True)  # [B, V]
    if out is not logits:
        np.copyto(out, logits)
    return out


def _sparse(row: SparseRow) -> tuple[np.ndarray, np.ndarray] | None:
    if row is None:
        return None
    if isinstance(row, Mapping):
        if not row:
            return None
        ids = np.fromiter(row.keys(), dtype=np.int64, count=len(row))  # [k]
        values = np.fromiter(row.values(), dtype=np.float64, count=len(row))  # [k]
        return ids, values
    ids, values = row
    return (np.asarray(ids, dtype=np.int64), np.asarray(values)) if len(ids) else None


def _per_row(value: float | Sequence[float] | np.ndarray, batch: int) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    return np.broadcast_to(arr, (batch,)) if arr.ndim == 0 else arr  # [B]


# --- 1. logit_bias ------------------------------------------------------------------------
def logit_bias(
    logits: np.ndarray, bias: Sequence[SparseRow], *, out: np.ndarray | None = None
) -> np.ndarray:
    """Add a per-row sparse bias: ``z[b, j] += bias[b][j]``.

    ``bias`` has one entry per row: ``None``, a mapping ``{token_id: value}`` or a pair
    of arrays ``(ids, values)``. OpenAI's range is −100 … 100 (validated at the
    boundary, never clamped here). Costs one scatter per row with a bias.

    >>> z = np.zeros((2, 4), dtype=np.float32)
    >>> logit_bias(z, [{1: 2.5, 3: -100}, None])
    array([[   0. ,    2.5,    0. , -100. ],
           [   0. ,    0. ,    0. ,    0. ]], dtype=float32)
    """
    res = _out(logits, out)
    for b, row in enumerate(bias):
        sp = _sparse(row)
        if sp is not None:
            ids, values = sp
            res[b, ids] += values.astype(np.float32)  # [k]
    return res


# --- 2. presence and frequency penalties --------------------------------------------------
def count_tokens(tokens: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts of each distinct token: ``(ids, counts)``, the sparse form ``penalties`` takes.

    >>> count_tokens([5, 3, 5])
    (array([3, 5]), array([1, 2]))
    """
    return np.unique(np.asarray(tokens, dtype=np.int64), return_counts=True)


class TokenCounts:
    """Counts of a sequence's generated tokens, kept sparse and updated one token at a time.

    ``ids``/``counts`` are views of the distinct tokens seen so far in first-seen order,
    ready for :func:`penalties` without any per-step conversion.

    >>> c = TokenCounts(); c.add(7); c.add(2); c.add(7)
    >>> c.ids, c.counts
    (array([7, 2]), array([2, 1]))
    """

    def __init__(self) -> None:
        self._slot: dict[int, int] = {}
        self._ids = np.empty(16, dtype=np.int64)  # [capacity]
        self._counts = np.empty(16, dtype=np.int64)  # [capacity]
        self.added: list[int] = []  # every token, in order: lets a reader catch up

    def add(self, token: int) -> None:
        self.added.append(token)
        slot = self._slot.get(token)
        if slot is not None:
            self._counts[slot] += 1
            return
        n = len(self._slot)
        if n == self._ids.size:  # grow geometrically: amortised O(1) per token
            self._ids = np.resize(self._ids, 2 * n)
            self._counts = np.resize(self._counts, 2 * n)
        self._slot[token] = n
        self._ids[n] = token
        self._counts[n] = 1

    def count(self, token: int) -> int:
        """How many times ``token`` was added (0 if never)."""
        slot = self._slot.get(token)
        return 0 if slot is None else int(self._counts[slot])

    @property
    def ids(self) -> np.ndarray:
        return self._ids[: len(self._slot)]

    @property
    def counts(self) -> np.ndarray:
        return self._counts[: len(self._slot)]

    def as_pair(self) -> tuple[np.ndarray, np.ndarray]:
        return self.ids, self.counts

    def amounts(self, presence: float, frequency: float) -> tuple[np.ndarray, np.ndarray] | None:
        """``(ids, float32(c * frequency + presence))``: what :func:`penalties` subtracts."""
        if not self._slot or (presence == 0.0 and frequency == 0.0):
            return None
        return self.ids, (self.counts * frequency + presence).astype(np.float32)


def penalties(
    logits: np.ndarray,
    counts: Sequence["tuple[np.ndarray, np.ndarray] | TokenCounts | None"],
    presence_penalty: float | Sequence[float] | np.ndarray = 0.0,
    frequency_penalty: float | Sequence[float] | np.ndarray = 0.0,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """OpenAI's presence and frequency penalties over the generated tokens of each row.

    ``z[b, j] -= float32(c[j] * frequency_penalty[b] + presence_penalty[b])`` for every
    token ``j`` with count ``c[j] > 0`` in ``counts[b]`` (``(ids, counts)`` arrays, e.g.
    from :func:`count_tokens`, or a :class:`TokenCounts`). Count only the tokens this
    sequence generated, never its prompt. Penalties are per-row floats or arrays ``[B]``
    (range −2 … 2); 0 is neutral. Tokens never generated are untouched: cost is
    proportional to the distinct generated tokens, not to V.

    >>> z = np.zeros((1, 4), dtype=np.float32)
    >>> penalties(z, [count_tokens([2, 2, 3])], presence_penalty=0.5, frequency_penalty=1.0)
    array([[ 0. ,  0. , -2.5, -1.5]], dtype=float32)
    """
    res = _out(logits, out)
    pres = _per_row(presence_penalty, res.shape[0])  # [B]
    freq = _per_row(frequency_penalty, res.shape[0])  # [B]
    for b, row in enumerate(counts):
        if row is None or (pres[b] == 0.0 and freq[b] == 0.0):
            continue
        ids, c = row.as_pair() if isinstance(row, TokenCounts) else row
        if len(ids) == 0:
            continue
        amount = (np.asarray(c) * freq[b] + pres[b]).astype(np.float32)  # [k]
        res[b, ids] -= amount
    return res


# --- 3. temperature -----------------------------------------------------------------------
def temperature(
    logits: np.ndarray,
    t: float | Sequence[float] | np.ndarray,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Divide each row by its temperature: ``z[b] /= float32(t[b])``.

    Range 0 … 2. ``t = 1`` is neutral; ``t = 0`` means greedy and leaves the row as it
    is (the argmax does not depend on scale; see :func:`sampler.select.greedy`). A
    positive ``t`` so small that the row's maximum divided by it overflows float32 (or
    that rounds to 0 in float32) gives the limit ``t -> 0+`` of the sampled distribution:
    the row becomes 0 at its maxima and ``-inf`` elsewhere (:func:`scaled_max_overflows`).

    >>> temperature(np.array([[1.0, -2.0], [1.0, -2.0]], dtype=np.float32), [2.0, 0.0])
    array([[ 0.5, -1. ],
           [ 1. , -2. ]], dtype=float32)
    >>> temperature(np.array([[3.0, 1.0, 3.0]], dtype=np.float32), 1e-300)
    array([[  0., -inf,   0.]], dtype=float32)
    """
    res = _out(logits, out)
    ts = _per_row(t, res.shape[0])  # [B]
    for b in np.flatnonzero((ts != 1.0) & (ts != 0.0)):
        t32 = np.float32(ts[b])
        row = res[b]  # [V]
        if t32 < 1 and scaled_max_overflows(row.max(), t32):
            limit_row(row, row.max(), out=row)
        else:
            with np.errstate(over="ignore"):  # a very negative value may become -inf
                row /= t32
    return res


def scaled_max_overflows(row_max: float, t: np.float32) -> bool:
    """Whether ``float32(row_max / t)`` is not finite (``t`` itself 0 included): then the
    step-3 row is the limit :func:`limit_row` instead of ``z / t``. Division rounds
    monotonically, so ``float32(max z / t)`` is the largest value of ``z / t``: when it is
    finite nothing in the row can become NaN, and a value that overflows to ``-inf``
    just has probability 0, as the definition gives it.

    >>> scaled_max_overflows(100.0, np.float32(1e-37))  # 1e39 > 3.4e38
    True
    >>> scaled_max_overflows(100.0, np.float32(1e-30))
    False
    """
    if t == 0:
        return True
    with np.errstate(over="ignore"):
        return not np.isfinite(np.float32(row_max) / t)


def limit_row(row: np.ndarray, row_max: float, *, out: np.ndarray | None = None) -> np.ndarray:
    """The step-3 row in the limit ``T -> 0+``: 0 where ``row == row_max``, ``-inf``
    elsewhere (float32 ``[V]``). As T shrinks, ``softmax(z / T)`` puts all its mass on the
    maxima, equally: a single maximum is drawn surely, tied maxima uniformly (top_p
    still keeps the lowest ids among them first).

    >>> limit_row(np.array([1.0, 2.0, 2.0], dtype=np.float32), 2.0)
    array([-inf,   0.,   0.], dtype=float32)
    """
    hit = row == np.float32(row_max)  # [V]
    res = np.empty(row.shape, dtype=np.float32) if out is None else out
    res.fill(-np.inf)
    res[hit] = 0.0
    return res


# --- 4. top_p -----------------------------------------------------------------------------
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
    f32, f64 = scratch if scratch is not None else (np.empty(e.size, np.float32),
                                                    np.empty(e.size, np.float64))  # fmt: skip
    for t in _thresholds(p, total, e.size):
        above_t = e >= t  # [V]
        n = int(np.count_nonzero(above_t))
        if n <= _SMALL:
            cand = np.flatnonzero(above_t)  # [n] ids above the threshold, increasing
            kept = _small_nucleus(cand.tolist(), e[cand].tolist(), target, last=t == 0)
            if kept is not None:
                vals = e[kept]  # [k]
                cut = vals.min()
                return cut, int(np.count_nonzero(vals == cut)), len(kept), cand
            continue
        cand = np.flatnonzero(above_t) if n <= _LISTED else None  # [n]
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


_LISTED = 16384  # candidate sets up to this size are listed by id (<= 128 KB of int64)


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
        above = e >= _FIRST_THRESHOLD  # [V]
        if np.count_nonzero(above) > _SMALL:  # (a count is cheaper than the ids)
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


_FIRST_THRESHOLD = 1e-4  # relative to the largest value (1): few tokens on peaked rows


def _thresholds(p: float, total: float, size: int) -> tuple[float, ...]:
    # e = exp(z - max) so the largest value is 1. Everything below (1-p)*total/size sums
    # to less than (1-p)*total, so that threshold always leaves >= p*total; 0 is the
    # belt-and-braces end for rounding at the edge.
    return (_FIRST_THRESHOLD, (1.0 - p) * total / size, 0.0)


_SMALL = 64  # candidate sets up to this size are handled in plain Python floats


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


def top_p(
    logits: np.ndarray,
    p: float | Sequence[float] | np.ndarray,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Set every logit outside each row's minimal nucleus to ``-inf``.

    Keeps the smallest set of most probable tokens whose probability sums to ``>= p``
    (at least one token; ties ordered by lower id first). Range 0 … 1; ``p = 1`` is
    neutral and ``p = 0`` keeps only the most probable token. Apply after temperature.

    >>> z = np.log(np.array([[0.5, 0.3, 0.2]], dtype=np.float32))
    >>> np.isfinite(top_p(z, 0.8))
    array([[ True,  True, False]])
    """
    res = _out(logits, out)
    ps = _per_row(p, res.shape[0])  # [B]
    for b in np.flatnonzero(ps < 1.0):
        row = res[b]  # [V]
        with np.errstate(over="ignore"):  # a value far below the max: exp(-inf) = 0
            e = np.exp(row - row.max())  # [V] float32, largest = 1
        ids, _ = nucleus(e, float(e.sum(dtype=np.float64)), float(ps[b]))
        keep = row[ids]  # [k]
        row.fill(-np.inf)
        row[ids] = keep
    return res
