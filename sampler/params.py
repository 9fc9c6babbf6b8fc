"""The request boundary: parse and validate a Completions body once, into frozen records.

:func:`parse_request` reads like a checklist of spec §1: each line is one field's rule
from :mod:`sampler.fields` (the only place those rules live), then the prompts
(:mod:`sampler.prompts`). Each failure raises :class:`~sampler.errors.RequestError`
naming the parameter, in OpenAI's wording where OpenAI has one; nothing is clamped
silently and nothing reaches the model first. The records: :class:`Request`, and in it
:class:`SamplingParams`, the one record of the sampling fields that rows and adapters share.

>>> from sampler.tokenizer import get_tokenizer
>>> info = ModelInfo("m", get_tokenizer("cl100k_base"), context_length=64, end_ids=(100257,))
>>> parse_request({"model": "m", "prompt": "Hi", "n": 2}, info).prompts[0].tokens
(13347,)
>>> try:
...     parse_request({"model": "m", "prompt": "Hi", "n": 130}, info)
... except RequestError as e:
...     print(e.param, e.code, e.message[:41])
n integer_above_max_value Invalid 'n': integer above maximum value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import RequestError  # noqa: F401  (the type every rule raises)
from .fields import (
    EXTENSION_FIELDS,
    RANGES,
    Limits,
    ModelInfo,
    check_fields,
    check_limits,
    logit_bias_field,
    logprobs_mode_field,
    model_field,
    n_best_of,
    sampling_trace_field,
    stop_field,
    stream_options_field,
    suffix_field,
)
from .prompts import Prompt, check_context, prompt_tokens, raw_prompts
from .values import INT64_MAX, INT64_MIN, boolean, integer, number, type_error

__all__ = [
    "ModelInfo",
    "Prompt",
    "Request",
    "Limits",
    "SamplingParams",
    "parse_request",
    "sampling_params",
    "logit_bias_field",
    "SAMPLING_FIELDS",
    "EXTENSION_FIELDS",
    "INT64_MIN",
    "INT64_MAX",
]


#: The fields that shape one step of sampling (spec §3–4, §6, §11): a
#: :class:`SamplingParams`.
SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "seed",
    "logprobs",
    "logprobs_mode",
)


@dataclass(frozen=True)
class SamplingParams:
    """The one record of a request's sampling fields, validated (spec §3–4, §6, §11).

    The engine's rows and every adapter share it: a sequence's state is this record plus
    the counts of its generated tokens (:class:`sampler.step.Row`). ``logit_bias`` is
    ``(ids int64, values float64)``, unique ids, or None.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[np.ndarray, np.ndarray] | None = field(default=None, compare=False)
    seed: int | None = None
    logprobs: int | None = None  # top alternatives to report; None: report nothing
    logprobs_mode: str = "raw"  # or "processed" (spec §11)


def sampling_params(
    body: Mapping[str, Any],
    *,
    max_bias_id: int = INT64_MAX,
    masked: frozenset[int] = frozenset(),
    tokenizer: str = "",
) -> SamplingParams:
    """Validate the sampling fields of ``body`` (absent or null: the default), with the
    API's errors (see :data:`SAMPLING_FIELDS`). Other runtimes' adapters use this without
    a model; :func:`parse_request` with the model's limits.

    >>> sampling_params({"temperature": 0.5, "logit_bias": {"7": 2}}).logit_bias[0]
    array([7])
    """
    return SamplingParams(
        temperature=number(body, "temperature", *RANGES["temperature"]),
        top_p=number(body, "top_p", *RANGES["top_p"]),
        presence_penalty=number(body, "presence_penalty", *RANGES["presence_penalty"]),
        frequency_penalty=number(body, "frequency_penalty", *RANGES["frequency_penalty"]),
        logit_bias=logit_bias_field(
            body.get("logit_bias"), max_id=max_bias_id, masked=masked, tokenizer=tokenizer
        ),
        seed=integer(body, "seed", *RANGES["seed"]),
        logprobs=integer(body, "logprobs", *RANGES["logprobs"]),
        logprobs_mode=logprobs_mode_field(body),
    )


@dataclass(frozen=True)
class Request:
    """A validated request: every field typed, defaulted and in range."""

    model: str
    prompts: tuple[Prompt, ...]
    sampling: SamplingParams = SamplingParams()
    max_tokens: int = 16
    n: int = 1
    best_of: int = 1
    echo: bool = False
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    suffix: str | None = None
    trace: int | None = None  # sampling_trace: top ids traced per stage (spec §11)
    chat: bool = False  # answered in the chat endpoint's shapes (sampler.chat_request)


def parse_request(body: Any, info: ModelInfo, limits: Limits | None = None) -> Request:
    """Validate a Completions request body against the model it names (spec §1–2), and
    against a server's ``limits`` if given: the rules of :mod:`sampler.fields`, in order,
    then the prompts (:mod:`sampler.prompts`)."""
    body = check_fields(body)
    model = model_field(body, info)
    given = raw_prompts(body)
    max_tokens = integer(body, "max_tokens", *RANGES["max_tokens"])
    stream = boolean(body, "stream")
    n, best_of = n_best_of(body, stream)
    echo = boolean(body, "echo")
    stop = stop_field(body)
    include_usage = stream_options_field(body, stream)
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise type_error("user", "a string", user)
    sampling = sampling_params(
        body, max_bias_id=info.max_bias_id, masked=info._masked_set, tokenizer=info.tokenizer.name
    )
    trace = sampling_trace_field(body, sampling.logprobs)
    if limits is not None:
        check_limits(len(given), n, best_of, body.get("best_of") is not None, limits)
    suffix = suffix_field(body, info, echo)
    prompts = tuple(prompt_tokens(raw, info, suffix) for raw in given)
    check_context(prompts, max_tokens, info)
    return Request(
        model=model,
        prompts=prompts,
        sampling=sampling,
        max_tokens=max_tokens,
        n=n,
        best_of=best_of,
        echo=echo,
        stop=stop,
        stream=stream,
        include_usage=include_usage,
        suffix=suffix,
        trace=trace,
    )
