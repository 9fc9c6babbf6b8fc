"""One sampling step over a batch of sequences, each with its own parameters.

This composes the processors in their contract order (see :mod:`sampler.processors`)
with the draw and the logprobs. Rows come from any mix of requests; each row's choice
depends only on its own logits, parameters, counts and uniform. Per row, the work is one
exp pass: over the processed row for the draw, or over the raw row when logprobs (or
best_of ranking) need its normaliser. The draw then reuses the raw exps at temperature 1
with no bias or penalty, and otherwise needs no pass of its own when the raw side bounds
the processed nucleus (temperature at most 1 and a nucleus of a few tokens, the usual
case); else a second pass. No V-sized float temporaries are allocated (one reused
workspace; only boolean masks).

>>> import numpy as np
>>> z = np.log(np.array([[0.7, 0.2, 0.1]], dtype=np.float32))
>>> from sampler.params import SamplingParams
>>> row = Row(SamplingParams(temperature=0.0, logprobs=1))
>>> out = sample_step(z, [row], uniforms=[0.5])
>>> int(out.tokens[0]), round(float(np.exp(out.logprob[0])), 3), out.top[0][0].tolist()
(0, 0.7, [0])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import processors
from ._fast.draw import Workspace, _draw, pick
from ._fast.edits import Edits, RowEdits
from ._fast.sizes import RAW_TOP
from ._fast.topk import top_k
from .logprobs import log_normalizer, top_logprobs
from .params import SamplingParams

__all__ = ["Row", "StepOutput", "sample_step"]


class Row:
    """One sequence in a batch: its :class:`~sampler.params.SamplingParams` (the one
    parameter record, shared by every candidate of a request), the counts of its generated
    tokens, and whether its chosen token's raw logprob is needed (best_of ranking).

    Replacing ``params`` or ``counts`` is followed at the next step; the bias and penalties
    are otherwise kept as one sparse edit updated token by token.

    >>> from sampler.params import SamplingParams
    >>> row = Row(SamplingParams(presence_penalty=1.0))
    >>> row.counts.add(7); row.penalty()
    (array([7]), array([1.], dtype=float32))
    """

    __slots__ = ("params", "counts", "raw_logprob", "_edits", "_built_for")

    def __init__(
        self,
        params: SamplingParams | None = None,
        *,
        counts: processors.TokenCounts | None = None,
        raw_logprob: bool = False,
    ) -> None:
        self.params = SamplingParams() if params is None else params
        self.counts = processors.TokenCounts() if counts is None else counts
        self.raw_logprob = raw_logprob
        self._build()

    def _build(self) -> None:
        bias = self.params.logit_bias
        if bias is not None:  # float32 once, not at every step
            bias = (np.asarray(bias[0], np.int64), np.asarray(bias[1], np.float32))
        self._edits = RowEdits(bias)
        self._built_for = (self.params, self.counts)

    def penalty(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Step 2 as ``(ids, amounts)`` to subtract (None when neutral or nothing seen)."""
        return self.counts.amounts(self.params.presence_penalty, self.params.frequency_penalty)

    def edits(self) -> Edits | None:
        """Steps 1–2 as one sparse edit, brought up to date with the tokens added to
        ``counts`` since the last call (O(1) per new token); rebuilt from scratch when
        ``params`` or ``counts`` were replaced."""
        if self._built_for[0] is not self.params or self._built_for[1] is not self.counts:
            self._build()
        p = self.params
        return self._edits.update(self.counts, p.presence_penalty, p.frequency_penalty)


@dataclass
class StepOutput:
    tokens: np.ndarray  # [B] int64
    logprob: np.ndarray  # [B] float64 raw logprob of the chosen token (nan: not computed)
    reported: np.ndarray  # [B] float64 the logprob to report (raw or processed)
    top: list[tuple[np.ndarray, np.ndarray] | None]  # per row: (ids [k], logprobs [k])


def _raw_side(
    raw: np.ndarray, k: int, ws: Workspace
) -> tuple[list[int], list[float], float, float]:
    """The top-``k`` ids of one row (ties to the lowest id) and their values, its raw
    log-normaliser and the float64 sum of its exps, which are left in the workspace.

    The top ids come from block maxima (no sort, no copy of the row); the first of them is
    the row's argmax, so the max costs nothing more. Then one exp pass.
    """
    ids, vals = top_k(raw, k)  # [k] each
    np.subtract(raw, vals[0], out=ws.e)
    np.exp(ws.e, out=ws.e)  # [V] largest value 1
    total = float(ws.e.sum(dtype=np.float64))
    return ids, vals, vals[0] + math.log(total), total


def sample_step(
    logits: np.ndarray,
    rows: Sequence[Row],
    uniforms: Sequence[float] | np.ndarray,
    *,
    workspace: Workspace | None = None,
) -> StepOutput:
    """Choose one token per row of masked model logits ``[B, V]`` (not modified).

    ``uniforms`` holds one float64 in [0, 1) per row, drawn from that sequence's
    generator. Pass a ``Workspace`` (``sampler._fast.draw``) to reuse its buffer.
    """
    with np.errstate(over="ignore"):  # float32 values far below a max may become -inf
        return _sample_step(logits, rows, uniforms, workspace)


def _sample_step(
    logits: np.ndarray,
    rows: Sequence[Row],
    uniforms: Sequence[float] | np.ndarray,
    workspace: Workspace | None,
) -> StepOutput:
    batch, vocab = logits.shape
    ws = workspace if workspace is not None and workspace.vocab == vocab else Workspace(vocab)
    tokens = np.empty(batch, dtype=np.int64)  # [B]
    raw_lp = np.full(batch, np.nan)  # [B]
    rep_lp = np.full(batch, np.nan)  # [B]
    top: list[tuple[np.ndarray, np.ndarray] | None] = [None] * batch
    for b, r in enumerate(rows):
        raw, p = logits[b], r.params  # [V]
        edits = r.edits()
        u = float(uniforms[b])
        raw_mode = p.logprobs is not None and p.logprobs_mode == "raw"
        if raw_mode or r.raw_logprob:  # the raw side first: its max serves the draw
            direct = p.temperature == 1.0 and edits is None  # the raw row is sampled from
            k = (p.logprobs or 1) if direct else max(p.logprobs or 0, RAW_TOP)
            top_ids, top_vals, lognorm, total = _raw_side(raw, k, ws)
            if direct:
                token = pick(ws.e, p.top_p, u, total, workspace=ws)
            else:
                token = _draw(
                    raw,
                    p.temperature,
                    p.top_p,
                    u,
                    edits=edits,
                    workspace=ws,
                    raw_top=(top_ids, top_vals),
                    raw_total=total,
                )
            raw_lp[b] = float(raw[token]) - lognorm
            if raw_mode:
                rep_lp[b] = raw_lp[b]
                shown = p.logprobs
                top[b] = (
                    np.array(top_ids[:shown], dtype=np.int64),
                    np.array(top_vals[:k], dtype=np.float64) - lognorm,
                )
        else:
            token = _draw(raw, p.temperature, p.top_p, u, edits=edits, workspace=ws)
        tokens[b] = token
        if p.logprobs is not None and not raw_mode:  # "processed": the distribution sampled
            q = processors.apply(raw[None, :], [p], [r.counts])  # [1, V] steps 1-4
            norm = log_normalizer(q)  # [1]
            rep_lp[b] = float(q[0, token]) - norm[0]
            ids, lps = top_logprobs(q, p.logprobs, lognorm=norm)
            top[b] = (ids[0], lps[0])
    return StepOutput(tokens=tokens, logprob=raw_lp, reported=rep_lp, top=top)
