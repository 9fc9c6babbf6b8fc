"""llama-cpp-python: OpenAI's sampling step as a logits processor, and OpenAI logprobs.

llama.cpp counts the prompt in its repetition/presence/frequency penalties (its
``penalty_last_n`` window covers prompt and output alike), applies temperature after its
truncation samplers, and its top-p is not the minimal nucleus. :class:`LogitsProcessor`
applies spec §3 instead (penalties over the *generated* tokens only) and, by default, draws
with the sequence's own generator, leaving only that token finite: llama.cpp's sampler chain
(penalties, top-k, top-p, min-p, temperature, greedy or dist) can only pick it.

llama-cpp-python already passes NumPy arrays: ``processor(input_ids, scores) -> scores`` with
``input_ids`` the whole context (prompt and generated tokens) and ``scores`` one row [V].
Nothing here imports ``llama_cpp``: :func:`generate` drives a ``Llama`` object you pass in.

>>> import numpy as np
>>> proc = LogitsProcessor(temperature=0, logit_bias={2: 5})
>>> proc(np.array([7, 8], np.intc), np.log(np.array([0.5, 0.3, 0.2], np.float32)))
array([-inf, -inf,   0.], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..logprobs import log_normalizer, top_logprobs
from .core import (
    Generated,
    SamplingParams,
    Sequences,
    TokenLogprob,
    force,
    fresh_entropy,
    logprobs_object,
    sampling_params,
)

__all__ = ["LogitsProcessor", "generate", "logprobs_from_scores", "token_bytes"]


class LogitsProcessor:
    """Spec §3 for one llama-cpp-python sequence (candidate ``candidate`` of prompt
    ``prompt_index``).

    ``params``/``fields``: OpenAI's sampling fields (``seed`` included), validated here.
    ``prompt_length``: how many leading ``input_ids`` are the prompt (BOS included, as
    llama-cpp-python tokenizes it); ``None`` takes ``len(input_ids)`` at the first call, so
    a processor then serves one generation (or call :meth:`reset`). A call whose
    ``input_ids`` is ``prompt_length`` long starts a new generation.
    ``draw=True`` (default) returns ``0`` at the drawn token and ``-inf`` elsewhere (any
    llama.cpp sampler setting then picks it); ``draw=False`` returns the processed logits
    for llama.cpp to sample with neutral settings (``temperature=1, top_k=0, top_p=1,
    min_p=0, repeat_penalty=1``). ``entropy``: shared by the candidates of one request when
    it has no seed (default: fresh). :attr:`records` holds the logprobs of drawn tokens
    when ``logprobs`` is set, computed from the raw logits llama.cpp passed in.
    """

    def __init__(
        self,
        params: SamplingParams | Mapping[str, Any] | None = None,
        /,
        *,
        prompt_length: int | None = None,
        draw: bool = True,
        mask_ids: np.ndarray | Sequence[int] | None = None,
        prompt_index: int = 0,
        candidate: int = 0,
        entropy: int | None = None,
        **fields: Any,
    ) -> None:
        self.params = sampling_params(params, **fields)
        self.prompt_length = prompt_length
        self._fixed_length = prompt_length is not None
        self.draw = draw
        self.mask_ids = mask_ids
        self.key = (prompt_index, candidate)
        self.entropy = fresh_entropy() if entropy is None else entropy
        self.sequences: Sequences | None = None
        self._seen = 0
        self._last: int | None = None

    def reset(self) -> None:
        self.sequences = None
        self._seen = 0
        self._last = None
        if not self._fixed_length:
            self.prompt_length = None

    @property
    def records(self) -> list[TokenLogprob] | None:
        return None if self.sequences is None else self.sequences.records[0]

    def _start(self, length: int, vocab: int) -> None:
        seqs = Sequences(
            [self.params], seed_keys=[self.key], mask_ids=self.mask_ids, entropy=self.entropy
        )
        seqs.check_vocab(vocab)
        self.sequences = seqs
        self.prompt_length = length if self.prompt_length is None else self.prompt_length
        self._seen = min(self.prompt_length, length)
        self._last = None

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        ids = np.asarray(input_ids).reshape(-1)
        vocab = int(np.shape(scores)[-1])
        if self.sequences is None or len(ids) == self.prompt_length or len(ids) < self._seen:
            self._start(len(ids), vocab)
        assert self.sequences is not None
        new = ids[self._seen :].tolist()
        if new and self._last is not None and self.draw:
            if new[0] != self._last:
                raise RuntimeError(
                    f"llama.cpp appended token {new[0]} but this processor "
                    f"drew {self._last}: a sampler before it changed the row"
                )
            new = new[1:]  # counted when drawn
        for t in new:
            self.sequences.observe([t])
        self._seen = len(ids)
        z = np.asarray(scores, dtype=np.float32)[None]  # [1, V], a view: neither call writes it
        if not self.draw:
            return self.sequences.process(z)[0]  # a fresh row
        token = int(self.sequences.step(z).tokens[0])
        self._last = token
        return force(np.empty((1, vocab), dtype=np.float32), [token])[0]  # [V]


def token_bytes(llm: Any) -> Callable[[int], bytes]:
    """A token's bytes from a ``Llama`` (special tokens as their text), for logprobs."""
    cache: dict[int, bytes] = {}

    def get(i: int) -> bytes:
        data = cache.get(i)
        if data is None:
            data = cache[i] = llm.detokenize([int(i)], special=True)
        return data

    return get


def generate(
    llm: Any,
    prompt: Sequence[int] | str,
    params: SamplingParams | Mapping[str, Any] | None = None,
    /,
    *,
    n: int = 1,
    max_tokens: int = 16,
    mask_ids: np.ndarray | Sequence[int] | None = None,
    end_ids: Iterable[int] | None = None,
    prompt_index: int = 0,
    logits_processor: Sequence[Any] = (),
    **fields: Any,
) -> list[Generated]:
    """``n`` candidates for one prompt with ``llm.generate`` and the OpenAI step; one
    :class:`~sampler.adapters.core.Generated` per candidate.

    ``prompt``: token ids (used as given) or text (tokenized by llama with its BOS).
    Candidates run one after the other (llama-cpp-python decodes one sequence), each from a
    fresh evaluation of the prompt (so all see the same first logits), candidate ``c``
    drawing with ``SeedSequence(seed, spawn_key=(prompt_index, c))``. ``end_ids``
    default to ``llm.token_eos()``; a sequence ends at one (``"stop"``, kept in ``tokens``)
    or after ``max_tokens`` (``"length"``). ``logits_processor`` run before the OpenAI step.
    llama.cpp's own sampler settings are irrelevant: only the drawn token is left finite.
    """
    from llama_cpp import LogitsProcessorList

    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    tokens = llm.tokenize(prompt.encode("utf-8")) if isinstance(prompt, str) else list(prompt)
    ends = {int(llm.token_eos())} if end_ids is None else {int(e) for e in end_ids}
    p = sampling_params(params, vocab_size=int(llm.n_vocab()), **fields)
    entropy = fresh_entropy()
    out = []
    for c in range(n):
        proc = LogitsProcessor(
            p,
            prompt_length=len(tokens),
            mask_ids=mask_ids,
            prompt_index=prompt_index,
            candidate=c,
            entropy=entropy,
        )
        got: list[int] = []
        llm.reset()  # evaluate the whole prompt again: a partial re-evaluation (llama's
        # prefix reuse) gives the first step float-different logits than candidate 0 had
        chain = LogitsProcessorList([*logits_processor, proc])
        for t in llm.generate(
            tokens,
            temp=0.0,
            top_k=1,
            top_p=1.0,
            min_p=0.0,
            repeat_penalty=1.0,
            reset=True,
            logits_processor=chain,
        ):
            got.append(int(t))
            if t in ends or len(got) >= max_tokens:
                break
        rec = proc.records
        out.append(
            Generated(
                prompt=prompt_index,
                candidate=c,
                tokens=got,
                finish_reason="stop" if got and got[-1] in ends else "length",
                logprobs=None if rec is None else list(rec[: len(got)]),
            )
        )
    return out


def logprobs_from_scores(
    scores: np.ndarray,
    tokens: Sequence[int],
    k: int,
    token_bytes: Callable[[int], bytes],
    *,
    end_ids: Iterable[int] = (),
    offset: int = 0,
    mask_ids: np.ndarray | Sequence[int] | None = None,
) -> dict[str, list[Any]]:
    """OpenAI's ``logprobs`` object from llama-cpp-python's per-position logits.

    ``scores`` [n, V]: the raw logits that predicted each of ``tokens`` (with
    ``Llama(logits_all=True)``, generated token ``j`` of a ``L``-token prompt is predicted
    by ``llm.scores[L - 1 + j]``). Reports the raw distribution (spec §4; after
    ``mask_ids``), the ``k`` most probable tokens plus the chosen one, ``bytes:`` text,
    ``-9999.0`` for ``-inf`` and ``text_offset`` from ``offset``, exactly as the engine does
    — unlike llama-cpp-python's own ``logprobs``, which are a float32 log-softmax.
    """
    z = np.array(scores, dtype=np.float32, copy=True).reshape(len(tokens), -1)  # [n, V]
    if mask_ids is not None:
        z[:, np.asarray(mask_ids, dtype=np.int64)] = -np.inf
    norm = log_normalizer(z)  # [n]
    ids, lps = top_logprobs(z, k, lognorm=norm)  # [n, k]
    chosen = z[np.arange(len(tokens)), np.asarray(tokens, dtype=np.int64)].astype(np.float64)
    entries = [
        TokenLogprob(int(t), float(chosen[j] - norm[j]), ids[j], lps[j])
        for j, t in enumerate(tokens)
    ]
    return logprobs_object(entries, token_bytes, end_ids=end_ids, offset=offset)
