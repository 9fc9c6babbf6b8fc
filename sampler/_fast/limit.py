"""Step 3 below float32's range: the limit T -> 0+ (docs/semantics.md).

>>> import numpy as np
>>> limit_row(np.array([1.0, 2.0, 2.0], dtype=np.float32), 2.0)
array([-inf,   0.,   0.], dtype=float32)
"""

from __future__ import annotations

import numpy as np


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
