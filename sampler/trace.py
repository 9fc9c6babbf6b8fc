"""The ``sampling_trace`` extension: one step's distribution after each step of spec §3.

For a generated token, :func:`trace_step` reports the row it was drawn from as it stood
after each step, ``raw`` (after the mask) then :data:`~sampler.reference.STEP_ORDER`
(``logit_bias``, ``penalties``, ``temperature``, ``top_p``), as logprobs of a few ids: the
``k`` most probable of every stage and the chosen token. Each stage is the public batched
processor of that step (:mod:`sampler.processors`, each tested equal to its definition in
:mod:`sampler.reference`; ``tests/test_trace.py`` checks whole traces against the
definition too), normalised as reported logprobs are: ``raw`` is what ``logprobs_mode:
"raw"`` reports and ``top_p`` what ``"processed"`` reports.

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

from . import processors as P
from .logprobs import log_normalizer, reported, top_logprobs
from .params import SamplingParams
from .processors import TokenCounts
from .reference import STEP_ORDER

__all__ = ["STAGES", "trace_step"]

#: The stages a trace reports, in order: the masked row, then each of steps 1-4.
STAGES = ("raw", *STEP_ORDER)


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
    ``nucleus`` (how many drawable ids step 4 kept), ``in_nucleus`` per id and ``chosen``;
    with ``text`` (an id's name, as ``logprobs`` writes it), ``tokens`` too.
    """
    greedy_at_1 = params.temperature or 1.0  # a greedy row: reported at temperature 1
    rows = {"raw": np.array(z, dtype=np.float32)[None, :]}  # [1, V] each
    rows["logit_bias"] = P.logit_bias(rows["raw"], [params.logit_bias])
    rows["penalties"] = P.penalties(
        rows["logit_bias"], [counts], [params.presence_penalty], [params.frequency_penalty]
    )
    rows["temperature"] = P.temperature(rows["penalties"], [greedy_at_1])
    rows["top_p"] = P.top_p(rows["temperature"], [params.top_p])
    norms = {name: log_normalizer(rows[name])[0] for name in STAGES}
    picked = {int(token)}
    for name in STAGES:
        top, _ = top_logprobs(rows[name], k, lognorm=norms[name][None])  # [1, k]
        picked.update(top[0].tolist())
    raw = rows["raw"][0]
    ids = sorted(picked, key=lambda j: (-float(raw[j]), j))
    at = np.array(ids, dtype=np.int64)  # [n]
    out: dict[str, Any] = {"ids": ids}
    if text is not None:
        out["tokens"] = [text(j) for j in ids]
    for name in STAGES:
        lps = rows[name][0, at].astype(np.float64) - norms[name]  # [n]
        out[name] = [reported(float(v)) for v in lps]
    bias = _bias(params)
    kept = np.isfinite(rows["top_p"][0])  # [V]
    out["bias"] = [float(np.float32(bias.get(j, 0.0))) for j in ids]
    out["penalty"] = [_penalty(counts.count(j), params) for j in ids]
    out["nucleus"] = int(kept.sum())
    out["in_nucleus"] = [bool(kept[j]) for j in ids]
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
