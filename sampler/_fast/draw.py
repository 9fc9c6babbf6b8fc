"""Steps 1-5 fused for one row: one exp pass, and none when the raw side decides.

The definition (:mod:`sampler.reference`) computes each step's row in full; here the bias
and penalties touch their ids only, temperature is one division pass, the nucleus comes
from :mod:`.nucleus` (or from bounds on the raw side's exps, with no processed pass), and
the draw sums exact integer weights by blocks. Equal to the definition token for token.

>>> import numpy as np
>>> z = np.log(np.array([0.1, 0.5, 0.15, 0.25], dtype=np.float32))
>>> draw(z, 1.0, 0.7, 0.6), draw(z, 1.0, 0.7, 0.7), draw(z, 0.0, 1.0, 0.9)
(1, 3, 1)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..reference import WEIGHT_SCALE, need
from .edits import Edits
from .limit import scaled_max_overflows
from .nucleus import bucket_cut, few_candidates, prefix, weigh
from .sizes import BLOCK, SMALL

_SCALE32 = np.float32(WEIGHT_SCALE)


class Workspace:
    """One reusable row buffer (and an int64 buffer of bucket keys for a large nucleus,
    made on first need), so the hot path allocates no V-sized float temporaries: a fresh
    400 KB array can cost ~100 page faults when the heap hands it back to the OS each time."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab
        self.e = np.empty(vocab, dtype=np.float32)  # [V]
        self._keys: np.ndarray | None = None

    def keys(self) -> np.ndarray:
        """An int64 [V] buffer for :func:`.nucleus.bucket_cut`, made once."""
        if self._keys is None:
            self._keys = np.empty(self.vocab, np.int64)
        return self._keys

    @classmethod
    def for_row(cls, row: np.ndarray, ws: Workspace | None) -> Workspace:
        return ws if ws is not None and ws.vocab == row.shape[-1] else cls(row.shape[-1])


def _target(u: float, total: int) -> int:
    """``floor(floor(u * 2**53) * total / 2**53)``: exact, and below ``total`` for u < 1."""
    return (int(u * 2**53) * total) >> 53


def _pick_small(ids: Sequence[int], weights: Sequence[int], u: float) -> int:
    """The draw over a few (id, weight) pairs, ids increasing, in Python integers."""
    r = _target(u, sum(weights))
    acc = 0
    for i, w in zip(ids, weights):
        acc += w
        if acc > r:
            return int(i)
    raise AssertionError("unreachable: r < W")  # pragma: no cover


def _pick_full(e: np.ndarray, u: float) -> int:
    """The draw over every id of the row ``e`` (float32 [V], largest value 1); uses up ``e``
    (it becomes the integer weights)."""
    return _pick_weights(weigh(e, e), u)


def _pick_weights(wf: np.ndarray, u: float) -> int:
    """The draw over a row of integer weights ``wf`` (float32 [V]; 0: never drawn).

    A block of 1024 weights sums exactly in float64 (< 2**53), so the block sums are exact
    whatever the summation order; they find the block, one block's running sum the id.
    """
    n_full = wf.size - wf.size % BLOCK
    blocks = wf[:n_full].reshape(-1, BLOCK).sum(axis=1, dtype=np.float64)  # [nb] exact
    tail = wf[n_full:].sum(dtype=np.float64)
    ends = np.cumsum(np.append(blocks, tail).astype(np.int64))  # [nb + 1] exact
    r = _target(u, int(ends[-1]))
    b = int(np.searchsorted(ends, r, side="right"))
    start = b * BLOCK
    run = np.cumsum(wf[start : start + BLOCK].astype(np.int64))  # [<= 1024]
    before = int(ends[b - 1]) if b else 0
    return start + int(np.searchsorted(run, r - before, side="right"))


def _exps(row: np.ndarray, out: np.ndarray, top: np.float32 | None = None) -> np.ndarray:
    """``exp(row - max row)`` into ``out`` (float32 [V]); ``top``: the max, when known."""
    np.subtract(row, row.max() if top is None else top, out=out)
    return np.exp(out, out=out)


def draw(
    row: np.ndarray,
    temperature: float,
    top_p: float,
    u: float,
    *,
    bias: tuple[np.ndarray, np.ndarray] | None = None,
    penalty: tuple[np.ndarray, np.ndarray] | None = None,
    edits: Edits | None = None,
    workspace: Workspace | None = None,
    raw_top: tuple[Sequence[int], Sequence[float]] | None = None,
    raw_total: float | None = None,
) -> int:
    """The engine's fused steps 1–5 for one row of masked logits ``[V]`` (not modified).

    ``bias = (ids, values)`` and ``penalty = (ids, amounts)`` (unique ids, float32) are
    what :func:`~sampler.processors.logit_bias` adds and
    :func:`~sampler.processors.penalties` subtracts, applied at those ids only, with the
    same float32 operations. Equivalent to ``sample(top_p(temperature(processed, T), p),
    [u])`` (``greedy`` at T = 0), with one full-row exp and a sort of the nucleus
    candidates only. A caller that keeps both as one :class:`Edits` passes ``edits``
    instead; ``raw_top = (ids, values)``, the top ids of ``row`` (largest first, ties to
    the lower id) and their values, when the caller has them, saves the passes that would
    find the max and the nucleus candidates. ``raw_total``: given with ``raw_top`` when the
    workspace holds the raw row's exps ``exp(row - max row)`` and this is their float64
    sum; a nucleus that the candidates decide alone (:func:`_nucleus_from_raw`) is then
    drawn without any pass over the processed row.

    A positive ``temperature`` whose division overflows the row's maximum is the limit
    T -> 0+ (:func:`.limit.limit_row`).

    >>> z = np.log(np.array([0.1, 0.5, 0.15, 0.25], dtype=np.float32))
    >>> draw(z, 1.0, 0.7, 0.6), draw(z, 1.0, 0.7, 0.7), draw(z, 0.0, 1.0, 0.9)
    (1, 3, 1)
    """
    with np.errstate(over="ignore"):  # float32 values far below the max may become -inf
        return _draw(
            row,
            temperature,
            top_p,
            u,
            bias=bias,
            penalty=penalty,
            edits=edits,
            workspace=workspace,
            raw_top=raw_top,
            raw_total=raw_total,
        )


def _draw(
    row: np.ndarray,
    temperature: float,
    top_p: float,
    u: float,
    *,
    bias: tuple[np.ndarray, np.ndarray] | None = None,
    penalty: tuple[np.ndarray, np.ndarray] | None = None,
    edits: Edits | None = None,
    workspace: Workspace | None = None,
    raw_top: tuple[Sequence[int], Sequence[float]] | None = None,
    raw_total: float | None = None,
) -> int:
    """:func:`draw` without its error-state context (callers that loop over rows enter
    it once)."""
    ws = Workspace.for_row(row, workspace)
    e = ws.e  # [V]
    if edits is None:
        edits = Edits.of(bias, penalty)
    row_max = None if raw_top is None else (int(raw_top[0][0]), raw_top[1][0])
    if temperature == 0.0:
        if edits is None:
            return int(np.argmax(row)) if row_max is None else int(row_max[0])
        _processed(row, np.float32(1.0), edits, e)
        return int(np.argmax(e))
    t = np.float32(temperature)
    if t < 1:  # only a division by t < 1 can overflow: the limit T -> 0+ decided first
        m = _edited_max(row, edits, raw_top)
        if t == 0 or (m is not None and scaled_max_overflows(m, t)):
            return _pick_limit(row, edits, top_p, u, ws)
    if raw_total is not None and raw_top is not None and top_p < 1.0:
        few = _nucleus_from_raw(row, temperature, top_p, edits, raw_top, e, raw_total)
        if few is not None:
            return _pick_small(*few, u)
    edited_max = _processed(row, t, edits, e)
    top = _processed_max(e, t, edits, row_max, edited_max)
    if not np.isfinite(top):  # the row's maximum over t overflowed (found by the pass)
        return _pick_limit(row, edits, top_p, u, ws)
    _exps(e, e, top)  # the one full-row exp
    if top_p >= 1.0:
        return _pick_full(e, u)
    # one top id bounds nothing useful (the bound would be the max itself)
    outside = (
        None if raw_top is None or len(raw_top[0]) < 2 else _bound_outside(raw_top, t, top, edits)
    )
    return pick(e, top_p, u, outside=outside, workspace=ws)


def _edited_max(
    row: np.ndarray, edits: Edits | None, raw_top: tuple[Sequence[int], Sequence[float]] | None
) -> float | None:
    """The largest value of the row after steps 1–2, when the raw top ids settle it
    without a pass (None otherwise): every unedited id is at most the first unedited top
    id, and the edited ids are computed as :func:`_processed` does."""
    if raw_top is None:
        return None
    ids, values = raw_top
    if edits is None:
        return float(values[0])
    plain = next((v for i, v in zip(ids, values) if i not in edits.where), None)
    if plain is None:
        return None
    return max(float(plain), float(((row[edits.ids] + edits.add) - edits.sub).max()))


def _pick_limit(row: np.ndarray, edits: Edits | None, top_p: float, u: float, ws: Workspace) -> int:
    """Steps 3–5 in the limit T -> 0+ (:func:`.limit.limit_row`): every
    maximum of the step-2 row has exp 1, every other id 0; then the nucleus and the draw
    as usual (a single maximum is drawn surely, tied ones uniformly)."""
    e = ws.e  # [V]
    _processed(row, np.float32(1.0), edits, e)  # steps 1-2
    np.copyto(e, e == e.max())  # [V] 1.0 at the maxima, 0.0 elsewhere
    return pick(e, top_p, u, workspace=ws)


def _bound_outside(
    raw_top: tuple[Sequence[int], Sequence[float]],
    t: np.float32,
    top: np.float32,
    edits: Edits | None,
) -> tuple[np.ndarray, float]:
    """``(ids, bound)``: every id outside the raw top ids and the edited ones has
    ``e <= bound`` (see :func:`_exp_bound`)."""
    top_ids = raw_top[0]
    ids = np.asarray(top_ids) if edits is None else np.concatenate((top_ids, edits.ids))  # [k + m]
    return ids, _exp_bound(float(raw_top[1][-1]), float(t), float(top))


def _exp_bound(last: float, t: float, top: float) -> float:
    """A bound on the processed exp ``exp(float32(float32(z / t) - top))`` of every
    unedited id whose raw value ``z`` is at most ``last`` (division, subtraction and exp
    are monotonic), computed in float64: the two float32 roundings move the argument by at
    most ``2**-22 * (|last| / t + |top|)``, and a relative 2**-20 covers an exp that is not
    exactly rounded. 0 when ``last`` is -inf; inf when it overflows."""
    if last == -math.inf:
        return 0.0
    y = last / t - top + 2.0**-22 * (abs(last) / t + abs(top))
    return math.exp(y) * (1.0 + _EXP_SLACK) if y < 700.0 else math.inf


_EXP_SLACK = 2.0**-20  # a float32 exp's relative error, with room (NumPy's: < 3 ulp)

_NORMAL = 2.0**-125  # above every float32 exp of an argument below the normal range's end


def _nucleus_from_raw(
    row: np.ndarray,
    temperature: float,
    top_p: float,
    edits: Edits | None,
    raw_top: tuple[Sequence[int], Sequence[float]],
    raw_e: np.ndarray,
    raw_total: float,
) -> tuple[list[int], list[int]] | None:
    """Steps 1–4 decided from the raw side alone: the kept ids (increasing) and their
    weights, with no pass over the processed row; None when that cannot decide.

    ``raw_e`` holds ``exp(row - m)`` (``m`` the raw max) and ``raw_total`` its float64 sum.
    The candidates are the raw top ids and the edited ids: their processed values and exps
    are computed with the full pass's float32 operations. Every other id ``j`` is unedited
    and ``row[j] <= last`` (the last top value), so for ``0 < t <= 1`` (``s = 1/t >= 1``),
    with ``x = row[j] - m <= last - m``, its processed exp ``exp(s*x + m/t - top)`` is at
    most ``exp(x) * exp((s-1)*(last - m) + m/t - top)``: the processed tail is at most that
    factor times the raw tail ``raw_total - raw_e[candidates].sum()`` (plus rounding
    slack, :func:`_tail_bound`). The total weight ``W`` lies in ``[the candidates'
    weights, that + 2**43 * tail bound]``; :func:`.nucleus.prefix` decides if both ends
    keep the same set.
    """
    ids, values = raw_top
    if len(ids) < 2 or not 0.0 < temperature <= 1.0 or not math.isfinite(values[0]):
        return None
    where = edits.where if edits is not None else ()
    plain = [i for i in ids if i not in where]  # raw top ids that no edit touched
    if not plain:
        return None
    cand = np.array(plain) if edits is None else np.concatenate((plain, edits.ids))  # [c]
    z = row[cand]  # [c] raw values
    if edits is not None:
        edited = z[len(plain) :]  # [k] a view: the full pass's ((z + add) - sub), in place
        edited += edits.add
        edited -= edits.sub
    t = np.float32(temperature)
    z /= t  # [c] processed values; every other id's is at most plain[0]'s
    top = z.max()  # the processed row's max
    z -= top
    pe = np.exp(z, out=z)  # [c] their exps, as the full pass computes them
    m, last, tf, top = float(values[0]), float(values[-1]), float(t), float(top)
    if last == -math.inf:  # every other id is -inf: exp 0
        tail = 0.0
    else:
        raw_tail = raw_total - float(raw_e[cand].sum(dtype=np.float64))
        bound = _tail_bound(m, last, tf, top, raw_tail, raw_total, row.size)
        if bound is None:
            return None
        tail = bound
    # W, the total weight: the candidates' exact weights, plus at most 2**43 * tail
    wc = np.floor(pe.astype(np.float64) * WEIGHT_SCALE)  # [c] floor(pe * 2**43), exact
    inside = int(wc.sum())  # exact: a few hundred integers below 2**44
    hi = inside + math.ceil(tail * WEIGHT_SCALE * (1.0 + 2.0**-30)) + 1
    bound = _exp_bound(last, tf, top)  # no other id's exp is above it
    out = math.floor(bound * WEIGHT_SCALE)  # nor its weight above this
    sel = (pe > bound).nonzero()[0]  # [n] a superset of the ids weighing more than out
    if sel.size > SMALL:
        return None
    top_set = sorted((i, int(w)) for i, w in zip(cand[sel].tolist(), wc[sel].tolist()) if w > out)
    ids, w = [i for i, _ in top_set], [x for _, x in top_set]
    kept = prefix(ids, w, need(top_p, inside), need(top_p, hi))
    if kept is None:
        return None
    weight = dict(top_set)
    return kept, [weight[i] for i in kept]


def _tail_bound(
    m: float, last: float, t: float, top: float, raw_tail: float, raw_total: float, vocab: int
) -> float | None:
    """The bound of :func:`_nucleus_from_raw` on the sum of the processed exps of the ids
    outside the candidates, or None when it overflows.

    Slack: the processed exponent ``(row/t) - top`` is rounded twice in float32, by at most
    ``2**-23 * (|top| + 200)`` for any id whose exp is normal; a raw exp is within 2**-16
    of ``exp(x)`` (rounded ``row - m``, then exp); exps of arguments below float32's
    normal range are bounded absolutely, per id; the float64 sums are within 2**-30.
    """
    g = last / t - top + (m - last)
    g += 2.0**-23 * (abs(top) + 200.0) + 2.0**-40 * (abs(last) / t + abs(top) + abs(m) + abs(last))
    if g > 700.0:
        return None
    factor = math.exp(g) * (1.0 + _EXP_SLACK)
    raw_tail = max(raw_tail + raw_total * 2.0**-30, 0.0)
    return factor * ((1.0 + 2.0**-16) * raw_tail + vocab * _NORMAL) + vocab * _NORMAL


def pick(
    e: np.ndarray,
    top_p: float,
    u: float,
    total: float | None = None,
    *,
    outside: tuple[np.ndarray, float] | None = None,
    workspace: Workspace | None = None,
) -> int:
    """Steps 4–5 on a row's exps ``e`` (float32 [V], largest value 1), which it uses up.

    ``total``: ``e``'s float64 sum, when known (it brackets the total weight);
    ``outside``: as for :func:`.nucleus.few_candidates`; ``workspace``: its key buffer
    serves a large nucleus. A nucleus of a few candidates is drawn in plain Python
    integers; a larger one is found by :func:`.nucleus.bucket_cut`, the other ids'
    weights set to 0 in place, and the row drawn whole (weight 0 is never drawn).
    """
    if top_p >= 1.0:
        return _pick_full(e, u)
    few = few_candidates(e, top_p, outside, total)
    if few is not None:
        return _pick_small(*few, u)
    keys = workspace.keys() if workspace is not None else np.empty(e.size, np.int64)
    bucket, chosen, _ = bucket_cut(weigh(e, e), top_p, keys)  # e: now the weights
    kept = keys > bucket  # [V]
    kept[chosen] = True
    np.multiply(e, kept, out=e)  # [V] weights outside the nucleus -> 0 (a masked copyto
    return _pick_weights(e, u)  # with where= is ~9x slower on a scattered mask)


def _processed_max(
    e: np.ndarray,
    t: np.float32,
    edits: Edits | None,
    row_max: tuple[int, float] | None,
    edited_max: float,
) -> np.float32:
    """The max of the processed row ``e`` without a full pass, when ``row_max`` allows.

    Float32 division by ``t > 0`` is monotonic, so every id left as ``row / t`` is at most
    ``float32(max / t)``, which the raw argmax reaches if no bias or penalty touched it;
    the edited ids (largest value ``edited_max``) are then the only other contenders.
    """
    if row_max is None or (edits is not None and row_max[0] in edits.where):
        return e.max()
    top = np.float32(row_max[1]) / t if t != 1.0 else np.float32(row_max[1])
    return np.float32(max(top, edited_max))


def _processed(row: np.ndarray, t: np.float32, edits: Edits | None, out: np.ndarray) -> float:
    """Steps 1–3 into ``out``: ``((row + bias) - penalty) / t`` without copying the row.

    The division of the whole row is the one pass; the few edited ids are recomputed from
    ``row`` with the processors' float32 operations in their order. Returns the largest
    edited value (-inf: none).
    """
    if t != 1.0:
        np.divide(row, t, out=out)
    else:
        np.copyto(out, row)
    if edits is None or not edits.ids.size:
        return -np.inf
    vals = ((row[edits.ids] + edits.add) - edits.sub) / t  # [k] float32
    out[edits.ids] = vals
    return float(vals.max())
