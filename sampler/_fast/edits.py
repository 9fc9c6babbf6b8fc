"""Steps 1-2 as one sparse edit of a row, kept up to date one generated token at a time."""

from __future__ import annotations

from collections.abc import Container
from typing import NamedTuple, Protocol

import numpy as np


class Counts(Protocol):
    """A sequence's generated tokens as :class:`sampler.processors.TokenCounts` keeps them."""

    added: list[int]  # every token, in order

    def count(self, token: int) -> int: ...


class Edits(NamedTuple):
    """Steps 1–2 as one sparse edit: ``z[ids] = (z[ids] + add) - sub`` in float32.

    ``add`` is the logit_bias and ``sub`` the penalty amount at each id (0 where there is
    none: ``z + 0`` and ``z - 0`` are exactly ``z``); ``where`` answers ``id in edits``.
    """

    ids: np.ndarray  # [k] int64, unique
    add: np.ndarray  # [k] float32
    sub: np.ndarray  # [k] float32
    where: Container[int]

    @classmethod
    def of(
        cls,
        bias: tuple[np.ndarray, np.ndarray] | None,
        penalty: tuple[np.ndarray, np.ndarray] | None,
    ) -> Edits | None:
        """The edit of a bias and a penalty given as ``(ids, values)`` pairs (or None)."""
        parts = [x for x in (bias, penalty) if x is not None and len(x[0])]
        if not parts:
            return None
        ids = np.unique(np.concatenate([np.asarray(x[0], np.int64) for x in parts]))  # [k]
        return cls(ids, _values_at(bias, ids), _values_at(penalty, ids), set(ids.tolist()))


def _values_at(pair: tuple[np.ndarray, np.ndarray] | None, ids: np.ndarray) -> np.ndarray:
    """The float32 value of each of ``ids`` in ``pair = (ids, values)`` (0 where none)."""
    out = np.zeros(ids.size, dtype=np.float32)  # [k]
    if pair is not None and len(pair[0]):
        src = np.asarray(pair[0], np.int64)
        out[np.searchsorted(ids, src)] = np.asarray(pair[1]).astype(np.float32, copy=False)
    return out


class RowEdits:
    """A row's bias and penalty amounts at the ids they touch, kept incrementally.

    The bias ids come first; each generated token's id is appended the first time it is
    seen (penalties on), and its amount ``float32(c * frequency + presence)`` rewritten
    whenever its count ``c`` grows -- the same float64 expression and rounding as
    :meth:`sampler.processors.TokenCounts.amounts`.
    """

    def __init__(self, bias: tuple[np.ndarray, np.ndarray] | None) -> None:
        ids, add = bias if bias is not None else (np.empty(0, np.int64), np.empty(0, np.float32))
        self.pos = {int(i): n for n, i in enumerate(ids.tolist())}
        self.ids, self.add = ids.copy(), add.copy()  # [cap]
        self.sub = np.zeros(ids.size, dtype=np.float32)  # [cap]
        self.n = ids.size
        self.seen = 0  # tokens of counts.added already applied

    def update(self, counts: Counts, presence: float, frequency: float) -> Edits | None:
        if presence != 0.0 or frequency != 0.0:
            f, p = float(frequency), float(presence)  # float64, as TokenCounts.amounts
            for token in counts.added[self.seen :]:
                self._set(token, np.float32(counts.count(token) * f + p))
            self.seen = len(counts.added)
        if not self.n:
            return None
        n = self.n
        return Edits(self.ids[:n], self.add[:n], self.sub[:n], self.pos)

    def _set(self, token: int, amount: np.float32) -> None:
        at = self.pos.get(token)
        if at is None:
            at = self.pos[token] = self.n
            if self.n == self.ids.size:  # grow geometrically: amortised O(1) per token
                cap = max(16, 2 * self.n)
                self.ids, self.add, self.sub = (
                    np.resize(a, cap) for a in (self.ids, self.add, self.sub)
                )
            self.ids[at], self.add[at] = token, 0.0
            self.n += 1
        self.sub[at] = amount
