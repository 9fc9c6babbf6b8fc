"""The model: a folder with an ONNX decoder + ``refsampler.json``, run with a KV cache.

A model folder holds::

    refsampler.json   {"format": "refsampler-model/1", "name": ..., "onnx": "model.onnx",
                       "tokenizer": "cl100k_base", "context_length": 2048,
                       "eos_token_ids": [100257],
                       "fim": {"prefix": 100258, "middle": 100259, "suffix": 100260} | null}
    model.onnx        a decoder with the HF/Optimum KV-cache I/O names (see sampler.onnx_llama)

``tokenizer`` is a registered name (``cl100k_base``) or an object describing a byte-level BPE
stored in the folder (``{"file": "tokenizer.tiktoken", "sha256", "pattern",
"special_tokens", "vocab_size", "name"}``, written by ``sampler.convert``; see
``sampler.tokenizer.tokenizer_for``).

:class:`Decoder` runs it: :meth:`Decoder.prefill` feeds whole prompts (left-padded, in column
chunks) and :meth:`Decoder.step` one token per row. Both return fresh logits the caller owns
and a cache: a new immutable :class:`KVCache` for graphs in the HF/Optimum convention, or a
:class:`SharedKVCache` whose buffers ORT updates in place for ``attention="gqa"`` graphs;
``take`` and ``merge`` reshape the batch between steps. A row's logits never depend on the
other rows: padding keys are masked and positions are per row (HF/Optimum), or rows have
no padding at all (GQA).

onnxruntime is imported only when a Decoder is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["FORMAT", "FimTokens", "ModelConfig", "load_config", "file_digest", "sha256_file", "KVCache",
           "SharedKVCache", "Decoder"]

FORMAT = "refsampler-model/1"
CONFIG_FILE = "refsampler.json"
_LOGITS_BUDGET = 128 * 2**20  # bytes of prefill logits per ORT run; bounds the chunk width
_HASH_BLOCK = 8 * 2**20


# ---------------------------------------------------------------- config


@dataclass(frozen=True)
class FimTokens:
    """Token ids of the fill-in-the-middle markers."""

    prefix: int
    middle: int
    suffix: int


@dataclass(frozen=True)
class ModelConfig:
    """A model folder's ``refsampler.json``, plus where it is and the ONNX file's sha256."""

    name: str
    onnx: str
    tokenizer: Any  # a tokenizer name such as "cl100k_base", or a folder tokenizer's object
    context_length: int
    eos_token_ids: tuple[int, ...]
    fim: FimTokens | None
    path: Path
    digest: str

    @property
    def onnx_path(self) -> Path:
        return self.path / self.onnx


def load_config(folder: str | os.PathLike) -> ModelConfig:
    """Read and check ``folder/refsampler.json``; every error names the offending field.

    >>> load_config("/nonexistent")
    Traceback (most recent call last):
    ...
    ValueError: /nonexistent/refsampler.json: cannot read model config (file not found)
    """
    folder = Path(folder)
    file = folder / CONFIG_FILE
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{file}: cannot read model config (file not found)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: cannot read model config ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{file}: must hold a JSON object")
    field = _FieldReader(file, raw)
    if field.get("format", str) != FORMAT:
        raise ValueError(f"{file}: field 'format' must be {FORMAT!r}, got {raw['format']!r}")
    onnx_name = field.get("onnx", str)
    onnx_path = folder / onnx_name
    if not onnx_path.is_file():
        raise ValueError(f"{file}: field 'onnx' names {onnx_name!r}, which is not a file "
                         f"in {folder}")
    return ModelConfig(
        name=field.get("name", str),
        onnx=onnx_name,
        tokenizer=field.get("tokenizer", (str, dict)),
        context_length=field.positive_int("context_length"),
        eos_token_ids=field.token_ids("eos_token_ids"),
        fim=field.fim("fim"),
        path=folder,
        digest=file_digest(onnx_path),
    )


class _FieldReader:
    """Typed access to the fields of one JSON object, with errors naming the field."""

    def __init__(self, file: Path, raw: dict) -> None:
        self.file, self.raw = file, raw

    def error(self, name: str, expected: str) -> ValueError:
        return ValueError(f"{self.file}: field {name!r} must be {expected}, "
                          f"got {self.raw[name]!r}")

    def get(self, name: str, types: type | tuple[type, ...]) -> Any:
        if name not in self.raw:
            raise ValueError(f"{self.file}: missing field {name!r}")
        value = self.raw[name]
        if not isinstance(value, types) or (isinstance(value, str) and not value):
            kinds = types if isinstance(types, tuple) else (types,)
            names = {str: "a non-empty string", dict: "an object", list: "a list"}
            raise self.error(name, " or ".join(names.get(k, k.__name__) for k in kinds))
        return value

    def positive_int(self, name: str) -> int:
        value = self.get(name, int)
        if isinstance(value, bool) or value < 1:
            raise self.error(name, "a positive integer")
        return value

    def token_ids(self, name: str) -> tuple[int, ...]:
        value = self.get(name, list)
        if not all(_is_token_id(v) for v in value):
            raise self.error(name, "a list of non-negative integers")
        return tuple(value)

    def fim(self, name: str) -> FimTokens | None:
        if self.raw.get(name, None) is None:
            return None  # absent or null: the model has no fill-in-the-middle tokens
        value = self.get(name, dict)
        if set(value) != {"prefix", "middle", "suffix"} or not all(
                _is_token_id(v) for v in value.values()):
            raise self.error(name, "null or {'prefix': id, 'middle': id, 'suffix': id}")
        return FimTokens(**value)


def _is_token_id(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def file_digest(path: str | os.PathLike) -> str:
    """sha256 hex of a file, cached in ``<file>.sha256`` keyed by size and mtime.

    Hashing SmolLM2's 538 MB takes ~0.4 s (1.35 GB/s measured), so the sidecar saves that on
    every load; it is best effort (a read-only folder just means hashing each time).
    """
    path = Path(path)
    st = path.stat()
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    sidecar = path.with_name(path.name + ".sha256")
    try:
        cached = json.loads(sidecar.read_text())
        if {k: cached.get(k) for k in key} == key and isinstance(cached.get("sha256"), str):
            return cached["sha256"]
    except (OSError, ValueError, AttributeError):
        pass
    digest = sha256_file(path)
    _write_atomic(sidecar, json.dumps({**key, "sha256": digest}))
    return digest


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 hex of a file, read in 8 MiB blocks (no cache: see :func:`file_digest`)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError:
        pass


# ---------------------------------------------------------------- KV cache


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
    def empty(batch: int, *, num_layers: int, num_kv_heads: int, head_dim: int,
              dtype: np.dtype | type = np.float32) -> KVCache:
        """A cache of ``batch`` rows holding nothing yet."""
        z = np.zeros((batch, num_kv_heads, 0, head_dim), dtype=dtype)  # [B, Hkv, 0, hd]
        return KVCache((z,) * num_layers, (z,) * num_layers,
                       np.zeros((batch, 0), np.int64), np.zeros(batch, np.int64))

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
        return KVCache(tuple(k[rows, :, start:] for k in self.keys),  # [B', Hkv, L', hd]
                       tuple(v[rows, :, start:] for v in self.values),
                       mask[:, start:], self.lengths[rows])

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
            tuple(_left_pad_cat([c.keys[i] for c in caches], length, axis=2)
                  for i in range(len(first.keys))),
            tuple(_left_pad_cat([c.values[i] for c in caches], length, axis=2)
                  for i in range(len(first.values))),
            _left_pad_cat([c.mask for c in caches], length, axis=1),
            np.concatenate([c.lengths for c in caches]))
        return merged.take(np.arange(merged.batch)) if merged.batch else merged


def _check_mergeable(caches: Sequence[Any], kind: str) -> Any:
    """The first of ``caches`` after checking they all come from one model's layout."""
    if not caches:
        raise ValueError(f"{kind}.merge needs at least one cache")
    first = caches[0]
    for c in caches[1:]:
        if (len(c.keys) != len(first.keys) or c.keys[0].shape[1::2] != first.keys[0].shape[1::2]
                or c.keys[0].dtype != first.keys[0].dtype):
            raise ValueError(f"{kind}.merge: caches come from different models "
                             "(layers, KV heads, head size or dtype differ)")
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
    def empty(batch: int, *, num_layers: int, num_kv_heads: int, head_dim: int,
              capacity: int = 0, dtype: np.dtype | type = np.float32) -> SharedKVCache:
        """A cache of ``batch`` rows holding nothing yet, with room for ``capacity`` tokens."""
        def buffer() -> np.ndarray:
            return np.zeros((batch, num_kv_heads, capacity, head_dim), dtype)  # [B, Hkv, C, hd]

        return SharedKVCache(tuple(buffer() for _ in range(num_layers)),
                             tuple(buffer() for _ in range(num_layers)),
                             np.zeros(batch, np.int64))

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
        cap = _capacity(int(lengths.max()) if rows.size else 0, self.capacity)
        return SharedKVCache(tuple(k[rows, :, :cap] for k in self.keys),  # [B', Hkv, C', hd]
                             tuple(v[rows, :, :cap] for v in self.values), lengths)

    def reserve(self, extra: int, limit: int) -> SharedKVCache:
        """This cache if it has room for ``extra`` more tokens per row, else a copy that has
        (capacity grows by doubling, up to ``limit``)."""
        need = self.length + extra
        if need <= self.capacity:
            return self
        cap = max(_capacity(need, limit), min(2 * self.capacity, limit))
        return SharedKVCache.merge([self], capacity=cap)

    @staticmethod
    def merge(caches: Sequence[SharedKVCache], *, capacity: int = 0) -> SharedKVCache:
        """One cache holding the rows of ``caches`` in order (copied into new buffers)."""
        first = _check_mergeable(caches, "SharedKVCache")
        shape = first.keys[0].shape
        cap = max([capacity] + [_capacity(c.length, c.capacity) for c in caches])
        out = SharedKVCache.empty(sum(c.batch for c in caches), num_layers=len(first.keys),
                                  num_kv_heads=shape[1], head_dim=shape[3], capacity=cap,
                                  dtype=first.keys[0].dtype)
        row = 0
        for c in caches:
            n = c.length
            for dst, src in zip(out.keys + out.values, c.keys + c.values):
                dst[row:row + c.batch, :, :n] = src[:, :, :n]
            out.lengths[row:row + c.batch] = c.lengths
            row += c.batch
        return out


_CAPACITY_STEP = 256  # buffer lengths are multiples of this (or the context length)


def _capacity(need: int, limit: int) -> int:
    """``need`` rounded up to the next multiple of the step, at most ``max(limit, need)``."""
    rounded = -(-max(need, 1) // _CAPACITY_STEP) * _CAPACITY_STEP
    return max(need, min(rounded, limit))


# ---------------------------------------------------------------- decoder

OnLogits = Callable[[int, np.ndarray, np.ndarray], None]


class Decoder:
    """An ONNX decoder with KV cache, run by ONNX Runtime on the CPU.

    Attributes: ``config`` (:class:`ModelConfig`), ``vocab_size``, ``num_layers``,
    ``num_kv_heads``, ``head_dim``, ``kv_dtype`` (read from the graph's inputs and outputs).

    Inputs it understands (fed only if the graph declares them): ``input_ids``,
    ``attention_mask``, ``position_ids``, ``past_key_values.{i}.key/value`` and, for Optimum
    "merged" exports, ``use_cache_branch`` (True once the past is non-empty; best effort, as
    such graphs are not tested here). Outputs: ``logits`` and ``present.{i}.key/value``.
    A graph with a ``seqlens_k`` input (``build_llama(attention="gqa")``) is run with a
    :class:`SharedKVCache` through IOBinding instead: ``total_sequence_length`` and
    ``seqlens_k`` replace ``attention_mask``, and the cache buffers are bound as both the
    past inputs and the present outputs.
    """

    def __init__(self, session: Any, config: ModelConfig) -> None:
        self.session = session
        self.config = config
        inputs = {i.name: i for i in session.get_inputs()}
        self._input_names = set(inputs)
        self.num_layers = sum(1 for n in inputs if n.startswith("past_key_values.")
                              and n.endswith(".key"))
        if self.num_layers == 0 or "logits" not in {o.name for o in session.get_outputs()}:
            raise ValueError(f"{config.onnx_path}: not a decoder with a KV cache (needs "
                             "past_key_values.{i}.key/value inputs and a logits output)")
        past = inputs["past_key_values.0.key"]
        _, self.num_kv_heads, _, self.head_dim = past.shape
        if not (isinstance(self.num_kv_heads, int) and isinstance(self.head_dim, int)):
            raise ValueError(f"{config.onnx_path}: KV heads and head size must be static, "
                             f"got shape {past.shape}")
        self.kv_dtype = np.dtype(np.float16 if past.type == "tensor(float16)" else np.float32)
        self.shared_cache = "seqlens_k" in inputs  # attention="gqa": SharedKVCache
        logits = next(o for o in session.get_outputs() if o.name == "logits")
        vocab = logits.shape[-1]
        self.vocab_size: int = vocab if isinstance(vocab, int) else self._probe_vocab()

    @classmethod
    def load(cls, folder: str | os.PathLike, *, threads: int = 1) -> Decoder:
        """Load the model folder; ``threads`` is ORT's intra-op thread count (1 is best on a
        small shared machine: more threads stall when another process holds a core)."""
        import onnxruntime as ort

        config = load_config(folder)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only
        session = ort.InferenceSession(str(config.onnx_path), opts,
                                       providers=["CPUExecutionProvider"])
        return cls(session, config)

    def empty_cache(self, batch: int, capacity: int = 0) -> KVCache | SharedKVCache:
        if self.shared_cache:
            return SharedKVCache.empty(batch, num_layers=self.num_layers, capacity=capacity,
                                       num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                                       dtype=self.kv_dtype)
        return KVCache.empty(batch, num_layers=self.num_layers, num_kv_heads=self.num_kv_heads,
                             head_dim=self.head_dim, dtype=self.kv_dtype)

    # -- public steps

    def prefill(self, prompts: Sequence[Sequence[int]], *, on_logits: OnLogits | None = None,
                chunk_size: int = 256) -> tuple[np.ndarray, KVCache]:
        """Run all prompts together; return each prompt's last-token logits [P, V] and the cache.

        Prompts are left-padded to the longest and fed ``chunk_size`` columns at a time (fewer
        when P x chunk x V float32 logits would exceed 128 MB). If ``on_logits`` is given it is
        called as ``on_logits(p, positions, logits)`` for each prompt ``p`` and each chunk that
        holds real tokens of it: ``positions`` int64 [n] are indices within prompt ``p`` and
        ``logits`` float32 [n, V] (read-only) are the logits produced at those positions, i.e.
        predicting the token after each.
        """
        ids, mask, pos, pads = self._pack(prompts)  # [P, L] each (positions 0 on pads), [P]
        P, L = ids.shape
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if self.shared_cache:
            return self._prefill_shared(ids, pads, on_logits, chunk_size)
        width = max(1, min(chunk_size, _LOGITS_BUDGET // (P * self.vocab_size * 4)))
        cache = self.empty_cache(P)
        for c0 in range(0, L, width):
            c1 = min(L, c0 + width)
            logits, keys, values = self._run(ids[:, c0:c1], mask[:, :c1], pos[:, c0:c1], cache)
            cache = KVCache(keys, values, mask[:, :c1], cache.lengths)
            if c1 == L:
                last = logits[:, -1, :].copy()  # [P, V] before anyone sees the chunk
            if on_logits is not None:
                _report(on_logits, logits, pads, c0, c1)
        lengths = (L - pads).astype(np.int64)
        return last, KVCache(cache.keys, cache.values, mask, lengths)

    def step(self, cache: KVCache,
             tokens: np.ndarray | Sequence[int]) -> tuple[np.ndarray, KVCache]:
        """Append one token per row; return logits float32 [B, V] and the new cache.

        Each row's new token takes position ``cache.lengths[row]``. A :class:`KVCache` is
        unchanged; a :class:`SharedKVCache`'s buffers receive the new keys in place (or are
        copied into larger ones when full), so do not step it again: use the one returned.
        """
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)  # [B]
        if tokens.shape[0] != cache.batch:
            raise ValueError(f"step: got {tokens.shape[0]} tokens for a batch of {cache.batch}")
        self._check_ids(tokens)
        if cache.batch and int(cache.lengths.max()) >= self.config.context_length:
            raise ValueError(f"step: a row already holds {int(cache.lengths.max())} tokens, the "
                             f"context length of {self.config.name} is "
                             f"{self.config.context_length}")
        if cache.batch == 0:
            return np.zeros((0, self.vocab_size), np.float32), cache
        if isinstance(cache, SharedKVCache):
            cache = cache.reserve(1, self.config.context_length)
            logits = self._run_shared(tokens[:, None], cache.lengths[:, None], cache)
            return logits.reshape(cache.batch, -1), SharedKVCache(
                cache.keys, cache.values, cache.lengths + 1, cache.binding)
        mask = np.concatenate([cache.mask, np.ones((cache.batch, 1), np.int64)], axis=1)
        logits, keys, values = self._run(tokens[:, None], mask, cache.lengths[:, None], cache)
        return logits.reshape(cache.batch, -1), KVCache(keys, values, mask, cache.lengths + 1)

    # -- the in-place cache (attention="gqa")

    def _prefill_shared(self, ids: np.ndarray, pads: np.ndarray, on_logits: OnLogits | None,
                        chunk_size: int) -> tuple[np.ndarray, SharedKVCache]:
        """Each prompt alone (batch 1, no padding), in chunks; then one cache for all."""
        width = max(1, min(chunk_size, _LOGITS_BUDGET // (self.vocab_size * 4)))
        last, caches = [], []
        for p, pad in enumerate(pads.tolist()):
            tokens = ids[p, pad:]  # [n] this prompt
            cache = self.empty_cache(1, capacity=_capacity(tokens.size,
                                                           self.config.context_length))
            for c0 in range(0, tokens.size, width):
                c1 = min(tokens.size, c0 + width)
                logits = self._run_shared(tokens[None, c0:c1], np.arange(c0, c1)[None], cache)
                cache = SharedKVCache(cache.keys, cache.values, cache.lengths + (c1 - c0),
                                      cache.binding)
                if c1 == tokens.size:
                    last.append(logits[0, -1].copy())  # [V]; not a view holding the chunk
                if on_logits is not None:
                    logits.flags.writeable = False
                    on_logits(p, np.arange(c0, c1, dtype=np.int64), logits[0])  # [n, V]
            caches.append(cache)
        return np.stack(last), SharedKVCache.merge(caches)

    def _run_shared(self, ids: np.ndarray, pos: np.ndarray, cache: SharedKVCache) -> np.ndarray:
        """One ORT call appending ``ids`` [B, S] at each row's length, the cache's buffers
        bound as both past and present (ORT writes the new keys into them). Returns the
        logits [B, S, V]; the caller advances ``lengths``."""
        B, S = ids.shape
        total = cache.lengths + S  # [B] each row's length after this call
        io = self._cache_binding(cache)
        io.bind_cpu_input("input_ids", np.ascontiguousarray(ids, dtype=np.int64))
        io.bind_cpu_input("position_ids", np.ascontiguousarray(pos, dtype=np.int64))
        io.bind_cpu_input("seqlens_k", (total - 1).astype(np.int32))
        io.bind_cpu_input("total_sequence_length", np.array(int(total.max()), np.int32))
        logits = np.empty((B, S, self.vocab_size), np.float32)  # [B, S, V]
        io.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        self.session.run_with_iobinding(io)
        return logits

    def _cache_binding(self, cache: SharedKVCache) -> Any:
        """An IOBinding with the cache's buffers bound as past and present, made once per
        set of buffers (binding SmolLM2's 60 costs ~1.3 ms, ~2.5% of a step); each call
        then rebinds only its small inputs and the logits, replacing the previous ones."""
        if cache.binding and cache.binding[0] is self.session:
            return cache.binding[1]
        io = self.session.io_binding()
        for i in range(self.num_layers):
            for part, buf in (("key", cache.keys[i]), ("value", cache.values[i])):
                shape, ptr = list(buf.shape), buf.ctypes.data
                io.bind_input(f"past_key_values.{i}.{part}", "cpu", 0, buf.dtype, shape, ptr)
                io.bind_output(f"present.{i}.{part}", "cpu", 0, buf.dtype, shape, ptr)
        cache.binding[:] = [self.session, io]
        return io

    # -- helpers

    def _pack(self, prompts: Sequence[Sequence[int]]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Left-pad: ids, mask, positions [P, L] int64 (0 in padding) and pads [P]."""
        if len(prompts) == 0:
            raise ValueError("prefill: no prompts")
        arrays = [np.asarray(p, dtype=np.int64).reshape(-1) for p in prompts]
        for i, a in enumerate(arrays):
            if a.size == 0:
                raise ValueError(f"prefill: prompt {i} is empty; every prompt needs a token")
            self._check_ids(a)
        lens = np.array([a.size for a in arrays], dtype=np.int64)  # [P]
        L = int(lens.max())
        if L > self.config.context_length:
            raise ValueError(f"prefill: a prompt of {L} tokens exceeds the context length "
                             f"({self.config.context_length}) of {self.config.name}")
        pads = L - lens  # [P]
        cols = np.arange(L)[None, :] - pads[:, None]  # [P, L] index within the prompt
        ids = np.zeros((len(arrays), L), dtype=np.int64)
        for i, a in enumerate(arrays):
            ids[i, pads[i]:] = a
        return ids, (cols >= 0).astype(np.int64), np.maximum(cols, 0), pads

    def _check_ids(self, ids: np.ndarray) -> None:
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = ids[(ids < 0) | (ids >= self.vocab_size)][0]
            raise ValueError(f"token id {int(bad)} is outside the vocabulary "
                             f"[0, {self.vocab_size})")

    def _run(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray, cache: KVCache
             ) -> tuple[np.ndarray, tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """One ORT call: logits [B, S, V] and the present keys/values (tuples per layer).

        Only the inputs the graph declares are fed (Optimum exports may lack position_ids,
        and then derive positions from attention_mask, which agrees with ours)."""
        feeds: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": pos,
                                 "use_cache_branch": np.array([cache.length > 0])}
        for i in range(self.num_layers):
            feeds[f"past_key_values.{i}.key"] = cache.keys[i]
            feeds[f"past_key_values.{i}.value"] = cache.values[i]
        feeds = {k: v for k, v in feeds.items() if k in self._input_names}
        out = self.session.run(self._output_names(), feeds)
        n = self.num_layers
        return out[0], tuple(out[1:1 + n]), tuple(out[1 + n:])

    def _output_names(self) -> list[str]:
        n = self.num_layers
        return (["logits"] + [f"present.{i}.key" for i in range(n)]
                + [f"present.{i}.value" for i in range(n)])

    def _probe_vocab(self) -> int:
        logits, _, _ = self._run(np.zeros((1, 1), np.int64), np.ones((1, 1), np.int64),
                                 np.zeros((1, 1), np.int64), self.empty_cache(1))
        return int(logits.shape[-1])


def _report(on_logits: OnLogits, logits: np.ndarray, pads: np.ndarray, c0: int, c1: int) -> None:
    """Hand each prompt the logits of its real tokens in columns [c0, c1)."""
    logits.flags.writeable = False  # [P, c1-c0, V]; views below share it
    for p, pad in enumerate(pads.tolist()):
        first = max(c0, pad)
        if first < c1:
            positions = np.arange(first - pad, c1 - pad, dtype=np.int64)  # [n]
            on_logits(p, positions, logits[p, first - c0:])  # [n, V]
