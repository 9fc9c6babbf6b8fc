"""Choosing the next token: greedy, or an inverse-CDF draw with one uniform per row.

The draw is defined exactly, so that a slow reference reproduces it token for token:

- ``e = exp(z - max z)`` in float32 (``z``: the row after temperature), and the kept set
  ``K`` from :func:`sampler.processors.nucleus` (every id when ``top_p = 1``);
- integer weights ``w[j] = floor(e[j] * 2**43)`` for ``j`` in ``K`` (exact: a float32 times a
  power of two), so every sum below is exact whatever its order;
- with the uniform ``u`` in [0, 1) (float64, one per row per step, from the sequence's own
  generator), ``r = floor(floor(u * 2**53) * W / 2**53)`` where ``W = sum(w)``;
- the token is the first id of ``K``, in increasing id order, whose running sum of ``w``
  exceeds ``r``. Its probability is ``w[j] / W`` (a token below 2**-43 of the most probable
  one has weight 0 and is never drawn).

Exact integers make the full-row draw cheap: block sums find the block, then one block's
running sum finds the token (no float64 running sum over the whole vocabulary).

>>> import numpy as np
>>> z = np.log(np.array([[0.25, 0.5, 0.25]], dtype=np.float32))
>>> sample(z, [0.1]), sample(z, [0.5]), sample(z, [0.9]), greedy(z)
(array([0]), array([1]), array([2]), array([1]))
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .processors import nucleus

__all__ = ["WEIGHT_SCALE", "Workspace", "greedy", "sample", "draw"]

WEIGHT_SCALE = 2**43  # w = floor(e * 2**43); V * 2**43 < 2**63 for V up to a million
_SCALE32 = np.float32(WEIGHT_SCALE)
_BLOCK = 1024
_SMALL = 64  # kept sets up to this size are drawn in plain Python integers


class Workspace:
    """Reusable buffers for one row, so the hot path allocates nothing V-sized."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab
        self.e = np.empty(vocab, dtype=np.float32)  # [V] processed exps
        self.g = np.empty(vocab, dtype=np.float32)  # [V] raw side
        padded = -(-vocab // _BLOCK) * _BLOCK
        self.w = np.zeros(padded, dtype=np.int64)  # [V'] integer weights, zero tail

    @classmethod
    def for_row(cls, row: np.ndarray, ws: "Workspace | None") -> "Workspace":
        return ws if ws is not None and ws.vocab == row.shape[-1] else cls(row.shape[-1])


def greedy(logits: np.ndarray) -> np.ndarray:
    """The argmax of each row, ties to the lowest id: ``[B, V] -> [B]``."""
    return np.argmax(logits, axis=1)


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


def _pick_full(e: np.ndarray, u: float, ws: Workspace) -> int:
    """The draw over every id of the row ``e`` (float32 [V], largest value 1)."""
    w = ws.w  # [V'] zero beyond V
    np.multiply(e, _SCALE32, out=w[: e.size], casting="unsafe")  # float32, then truncated
    blocks = w.reshape(-1, _BLOCK).sum(axis=1)  # [V'/1024] exact
    ends = np.cumsum(blocks)  # [V'/1024]
    r = _target(u, int(ends[-1]))
    b = int(np.searchsorted(ends, r, side="right"))
    start = b * _BLOCK
    run = np.cumsum(w[start : start + _BLOCK])  # [1024]
    before = int(ends[b - 1]) if b else 0
    return start + int(np.searchsorted(run, r - before, side="right"))


def _pick_kept(ids: np.ndarray, vals: np.ndarray, u: float) -> int:
    """The draw over a kept set: ids increasing, ``vals`` their float32 exps."""
    if ids.size <= _SMALL:
        weights = [int(v * WEIGHT_SCALE) for v in vals.tolist()]
        return _pick_small(ids.tolist(), weights, u)
    w = (vals * _SCALE32).astype(np.int64)  # [k]
    run = np.cumsum(w)  # [k] exact
    return int(ids[int(np.searchsorted(run, _target(u, int(run[-1])), side="right"))])


def _exps(row: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``exp(row - max row)`` into ``out`` (float32 [V])."""
    np.subtract(row, row.max(), out=out)
    return np.exp(out, out=out)


def sample(logits: np.ndarray, u: Sequence[float] | np.ndarray) -> np.ndarray:
    """Draw one token per row from ``softmax(logits)`` with the uniforms ``u`` [B].

    Rows may hold ``-inf`` (e.g. after :func:`sampler.processors.top_p`): such tokens have
    weight 0 and are never drawn. Exactly the draw defined above, over every id.
    """
    out = np.empty(logits.shape[0], dtype=np.int64)  # [B]
    ws = Workspace(logits.shape[1])
    for b, row in enumerate(logits):
        out[b] = _pick_full(_exps(row, ws.e), float(u[b]), ws)
    return out


def draw(
    row: np.ndarray,
    temperature: float,
    top_p: float,
    u: float,
    *,
    bias: tuple[np.ndarray, np.ndarray] | None = None,
    penalty: tuple[np.ndarray, np.ndarray] | None = None,
    workspace: Workspace | None = None,
) -> int:
    """The engine's fused steps 1–5 for one row of masked logits ``[V]`` (not modified).

    ``bias = (ids, values)`` and ``penalty = (ids, amounts)`` (float32, unique ids) are
    added and subtracted at the few ids they touch, on the workspace's copy of the row,
    with the same float32 operations as :func:`~sampler.processors.logit_bias` and
    :func:`~sampler.processors.penalties`. Equivalent to
    ``sample(top_p(temperature(processed, T), p), [u])`` (``greedy`` at T = 0), with one
    full-row exp and a sort of the nucleus candidates only.

    >>> z = np.log(np.array([0.1, 0.5, 0.15, 0.25], dtype=np.float32))
    >>> draw(z, 1.0, 0.7, 0.6), draw(z, 1.0, 0.7, 0.7), draw(z, 0.0, 1.0, 0.9)
    (1, 3, 1)
    """
    ws = Workspace.for_row(row, workspace)
    e = ws.e  # [V]
    if bias is None and penalty is None:
        if temperature == 0.0:
            return int(np.argmax(row))
        src = row
    else:
        np.copyto(e, row)
        if bias is not None:
            e[bias[0]] += bias[1]
        if penalty is not None:
            e[penalty[0]] -= penalty[1]
        if temperature == 0.0:
            return int(np.argmax(e))
        src = e
    if temperature != 1.0:
        np.divide(src, np.float32(temperature), out=e)
    elif src is not e:
        np.copyto(e, src)
    _exps(e, e)  # the one full-row exp; the largest value is 1
    if top_p >= 1.0:
        return _pick_full(e, u, ws)
    ids, vals = nucleus(e, float(e.sum(dtype=np.float64)), top_p)
    return _pick_kept(ids, vals, u)
