"""The KV caches a :class:`~sampler.decoder.Decoder` returns, and how a batch reshapes them.

:class:`KVCache` (HF/Optimum graphs) is immutable: each step returns a new one, left-padded.
:class:`SharedKVCache` (``attention="gqa"`` graphs) holds buffers ORT updates in place,
each row's keys starting at position 0 of its own slot. Both have ``take`` (keep some
rows) and ``merge`` (join batches) for the scheduler, between steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["KVCache", "SharedKVCache"]


@dataclass(frozen=True, eq=False)
class KVCache:
    """The keys and values of every layer for a batch of rows, left-padded to one length.

    ``keys[i]``/``values[i]`` are [B, Hkv, L, hd]; ``mask`` int64 [B, L] is 1 on real tokens,
    0 on padding; ``lengths`` int64 [B] counts each row's real tokens (= the position of its
    next token). A cache is never modified in place: every operation returns a new one.

    >>> c = KVCache.empty(2, num_layers=1, num_kv_heads=1, head_dim=2)
    >>> c.batch, c.length
    (2, 0)
    """

    keys: tuple[np.ndarray, ...]
    values: tuple[np.ndarray, ...]
    mask: np.ndarray
    lengths: np.ndarray

    @staticmethod
    def empty(
        batch: int,
        *,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: np.dtype | type = np.float32,
    ) -> KVCache:
        """A cache of ``batch`` rows holding nothing yet."""
        z = np.zeros((batch, num_kv_heads, 0, head_dim), dtype=dtype)  # [B, Hkv, 0, hd]
        return KVCache(
            (z,) * num_layers,
            (z,) * num_layers,
            np.zeros((batch, 0), np.int64),
            np.zeros(batch, np.int64),
        )

    @property
    def batch(self) -> int:
        return self.mask.shape[0]

    @property
    def length(self) -> int:
        """Columns held (the longest row's length plus any padding in front of it)."""
        return self.mask.shape[1]

    def take(self, rows: Sequence[int] | np.ndarray) -> KVCache:
        """The cache of rows ``rows`` (any order, repeats allowed), minus leading columns that
        are padding in every kept row.

        >>> c = KVCache.empty(2, num_layers=1, num_kv_heads=1, head_dim=2)
        >>> c.take([1, 1, 0]).batch
        3
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)  # [B']
        mask = self.mask[rows]  # [B', L]
        used = mask.any(axis=0)  # [L]
        start = int(np.argmax(used)) if used.any() else self.length
        return KVCache(
            tuple(k[rows, :, start:] for k in self.keys),  # [B', Hkv, L', hd]
            tuple(v[rows, :, start:] for v in self.values),
            mask[:, start:],
            self.lengths[rows],
        )

    @staticmethod
    def merge(caches: Sequence[KVCache]) -> KVCache:
        """One cache holding the rows of ``caches`` in order, the shorter ones left-padded.

        >>> a = KVCache.empty(1, num_layers=2, num_kv_heads=1, head_dim=4)
        >>> KVCache.merge([a, a.take([0, 0])]).batch
        3
        """
        first = _check_mergeable(caches, "KVCache")
        length = max(c.length for c in caches)
        merged = KVCache(
            tuple(
                _left_pad_cat([c.keys[i] for c in caches], length, axis=2)
                for i in range(len(first.keys))
            ),
            tuple(
                _left_pad_cat([c.values[i] for c in caches], length, axis=2)
                for i in range(len(first.values))
            ),
            _left_pad_cat([c.mask for c in caches], length, axis=1),
            np.concatenate([c.lengths for c in caches]),
        )
        return merged.take(np.arange(merged.batch)) if merged.batch else merged


def _check_mergeable(caches: Sequence[Any], kind: str) -> Any:
    """The first of ``caches`` after checking they all come from one model's layout."""
    if not caches:
        raise ValueError(f"{kind}.merge needs at least one cache")
    first = caches[0]
    for c in caches[1:]:
        if (
            len(c.keys) != len(first.keys)
            or c.keys[0].shape[1::2] != first.keys[0].shape[1::2]
            or c.keys[0].dtype != first.keys[0].dtype
        ):
            raise ValueError(
                f"{kind}.merge: caches come from different models "
                "(layers, KV heads, head size or dtype differ)"
            )
    return first


def _left_pad_cat(arrays: list[np.ndarray], length: int, axis: int) -> np.ndarray:
    """Concatenate along axis 0 after left-padding ``axis`` with zeros up to ``length``."""
    shape = list(arrays[0].shape)
    shape[0], shape[axis] = sum(a.shape[0] for a in arrays), length
    out = np.zeros(shape, dtype=arrays[0].dtype)
    row = 0
    for a in arrays:
        index = [slice(row, row + a.shape[0])] + [slice(None)] * (a.ndim - 1)
        index[axis] = slice(length - a.shape[axis], length)
        out[tuple(index)] = a
        row += a.shape[0]
    return out


@dataclass(frozen=True, eq=False)
class SharedKVCache:
    """The keys and values of every layer in buffers that decode steps update in place.

    For graphs built with ``attention="gqa"``: ``keys[i]``/``values[i]`` are [B, Hkv,
    capacity, hd], each row's keys at positions ``0 .. lengths[row] - 1`` (no padding; the
    rest of the buffer is unused). :meth:`Decoder.step` writes the new token's keys into
    these buffers and returns a cache sharing them, so the cache passed to it must not be
    used again. ``take`` and ``merge`` copy, like :class:`KVCache`'s.

    >>> c = SharedKVCache.empty(2, num_layers=1, num_kv_heads=1, head_dim=2)
    >>> c.batch, c.length, c.take([1, 1, 0]).batch
    (2, 0, 3)
    """

    keys: tuple[np.ndarray, ...]
    values: tuple[np.ndarray, ...]
    lengths: np.ndarray
    # ORT's binding of these buffers, shared by the caches a step hands on (same buffers):
    # [session, io_binding] once bound, so a step binds the 2 x layers buffers only once
    binding: list = field(default_factory=list, compare=False, repr=False)

    @staticmethod
    def empty(
        batch: int,
        *,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int = 0,
        dtype: np.dtype | type = np.float32,
    ) -> SharedKVCache:
        """A cache of ``batch`` rows holding nothing yet, with room for ``capacity`` tokens."""

        def buffer() -> np.ndarray:
            return np.zeros((batch, num_kv_heads, capacity, head_dim), dtype)  # [B, Hkv, C, hd]

        return SharedKVCache(
            tuple(buffer() for _ in range(num_layers)),
            tuple(buffer() for _ in range(num_layers)),
            np.zeros(batch, np.int64),
        )

    @property
    def batch(self) -> int:
        return self.lengths.shape[0]

    @property
    def length(self) -> int:
        """The longest row's length."""
        return int(self.lengths.max()) if self.batch else 0

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def take(self, rows: Sequence[int] | np.ndarray) -> SharedKVCache:
        """A copy holding rows ``rows`` (any order, repeats allowed)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)  # [B']
        lengths = self.lengths[rows]
        cap = cache_capacity(int(lengths.max()) if rows.size else 0, self.capacity)
        return SharedKVCache(
            tuple(k[rows, :, :cap] for k in self.keys),  # [B', Hkv, C', hd]
            tuple(v[rows, :, :cap] for v in self.values),
            lengths,
        )

    def compact(self, keep: Sequence[int]) -> tuple[SharedKVCache, list[int]]:
        """Keep rows ``keep`` (increasing) in place: each hole left by a removed row is
        filled by one of the last rows, so only as many rows move as were removed, and no
        buffer is allocated. Returns the cache (views of the same buffers; do not use this
        one again) and, for each new row, the old row it holds.

        >>> c = SharedKVCache.empty(4, num_layers=1, num_kv_heads=1, head_dim=2, capacity=4)
        >>> c.lengths[:] = [1, 2, 3, 4]
        >>> d, order = c.compact([0, 2, 3])
        >>> order, d.lengths.tolist()
        ([0, 3, 2], [1, 4, 3])
        """
        keep = [int(k) for k in keep]
        m, kept = len(keep), set(keep)
        holes = [r for r in range(m) if r not in kept]
        movers = [r for r in keep if r >= m]
        order = list(range(m))
        for hole, mover in zip(holes, movers):
            for buf in self.keys + self.values:
                buf[hole] = buf[mover]
            order[hole] = mover
        lengths = self.lengths[order]
        return (
            SharedKVCache(
                tuple(k[:m] for k in self.keys), tuple(v[:m] for v in self.values), lengths
            ),
            order,
        )

    def append(self, others: Sequence[SharedKVCache]) -> SharedKVCache:
        """This cache's rows then ``others``' rows, written in place into spare rows of
        this cache's buffers when they have room (do not use this one again); else
        copied into new buffers with room for half as many rows again."""
        new = sum(c.batch for c in others)
        need = self.batch + new
        longest = max([self.length] + [c.length for c in others])
        root = [_root(b) for b in self.keys + self.values]
        if all(r.shape[0] >= need for r in root) and longest <= self.capacity:
            keys = tuple(_root(k)[:need] for k in self.keys)
            values = tuple(_root(v)[:need] for v in self.values)
            row = self.batch
            for c in others:
                n = c.length
                for dst, src in zip(keys + values, c.keys + c.values):
                    dst[row : row + c.batch, :, :n] = src[:, :, :n]  # (past n: never read)
                row += c.batch
            return SharedKVCache(
                keys, values, np.concatenate([self.lengths, *[c.lengths for c in others]])
            )
        return SharedKVCache.merge([self, *others], rows=need + max(8, need // 2))

    def reserve(self, extra: int, limit: int) -> SharedKVCache:
        """This cache if it has room for ``extra`` more tokens per row, else a copy that has
        (capacity grows by doubling, up to ``limit``)."""
        need = self.length + extra
        if need <= self.capacity:
            return self
        cap = max(cache_capacity(need, limit), min(2 * self.capacity, limit))
        return SharedKVCache.merge([self], capacity=cap)

    @staticmethod
    def merge(
        caches: Sequence[SharedKVCache], *, capacity: int = 0, rows: int = 0
    ) -> SharedKVCache:
        """One cache holding the rows of ``caches`` in order (copied into new buffers, with
        room for ``rows`` rows in all when that is more: see :meth:`append`)."""
        first = _check_mergeable(caches, "SharedKVCache")
        shape = first.keys[0].shape
        cap = max([capacity] + [cache_capacity(c.length, c.capacity) for c in caches])
        batch = sum(c.batch for c in caches)
        out = SharedKVCache.empty(
            max(batch, rows),
            num_layers=len(first.keys),
            num_kv_heads=shape[1],
            head_dim=shape[3],
            capacity=cap,
            dtype=first.keys[0].dtype,
        )
        row = 0
        for c in caches:
            n = c.length
            for dst, src in zip(out.keys + out.values, c.keys + c.values):
                dst[row : row + c.batch, :, :n] = src[:, :, :n]
            out.lengths[row : row + c.batch] = c.lengths
            row += c.batch
        if out.batch == batch:
            return out
        return SharedKVCache(
            tuple(k[:batch] for k in out.keys),
            tuple(v[:batch] for v in out.values),
            out.lengths[:batch],
        )


def _root(buf: np.ndarray) -> np.ndarray:
    """The whole buffer a cache's row view starts (itself when it is not such a view)."""
    base = buf.base
    if (
        isinstance(base, np.ndarray)
        and base.shape[1:] == buf.shape[1:]
        and base.ctypes.data == buf.ctypes.data
        and base.dtype == buf.dtype
        and base.flags.c_contiguous
    ):
        return base
    return buf


_CAPACITY_STEP = 256  # buffer lengths are multiples of this (or the context length)


def cache_capacity(need: int, limit: int) -> int:
    """``need`` rounded up to the next multiple of the step, at most ``max(limit, need)``."""
    rounded = -(-max(need, 1) // _CAPACITY_STEP) * _CAPACITY_STEP
    return max(need, min(rounded, limit))
