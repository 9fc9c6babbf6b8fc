"""What every adapter shares: OpenAI's sampling fields, validated once, and the state of a
batch of sequences sampled with them. Pure NumPy; no runtime is imported here.

Another runtime computes the logits; this module applies the Completions step to them (spec
§3, in :mod:`sampler.processors`' order) in one of two modes:

``draw`` (the default of every adapter)
    Steps 0–5: mask, logit_bias, penalties over the sequence's *generated* tokens,
    temperature, the minimal top_p nucleus, and the draw with the sequence's own generator
    ``Generator(PCG64(SeedSequence(seed, spawn_key=(prompt, candidate))))``, one uniform per
    step (spec §6) — the engine's choice, token for token. The row goes back to the runtime
    with only the chosen token finite (``0``, the rest ``-inf``), so whatever the runtime
    then does (argmax, multinomial, top-k, its own temperature) it picks that token.
``process``
    Steps 0–4 only: the runtime samples from the result with its own generator. The
    distribution is ours, the draws are not; the runtime's own sampling parameters must be
    neutral (temperature 1, top_p 1, no top-k, no penalties).

Reported logprobs follow spec §4 (raw by default), computed from the logits the adapter
received, and :func:`logprobs_object` shapes them like the Completions API (``bytes:``
token text, ``text_offset``, the end token kept last).

>>> import numpy as np
>>> p = sampling_params(temperature=0.0, logit_bias={"2": 5})
>>> seqs = Sequences([p], seed_keys=[(0, 0)])
>>> z = np.log(np.array([[0.5, 0.3, 0.2]], dtype=np.float32))
>>> seqs.step(z).tokens.tolist()       # the bias makes id 2 the argmax
[2]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .. import processors
from .._fast.draw import Workspace
from ..errors import RequestError
from ..params import INT64_MAX, SAMPLING_FIELDS, SamplingParams
from ..params import sampling_params as _validate
from ..seeds import generator, request_entropy
from ..step import Row, StepOutput, sample_step
from ..tokenizer import logprobs_text as token_text

__all__ = [
    "SAMPLING_FIELDS",
    "SamplingParams",
    "sampling_params",
    "per_prompt",
    "generator",
    "fresh_entropy",
    "process_in_place",
    "masked_ids",
    "TokenLogprob",
    "Generated",
    "Sequences",
    "force",
    "token_text",
    "completion_text",
    "logprobs_object",
]


def sampling_params(
    fields: Mapping[str, Any] | SamplingParams | None = None,
    /,
    *,
    vocab_size: int | None = None,
    **more: Any,
) -> SamplingParams:
    """Validate OpenAI's sampling fields once, with the Completions API's error messages.

    Takes a request-like mapping and/or keyword fields (the keywords win): ``temperature``
    (0 … 2), ``top_p`` (0 … 1), ``presence_penalty`` and ``frequency_penalty`` (−2 … 2),
    ``logit_bias`` (``{token id: −100 … 100}``, keys as ints or digit strings; below
    ``vocab_size`` when given), ``seed`` (int64), ``logprobs`` (0 … 5) and
    ``logprobs_mode`` (``"raw"`` | ``"processed"``). ``None`` means the default. Anything
    else, or a value out of range, raises :class:`~sampler.errors.RequestError`; nothing
    is clamped. A :class:`SamplingParams` passes through (its bias ids re-checked).

    >>> sampling_params({"temperature": 0.7}, seed=3).seed
    3
    >>> sampling_params(top_p=1.5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
      ...
    sampler.errors.RequestError: Invalid 'top_p': decimal above maximum value. Expected ...
    """
    if isinstance(fields, SamplingParams):
        if more:
            raise TypeError("sampling_params: give a SamplingParams or fields, not both")
        _check_bias_ids(fields.logit_bias, vocab_size)
        return fields
    if fields is not None and not isinstance(fields, Mapping):
        raise TypeError(
            f"sampling_params: expected a mapping of request fields, got {type(fields).__name__}"
        )
    body = {**(fields or {}), **more}
    for name in body:
        if name not in SAMPLING_FIELDS:
            raise RequestError(f"Unrecognized request argument supplied: {name}", param=name)
    top = vocab_size - 1 if vocab_size is not None else INT64_MAX
    return _validate(body, max_bias_id=top)


def _check_bias_ids(bias: tuple[np.ndarray, np.ndarray] | None, vocab_size: int | None) -> None:
    if bias is None or vocab_size is None or not bias[0].size:
        return
    top = int(bias[0].max())
    if top >= vocab_size:
        raise RequestError(
            f"Invalid key in 'logit_bias': {top}. Maximum value is {vocab_size - 1}.",
            param="logit_bias",
            code="invalid_value",
        )


def per_prompt(
    params: SamplingParams
    | Mapping[str, Any]
    | Sequence[SamplingParams | Mapping[str, Any]]
    | None,
    prompts: int,
    *,
    vocab_size: int | None = None,
    **fields: Any,
) -> list[SamplingParams]:
    """One validated :class:`SamplingParams` per prompt, from one for all or a list of them."""
    if params is None or isinstance(params, (SamplingParams, Mapping)):
        one = sampling_params(params, vocab_size=vocab_size, **fields)
        return [one] * prompts
    if fields:
        raise TypeError("give per-prompt params as a list, or keyword fields, not both")
    items = list(params)
    if len(items) != prompts:
        raise ValueError(f"got {len(items)} sets of sampling params for {prompts} prompts")
    return [sampling_params(p, vocab_size=vocab_size) for p in items]


# --- generators ---------------------------------------------------------------------------
def fresh_entropy() -> int:
    """Entropy for a request without a seed (drawn once per request, as the engine does)."""
    return request_entropy(None)


def masked_ids(tokenizer: Any, vocab_size: int, end_ids: Iterable[int] | None = None) -> np.ndarray:
    """Step 0's ids for a ``vocab_size``-wide row (spec §3): a tokenizer name such as
    ``"cl100k_base"`` or a :class:`sampler.tokenizer.Tokenizer`. Needed to match the
    engine exactly; other runtimes' vocabularies may need none."""
    if isinstance(tokenizer, str):
        from ..tokenizer import get_tokenizer

        tokenizer = get_tokenizer(tokenizer)
    return tokenizer.masked_ids(vocab_size, end_ids)


# --- the state of a batch -----------------------------------------------------------------
class TokenLogprob(NamedTuple):
    """One sampled token and what ``logprobs`` reports for it."""

    token: int
    logprob: float  # raw, or processed with logprobs_mode "processed"
    top_ids: np.ndarray  # [k] the most probable ids, best first
    top_logprobs: np.ndarray  # [k]


@dataclass
class Generated:
    """One generated sequence (a candidate of a prompt), as an adapter returns it.

    ``tokens`` are the generated ids, the end token included when one ended the sequence
    (``finish_reason`` ``"stop"``; else ``"length"``). ``logprobs`` has one entry per token
    when the request asked for logprobs, else None.
    """

    prompt: int
    candidate: int
    tokens: list[int]
    finish_reason: str
    logprobs: list[TokenLogprob] | None = None


class Sequences:
    """The sampling state of a batch of sequences: per row, its parameters, the counts of
    its generated tokens, its generator and (when asked) its logprobs.

    ``params[b]`` and ``seed_keys[b] = (prompt, candidate)`` describe row ``b``. Rows of
    one request share ``entropy`` (the seed, or fresh entropy drawn once); each row's
    generator comes from :func:`generator`. ``mask_ids`` are set to ``-inf`` before
    anything else (step 0) in a private copy of the logits; the caller's array is never
    modified.
    """

    def __init__(
        self,
        params: Sequence[SamplingParams],
        *,
        seed_keys: Sequence[tuple[int, int]],
        mask_ids: np.ndarray | Sequence[int] | None = None,
        entropy: Sequence[int | None] | int | None = None,
    ) -> None:
        if len(params) != len(seed_keys):
            raise ValueError(f"{len(params)} params for {len(seed_keys)} rows")
        self.params = list(params)
        self.keys = [tuple(k) for k in seed_keys]
        if entropy is None or isinstance(entropy, (int, np.integer)):
            shared = fresh_entropy() if entropy is None else int(entropy)
            entropy = [shared] * len(self.params)
        self.entropy = [
            p.seed if p.seed is not None else e if e is not None else fresh_entropy()
            for p, e in zip(self.params, entropy)
        ]
        self.rows = [Row(p) for p in self.params]
        self.rngs = [generator(e, *k) for e, k in zip(self.entropy, self.keys)]
        self.mask = None if mask_ids is None else np.asarray(mask_ids, dtype=np.int64)
        self.records: list[list[TokenLogprob] | None] = [
            [] if p.logprobs is not None else None for p in self.params
        ]
        self._ws: Workspace | None = None
        self._buf: np.ndarray | None = None

    @classmethod
    def for_prompts(cls, params: Sequence[SamplingParams], n: int = 1, **kw: Any) -> Sequences:
        """Rows ``p * n + c`` for ``n`` candidates of each prompt (HF's and the engine's
        order)."""
        keys = [(p, c) for p in range(len(params)) for c in range(n)]
        return cls([params[p] for p, _ in keys], seed_keys=keys, **kw)

    def __len__(self) -> int:
        return len(self.rows)

    def check_vocab(self, vocab_size: int) -> None:
        """Raise :class:`RequestError` if a ``logit_bias`` id is not below ``vocab_size``."""
        for p in self.params:
            _check_bias_ids(p.logit_bias, vocab_size)

    def observe(
        self, tokens: Sequence[int] | np.ndarray, rows: Sequence[int] | np.ndarray | None = None
    ) -> None:
        """Count newly generated tokens (one per row, for ``rows`` or every row)."""
        idx = range(len(self.rows)) if rows is None else rows
        for b, t in zip(idx, np.asarray(tokens).tolist()):
            self.rows[b].counts.add(int(t))

    def _masked(self, logits: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        """The rows to work on, masked (a private copy only when there is a mask or a
        subset)."""
        z = logits if rows is None else logits[rows]  # [b, V]
        if self.mask is None:
            return z
        if rows is None:
            if self._buf is None or self._buf.shape != z.shape:
                self._buf = np.empty(z.shape, dtype=np.float32)
            np.copyto(self._buf, z)
            z = self._buf
        z[:, self.mask] = -np.inf
        return z

    def step(
        self,
        logits: np.ndarray,
        rows: Sequence[int] | np.ndarray | None = None,
        *,
        observe: bool = True,
    ) -> StepOutput:
        """Draw one token for each row (or for ``rows``) of ``logits`` [B, V] (float32; not
        modified): one uniform from each row's generator, :func:`sampler.sample_step`, the
        logprobs recorded, and (``observe``) the token counted for the row's penalties."""
        idx = None if rows is None else np.asarray(rows, dtype=np.int64)
        z = self._masked(np.asarray(logits, dtype=np.float32), idx)  # [b, V]
        which = range(len(self.rows)) if idx is None else idx.tolist()
        if self._ws is None or self._ws.vocab != z.shape[1]:
            self._ws = Workspace(z.shape[1])
        rows_ = [self.rows[b] for b in which]
        uniforms = [self.rngs[b].random() for b in which]
        out = sample_step(z, rows_, uniforms, workspace=self._ws)
        for i, b in enumerate(which):
            rec = self.records[b]
            if rec is not None:
                ids, lps = out.top[i]  # type: ignore[misc]
                rec.append(TokenLogprob(int(out.tokens[i]), float(out.reported[i]), ids, lps))
            if observe:
                self.rows[b].counts.add(int(out.tokens[i]))
        return out

    def process(self, logits: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        """Steps 0–4 on every row of ``logits`` [B, V]: the distribution to sample from,
        as logits (``-inf`` outside the nucleus). A greedy row (temperature 0) keeps only
        its argmax (lowest id among ties), so any sampler picks it. ``out`` may be
        ``logits`` itself (in place) or another [B, V] float32 array."""
        if out is None:
            res = np.array(logits, dtype=np.float32, copy=True)  # [B, V]
        else:
            if out is not logits:
                np.copyto(out, logits)
            res = out
        if self.mask is not None:
            res[:, self.mask] = -np.inf
        return process_in_place(res, self.params, [r.counts for r in self.rows])


def process_in_place(
    res: np.ndarray, params: Sequence[SamplingParams], counts: Sequence[processors.TokenCounts]
) -> np.ndarray:
    """Steps 1–4 on ``res`` [B, V] in place, row ``b`` with ``params[b]`` over ``counts[b]``;
    a greedy row (temperature 0) keeps only its argmax (lowest id among ties), which any
    sampler picks."""
    processors.apply(res, list(params), list(counts), out=res)
    for b in [b for b, p in enumerate(params) if p.temperature == 0.0]:
        force(res[b : b + 1], [int(np.argmax(res[b]))])
    return res


def force(out: np.ndarray, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
    """Write rows that leave only ``tokens[b]`` possible: ``0`` there, ``-inf`` elsewhere.

    >>> force(np.zeros((1, 3), np.float32), [1])
    array([[-inf,   0., -inf]], dtype=float32)
    """
    out.fill(-np.inf)
    out[np.arange(out.shape[0]), np.asarray(tokens, dtype=np.int64)] = 0.0
    return out


# --- the Completions API's shapes ---------------------------------------------------------
class _Texts:
    """``token_text`` by id, cached; quacks like the tokenizer :func:`top_dict` wants."""

    def __init__(self, token_bytes: Callable[[int], bytes]) -> None:
        self.token_bytes = token_bytes
        self._cache: dict[int, str] = {}

    def token_text(self, i: int) -> str:
        text = self._cache.get(i)
        if text is None:
            text = self._cache[i] = token_text(self.token_bytes(i))
        return text


def completion_text(
    tokens: Sequence[int], token_bytes: Callable[[int], bytes], end_ids: Iterable[int] = ()
) -> str:
    """The ``text`` of a choice: the tokens' bytes up to the first end id, decoded as the
    engine does (bytes that cannot form UTF-8 become U+FFFD).

    >>> completion_text([0, 1, 9], lambda i: [b"a", b"\\xc3\\xa9", b""][min(i, 2)], [9])
    'a\\xe9'
    """
    from ..stopping import TextTracker

    ends = set(end_ids)
    tracker = TextTracker()
    for t in tokens:
        if t in ends:
            break
        tracker.add(token_bytes(int(t)))
    tracker.finish()
    return tracker.text


def logprobs_object(
    entries: Sequence[TokenLogprob],
    token_bytes: Callable[[int], bytes],
    *,
    end_ids: Iterable[int] = (),
    offset: int = 0,
) -> dict[str, list[Any]]:
    """The Completions ``logprobs`` object of one choice from its tokens' entries.

    ``tokens`` in ``bytes:`` form when needed; ``top_logprobs`` holds the top ids plus the
    chosen one, by text, best first (two ids with one text keep the larger logprob);
    ``-inf`` is ``-9999.0``; ``text_offset`` counts characters from ``offset`` (the length
    of the prompt text). An end token ends the choice and is kept last, at the end of the
    text (docs/semantics.md).
    """
    from ..logprobs import reported
    from ..response import TokenEntry, top_dict
    from ..response import logprobs_object as entries_object
    from ..stopping import TextTracker

    ends = set(end_ids)
    texts = _Texts(token_bytes)
    tracker = TextTracker()
    rows: list[TokenEntry] = []
    for e in entries:
        if e.token in ends:
            tracker.finish()
            rel = len(tracker.text)
        else:
            rel = tracker.add(token_bytes(e.token))
        top = top_dict(texts, e.top_ids, e.top_logprobs, e.token, e.logprob)  # type: ignore
        rows.append(TokenEntry(texts.token_text(e.token), reported(e.logprob), top, offset + rel))
        if e.token in ends:
            break
    return entries_object(rows)
