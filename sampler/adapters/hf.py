"""HF transformers: OpenAI's sampling step as a ``LogitsProcessor``, and ``generate`` that
reproduces refsampler's engine token for token.

transformers has no presence/frequency penalties (its ``repetition_penalty`` is CTRL's
multiplicative one, counted over the prompt too), and its ``TopPLogitsWarper`` keeps the
higher ids among tied tokens at the cut (docs/adapters/hf.md). This processor applies spec
§3 to ``scores`` instead: ``logit_bias``, penalties counted over the *generated* tokens only
(it knows the prompt length), temperature, the minimal nucleus and — by default — the draw
with each sequence's own ``SeedSequence(seed, spawn_key=(prompt, candidate))`` generator,
leaving only the drawn token finite so that HF's greedy or multinomial choice is ours.

Imports torch and transformers (``import sampler`` does not import this module).

>>> import torch
>>> proc = OpenAILogitsProcessor(temperature=0.0, logit_bias={2: 5}, prompt_length=1)
>>> scores = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
>>> proc(torch.tensor([[7]]), scores).argmax(-1).tolist()
[2]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from .core import (
    Generated,
    SamplingParams,
    Sequences,
    force,
    per_prompt,
)

__all__ = ["OpenAILogitsProcessor", "generate"]

Params = SamplingParams | Mapping[str, Any] | Sequence[SamplingParams | Mapping[str, Any]] | None


class OpenAILogitsProcessor(LogitsProcessor):
    """Spec §3 on HF ``scores`` ``[B, V]`` with per-prompt OpenAI parameters.

    ``params``: one :class:`~sampler.params.SamplingParams` or mapping of OpenAI
    fields for every row, a list with one per prompt, or the fields as keywords
    (``temperature=0.7, top_p=0.9, presence_penalty=0.5, logit_bias={50256: -100},
    seed=1, logprobs=2``), validated once here.

    ``prompt_length``: the width of the (left-padded) prompt batch, so that penalties count
    ``input_ids[:, prompt_length:]`` only; ``None`` takes the width of ``input_ids`` at
    the first call. A call whose ``input_ids`` is ``prompt_length`` wide starts a new
    generation (counts and generators restart), so one processor serves repeated
    ``generate`` calls with the same prompt width; otherwise call :meth:`reset`.

    ``n``: candidates per prompt; row ``b`` is candidate ``b % n`` of prompt ``b // n`` —
    HF's order for ``num_return_sequences`` and for ``repeat_interleave``.

    ``draw=True`` (default): the returned row is ``0`` at the token drawn with the row's own
    generator and ``-inf`` elsewhere; logprobs (when asked) are recorded in
    :attr:`records`. ``draw=False``: the processed logits (``-inf`` outside the nucleus;
    greedy rows keep only their argmax), for HF to sample from with ``do_sample=True`` and
    neutral warpers (``temperature=1.0, top_k=0, top_p=1.0``).

    ``mask_ids``: ids set to ``-inf`` first (step 0; e.g. ``core.masked_ids``).
    ``end_ids``: the end-of-sequence ids; with them, ``draw`` mode checks at every step
    that HF appended the drawn token to every unfinished row, and raises if something after
    this processor changed the choice.

    Input ``scores`` are read without a copy on CPU (``Tensor.numpy()``) and never modified
    unless ``inplace=True``; the result is a new tensor otherwise (HF's convention).
    """

    def __init__(
        self,
        params: Params = None,
        /,
        *,
        prompt_length: int | None = None,
        n: int = 1,
        draw: bool = True,
        mask_ids: np.ndarray | Sequence[int] | None = None,
        end_ids: Iterable[int] = (),
        inplace: bool = False,
        **fields: Any,
    ) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if prompt_length is not None and prompt_length < 0:
            raise ValueError(f"prompt_length must be >= 0, got {prompt_length}")
        if not (params is None or isinstance(params, (SamplingParams, Mapping))):
            params = list(params)  # one per prompt
        # validate now, even though the number of prompts is known only at the first call
        per_prompt(params, 1 if not isinstance(params, list) else len(params), **fields)
        self._params_arg = params
        self._fields = fields
        self.prompt_length = prompt_length
        self._fixed_length = prompt_length is not None
        self.n = n
        self.draw = draw
        self.mask_ids = mask_ids
        self.end_ids = frozenset(int(i) for i in end_ids)
        self.inplace = inplace
        self.sequences: Sequences | None = None
        self._seen = 0  # columns of input_ids already counted
        self._last: np.ndarray | None = None  # [B] tokens drawn at the previous call
        self._done: np.ndarray | None = None  # [B] rows that drew an end id

    def reset(self) -> None:
        """Forget the current generation (and a learned prompt length)."""
        self.sequences = None
        self._seen = 0
        self._last = self._done = None
        if not self._fixed_length:
            self.prompt_length = None

    @property
    def records(self) -> list[list[Any] | None]:
        """Per row, the :class:`~sampler.adapters.core.TokenLogprob` of each drawn token
        (None for rows without ``logprobs``); ``draw`` mode only."""
        return [] if self.sequences is None else self.sequences.records

    def _start(self, batch: int, vocab: int, width: int) -> None:
        if batch % self.n:
            raise ValueError(
                f"a batch of {batch} rows is not a whole number of prompts "
                f"with n={self.n} candidates each"
            )
        prompts = batch // self.n
        params = per_prompt(self._params_arg, prompts, vocab_size=vocab, **self._fields)
        self.sequences = Sequences.for_prompts(params, self.n, mask_ids=self.mask_ids)
        self.prompt_length = width if self.prompt_length is None else self.prompt_length
        if width < self.prompt_length:
            raise ValueError(
                f"input_ids has {width} columns, fewer than the prompt length {self.prompt_length}"
            )
        self._seen = self.prompt_length
        self._last = None
        self._done = np.zeros(batch, dtype=bool)

    def _catch_up(self, ids: torch.Tensor) -> None:
        """Count the tokens appended since the last call (normally one column)."""
        assert self.sequences is not None and self._done is not None
        new = ids[:, self._seen :].detach().cpu().numpy()  # [B, k]
        if self.draw and self._last is not None and new.shape[1] and self.end_ids:
            live = ~self._done
            wrong = np.flatnonzero(live & (new[:, 0] != self._last))
            if wrong.size:
                b = int(wrong[0])
                raise RuntimeError(
                    f"row {b}: HF appended token {int(new[b, 0])} but this processor drew "
                    f"{int(self._last[b])}. Something after it changed the choice (a "
                    "warper or processor later in the list); pass do_sample=False, or put "
                    "this processor last."
                )
            self._done |= np.isin(self._last, list(self.end_ids))
        if not self.draw or self._last is None:
            for col in new.T:
                self.sequences.observe(col)
        else:  # draw mode counted its own tokens; later columns (if any) are counted here
            for col in new[:, 1:].T:
                self.sequences.observe(col)
        self._seen = ids.shape[1]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        batch, vocab = scores.shape
        width = int(input_ids.shape[1])
        fresh = (
            self.sequences is None
            or len(self.sequences) != batch
            or width == self.prompt_length
            or width < self._seen
        )
        if fresh:
            self._start(batch, vocab, width)
            if width > self._seen:  # a prompt_length shorter than the input: count the rest
                self._catch_up(input_ids)
        else:
            self._catch_up(input_ids)
        assert self.sequences is not None
        z = _as_numpy(scores)  # [B, V] float32, a view on CPU
        seqs = self.sequences
        result = scores if self.inplace else torch.empty_like(scores)
        if self.draw:
            out = seqs.step(z)
            self._last = out.tokens.copy()
            _write(result, lambda o: force(o, out.tokens))
        else:
            _write(result, lambda o: seqs.process(z, out=o))
        return cast(torch.FloatTensor, result)


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    """``t`` as float32 NumPy: a view for a CPU float32 tensor, else a converted copy."""
    t = t.detach()
    if t.device.type == "cpu" and t.dtype == torch.float32:
        return t.numpy()
    return t.to(device="cpu", dtype=torch.float32).numpy()


def _write(dest: torch.Tensor, fill) -> None:
    """Run ``fill(array)`` on a NumPy view of ``dest`` (or a staging copy off the CPU)."""
    if dest.device.type == "cpu" and dest.dtype == torch.float32:
        fill(dest.numpy())
        return
    staging = np.empty(tuple(dest.shape), dtype=np.float32)
    fill(staging)
    dest.copy_(torch.from_numpy(staging))


# --- generate -----------------------------------------------------------------------------
# Fields of a model's generation_config that make HF add a processor BEFORE ours (custom
# processors come after HF's own, warpers after them): each would change the logits we see.
_NEUTRAL = {
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "min_new_tokens": 0,
    "guidance_scale": 1.0,
    "renormalize_logits": False,
    "remove_invalid_values": False,
}
_MUST_BE_UNSET = (
    "bad_words_ids",
    "sequence_bias",
    "suppress_tokens",
    "begin_suppress_tokens",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "exponential_decay_length_penalty",
    "watermarking_config",
)


def _check_generation_config(model: Any) -> None:
    cfg = getattr(model, "generation_config", None)
    if cfg is None:
        return
    bad = [name for name in _MUST_BE_UNSET if getattr(cfg, name, None) not in (None, [], {})]
    if bad:
        raise ValueError(
            f"model.generation_config sets {', '.join(bad)}: HF would apply it "
            "before the OpenAI step and change the logits it sees. Set "
            f"{', '.join(bad)} to None on a copy of the model's "
            "generation_config first."
        )


def _eos_ids(model: Any) -> list[int]:
    cfg = getattr(model, "generation_config", None)
    eos = getattr(cfg, "eos_token_id", None)
    if eos is None:
        eos = getattr(getattr(model, "config", None), "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def generate(
    model: Any,
    input_ids: torch.Tensor | Sequence[Sequence[int]] | Sequence[int],
    params: Params = None,
    /,
    *,
    n: int = 1,
    max_new_tokens: int = 16,
    attention_mask: torch.Tensor | None = None,
    mask_ids: np.ndarray | Sequence[int] | None = None,
    end_ids: Iterable[int] | None = None,
    logits_processor: Sequence[Any] = (),
    **fields: Any,
) -> list[Generated]:
    """Run ``model.generate`` with OpenAI's step and refsampler's draws; one
    :class:`~sampler.adapters.core.Generated` per candidate, prompt-major.

    ``input_ids``: ``[P, L]`` (left-padded, with ``attention_mask``) or one prompt ``[L]``.
    Each prompt is repeated ``n`` times (``repeat_interleave``), the processor draws with
    ``SeedSequence(seed, spawn_key=(p, c))`` and HF decodes greedily (``do_sample=False``,
    one beam) with every HF processor neutral, so the tokens are the engine's for the same
    logits. ``end_ids`` default (when None or empty: HF would fill an empty one in from the
    model's config) to the model's ``eos_token_id``; a sequence ends at the first
    (``finish_reason`` ``"stop"``, the end token kept in ``tokens``) or after
    ``max_new_tokens`` (``"length"``). ``logits_processor`` run before the OpenAI step (e.g.
    a constraint). Raises ``ValueError`` if the model's ``generation_config`` sets something
    HF would apply before the step.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    if ids.ndim == 1:
        ids = ids[None, :]
    mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask)
    if mask.ndim == 1:
        mask = mask[None, :]
    width = int(ids.shape[1])
    if n > 1:
        ids = ids.repeat_interleave(n, dim=0)
        mask = mask.repeat_interleave(n, dim=0)
    _check_generation_config(model)
    ends = [int(e) for e in end_ids] if end_ids else _eos_ids(model)
    proc = OpenAILogitsProcessor(
        params, prompt_length=width, n=n, draw=True, mask_ids=mask_ids, end_ids=ends, **fields
    )
    pad = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=ends or None,
        pad_token_id=pad if pad is not None else (ends or [0])[0],
        **_NEUTRAL,
    )
    with torch.no_grad():
        seqs = model.generate(
            ids,
            attention_mask=mask,
            generation_config=config,
            logits_processor=LogitsProcessorList([*logits_processor, proc]),
        )
    new = seqs[:, width:].cpu().numpy()  # [B, T]
    out = []
    end_set = set(ends)
    for b, row in enumerate(new.tolist()):
        tokens: list[int] = []
        reason = "length"
        for t in row:
            tokens.append(int(t))
            if t in end_set:
                reason = "stop"
                break
        rec = proc.records[b] if proc.records else None
        out.append(
            Generated(
                prompt=b // n,
                candidate=b % n,
                tokens=tokens,
                finish_reason=reason,
                logprobs=None if rec is None else list(rec[: len(tokens)]),
            )
        )
    return out
