"""Give a decoder trained over a *compact* vocabulary the full tokenizer's ids, in the graph.

A small model need not spend an embedding row and an output column on every one of
cl100k_base's 100,277 ids: most never occur in its corpus. It is trained over ``K`` kept ids
plus one "other" slot standing for all the rest (compact ids ``0..K-1`` and ``K``).
:func:`wrap_compact_vocab` wraps such a graph (from :func:`sampler.onnx_llama.build_llama`
with ``vocab_size = K + 1``) so that it speaks the engine's I/O convention over the full
vocabulary, unchanged in names:

- ``input_ids`` takes full ids; a Gather through an int64 table [N] maps them to compact ids
  (every id not kept goes to the "other" slot, so any valid id is accepted).
- ``logits`` is full width [batch, sequence_length, N]. The compact logits are first
  normalised (LogSoftmax, so the values are log-probabilities and the fixed level below
  means the same thing in every row), then spread to the full row:

  ============================  ==================================================
  kept id ``i``                 ``logp[compact(i)]``
  seen-but-not-kept id ``i``    ``logp[other] + log q(i)`` -- the "other" mass shared
                                out by ``q``, the id's frequency within the class
  unseen id (``q(i) = 0``)      ``low_logit``, a constant (default -40)
  ============================  ==================================================

  So the row is still a distribution over all N ids (up to the unseen ids' ~N·e^-40), the
  held-out loss of any text is finite, and a ``logit_bias`` of +100 on any id, unseen ones
  included, makes it the most likely token. With ``other_logq=None`` the "other" slot is
  dropped instead: every id not kept gets ``low_logit``.

The mapping is four ops at the end (LogSoftmax, Gather, Add, Where) and one at the start, all
per row, so a row's logits stay independent of its batch, padding and chunking.

>>> import numpy as np
>>> from sampler.onnx_llama import LlamaConfig, build_llama, random_weights
>>> cfg = LlamaConfig(vocab_size=5, hidden_size=8, intermediate_size=16, num_layers=1,
...                   num_heads=2, num_kv_heads=1, max_position=16)
>>> inner = build_llama(random_weights(cfg, np.random.default_rng(0)), cfg)
>>> full = wrap_compact_vocab(inner, np.array([3, 7, 1, 9]), n_vocab=12)
>>> [d.dim_value for d in full.graph.output[0].type.tensor_type.shape.dim][-1]
12
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["wrap_compact_vocab", "full_to_compact", "LOW_LOGIT"]

LOW_LOGIT = -40.0


def full_to_compact(vocab_ids: np.ndarray, n_vocab: int) -> np.ndarray:
    """int64 [n_vocab]: the compact id of each full id; ids not kept map to ``len(vocab_ids)``.

    >>> full_to_compact(np.array([3, 0]), 5).tolist()
    [1, 2, 2, 0, 2]
    """
    vocab_ids = np.asarray(vocab_ids, dtype=np.int64)
    if vocab_ids.ndim != 1 or len(np.unique(vocab_ids)) != len(vocab_ids):
        raise ValueError("vocab_ids must be a 1-D array of distinct ids")
    if vocab_ids.size and (vocab_ids.min() < 0 or vocab_ids.max() >= n_vocab):
        raise ValueError(f"vocab_ids must lie in [0, {n_vocab})")
    table = np.full(n_vocab, len(vocab_ids), dtype=np.int64)  # [N]
    table[vocab_ids] = np.arange(len(vocab_ids))
    return table


def wrap_compact_vocab(
    model: onnx.ModelProto,
    vocab_ids: np.ndarray,
    *,
    n_vocab: int,
    other_logq: np.ndarray | None = None,
    low_logit: float = LOW_LOGIT,
) -> onnx.ModelProto:
    """A copy of ``model`` (compact vocab ``K + 1``, the last id "other") over ``n_vocab`` ids.

    ``vocab_ids`` [K]: the full id of each compact id ``0..K-1``. ``other_logq`` [n_vocab]:
    log q(i) of each id within the "other" class, ``-inf`` for unseen ids (ignored for kept
    ids); ``None`` drops the "other" slot. See the module docstring for the resulting row.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    vocab_ids = np.asarray(vocab_ids, dtype=np.int64)
    k = len(vocab_ids)
    table = full_to_compact(vocab_ids, n_vocab)  # [N]
    logits_out = [o for o in model.graph.output if o.name == "logits"]
    if not logits_out:
        raise ValueError("the model has no 'logits' output")
    width = logits_out[0].type.tensor_type.shape.dim[-1].dim_value
    if width != k + 1:
        raise ValueError(
            f"the model's logits are {width} wide; expected len(vocab_ids) + 1 = "
            f"{k + 1} (the kept ids and the 'other' slot)"
        )

    kept = np.zeros(n_vocab, dtype=bool)
    kept[vocab_ids] = True
    offset = np.zeros(n_vocab, dtype=np.float32)  # [N] added after the Gather
    if other_logq is None:
        low = ~kept
    else:
        logq = np.asarray(other_logq, dtype=np.float64).reshape(-1)
        if logq.shape != (n_vocab,):
            raise ValueError(f"other_logq must have shape ({n_vocab},), got {logq.shape}")
        low = ~kept & ~np.isfinite(logq)
        spread = ~kept & np.isfinite(logq)
        if np.any(logq[spread] > 0):
            raise ValueError("other_logq must be log-probabilities (<= 0)")
        offset[spread] = logq[spread]

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    (logits_spec,) = [o for o in g.output if o.name == "logits"]
    inner_ids, inner_logits = "compact_input_ids", "compact_logits"
    for node in g.node:
        node.input[:] = [inner_ids if x == "input_ids" else x for x in node.input]
        node.output[:] = [inner_logits if x == "logits" else x for x in node.output]
    g.initializer.extend(
        [
            numpy_helper.from_array(table, "vocab.full_to_compact"),
            numpy_helper.from_array(offset, "vocab.offset"),
            numpy_helper.from_array(low, "vocab.low_mask"),
            numpy_helper.from_array(np.array(low_logit, dtype=np.float32), "vocab.low_logit"),
        ]
    )
    head = [
        helper.make_node(
            "Gather", ["vocab.full_to_compact", "input_ids"], [inner_ids], axis=0, name="vocab_in"
        )
    ]
    tail = [
        helper.make_node(
            "LogSoftmax", [inner_logits], ["vocab.logp"], axis=-1, name="vocab_logsoftmax"
        ),  # [B, S, K+1]
        helper.make_node(
            "Gather",
            ["vocab.logp", "vocab.full_to_compact"],
            ["vocab.spread"],
            axis=2,
            name="vocab_out",
        ),  # [B, S, N]
        helper.make_node(
            "Add", ["vocab.spread", "vocab.offset"], ["vocab.shifted"], name="vocab_offset"
        ),
        helper.make_node(
            "Where",
            ["vocab.low_mask", "vocab.low_logit", "vocab.shifted"],
            ["logits"],
            name="vocab_low",
        ),
    ]
    nodes = head + list(g.node) + tail
    del g.node[:]
    g.node.extend(nodes)
    logits_spec.type.tensor_type.shape.dim[-1].dim_value = n_vocab
    assert logits_spec.type.tensor_type.elem_type == TensorProto.FLOAT
    return out
