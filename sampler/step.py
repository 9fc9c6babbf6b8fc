"""One sampling step over a batch of sequences, each with its own parameters.

This composes the processors in their contract order (see :mod:`sampler.processors`)
with the draw and the logprobs. Rows come from any mix of requests; each row's choice
depends only on its own logits, parameters, counts and uniform. Per row, the work is one
exp pass for the draw, plus one for the raw normaliser when logprobs (or best_of ranking)
need it and the row was processed; nothing V-sized is allocated (one reused workspace).

>>> import numpy as np
>>> z = np.log(np.array([[0.7, 0.2, 0.1]], dtype=np.float32))
>>> row = RowParams(temperature=0.0, logprobs=1)
>>> out = sample_step(z, [row], uniforms=[0.5])
>>> int(out.tokens[0]), round(float(np.exp(out.logprob[0])), 3), out.top[0][0].tolist()
(0, 0.7, [0])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from . import processors
from .logprobs import log_normalizer, top_logprobs
from .select import Workspace, draw

__all__ = ["RowParams", "StepOutput", "sample_step"]


@dataclass
class RowParams:
    """The sampling parameters and running state of one sequence (one batch row)."""

    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[np.ndarray, np.ndarray] | None = None  # (ids, values)
    counts: processors.TokenCounts = field(default_factory=processors.TokenCounts)
    logprobs: int | None = None  # top alternatives to report; None: report nothing
    logprobs_mode: str = "raw"  # or "processed" (spec §11)
    raw_logprob: bool = False  # the chosen token's raw logprob is needed (best_of ranking)

    def __post_init__(self) -> None:
        if self.logit_bias is not None:  # float32 once, not at every step
            ids, values = self.logit_bias
            self.logit_bias = (np.asarray(ids, np.int64), np.asarray(values, np.float32))

    def penalty(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Step 2 as ``(ids, amounts)`` to subtract (None when neutral or nothing seen)."""
        return self.counts.amounts(self.presence_penalty, self.frequency_penalty)


@dataclass
class StepOutput:
    tokens: np.ndarray  # [B] int64
    logprob: np.ndarray  # [B] float64 raw logprob of the chosen token (nan: not computed)
    reported: np.ndarray  # [B] float64 the logprob to report (raw or processed)
    top: list[tuple[np.ndarray, np.ndarray] | None]  # per row: (ids [k], logprobs [k])


def _raw_side(raw: np.ndarray, k: int, ws: Workspace) -> tuple[float, np.ndarray]:
    """The raw log-normaliser and the top-k ids of one row (ties to the lowest id).

    One argmax gives the max and the best id, k - 1 more over a copy give the rest: no
    sort. Uses the workspace's buffer, after the draw is done with it.
    """
    g = ws.e  # [V]
    j = int(np.argmax(raw))
    m = raw[j]
    np.subtract(raw, m, out=g)
    np.exp(g, out=g)
    lognorm = float(m) + math.log(float(g.sum(dtype=np.float64)))
    if k <= 1:
        return lognorm, np.array([j][:k], dtype=np.int64)
    np.copyto(g, raw)
    ids = [j]
    g[j] = -np.inf
    for _ in range(k - 1):
        i = int(np.argmax(g))
        if g[i] == -np.inf:  # fewer finite tokens than k: the exact rule handles the rest
            return lognorm, top_logprobs(raw[None], k)[0][0]
        ids.append(i)
        g[i] = -np.inf
    return lognorm, np.array(ids, dtype=np.int64)


def sample_step(
    logits: np.ndarray,
    rows: Sequence[RowParams],
    uniforms: Sequence[float] | np.ndarray,
    *,
    workspace: Workspace | None = None,
) -> StepOutput:
    """Choose one token per row of masked model logits ``[B, V]`` (not modified).

    ``uniforms`` holds one float64 in [0, 1) per row, drawn from that sequence's
    generator. Pass a :class:`~sampler.select.Workspace` to reuse its buffer.
    """
    batch, vocab = logits.shape
    ws = workspace if workspace is not None and workspace.vocab == vocab else Workspace(vocab)
    tokens = np.empty(batch, dtype=np.int64)  # [B]
    raw_lp = np.full(batch, np.nan)  # [B]
    rep_lp = np.full(batch, np.nan)  # [B]
    top: list[tuple[np.ndarray, np.ndarray] | None] = [None] * batch
    for b, r in enumerate(rows):
        raw = logits[b]  # [V]
        penalty = r.penalty()
        token = tokens[b] = draw(raw, r.temperature, r.top_p, float(uniforms[b]),
                                 bias=r.logit_bias, penalty=penalty, workspace=ws)  # fmt: skip
        raw_mode = r.logprobs is not None and r.logprobs_mode == "raw"
        if raw_mode or r.raw_logprob:
            lognorm, top_ids = _raw_side(raw, r.logprobs or 1, ws)
            raw_lp[b] = float(raw[token]) - lognorm
            if raw_mode:
                rep_lp[b] = raw_lp[b]
                ids = top_ids[: r.logprobs]
                top[b] = (ids, raw[ids].astype(np.float64) - lognorm)
        elif r.logprobs is not None:  # "processed": the distribution actually sampled from
            q = _processed_row(raw, penalty, r)  # [1, V]
            norm = log_normalizer(q)  # [1]
            rep_lp[b] = float(q[0, token]) - norm[0]
            ids, lps = top_logprobs(q, r.logprobs, lognorm=norm)
            top[b] = (ids[0], lps[0])
    return StepOutput(tokens=tokens, logprob=raw_lp, reported=rep_lp, top=top)


def _processed_row(raw: np.ndarray, penalty, r: RowParams) -> np.ndarray:
    """The row sampled from, as logits: steps 1–4 (greedy rows: at temperature 1)."""
    q = raw[None, :].copy()  # [1, V]
    if r.logit_bias is not None:
        q[0, r.logit_bias[0]] += r.logit_bias[1]
    if penalty is not None:
        q[0, penalty[0]] -= penalty[1]
    if r.temperature not in (0.0, 1.0):
        processors.temperature(q, r.temperature, out=q)
    if r.top_p < 1.0:
        processors.top_p(q, r.top_p, out=q)
    return q
