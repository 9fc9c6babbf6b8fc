"""Step 5, choosing the next token: greedy, or an inverse-CDF draw with one uniform per row.

The draw is defined exactly (:func:`sampler.reference.draw`), so that the definition
reproduces it token for token:

- ``e = exp(z - max z)`` in float32 (``z``: the row after steps 1-4, ``-inf`` outside the
  nucleus);
- integer weights ``w[j] = floor(e[j] * 2**43)`` (exact: a float32 times a power of two),
  so every sum below is exact whatever its order;
- with the uniform ``u`` in [0, 1) (float64, one per row per step, from the sequence's own
  generator), ``r = floor(floor(u * 2**53) * W / 2**53)`` where ``W = sum(w)``;
- the token is the first id, in increasing id order, whose running sum of ``w`` exceeds
  ``r``. Its probability is ``w[j] / W`` (a token below 2**-43 of the most probable one has
  weight 0 and is never drawn).

Exact integers make the full-row draw cheap: block sums find the block, then one block's
running sum finds the token (no float64 running sum over the whole vocabulary). The engine
fuses steps 1-5 for each row (:func:`sampler.sample_step`); these are the batched steps.

>>> import numpy as np
>>> z = np.log(np.array([[0.25, 0.5, 0.25]], dtype=np.float32))
>>> sample(z, [0.1]), sample(z, [0.5]), sample(z, [0.9]), greedy(z)
(array([0]), array([1]), array([2]), array([1]))
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._fast.draw import Workspace, _exps, _pick_full
from .reference import WEIGHT_SCALE

__all__ = ["WEIGHT_SCALE", "greedy", "sample"]


def greedy(logits: np.ndarray) -> np.ndarray:
    """The argmax of each row, ties to the lowest id: ``[B, V] -> [B]``."""
    return np.argmax(logits, axis=1)


def sample(logits: np.ndarray, u: Sequence[float] | np.ndarray) -> np.ndarray:
    """Draw one token per row from ``softmax(logits)`` with the uniforms ``u`` [B].

    Rows may hold ``-inf`` (e.g. after :func:`sampler.processors.top_p`): such tokens have
    weight 0 and are never drawn. Exactly the draw defined above, over every id.
    """
    out = np.empty(logits.shape[0], dtype=np.int64)  # [B]
    ws = Workspace(logits.shape[1])
    with np.errstate(over="ignore"):  # a value far below the max: exp(-inf) = 0
        for b, row in enumerate(logits):
            _exps(row, ws.e)
            out[b] = _pick_full(ws.e, float(u[b]))
    return out
