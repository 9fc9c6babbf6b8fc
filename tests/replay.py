"""A decoder for ``sampler.Engine`` that replays logits another runtime computed (tests only).

Sequence ``s = prompt * n + candidate`` gets ``logits(s, step)`` at each step, and the engine
must ask for the token that runtime chose, ``tokens[s][step]``: so the engine, fed the same
logits with the same seed, is checked to make every choice the runtime made.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np


class ReplayCache:
    """Which sequence each engine row is, and at which step. ``take`` with a row repeated k
    times (the engine fanning a prompt out to its candidates) maps the j-th copy to sequence
    ``row + j``: candidate j of that prompt."""

    def __init__(self, rows: list[int], step: int) -> None:
        self.rows, self.step = rows, step

    @property
    def batch(self) -> int:
        return len(self.rows)

    def take(self, rows) -> ReplayCache:
        seen: Counter[int] = Counter()
        out = []
        for r in np.asarray(rows).reshape(-1).tolist():
            out.append(self.rows[r] + seen[r])
            seen[r] += 1
        return ReplayCache(out, self.step)


class ReplayDecoder:
    def __init__(
        self,
        config,
        vocab_size: int,
        logits: Callable[[int, int], np.ndarray],
        tokens: Sequence[Sequence[int]],
        n: int,
    ) -> None:
        self.config, self.vocab_size = config, vocab_size
        self.logits, self.tokens, self.n = logits, tokens, n

    def _rows(self, cache: ReplayCache) -> np.ndarray:
        return np.stack([self.logits(s, cache.step) for s in cache.rows])  # [B, V]

    def prefill(self, prompts, *, on_logits=None):
        cache = ReplayCache([p * self.n for p in range(len(prompts))], 0)
        return self._rows(cache), cache

    def step(self, cache: ReplayCache, tokens):
        want = [int(self.tokens[s][cache.step]) for s in cache.rows]
        assert np.asarray(tokens).tolist() == want, "the engine chose differently"
        nxt = ReplayCache(cache.rows, cache.step + 1)
        return self._rows(nxt), nxt
