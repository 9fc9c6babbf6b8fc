"""Continuous batching: many requests share one :class:`~sampler.batch.Batch`.

A worker thread owns the batch and does all model work. Between two steps it drops the
sequences of cancelled requests and admits waiting ones (prefill, then they join the
batch), so a request never waits for another to finish. Each request's candidates keep
their own generators, and a row's logits do not depend on the rest of the batch, so a
seeded request returns exactly what it returns alone (spec §6).

Results leave through each job's ``sink`` callable, called on the worker thread with one
event at a time: ``("chunks", [chunk, ...])`` for streams, ``("response", dict)`` for a
finished non-stream request, ``("done", None)`` after a stream's last chunk, or
``("error", exception)``. A server wraps the sink to hop back onto its event loop.

>>> from sampler import Engine
>>> sched = Scheduler(Engine.load("tiny-random-cl100k"))
>>> events = []
>>> job = sched.submit(sched.engine.parse(prompt="Hi", max_tokens=2, seed=1), events.append)
>>> job.wait(timeout=30)
True
>>> events[-1][0], events[-1][1]["usage"]["completion_tokens"]
('response', 2)
>>> sched.close()
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .engine import Batch, Completion, Engine
from .params import Request

__all__ = ["Scheduler", "Job", "Busy"]

Sink = Callable[[tuple[str, Any]], None]
log = logging.getLogger("sampler.scheduler")


class Busy(Exception):
    """The waiting queue is full: the server answers 429."""


class Job:
    """One submitted request: its completion, where its events go, and its state."""

    def __init__(self, completion: Completion, sink: Sink, background: bool = False) -> None:
        self.completion = completion
        self.sink = sink
        self.background = background  # batch work: runs only where no interactive job waits
        self.size = len(completion.candidates) if completion.req.max_tokens else 0
        self.cancelled = False
        self.finished = threading.Event()

    @property
    def rows(self) -> int:
        """Rows this job holds in the batch now (its candidates not finished yet)."""
        return sum(1 for c in self.completion.candidates if not c.done)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has sent its last event (for tests and scripts)."""
        return self.finished.wait(timeout)


class Scheduler:
    """Runs requests for one engine on a worker thread, all in one batch.

    ``max_sequences`` bounds the batch (a request that needs more than that on its own is
    refused at validation, see :class:`~sampler.params.Limits`); requests that do not fit
    yet wait, in order, up to ``max_waiting``; beyond that :meth:`submit` raises
    :class:`Busy`.

    Background jobs (``submit(..., background=True)``, the server's ``/v1/batches``) fill
    what interactive ones leave: they join only when no interactive job waits, and while
    interactive jobs run they hold at most ``background_share`` sequences (default 1/8 of
    the batch), so that each step stays short. To make room, running background jobs are
    preempted, newest first, and start again later from the beginning (a seeded request's
    output does not change).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_sequences: int = 64,
        max_waiting: int = 256,
        background_share: int | None = None,
    ) -> None:
        self.engine = engine
        self.max_sequences = max_sequences
        #: sequences background jobs may hold while an interactive job runs (default 1/8)
        self.background_share = (
            max(1, max_sequences // 8) if background_share is None else background_share
        )
        self.max_waiting = max_waiting
        self._cond = threading.Condition()
        self._waiting: collections.deque[Job] = collections.deque()
        self._background: collections.deque[Job] = collections.deque()
        self._active: list[Job] = []
        self._cancel: list[Job] = []
        self._closed = False
        self._batch = Batch(engine)
        self.steps = 0  # batch steps run so far (for tests and benchmarks)
        self.preempted = 0  # background jobs stopped to make room for interactive ones
        self._thread = threading.Thread(target=self._run, name="sampler-worker", daemon=True)
        self._thread.start()

    # -- called from any thread
    def submit(self, req: Request, sink: Sink, *, background: bool = False) -> Job:
        """Queue ``req``; its events go to ``sink``. Background jobs are not counted
        against ``max_waiting`` (their submitter bounds them)."""
        job = Job(Completion(self.engine, req), sink, background)
        with self._cond:
            if self._closed:
                raise RuntimeError("scheduler is closed")
            if background:
                self._background.append(job)
                self._cond.notify()
                return job
            if len(self._waiting) >= self.max_waiting:
                raise Busy(
                    f"The server is busy: {len(self._waiting)} requests are already waiting "
                    "for a place in the batch. Retry after a short wait."
                )
            self._waiting.append(job)
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Stop a job (its client went away); its sequences leave at the next step."""
        with self._cond:
            if job.finished.is_set() or job.cancelled:
                return
            job.cancelled = True
            self._cancel.append(job)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (a submit now raises)."""
        return self._closed

    @property
    def load(self) -> dict[str, int]:
        with self._cond:
            return {
                "running": len(self._batch),
                "waiting": len(self._waiting),
                "background": len(self._background),
            }

    # -- the worker
    def _run(self) -> None:
        while True:
            with self._cond:
                while not (
                    self._closed
                    or self._waiting
                    or self._background
                    or self._cancel
                    or self._active
                ):
                    self._cond.wait()
                if self._closed:
                    return
                cancelled, self._cancel = self._cancel, []
                preempted = self._preemptible()
                admitted = self._admissible()
            try:
                self._drop(cancelled)
                self._preempt(preempted)
                for job in admitted:
                    self._start(job)
                if len(self._batch):
                    self._step()
            except Exception as exc:  # a bug in the scheduler itself: never a dead worker
                log.exception("the batch worker failed; its running requests fail")
                self._reset(exc)

    def _admissible(self) -> list[Job]:
        """Waiting jobs that fit now, in order (a job alone always fits an empty batch);
        background jobs only once no interactive job is left waiting, and while any
        interactive job runs, only within ``background_share`` sequences."""
        taken: list[Job] = []
        room = self.max_sequences - len(self._batch) + self._freed
        self._freed = 0
        for queue in (self._waiting, self._background):
            share = self._share_left(taken) if queue is self._background else room
            while queue:
                job = queue[0]
                if job.cancelled:
                    queue.popleft()
                    job.finished.set()
                    continue
                if job.size > min(room, share) and (taken or len(self._batch)):
                    return taken
                taken.append(queue.popleft())
                room, share = room - job.size, share - job.size
        return taken

    _freed = 0  # sequences that preempted jobs give back before this step's admission

    def _interactive(self, more: Sequence[Job] = ()) -> bool:
        return bool(self._waiting) or any(not j.background for j in [*self._active, *more])

    def _share_left(self, taken: list[Job]) -> int:
        """Sequences background jobs may still take (all that fit while no interactive job
        runs or waits)."""
        if not self._interactive(taken):
            return self.max_sequences
        return self.background_share - self._held()

    def _held(self) -> int:
        """Rows running background jobs hold in the batch now."""
        return sum(j.rows for j in self._active if j.background and not j.cancelled)

    def _preemptible(self) -> list[Job]:
        """Running background jobs to stop, newest first, so that the first waiting
        interactive job fits and background jobs hold at most ``background_share``
        sequences while interactive ones run."""
        if not self._interactive():
            return []
        room = self.max_sequences - len(self._batch)
        need = self._waiting[0].size if self._waiting else 0
        held = self._held()
        if room + held < need:  # even all of them would not make it fit: keep their work
            need = 0
        out: list[Job] = []
        for job in reversed(self._active):
            if room >= need and held <= self.background_share:
                break
            if job.background and not job.cancelled:
                out.append(job)
                room, held = room + job.rows, held - job.rows
        self._freed = sum(job.rows for job in out)
        return out

    def _preempt(self, jobs: list[Job]) -> None:
        """Stop background jobs and queue them again, first, from the beginning."""
        stopped: list[Job] = []
        try:
            for job in jobs:
                self._batch.drop(job.completion.candidates)
                self._active.remove(job)
                job.completion = Completion(self.engine, job.completion.req)
                stopped.append(job)
                self.preempted += 1
        finally:  # (re-queued even if a drop raised: no job is left unanswered)
            with self._cond:
                self._background.extendleft(reversed(stopped))

    def _drop(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job in self._active:
                self._batch.drop(job.completion.candidates)
                self._active.remove(job)
            job.finished.set()

    def _start(self, job: Job) -> None:
        try:
            job.completion.start(self._batch)
        except Exception as exc:  # a bug: report it to this request only
            self._batch.drop(job.completion.candidates)  # (if they had joined already)
            self._tell_failure(job, exc)
            return
        self._active.append(job)
        self._emit(job)

    def _step(self) -> None:
        try:
            stepped = self._batch.advance()
        except Exception as exc:  # the model's step, shared by every row: all of them fail
            self._reset(exc)
            return
        self.steps += 1
        by_owner: dict[int, list[Any]] = collections.defaultdict(list)
        for c in stepped:
            by_owner[id(c.owner)].append(c)
        for job in list(self._active):
            mine = by_owner.get(id(job.completion))
            if not mine:
                continue
            failed = job.completion.error  # a row of this request raised: it alone fails
            if failed is not None:
                self._fail(job, failed)
                continue
            try:
                job.completion.record(mine)
                self._emit(job)
            except Exception as exc:  # shaping this request's output: this request only
                self._fail(job, exc)

    def _reset(self, exc: Exception) -> None:
        """Fail every running request and start from an empty batch (the old one is
        dropped whole: nothing in it is trusted)."""
        jobs, self._active = self._active, []
        self._batch = Batch(self.engine)
        for job in jobs:
            self._tell_failure(job, exc)

    def _emit(self, job: Job) -> None:
        comp = job.completion
        if job.cancelled:
            return
        if comp.req.stream:
            chunks = comp.take_chunks()
            if chunks:
                job.sink(("chunks", chunks))
            if comp.done:
                job.sink(("done", None))
        elif comp.done:
            job.sink(("response", comp.response()))
        if comp.done:
            self._finish(job)

    def _fail(self, job: Job, exc: Exception) -> None:
        """This request fails: its sequences leave the batch, the others go on."""
        if job in self._active:
            self._batch.drop(job.completion.candidates)
            self._active.remove(job)
        self._tell_failure(job, exc)

    def _tell_failure(self, job: Job, exc: Exception) -> None:
        try:
            job.sink(("error", exc))
        except Exception:  # the receiver is gone (a closed event loop): nobody to tell
            log.exception("could not deliver a request's failure")
        job.finished.set()

    def _finish(self, job: Job) -> None:
        if job in self._active:
            self._active.remove(job)
        job.finished.set()
