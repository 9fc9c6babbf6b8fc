"""A batch of sequences that advance together, and each sequence's state.

A :class:`Candidate` is one candidate sequence of a request: its :class:`~sampler.step.Row`
(the request's sampling record and its counts), its own generator, its text and its
logprobs entries. A :class:`Batch` holds the sequences of any number of requests with
their KV cache: :meth:`Batch.admit` prefills prompts, :meth:`Batch.advance` chooses one
token for every sequence (:func:`~sampler.step.sample_step`), retires the finished and
runs the model once for the rest. A sequence whose step raises fails alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._fast.draw import Workspace
from .kvcache import SharedKVCache
from .logprobs import reported
from .params import Prompt, Request
from .response import TokenEntry, top_dict
from .step import Row, sample_step
from .stopping import TextTracker
from .tokenizer import Tokenizer
from .trace import trace_step

__all__ = ["Candidate", "Batch"]


class Candidate:
    """One candidate sequence of a request: its sampling state, text and logprobs."""

    def __init__(
        self,
        req: Request,
        prompt: int,
        index: int,
        rng: np.random.Generator,
        base_offset: int,
        owner: Any = None,
    ) -> None:
        self.req = req
        self.owner = owner  # the Completion this candidate belongs to
        self.prompt = prompt  # which prompt of the request
        self.index = index  # candidate number within the prompt (spawn key)
        self.rng = rng
        self.row = Row(req.sampling, raw_logprob=req.best_of > req.n)
        self.tracker = TextTracker(req.stop)
        self.base = base_offset  # len(prompt text): completion offsets start here
        self.entries: list[TokenEntry] = []
        self._rel: list[int] = []  # entries' offsets within the completion text
        self.generated = 0  # tokens generated, the end token included
        self.logprob_sum = 0.0  # raw, over every generated token (best_of ranking)
        self.finish_reason: str | None = None
        self.error: Exception | None = None  # what failed while stepping this sequence
        self._shown_text = 0
        self._shown_entries = 0
        self.trace: dict[str, Any] | None = None  # this step's sampling_trace, if asked

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    def fail(self, exc: Exception) -> None:
        """Stop this sequence because stepping it raised: its request fails, no other."""
        self.error = exc

    @property
    def mean_logprob(self) -> float:
        return self.logprob_sum / self.generated if self.generated else 0.0

    def accept(
        self,
        token: int,
        raw_lp: float,
        rep_lp: float,
        top: tuple[np.ndarray, np.ndarray] | None,
        tok: Tokenizer,
        end_ids: tuple[int, ...],
    ) -> None:
        """Take the token chosen for this candidate and decide whether it has finished."""
        self.generated += 1
        self.logprob_sum += raw_lp if self.row.raw_logprob else 0.0
        if token in end_ids:  # ends the choice; never in text, but in logprobs [decided]
            self._finish("stop")
            if not self.tracker.stopped:  # (a stop cut would drop it like any later token)
                self._log(tok, token, rep_lp, top, len(self.tracker.text), end=True)
            return
        self.row.counts.add(token)
        rel = self.tracker.add(tok.token_bytes(token))
        self._log(tok, token, rep_lp, top, rel)
        if self.tracker.stopped:
            self._finish("stop")
        elif self.generated >= self.req.max_tokens:
            self._finish("length")

    def _log(
        self,
        tok: Tokenizer,
        token: int,
        lp: float,
        top: tuple[np.ndarray, np.ndarray] | None,
        rel: int,
        end: bool = False,
    ) -> None:
        """Append the token's logprobs entry (when logprobs were asked for)."""
        if self.req.sampling.logprobs is None:
            return
        assert top is not None
        # each endpoint writes its own: Completions the dict by text, chat the list of ids
        chat = self.req.chat
        entry_top = None if chat else top_dict(tok, top[0], top[1], token, lp)
        alternatives = tuple(zip(top[0].tolist(), map(reported, top[1].tolist()))) if chat else ()
        trace, self.trace = self.trace, None
        self.entries.append(
            TokenEntry(
                tok.token_text(token),
                reported(lp),
                entry_top,
                self.base + rel,
                trace,
                token=token,
                alternatives=alternatives,
                end=end,
            )
        )
        self._rel.append(-1 if end else rel)  # -1: the end token, shown with the last delta

    def finish_without_tokens(self) -> None:
        """``max_tokens: 0``: nothing is generated (echo may still show the prompt)."""
        self._finish("length")

    def _finish(self, reason: str) -> None:
        self.tracker.finish()  # a trailing half character becomes U+FFFD ...
        # ... which could complete a stop string: the same rule then applies.
        self.finish_reason = "stop" if self.tracker.stopped else reason

    def delta(self) -> tuple[str, list[TokenEntry]]:
        """Text and logprob entries that became safe to show since the last call."""
        end = self.tracker.final_end() if self.done else self.tracker.visible_end()
        text = self.tracker.text[self._shown_text : end]
        self._shown_text = max(self._shown_text, end)
        first = self._shown_entries
        while self._shown_entries < len(self._rel) and self._rel[self._shown_entries] < end:
            self._shown_entries += 1  # the end token's -1 passes: it comes last, once done
        return text, self.entries[first : self._shown_entries]


def _picked(out: Any, b: int) -> tuple[int, float, float, Any]:
    return int(out.tokens[b]), float(out.logprob[b]), float(out.reported[b]), out.top[b]


class Batch:
    """Sequences that advance together: their KV cache and their pending logits.

    :meth:`admit` prefills prompts and fans each out to its candidates; :meth:`advance`
    chooses one token for every sequence, retires the finished ones and runs the model
    once for the rest. Sequences of different requests may share a batch.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.seqs: list[Candidate] = []
        self.cache: Any = None
        self.logits: np.ndarray | None = None  # [B, V] masked, for each seq's next token
        self._joining: list[tuple[Any, np.ndarray]] = []  # admitted, not merged yet
        self._queued: list[tuple[list[Prompt], list[Any]]] = []  # admitted, not prefilled
        self._failed: list[Candidate] = []  # failed in a prefill: reported by advance
        self._workspace = Workspace(engine.vocab_size)

    def __len__(self) -> int:
        return len(self.seqs) + len(self._failed)  # (failed ones: reported by the next step)

    def admit(
        self,
        prompts: Sequence[Prompt],
        groups: Sequence[Sequence[Candidate]],
        on_logits: Any = None,
    ) -> None:
        """Add ``groups[p]`` (the candidates of prompt p) and prefill ``prompts``: before the
        next step, together with every other request admitted meanwhile (one model call,
        one read of the weights), or at once when ``on_logits`` scores an echo."""
        new = [c for g in groups for c in g]
        if on_logits is None:
            if new:
                self._queued.append((list(prompts), list(groups)))
                self.seqs.extend(new)
            return
        self._prefill_queued()  # (the rows keep the order they were admitted in)
        self._prefill_rows(list(prompts), list(groups), on_logits)
        self.seqs.extend(new)

    def _prefill_queued(self) -> None:
        """Prefill every prompt admitted since the last step in one call. If that raises,
        each request is prefilled alone, and the candidates of one that still raises fail
        (they leave the batch; the next :meth:`advance` reports them)."""
        queued, self._queued = self._queued, []
        if not queued:
            return
        try:
            self._prefill_rows(
                [p for ps, _ in queued for p in ps], [g for _, gs in queued for g in gs]
            )
            return
        except Exception:
            pass
        for prompts, groups in queued:
            try:
                self._prefill_rows(prompts, groups)
            except Exception as exc:
                gone = {id(c) for g in groups for c in g}
                self.seqs = [s for s in self.seqs if id(s) not in gone]
                for g in groups:
                    for c in g:
                        c.fail(exc)
                        self._failed.append(c)

    def _prefill_rows(
        self, prompts: list[Prompt], groups: list[Any], on_logits: Any = None
    ) -> None:
        """Prefill ``prompts``; their candidates' rows join at the next step."""
        logits, cache = self.engine.decoder.prefill(
            [p.tokens for p in prompts], on_logits=on_logits
        )
        if not any(groups):
            return
        rows = np.repeat(np.arange(len(prompts)), [len(g) for g in groups])  # [B']
        self._joining.append((cache.take(rows), self.engine.mask(logits[rows])))  # [B', V]

    def _join(self, *, logits: bool = True) -> None:
        """Merge the caches of the sequences admitted since the last step, in one go (one
        merge, not one per admitted request), and their logits unless ``logits=False``
        (:meth:`advance` samples each block where it lies: no [B, V] copy)."""
        if not self._joining:
            return
        caches = [c for c, _ in self._joining]
        rows = [z for _, z in self._joining]
        self._joining = []
        if self.cache is not None:
            assert self.logits is not None
            if isinstance(self.cache, SharedKVCache):  # into its spare rows, in place
                self.cache = self.cache.append(caches)
                caches = [self.cache]
            else:
                caches = [self.cache, *caches]
            rows = [self.logits, *rows]
        self.cache = caches[0] if len(caches) == 1 else type(caches[0]).merge(caches)
        if logits:
            self.logits = rows[0] if len(rows) == 1 else np.concatenate(rows)  # [B, V]

    def advance(self) -> list[Candidate]:
        """One step for every sequence; returns the sequences that took a token (or
        failed: a sequence whose step raises gets :meth:`Candidate.fail` and leaves the
        batch, and every other sequence's step is exactly what it is without it)."""
        self._prefill_queued()
        failed, self._failed = self._failed, []
        if not self.seqs:
            return failed
        eng = self.engine
        uniforms = [s.rng.random() for s in self.seqs]
        outs = self._choose(uniforms)
        self._join(logits=False)  # every row's logits are used: only the caches merge
        for b, s in enumerate(self.seqs):
            picked = outs[b]
            if picked is None:
                continue
            token, raw_lp, rep_lp, top = picked
            try:
                s.accept(token, raw_lp, rep_lp, top, eng.tokenizer, eng.end_ids)
            except Exception as exc:  # a bug, met by this sequence alone
                s.fail(exc)
        stepped = self.seqs + failed
        keep = [b for b, s in enumerate(self.seqs) if not s.done]
        if not keep:
            self.seqs, self.cache, self.logits = [], None, None
            return stepped
        if len(keep) < len(self.seqs):
            self.cache, keep = self._keep(keep)
            self.seqs = [self.seqs[b] for b in keep]
        tokens = np.array([outs[b][0] for b in keep], dtype=np.int64)  # type: ignore[index]
        logits, self.cache = eng.decoder.step(self.cache, tokens)
        self.logits = eng.mask(logits)
        return stepped

    def _blocks(self) -> list[np.ndarray]:
        """The logits of the rows, in order: the batch's, then each admitted block's."""
        blocks = [] if self.logits is None or self.cache is None else [self.logits]
        return blocks + [z for _, z in self._joining]

    def _choose(self, uniforms: list[float]) -> list[tuple[int, float, float, Any] | None]:
        """Each sequence's token, raw and reported logprob and top entries (None for a
        sequence that failed), one batched step per block of logits."""
        picked: list[tuple[int, float, float, Any] | None] = []
        for block in self._blocks():
            b0 = len(picked)
            picked += self._choose_block(block, self.seqs[b0 : b0 + len(block)], uniforms[b0:])
        assert len(picked) == len(self.seqs)
        return picked

    def _choose_block(
        self, logits: np.ndarray, seqs: list[Candidate], uniforms: list[float]
    ) -> list[tuple[int, float, float, Any] | None]:
        """One batched step over ``logits`` [b, V]; if it raises, each row is stepped alone
        with the same uniform (a row's choice depends on that row only, so the others'
        choices are the ones the batched step would have made) and the rows that still
        raise are failed."""
        rows = [s.row for s in seqs]
        try:
            out = sample_step(logits, rows, uniforms[: len(rows)], workspace=self._workspace)
            picked: list[tuple[int, float, float, Any] | None] = [
                _picked(out, b) for b in range(len(rows))
            ]
        except Exception:
            picked = []
            for b, s in enumerate(seqs):
                try:
                    one = sample_step(
                        logits[b : b + 1], [rows[b]], [uniforms[b]], workspace=self._workspace
                    )
                    picked.append(_picked(one, 0))
                except Exception as exc:
                    s.fail(exc)
                    picked.append(None)
        for b, s in enumerate(seqs):
            got = picked[b]
            if (
                s.req.trace is not None
                and got is not None
                and not self._trace(s, logits[b], got[0])
            ):
                picked[b] = None
        return picked

    def _trace(self, s: Candidate, z: np.ndarray, token: int) -> bool:
        """The step's ``sampling_trace`` for ``s`` (before its counts take ``token``);
        False if that raised (``s`` then fails alone)."""
        assert s.req.trace is not None
        try:
            text = self.engine.tokenizer.token_text
            s.trace = trace_step(z, s.row.params, s.row.counts, token, s.req.trace, text)
            return True
        except Exception as exc:  # a bug, met by this sequence alone
            s.fail(exc)
            return False

    def drop(self, seqs: Sequence[Candidate]) -> None:
        """Remove sequences (a client went away); the rest are untouched."""
        self._prefill_queued()
        self._join()
        gone = {id(s) for s in seqs}
        keep = [b for b, s in enumerate(self.seqs) if id(s) not in gone]
        if len(keep) == len(self.seqs):
            return
        if not keep:
            self.seqs, self.cache, self.logits = [], None, None
            return
        assert self.logits is not None
        self.cache, keep = self._keep(keep)
        self.logits = self.logits[keep]
        self.seqs = [self.seqs[b] for b in keep]

    def _keep(self, keep: list[int]) -> tuple[Any, list[int]]:
        """The cache holding rows ``keep`` (increasing), and which old row each new row
        holds: the in-place cache moves only rows into the holes (another order)."""
        if isinstance(self.cache, SharedKVCache):
            return self.cache.compact(keep)
        return self.cache.take(keep), keep
