"""The ONNX decoder, run with a KV cache by ONNX Runtime on the CPU.

:class:`Decoder` runs a model folder's graph: :meth:`Decoder.prefill` feeds whole prompts
(left-padded, in column chunks) and :meth:`Decoder.step` one token per row. Both return
fresh logits the caller owns and a cache (:mod:`sampler.kvcache`): a new immutable
``KVCache`` for graphs in the HF/Optimum convention, or a ``SharedKVCache`` whose buffers
ORT updates in place for ``attention="gqa"`` graphs. A row's logits never depend on the
other rows: padding keys are masked and positions are per row (HF/Optimum), or rows have
no padding at all (GQA).

onnxruntime is imported only when a Decoder is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .kvcache import KVCache, SharedKVCache, cache_capacity
from .model import ModelConfig, load_config

__all__ = ["Decoder"]

_LOGITS_BUDGET = 128 * 2**20  # bytes of prefill logits per ORT run; bounds the chunk width


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
        defaults = {i.name for i in session.get_overridable_initializers()}
        self._input_names = set(inputs) | defaults
        self.keeps_last = "logits_to_keep" in self._input_names  # lm_head on the last only
        self.num_layers = sum(
            1 for n in inputs if n.startswith("past_key_values.") and n.endswith(".key")
        )
        if self.num_layers == 0 or "logits" not in {o.name for o in session.get_outputs()}:
            raise ValueError(
                f"{config.onnx_path}: not a decoder with a KV cache (needs "
                "past_key_values.{i}.key/value inputs and a logits output)"
            )
        past = inputs["past_key_values.0.key"]
        _, self.num_kv_heads, _, self.head_dim = past.shape
        if not (isinstance(self.num_kv_heads, int) and isinstance(self.head_dim, int)):
            raise ValueError(
                f"{config.onnx_path}: KV heads and head size must be static, got shape {past.shape}"
            )
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
        session = ort.InferenceSession(
            str(config.onnx_path), opts, providers=["CPUExecutionProvider"]
        )
        return cls(session, config)

    def empty_cache(self, batch: int, capacity: int = 0) -> KVCache | SharedKVCache:
        """An empty cache of the kind this graph takes (``capacity``: GQA buffers only)."""
        return self._empty_shared(batch, capacity) if self.shared_cache else self._empty(batch)

    def _empty(self, batch: int) -> KVCache:
        return KVCache.empty(
            batch,
            num_layers=self.num_layers,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            dtype=self.kv_dtype,
        )

    def _empty_shared(self, batch: int, capacity: int) -> SharedKVCache:
        return SharedKVCache.empty(
            batch,
            num_layers=self.num_layers,
            capacity=capacity,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            dtype=self.kv_dtype,
        )

    # -- public steps

    def prefill(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        on_logits: OnLogits | None = None,
        chunk_size: int = 256,
    ) -> tuple[np.ndarray, KVCache | SharedKVCache]:
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
        keep = 0 if on_logits is not None else 1  # every position's logits only to report
        width = chunk_size
        if keep == 0 or not self.keeps_last:  # [P, width, V] logits come out of each chunk
            width = max(1, min(chunk_size, _LOGITS_BUDGET // (P * self.vocab_size * 4)))
        cache = self._empty(P)
        for c0 in range(0, L, width):
            c1 = min(L, c0 + width)
            chunk = ids[:, c0:c1], mask[:, :c1], pos[:, c0:c1]
            logits, keys, values = self._run(*chunk, cache, keep=keep)
            cache = KVCache(keys, values, mask[:, :c1], cache.lengths)
            if c1 == L:
                last = logits[:, -1, :].copy()  # [P, V] before anyone sees the chunk
            if on_logits is not None:
                _report(on_logits, logits, pads, c0, c1)
        lengths = (L - pads).astype(np.int64)
        return last, KVCache(cache.keys, cache.values, mask, lengths)

    def step(
        self, cache: KVCache | SharedKVCache, tokens: np.ndarray | Sequence[int]
    ) -> tuple[np.ndarray, KVCache | SharedKVCache]:
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
            raise ValueError(
                f"step: a row already holds {int(cache.lengths.max())} tokens, the "
                f"context length of {self.config.name} is "
                f"{self.config.context_length}"
            )
        if cache.batch == 0:
            return np.zeros((0, self.vocab_size), np.float32), cache
        if isinstance(cache, SharedKVCache):
            cache = cache.reserve(1, self.config.context_length)
            logits = self._run_shared(tokens[:, None], cache.lengths[:, None], cache)
            return logits.reshape(cache.batch, -1), SharedKVCache(
                cache.keys, cache.values, cache.lengths + 1, cache.binding
            )
        mask = np.concatenate([cache.mask, np.ones((cache.batch, 1), np.int64)], axis=1)
        logits, keys, values = self._run(tokens[:, None], mask, cache.lengths[:, None], cache)
        return logits.reshape(cache.batch, -1), KVCache(keys, values, mask, cache.lengths + 1)

    # -- the in-place cache (attention="gqa")

    def _prefill_shared(
        self, ids: np.ndarray, pads: np.ndarray, on_logits: OnLogits | None, chunk_size: int
    ) -> tuple[np.ndarray, SharedKVCache]:
        """Each prompt alone (batch 1, no padding), in chunks; then one cache for all."""
        width = max(1, min(chunk_size, _LOGITS_BUDGET // (self.vocab_size * 4)))
        keep = 0 if on_logits is not None else 1  # every position's logits only to report
        last, caches = [], []
        for p, pad in enumerate(pads.tolist()):
            tokens = ids[p, pad:]  # [n] this prompt
            cache = self._empty_shared(1, cache_capacity(tokens.size, self.config.context_length))
            for c0 in range(0, tokens.size, width):
                c1 = min(tokens.size, c0 + width)
                ids_c, pos_c = tokens[None, c0:c1], np.arange(c0, c1)[None]
                logits = self._run_shared(ids_c, pos_c, cache, keep=keep)
                cache = SharedKVCache(
                    cache.keys, cache.values, cache.lengths + (c1 - c0), cache.binding
                )
                if c1 == tokens.size:
                    last.append(logits[0, -1].copy())  # [V]; not a view holding the chunk
                if on_logits is not None:
                    logits.flags.writeable = False
                    on_logits(p, np.arange(c0, c1, dtype=np.int64), logits[0])  # [n, V]
            caches.append(cache)
        return np.stack(last), SharedKVCache.merge(caches)

    def _run_shared(
        self, ids: np.ndarray, pos: np.ndarray, cache: SharedKVCache, keep: int = 0
    ) -> np.ndarray:
        """One ORT call appending ``ids`` [B, S] at each row's length, the cache's buffers
        bound as both past and present (ORT writes the new keys into them). Returns the
        logits [B, S, V] (the last ``keep`` positions' when the graph can); the caller
        advances ``lengths``."""
        B, S = ids.shape
        total = cache.lengths + S  # [B] each row's length after this call
        io = self._cache_binding(cache)
        io.bind_cpu_input("input_ids", np.ascontiguousarray(ids, dtype=np.int64))
        io.bind_cpu_input("position_ids", np.ascontiguousarray(pos, dtype=np.int64))
        io.bind_cpu_input("seqlens_k", (total - 1).astype(np.int32))
        io.bind_cpu_input("total_sequence_length", np.array(int(total.max()), np.int32))
        kept = S
        if self.keeps_last:
            kept = min(keep, S) or S
            io.bind_cpu_input("logits_to_keep", np.array([kept], dtype=np.int64))
        logits = np.empty((B, kept, self.vocab_size), np.float32)  # [B, S or keep, V]
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

    def _pack(
        self, prompts: Sequence[Sequence[int]]
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
            raise ValueError(
                f"prefill: a prompt of {L} tokens exceeds the context length "
                f"({self.config.context_length}) of {self.config.name}"
            )
        pads = L - lens  # [P]
        cols = np.arange(L)[None, :] - pads[:, None]  # [P, L] index within the prompt
        ids = np.zeros((len(arrays), L), dtype=np.int64)
        for i, a in enumerate(arrays):
            ids[i, pads[i] :] = a
        return ids, (cols >= 0).astype(np.int64), np.maximum(cols, 0), pads

    def _check_ids(self, ids: np.ndarray) -> None:
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = ids[(ids < 0) | (ids >= self.vocab_size)][0]
            raise ValueError(
                f"token id {int(bad)} is outside the vocabulary [0, {self.vocab_size})"
            )

    def _run(
        self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray, cache: KVCache, keep: int = 0
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """One ORT call: logits [B, S, V] (or of the last ``keep`` positions, when the graph
        takes ``logits_to_keep``) and the present keys/values (tuples per layer).

        Only the inputs the graph declares are fed (Optimum exports may lack position_ids,
        and then derive positions from attention_mask, which agrees with ours)."""
        feeds: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": pos,
            "use_cache_branch": np.array([cache.length > 0]),
            "logits_to_keep": np.array([keep], dtype=np.int64),
        }
        for i in range(self.num_layers):
            feeds[f"past_key_values.{i}.key"] = cache.keys[i]
            feeds[f"past_key_values.{i}.value"] = cache.values[i]
        feeds = {k: v for k, v in feeds.items() if k in self._input_names}
        out = self.session.run(self._output_names(), feeds)
        n = self.num_layers
        return out[0], tuple(out[1 : 1 + n]), tuple(out[1 + n :])

    def _output_names(self) -> list[str]:
        n = self.num_layers
        return (
            ["logits"]
            + [f"present.{i}.key" for i in range(n)]
            + [f"present.{i}.value" for i in range(n)]
        )

    def _probe_vocab(self) -> int:
        logits, _, _ = self._run(
            np.zeros((1, 1), np.int64),
            np.ones((1, 1), np.int64),
            np.zeros((1, 1), np.int64),
            self._empty(1),
        )
        return int(logits.shape[-1])


def _report(on_logits: OnLogits, logits: np.ndarray, pads: np.ndarray, c0: int, c1: int) -> None:
    """Hand each prompt the logits of its real tokens in columns [c0, c1)."""
    logits.flags.writeable = False  # [P, c1-c0, V]; views below share it
    for p, pad in enumerate(pads.tolist()):
        first = max(c0, pad)
        if first < c1:
            positions = np.arange(first - pad, c1 - pad, dtype=np.int64)  # [n]
            on_logits(p, positions, logits[p, first - c0 :])  # [n, V]
