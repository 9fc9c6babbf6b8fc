"""vLLM (V1 engine): OpenAI's sampling step as a V1 ``LogitsProcessor``, per request.

vLLM V1 dropped per-request logits processors: a processor class is loaded once per engine
and sees the whole persistent batch. :class:`OpenAILogitsProcessor` implements that
interface (``validate_params``, ``update_state``, ``apply``, ``is_argmax_invariant``) and
acts on the requests that carry ``SamplingParams(extra_args={"openai": {...}})`` (over HTTP:
``"vllm_xargs": {"openai": ...}``): OpenAI's ``temperature``, ``top_p``,
``presence_penalty``, ``frequency_penalty`` (over the request's *output* tokens only),
``logit_bias`` and ``seed`` (an object, or the same as a JSON string, since
``vllm_xargs`` values are flat), with refsampler's exact step (spec §3) and, by default
(``"draw": true``), the draw with ``SeedSequence(seed, spawn_key=(prompt_index,
candidate))`` — the row is left with only that token finite, so vLLM's sampler (greedy or
random, whatever its own settings) picks it. Other requests are untouched.

Leave vLLM's own sampling fields neutral for these requests (``validate_params`` refuses
them otherwise): vLLM applies ``logit_bias`` before custom processors and its penalties
after. For ``n > 1`` with a seed, give vLLM the same ``seed``: vLLM seeds child ``i`` with
``seed + i``, from which the processor takes the candidate index. Logprobs: use vLLM's own
(``logprobs``; its default ``logprobs_mode="raw_logprobs"`` reports the raw distribution,
as spec §4 does).

Step 0 (masking ids that are not tokens) needs the vocabulary: subclass and set
:attr:`OpenAILogitsProcessor.mask_ids`. Imports vllm and torch.

vLLM's Model Runner V2 (its default since 0.33) takes only processors of its own interface:
:class:`sampler.adapters.vllm_mrv2.OpenAILogitsProcessorV2`, the same semantics. ``Processor``
(``--logits-processors sampler.adapters.vllm:Processor``) is whichever of the two the
installed vLLM runs: V2 when it has the MRV2 interface and ``VLLM_USE_V2_MODEL_RUNNER`` is not
off, else this V1 class (:func:`processor_class` says which, and why).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from ..errors import RequestError
from .core import SamplingParams, Sequences, force, sampling_params

__all__ = [
    "EXTRA_ARGS_KEY",
    "OpenAILogitsProcessor",
    "processor_class",
    "request_spec",
]

#: The key of ``SamplingParams.extra_args`` that holds the OpenAI fields.
EXTRA_ARGS_KEY = "openai"
_OURS = ("draw", "prompt_index", "candidate")

# vLLM's own fields that must stay neutral on a request this processor handles, with the
# neutral values accepted; the second group only matters when vLLM samples (draw: false).
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (0.0,),
    "frequency_penalty": (0.0,),
    "repetition_penalty": (1.0,),
    "logit_bias": (None, {}),
}
_NEUTRAL_PROCESS = {"temperature": (1.0,), "top_p": (1.0,), "top_k": (-1, 0, None), "min_p": (0.0,)}


@dataclass(frozen=True)
class RequestSpec:
    """What one request asks of the processor (parsed from its ``extra_args``)."""

    params: SamplingParams
    draw: bool
    key: tuple[int, int]  # (prompt_index, candidate): the generator's spawn key


def request_spec(sp: Any, vocab_size: int | None = None) -> RequestSpec | None:
    """Parse and check a vLLM ``SamplingParams``: None when it does not use this
    processor; ``ValueError`` (with the Completions API's message) when it is invalid
    (``logit_bias`` ids too, when ``vocab_size`` is known)."""
    extra = getattr(sp, "extra_args", None) or {}
    fields = extra.get(EXTRA_ARGS_KEY)
    if fields is None:
        return None
    if isinstance(fields, str):  # over HTTP, vllm_xargs values are flat: a JSON string
        try:
            fields = json.loads(fields)
        except ValueError:
            raise ValueError(
                f"extra_args[{EXTRA_ARGS_KEY!r}] is a string but not JSON: {fields[:80]!r}"
            ) from None
    if not isinstance(fields, Mapping):
        raise ValueError(
            f"extra_args[{EXTRA_ARGS_KEY!r}] must be an object of OpenAI "
            f"sampling fields, got {type(fields).__name__}"
        )
    fields = dict(fields)
    draw = fields.pop("draw", True)
    prompt_index = fields.pop("prompt_index", 0)
    candidate = fields.pop("candidate", None)
    if "logprobs" in fields or "logprobs_mode" in fields:
        raise ValueError(
            "logprobs: use vLLM's own `logprobs` (its default logprobs_mode "
            "'raw_logprobs' reports the raw distribution, as OpenAI does)"
        )
    if not isinstance(draw, bool):
        raise ValueError(f"extra_args[{EXTRA_ARGS_KEY!r}]['draw'] must be true or false")
    try:
        params = sampling_params(fields, vocab_size=vocab_size)
    except RequestError as e:
        raise ValueError(e.message) from None
    for name, ok in (*_NEUTRAL.items(), *(() if draw else _NEUTRAL_PROCESS.items())):
        value = getattr(sp, name, ok[0])
        if value not in ok:
            raise ValueError(
                f"SamplingParams.{name}={value!r} would be applied by vLLM on top "
                f"of extra_args[{EXTRA_ARGS_KEY!r}]; leave it at {ok[0]!r} and put "
                "OpenAI's fields in extra_args"
            )
    vllm_seed = getattr(sp, "seed", None)
    if candidate is None:
        candidate = 0
        if params.seed is not None and vllm_seed is not None:
            candidate = vllm_seed - params.seed  # vLLM seeds child i of n with seed + i
            if candidate < 0:
                raise ValueError(
                    f"SamplingParams.seed={vllm_seed} is not the OpenAI seed "
                    f"{params.seed} (+ a child index): give vLLM the same seed"
                )
        elif (getattr(sp, "n", 1) or 1) > 1 and params.seed is not None:
            raise ValueError(
                "n > 1 with an OpenAI seed: also set SamplingParams.seed to it, "
                "so that vLLM's children (seeded seed + i) draw as candidates i"
            )
    for name, value in (("prompt_index", prompt_index), ("candidate", candidate)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(
                f"extra_args[{EXTRA_ARGS_KEY!r}][{name!r}] must be an integer >= 0, got {value!r}"
            )
    return RequestSpec(params, draw, (prompt_index, candidate))


class _Slot:
    """One request in the persistent batch: its state and its live output-token list."""

    def __init__(self, spec: RequestSpec, output: list[int], mask: Any) -> None:
        self.spec = spec
        self.output = output  # vLLM's reference: grows as the request generates
        self.counted = 0
        self.seqs = Sequences([spec.params], seed_keys=[spec.key], mask_ids=mask)

    def sync(self) -> None:
        """Count the output tokens vLLM appended since the last step."""
        new = self.output[self.counted :]
        for t in new:
            if t >= 0:  # (placeholders, if a scheduler ever shows them, are skipped)
                self.seqs.observe([t])
        self.counted = len(self.output)


class OpenAILogitsProcessor(LogitsProcessor):
    """OpenAI's sampling step, for the requests whose ``extra_args`` hold ``"openai"``.

    Load it with ``LLM(model, logits_processors=[OpenAILogitsProcessor])`` or
    ``vllm serve ... --logits-processors sampler.adapters.vllm:OpenAILogitsProcessor``.
    """

    #: Ids set to ``-inf`` before the step (spec §3, step 0); None: no mask. Subclass to
    #: set, e.g. ``sampler.adapters.core.masked_ids("cl100k_base", V, [100257])``.
    mask_ids: ClassVar[Sequence[int] | np.ndarray | None] = None
    #: The logits' width, to refuse out-of-range ``logit_bias`` ids up front; None: unchecked
    #: until a step (an id beyond the row then raises there).
    vocab_size: ClassVar[int | None] = None

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        request_spec(sampling_params, cls.vocab_size)

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.device = device
        self.slots: dict[int, _Slot] = {}
        self._mask = None if self.mask_ids is None else np.asarray(self.mask_ids, np.int64)

    def is_argmax_invariant(self) -> bool:
        """False: bias, penalties and the draw change which token wins."""
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.slots.pop(index, None)
        for added in batch_update.added:
            index, sp, *rest = added  # (index, params, [prompt ids,] output ids)
            spec = request_spec(sp, self.vocab_size)
            if spec is None:
                self.slots.pop(index, None)
            else:
                self.slots[index] = _Slot(spec, rest[-1], self._mask)
        for a, b, direction in batch_update.moved:
            sa, sb = self.slots.pop(a, None), self.slots.pop(b, None)
            if sa is not None:
                self.slots[b] = sa
            if direction == MoveDirectionality.SWAP and sb is not None:
                self.slots[a] = sb

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Rewrite the rows of the requests that use this processor (in place)."""
        if not self.slots:
            return logits
        rows = sorted(i for i in self.slots if i < logits.shape[0])
        index = torch.tensor(rows, dtype=torch.long, device=logits.device)
        z = logits.index_select(0, index).to(device="cpu", dtype=torch.float32).numpy()  # [r, V]
        out = np.empty_like(z)  # [r, V]
        for i, row in enumerate(rows):
            slot = self.slots[row]
            slot.sync()
            if slot.spec.draw:
                token = int(slot.seqs.step(z[i : i + 1], observe=False).tokens[0])
                force(out[i : i + 1], [token])
            else:
                slot.seqs.process(z[i : i + 1], out=out[i : i + 1])
        logits.index_copy_(0, index, torch.from_numpy(out).to(logits.device, logits.dtype))
        return logits


def processor_class() -> tuple[type, str]:
    """The processor class for the installed vLLM's model runner, and the reason.

    Model Runner V2 (``vllm.v1.worker.gpu.sample.logits_processor``) rejects V1-interface
    processors at load time; the V1 runner needs the V1 class. V2 is picked when the
    interface is there and ``VLLM_USE_V2_MODEL_RUNNER`` is not ``0``/``false`` (vLLM may still
    fall back to V1 for features V2 lacks: then set ``VLLM_USE_V2_MODEL_RUNNER=0``).
    """
    import importlib
    import os

    flag = os.environ.get("VLLM_USE_V2_MODEL_RUNNER", "").strip().lower()
    if flag in ("0", "false"):
        return OpenAILogitsProcessor, "VLLM_USE_V2_MODEL_RUNNER is off: the V1 interface"
    try:  # import-light by vLLM's design (its frontend imports it to validate requests)
        importlib.import_module("vllm.v1.worker.gpu.sample.logits_processor")
    except ImportError:
        return OpenAILogitsProcessor, "this vLLM has no Model Runner V2 interface: V1"
    from .vllm_mrv2 import OpenAILogitsProcessorV2

    return OpenAILogitsProcessorV2, "this vLLM runs Model Runner V2 by default: its interface"


def __getattr__(name: str) -> Any:
    if name == "Processor":  # resolved when asked for, as vLLM's loader does
        return processor_class()[0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
