"""The engine: a Completions request in, an OpenAI-shaped response (or chunks) out.

It composes the parts, each in its own module: ``params`` validates, ``decoder`` runs the
model, ``step`` chooses tokens (processors -> select -> logprobs), ``stopping`` turns
bytes into text and finds stop strings, ``response`` shapes the JSON. All candidates
of all prompts of a request advance together in one batch (:class:`~sampler.batch.Batch`),
each with its own generator ``SeedSequence(seed, spawn_key=(prompt, candidate))`` (spec §6).
:class:`Completion` is one request in flight; :class:`Engine` answers requests.

>>> engine = Engine.load("tiny-random-cl100k")  # built locally on first use
>>> engine.complete(prompt="Hello", max_tokens=3, seed=1)["usage"]
{'prompt_tokens': 1, 'completion_tokens': 3, 'total_tokens': 4}
>>> engine.complete(prompt="Hello", max_tokens=200, n=2, logprobs=9)  # doctest: +ELLIPSIS
Traceback (most recent call last):
  ...
sampler.errors.RequestError: Invalid 'logprobs': integer above maximum value. Expected ...
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from .batch import Batch, Candidate
from .chat_response import ChatShape
from .logprobs import log_normalizer, reported, top_logprobs
from .params import ModelInfo, Request, parse_request
from .response import (
    CompletionShape,
    TokenEntry,
    fingerprint,
    now,
    top_dict,
    usage,
)
from .seeds import generator, request_entropy
from .stopping import TextTracker
from .tokenizer import Tokenizer, tokenizer_for

__all__ = ["Engine", "Completion", "Batch", "Candidate"]


class Completion:
    """One request in flight: its candidates, echo entries, and the response it builds.

    Push-driven, so that one batch can serve many requests: :meth:`start` prefills the
    prompts into a :class:`Batch`; after each ``batch.advance()`` the caller hands the
    stepped sequences to :meth:`record`; :meth:`take_chunks` returns the stream chunks
    ready so far and :meth:`response` the whole response once :attr:`done`.
    """

    def __init__(self, engine: Engine, req: Request) -> None:
        self.engine = engine
        self.req = req
        self.shape = ChatShape(engine.tokenizer) if req.chat else CompletionShape()
        self.id = self.shape.new_id()
        self.created = now()
        entropy = request_entropy(req.sampling.seed)
        self.groups = [
            [
                Candidate(req, p, c, generator(entropy, p, c), len(prompt.text), owner=self)
                for c in range(req.best_of)
            ]
            for p, prompt in enumerate(req.prompts)
        ]
        self.candidates = [c for g in self.groups for c in g]
        self.echo_entries: list[list[TokenEntry]] = [[] for _ in req.prompts]
        self._scores: list[dict[int, tuple[float, np.ndarray, np.ndarray]]] = [
            {} for _ in req.prompts
        ]
        self._texts: dict[int, list[str]] = {id(c): [] for c in self.candidates}
        self._entries: dict[int, list[TokenEntry]] = {id(c): [] for c in self.candidates}
        self._unsent = {id(c) for c in self.candidates}  # the echo rides on the first delta
        self._chunks: list[dict[str, Any]] = []
        self._logprobs_sent: set[int] = set()  # candidates whose chunks carried logprobs
        self._usage_sent = False

    @property
    def done(self) -> bool:
        return all(c.done for c in self.candidates)

    @property
    def error(self) -> Exception | None:
        """The first failure met while stepping one of this request's sequences (the
        request then fails as a whole; other requests in the batch are not touched)."""
        return next((c.error for c in self.candidates if c.error is not None), None)

    # -- running
    def start(self, batch: Batch) -> None:
        """Prefill this request's prompts into ``batch`` (model work: call it where the
        batch lives). With ``max_tokens: 0`` nothing joins the batch: the choices finish
        here, after echo scoring if asked."""
        req, eng = self.req, self.engine
        scoring = req.echo and req.sampling.logprobs is not None
        on_logits = self._score if scoring else None
        if req.max_tokens == 0:
            if scoring:
                eng.decoder.prefill([p.tokens for p in req.prompts], on_logits=on_logits)
            self._build_echo()
            for c in self.candidates:
                c.finish_without_tokens()
            self.record(self.candidates)
            return
        batch.admit(req.prompts, self.groups, on_logits)
        self._build_echo()

    def record(self, stepped: Iterable[Candidate]) -> None:
        """Take what the last step added to this request's candidates among ``stepped``."""
        mine = sorted((c for c in stepped if c.owner is self and c.error is None), key=self._index)
        for c in mine:
            text, entries = c.delta()
            first = id(c) in self._unsent
            if first:
                self._unsent.discard(id(c))
                if self.req.echo:
                    head = self.req.prompts[c.prompt].text
                    text, entries = head + text, self.echo_entries[c.prompt] + entries
            if self.req.stream:
                logprobs = entries if entries and self.req.sampling.logprobs is not None else None
                if logprobs:
                    self._logprobs_sent.add(id(c))
                elif (
                    c.done
                    and self.req.sampling.logprobs is not None
                    and id(c) not in self._logprobs_sent
                ):
                    logprobs = []  # no token kept: empty arrays, as the response has
                for choice in self.shape.chunk_choices(
                    self._index(c), text, logprobs, c.finish_reason, self._traced, first
                ):
                    self._chunks.append(self._object([choice], None, self.req.include_usage))
            else:
                self._texts[id(c)].append(text)
                self._entries[id(c)].extend(entries)

    def take_chunks(self) -> list[dict[str, Any]]:
        """Stream chunks ready since the last call (the usage chunk last, when asked)."""
        chunks, self._chunks = self._chunks, []
        if self.req.include_usage and self.done and not self._usage_sent:
            self._usage_sent = True
            chunks.append(self._object([], self._usage()))
        return chunks

    def _score(self, p: int, positions: np.ndarray, logits: np.ndarray) -> None:
        """Prefill callback: raw logprobs of each prompt token given the ones before it."""
        prompt = self.req.prompts[p]
        shown = prompt.shown
        at = positions + 1 - prompt.lead  # [n] position i predicts token i + 1 (of shown)
        keep = (at >= 1) & (at < len(shown))  # [n] (the first shown token stays unscored)
        if not keep.any():
            return
        rows = self.engine.mask(np.array(logits[keep]))  # [n, V] a masked copy
        norm = log_normalizer(rows)  # [n]
        nxt = np.array([shown[i] for i in at[keep]])  # [n]
        lps = rows[np.arange(len(nxt)), nxt].astype(np.float64) - norm  # [n]
        ids, tops = top_logprobs(rows, self.req.sampling.logprobs or 0, lognorm=norm)  # [n, k]
        for j, i in enumerate(at[keep].tolist()):
            self._scores[p][i] = (float(lps[j]), ids[j], tops[j])

    def _build_echo(self) -> None:
        if not (self.req.echo and self.req.sampling.logprobs is not None):
            return
        tok = self.engine.tokenizer
        for p, prompt in enumerate(self.req.prompts):
            tracker = TextTracker()
            entries = []
            for i, t in enumerate(prompt.shown):
                offset = tracker.add(tok.token_bytes(t))
                if i == 0:  # nothing before it to condition on
                    entries.append(TokenEntry(tok.token_text(t), None, None, offset))
                    continue
                lp, ids, tops = self._scores[p][i]
                top = top_dict(tok, ids, tops, t, lp)
                entries.append(TokenEntry(tok.token_text(t), reported(lp), top, offset))
            self.echo_entries[p] = entries

    # -- shaping
    @property
    def _traced(self) -> bool:
        return self.req.trace is not None

    def _index(self, c: Candidate) -> int:
        return c.prompt * self.req.n + c.index

    def _usage(self) -> dict[str, int]:
        completion = sum(c.generated for c in self.candidates)
        return usage(sum(p.counted for p in self.req.prompts), completion)

    def _object(
        self, choices: list[dict[str, Any]], use: dict[str, int] | None, usage_key: bool = True
    ) -> dict[str, Any]:
        return self.shape.object(
            self.id,
            self.created,
            self.req.model,
            self.engine.fingerprint,
            choices,
            use,
            chunk=self.req.stream,
            usage_key=usage_key,
        )

    def response(self) -> dict[str, Any]:
        """The response object of a finished non-stream request."""
        assert self.done and not self.req.stream
        want_logprobs = self.req.sampling.logprobs is not None
        choices, candidates = [], []
        for p, group in enumerate(self.groups):
            ranked = group
            if self.req.best_of > self.req.n:  # best first; ties to the lower candidate
                ranked = sorted(group, key=lambda c: (-c.mean_logprob, c.index))
            for j, c in enumerate(ranked[: self.req.n]):
                lp = self._entries[id(c)] if want_logprobs else None
                text = "".join(self._texts[id(c)])
                choices.append(
                    self.shape.choice(p * self.req.n + j, text, lp, c.finish_reason, self._traced)
                )
            if self._traced and self.req.best_of > self.req.n:
                candidates += self._candidates(p, ranked)
        obj = self._object(choices, self._usage())
        if candidates:
            obj["candidates"] = candidates  # (the sampling_trace extension)
        return obj

    def _candidates(self, p: int, ranked: list[Candidate]) -> list[dict[str, Any]]:
        """Every best_of candidate of prompt ``p``: its mean raw logprob (the ranking),
        its text and the choice index it was returned as (None: not returned)."""
        returned = {id(c): p * self.req.n + j for j, c in enumerate(ranked[: self.req.n])}
        return [
            {
                "prompt": p,
                "candidate": c.index,
                "mean_logprob": c.mean_logprob,
                "tokens": c.generated,
                "text": "".join(self._texts[id(c)]),
                "finish_reason": c.finish_reason,
                "index": returned.get(id(c)),
            }
            for c in self.groups[p]
        ]


class Engine:
    """A loaded model and its tokenizer, answering Completions requests.

    ``complete(request)`` takes the JSON body as a dict (or keyword fields) and returns
    the response dict, or with ``"stream": True`` an iterator of chunk dicts (the SSE
    payloads). Bad requests raise :class:`~sampler.errors.RequestError` before any
    model work. ``model`` may be omitted: it defaults to this engine's model.
    """

    def __init__(self, decoder: Any, tokenizer: Tokenizer, *, name: str | None = None) -> None:
        cfg = decoder.config
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.name: str = name or cfg.name
        self.vocab_size: int = decoder.vocab_size
        self.end_ids: tuple[int, ...] = tuple(cfg.eos_token_ids)
        fim = cfg.fim
        fim_ids = None if fim is None else (fim.prefix, fim.middle, fim.suffix)
        self.info = ModelInfo(
            self.name,
            tokenizer,
            cfg.context_length,
            self.end_ids,
            vocab_size=self.vocab_size,
            fim=fim_ids,
            chat=getattr(cfg, "chat", None),
            bos_id=getattr(cfg, "bos_token_id", None),
        )
        self._masked = self.info.masked_ids  # [m]
        self.fingerprint = fingerprint(cfg.digest, cfg.tokenizer)

    @classmethod
    def load(cls, model: str | os.PathLike | None = None, *, threads: int = 1) -> Engine:
        """Load a known model by name (building or fetching it if needed) or a model folder."""
        from .decoder import Decoder
        from .registry import default_model, resolve

        decoder = Decoder.load(resolve(model or default_model()), threads=threads)
        return cls(decoder, tokenizer_for(decoder.config))

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """Mask, in place, the ids that may never be sampled (spec §3); returns ``logits``."""
        logits[:, self._masked] = -np.inf
        return logits

    def parse(self, request: Mapping[str, Any] | None = None, /, **fields: Any) -> Request:
        """Validate a request body (the one boundary); ``model`` defaults to this model."""
        if request is not None and not isinstance(request, Mapping):
            return parse_request(request, self.info)  # raises the JSON-body error
        body = {**(request or {}), **fields}
        body.setdefault("model", self.name)
        return parse_request(body, self.info)

    def complete(
        self, request: Mapping[str, Any] | None = None, /, **fields: Any
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Answer one Completions request: a response dict, or chunks when streaming."""
        return self.run(self.parse(request, **fields))

    def chat(
        self, request: Mapping[str, Any] | None = None, /, **fields: Any
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Answer one chat request (``messages``; see :mod:`sampler.chat_request`): a
        ``chat.completion`` dict, or ``chat.completion.chunk`` dicts when streaming."""
        from .chat_request import parse_chat_request

        if request is not None and not isinstance(request, Mapping):
            return self.run(parse_chat_request(request, self.info))
        body = {**(request or {}), **fields}
        body.setdefault("model", self.name)
        return self.run(parse_chat_request(body, self.info))

    def run(self, req: Request) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Answer a validated request alone (the server shares one batch among many)."""
        run = Completion(self, req)
        if run.req.stream:
            return self._stream(run)
        batch = Batch(self)
        run.start(batch)
        while not run.done:
            run.record(batch.advance())
            _raise_failure(run)
        return run.response()

    def _stream(self, run: Completion) -> Iterator[dict[str, Any]]:
        batch = Batch(self)
        run.start(batch)
        yield from run.take_chunks()
        while not run.done:
            run.record(batch.advance())
            _raise_failure(run)
            yield from run.take_chunks()


def _raise_failure(run: Completion) -> None:
    if run.error is not None:
        raise run.error
