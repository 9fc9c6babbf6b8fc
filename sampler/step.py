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
from .logprobs import log_normalizer, top_k, top_logprobs
from .select import Edits, Workspace, _draw, pick

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
        self._edits = _RowEdits(self.logit_bias)
        self._edits_for = self._edits_key()

    def penalty(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Step 2 as ``(ids, amounts)`` to subtract (None when neutral or nothing seen)."""
        return self.counts.amounts(self.presence_penalty, self.frequency_penalty)

    def edits(self) -> Edits | None:
        """Steps 1–2 as one :class:`~sampler.select.Edits`, brought up to date with the
        tokens added to ``counts`` since the last call (O(1) per new token). Rebuilt from
        scratch if ``logit_bias``, the penalties or the ``counts`` object were replaced."""
        counts, bias, presence, frequency = self._edits_for
        if not (counts is self.counts and bias is self.logit_bias
                and presence == self.presence_penalty and frequency == self.frequency_penalty):
            self.__post_init__()
        return self._edits.update(self.counts, self.presence_penalty, self.frequency_penalty)

    def _edits_key(self) -> tuple:
        """What the edits were built from (the objects themselves, compared by identity)."""
        return (self.counts, self.logit_bias, self.presence_penalty, self.frequency_penalty)


class _RowEdits:
    """A row's bias and penalty amounts at the ids they touch, kept incrementally.

    The bias ids come first; each generated token's id is appended the first time it is
    seen (penalties on), and its amount ``float32(c * frequency + presence)`` rewritten
    whenever its count ``c`` grows -- the same float64 expression and rounding as
    :meth:`~sampler.processors.TokenCounts.amounts`.
    """

    def __init__(self, bias: tuple[np.ndarray, np.ndarray] | None) -> None:
        ids, add = bias if bias is not None else (np.empty(0, np.int64), np.empty(0, np.float32))
        self.pos = {int(i): n for n, i in enumerate(ids.tolist())}
        self.ids, self.add = ids.copy(), add.copy()  # [cap]
        self.sub = np.zeros(ids.size, dtype=np.float32)  # [cap]
        self.n = ids.size
        self.seen = 0  # tokens of counts.added already applied

    def update(self, counts: processors.TokenCounts, presence: float,
               frequency: float) -> Edits | None:  # fmt: skip
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
                self.ids, self.add, self.sub = (np.resize(a, cap) for a in
                                                (self.ids, self.add, self.sub))  # fmt: skip
            self.ids[at], self.add[at] = token, 0.0
            self.n += 1
        self.sub[at] = amount


@dataclass
class StepOutput:
    tokens: np.ndarray  # [B] int64
    logprob: np.ndarray  # [B] float64 raw logprob of the chosen token (nan: not computed)
    reported: np.ndarray  # [B] float64 the logprob to report (raw or processed)
    top: list[tuple[np.ndarray, np.ndarray] | None]  # per row: (ids [k], logprobs [k])


# Raw top ids found for a processed draw, however few are reported: the last one's value
# bounds every other id (select.draw's nucleus without a processed pass).
_RAW_TOP = 5


def _raw_side(raw: np.ndarray, k: int, ws: Workspace) -> tuple[list[int], list[float], float, float]:
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
    rows: Sequence[RowParams],
    uniforms: Sequence[float] | np.ndarray,
    *,
    workspace: Workspace | None = None,
) -> StepOutput:
    """Choose one token per row of masked model logits ``[B, V]`` (not modified).

    ``uniforms`` holds one float64 in [0, 1) per row, drawn from that sequence's
    generator. Pass a :class:`~sampler.select.Workspace` to reuse its buffer.
    """
    with np.errstate(over="ignore"):  # float32 values far below a max may become -inf
        return _sample_step(logits, rows, uniforms, workspace)


def _sample_step(logits: np.ndarray, rows: Sequence[RowParams],
                 uniforms: Sequence[float] | np.ndarray,
                 workspace: Workspace | None) -> StepOutput:  # fmt: skip
    batch, vocab = logits.shape
    ws = workspace if workspace is not None and workspace.vocab == vocab else Workspace(vocab)
    tokens = np.empty(batch, dtype=np.int64)  # [B]
    raw_lp = np.full(batch, np.nan)  # [B]
    rep_lp = np.full(batch, np.nan)  # [B]
    top: list[tuple[np.ndarray, np.ndarray] | None] = [None] * batch
    for b, r in enumerate(rows):
        raw = logits[b]  # [V]
        edits = r.edits()
        u = float(uniforms[b])
        raw_mode = r.logprobs is not None and r.logprobs_mode == "raw"
        if raw_mode or r.raw_logprob:  # the raw side first: its max serves the draw
            direct = r.temperature == 1.0 and edits is None  # the raw row is sampled from
            k = (r.logprobs or 1) if direct else max(r.logprobs or 0, _RAW_TOP)
            top_ids, top_vals, lognorm, total = _raw_side(raw, k, ws)
            if direct:
                token = pick(ws.e, r.top_p, u, total, workspace=ws)
            else:
                token = _draw(raw, r.temperature, r.top_p, u, edits=edits, workspace=ws,
                             raw_top=(top_ids, top_vals), raw_total=total)  # fmt: skip
            raw_lp[b] = float(raw[token]) - lognorm
            if raw_mode:
                rep_lp[b] = raw_lp[b]
                k = r.logprobs
                top[b] = (np.array(top_ids[:k], dtype=np.int64),
                          np.array(top_vals[:k], dtype=np.float64) - lognorm)  # fmt: skip
        else:
            token = _draw(raw, r.temperature, r.top_p, u, edits=edits, workspace=ws)
        tokens[b] = token
        if r.logprobs is not None and not raw_mode:  # "processed": the distribution sampled
            q = _processed_row(raw, r.penalty(), r)  # [1, V]
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
