"""The ``sampling_trace`` extension: one step's distribution after each step of spec §3.

For a generated token, :func:`trace_step` reports the row it was drawn from as it stood
after each step, ``raw`` (after the mask) then :data:`~sampler.reference.STEP_ORDER`
(``logit_bias``, ``penalties``, ``temperature``, ``top_p``), as logprobs of a few ids: the
``k`` most probable of every stage and the chosen token. It is computed with the
definition itself (:mod:`sampler.reference`), so the picture is the contract's, not the
fast path's; the fast path is proven equal to it elsewhere. ``raw`` equals what
``logprobs_mode: "raw"`` reports and ``top_p`` what ``"processed"`` reports.

A greedy row (``temperature = 0``) is traced as the definition reports it: at temperature 1.
A logprob of ``-inf`` is written ``-9999.0``, as everywhere in the API (spec §4).

>>> import numpy as np
>>> from sampler.params import SamplingParams
>>> from sampler.processors import TokenCounts
>>> z = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
>>> t = trace_step(z, SamplingParams(top_p=0.6), TokenCounts(), token=0, k=2)
>>> t["ids"], t["nucleus"], t["in_nucleus"]
([0, 1], 2, [True, True])
>>> [round(float(np.exp(lp)), 3) for lp in t["top_p"]]
[0.625, 0.375]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import reference as ref
from .params import SamplingParams
from .processors import TokenCounts

__all__ = ["STAGES", "trace_step"]

#: The stages a trace reports, in order: the masked row, then each of steps 1-4.
STAGES = ("raw", *ref.STEP_ORDER)


def trace_step(
    z: np.ndarray,
    params: SamplingParams,
    counts: TokenCounts,
    token: int,
    k: int,
    text: Callable[[int], str] | None = None,
) -> dict[str, Any]:
    """The trace of one step: the masked raw row ``z`` [V], the request's sampling
    ``params``, the counts of the tokens generated *before* this step, the ``token`` drawn.

    Returns ``ids`` (most probable raw first, ties to the lower id), one list of logprobs
    per stage in :data:`STAGES`, the ``bias`` added and ``penalty`` subtracted for each id,
    ``nucleus`` (how many ids step 4 kept), ``in_nucleus`` per id and ``chosen``; with
    ``text`` (an id's name, as ``logprobs`` writes it), ``tokens`` too.
    """
    bias = _bias(params)
    generated = [t for t, c in zip(counts.ids.tolist(), counts.counts.tolist()) for _ in range(c)]
    temperature = params.temperature or 1.0  # a greedy row: reported at temperature 1
    rows = {"raw": ref._f32(z)}  # [V] each
    rows["logit_bias"] = ref.logit_bias(rows["raw"], bias)
    rows["penalties"] = ref.penalties(
        rows["logit_bias"], generated, params.presence_penalty, params.frequency_penalty
    )
    rows["temperature"] = ref.temperature(rows["penalties"], temperature)
    kept = ref.nucleus(rows["temperature"], params.top_p)
    inside = np.zeros(rows["raw"].size, dtype=bool)  # [V]
    inside[kept] = True
    rows["top_p"] = np.where(inside, rows["temperature"], np.float32(-np.inf))  # [V]
    picked = {int(token)}
    for name in STAGES:
        picked.update(ref.top_ids(rows[name], k))
    ids = sorted(picked, key=lambda j: (-float(rows["raw"][j]), j))
    lps = {name: ref.logprobs(rows[name]) for name in STAGES}  # [V] float64 each
    out: dict[str, Any] = {"ids": ids}
    if text is not None:
        out["tokens"] = [text(j) for j in ids]
    for name in STAGES:
        out[name] = [ref.reported(float(lps[name][j])) for j in ids]
    out["bias"] = [float(np.float32(bias.get(j, 0.0))) for j in ids]
    out["penalty"] = [_penalty(counts.count(j), params) for j in ids]
    out["nucleus"] = len(kept)
    out["in_nucleus"] = [bool(inside[j]) for j in ids]
    out["chosen"] = int(token)
    return out


def _bias(params: SamplingParams) -> dict[int, float]:
    if params.logit_bias is None:
        return {}
    ids, values = params.logit_bias
    return dict(zip(ids.tolist(), values.tolist()))


def _penalty(count: int, params: SamplingParams) -> float:
    """What step 2 subtracts from an id generated ``count`` times (float32, as applied)."""
    if count == 0:
        return 0.0
    return float(np.float32(count * params.frequency_penalty + params.presence_penalty))
