"""Logits processors: one batched function per Completions parameter, and their order.

Every function takes logits ``[B, V]`` (float32) and per-row parameters, and returns the
processed logits. They are pure by default; pass ``out=`` (the NumPy ufunc convention,
``out=logits`` for in place) to reuse a buffer on a hot path. A parameter at its neutral
value changes nothing, and the sparse ones (``logit_bias``, ``penalties``) cost nothing
but a copy when ``out`` is not the input. Each equals its one-row definition in
:mod:`sampler.reference` (tests/test_properties.py).

The order is part of the contract (spec §3); :data:`STEP_ORDER` is the definition's, and
:func:`apply` follows it::

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

from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np

from ._fast.limit import limit_row, scaled_max_overflows
from ._fast.nucleus import kept_ids
from .reference import STEP_ORDER

__all__ = [
    "STEP_ORDER",
    "apply",
    "logit_bias",
    "penalties",
    "temperature",
    "top_p",
    "TokenCounts",
    "count_tokens",
]

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
    counts: Sequence[tuple[np.ndarray, np.ndarray] | TokenCounts | None],
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
    the row becomes 0 at its maxima and ``-inf`` elsewhere (docs/semantics.md).

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


# --- 4. top_p -----------------------------------------------------------------------------
def top_p(
    logits: np.ndarray,
    p: float | Sequence[float] | np.ndarray,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Set every logit outside each row's minimal nucleus to ``-inf``.

    Keeps the smallest set of most probable tokens whose probability sums to ``>= p``
    (at least one token; ties ordered by lower id first), the probabilities taken as the
    draw's exact integer weights (:func:`sampler.reference.nucleus`). Range 0 … 1;
    ``p = 1`` is neutral and ``p = 0`` keeps only the most probable token. Apply after
    temperature.

    >>> z = np.log(np.array([[0.5, 0.3, 0.2]], dtype=np.float32))
    >>> np.isfinite(top_p(z, 0.8))
    array([[ True,  True, False]])
    """
    res = _out(logits, out)
    ps = _per_row(p, res.shape[0])  # [B]
    wf = np.empty(res.shape[1], np.float32)  # [V] workspaces for a large nucleus
    keys = np.empty(res.shape[1], np.int64)  # [V]
    for b in np.flatnonzero(ps < 1.0):
        row = res[b]  # [V]
        with np.errstate(over="ignore"):  # a value far below the max: exp(-inf) = 0
            e = np.exp(row - row.max())  # [V] float32, largest = 1
        ids = kept_ids(e, float(ps[b]), wf, keys)
        keep = row[ids]  # [k]
        row.fill(-np.inf)
        row[ids] = keep
    return res


# --- steps 1-4, in order -------------------------------------------------------------------
def apply(
    logits: np.ndarray,
    params: Sequence[Any],
    counts: Sequence[TokenCounts | tuple[np.ndarray, np.ndarray] | None] | None = None,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Steps 1–4 on every row, in :data:`STEP_ORDER`: the distributions step 5 draws from.

    ``params[b]`` carries row ``b``'s ``logit_bias``, ``presence_penalty``,
    ``frequency_penalty``, ``temperature`` and ``top_p`` (a
    :class:`~sampler.params.SamplingParams`); ``counts[b]`` its generated tokens (None:
    none yet). A greedy row (temperature 0) stays at temperature 1, its top_p applied
    there: what ``logprobs_mode: "processed"`` reports for it.

    >>> from sampler.params import SamplingParams
    >>> z = np.log(np.array([[0.5, 0.3, 0.2]], dtype=np.float32))
    >>> np.isfinite(apply(z, [SamplingParams(temperature=0.5, top_p=0.6)]))
    array([[ True, False, False]])
    """
    res = _out(logits, out)
    counts = [None] * len(params) if counts is None else counts
    for name in STEP_ORDER:
        _STEPS[name](res, params, counts)
    return res


_STEPS = {
    "logit_bias": lambda z, ps, cs: logit_bias(z, [p.logit_bias for p in ps], out=z),
    "penalties": lambda z, ps, cs: penalties(
        z, cs, [p.presence_penalty for p in ps], [p.frequency_penalty for p in ps], out=z
    ),
    "temperature": lambda z, ps, cs: temperature(z, [p.temperature for p in ps], out=z),
    "top_p": lambda z, ps, cs: top_p(z, [p.top_p for p in ps], out=z),
}
