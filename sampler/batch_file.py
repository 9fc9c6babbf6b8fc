"""Offline batches: OpenAI's Batch API file format, run locally.

Input lines are ``{"custom_id", "method": "POST", "url": "/v1/completions", "body"}`` (or
``"url": "/v1/chat/completions"`` with a chat body: lines of both kinds may share a file);
output lines are what OpenAI writes, ``{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error": null}``. A request the contract rejects gets the 4xx body
the server would send, as its response. A line that is not a request at all (invalid
JSON, no or a duplicate ``custom_id``, another url or method, a body that is not an
object) gets ``{"id", "custom_id", "response": null, "error": {"code", "message",
"line"}}`` in the errors file (the output file when none is given), and the rest goes on.

All requests share one continuously batched :class:`~sampler.scheduler.Scheduler`, so a
file runs much faster than a loop of :meth:`Engine.complete`, and a seeded request's body
is the one ``Engine.complete`` returns for it alone (spec §6). Lines are written, and
flushed, **in the order requests finish**, not input order; ``--resume`` truncates a
partial last line, skips every ``custom_id`` (and bad line) already written, and runs the
rest, so a run killed at any point and resumed writes each request exactly once.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .chat_request import parse_chat_request
from .errors import RequestError, request_id, server_error
from .params import parse_request

__all__ = ["Answers", "BatchSummary", "pending", "read_lines", "run_batch"]

URL = "/v1/completions"
CHAT_URL = "/v1/chat/completions"
URLS = (URL, CHAT_URL)  # the endpoints a line may name (each parsed as that endpoint does)
log = logging.getLogger("sampler.batch_file")


@dataclass
class BatchSummary:
    """What a run did, counted by kind of line; :meth:`line` is the CLI's summary line."""

    lines: int = 0  # input lines that were not blank
    completed: int = 0  # 200 responses written
    rejected: int = 0  # 4xx responses (the contract refused the body)
    failed: int = 0  # 5xx responses
    bad_lines: int = 0  # error lines (not a request)
    skipped: int = 0  # already in the output (--resume)
    tokens: int = 0  # completion tokens of the 200 responses
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for humans: the counts, the tokens and the rate."""
        rate = self.tokens / self.seconds if self.seconds else 0.0
        return (
            f"{self.lines} lines: {self.completed} completed, {self.rejected} rejected, "
            f"{self.failed} failed, {self.bad_lines} bad lines, {self.skipped} skipped "
            f"(resume); {self.tokens} tokens in {self.seconds:.1f} s ({rate:.0f} tok/s)"
            + "".join(f"; {note}" for note in self.notes)
        )


@dataclass
class _Line:
    number: int  # 1-based line number in the input
    custom_id: str | None
    body: dict[str, Any] | None
    problem: tuple[str, str] | None  # (code, message) of a line that is not a request
    url: str = URL  # the endpoint it names


def read_lines(path: str | os.PathLike) -> Iterator[_Line]:
    """Each non-blank input line, checked for the Batch API's shape (not its body)."""
    seen: set[str] = set()
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield _Line(
                    number,
                    None,
                    None,
                    ("invalid_json", f"Line {number} is not UTF-8: {str(err)[:120]}"),
                )
                continue
            yield _check_line(number, text, seen)


def _check_line(number: int, text: str, seen: set[str]) -> _Line:
    def bad(code: str, message: str, cid: str | None = None) -> _Line:
        return _Line(number, cid, None, (code, message))

    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as err:
        return bad("invalid_json", f"Line {number} is not valid JSON: {str(err)[:120]}")
    if not isinstance(obj, dict):
        return bad("invalid_request", f"Line {number} is not a JSON object.")
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid:
        return bad("missing_custom_id", f"Line {number} has no custom_id (a non-empty string).")
    if cid in seen:
        return bad("duplicate_custom_id", f"Line {number} repeats custom_id {cid!r}.", cid)
    seen.add(cid)
    if obj.get("method") != "POST":
        return bad("invalid_method", f"Line {number}: method must be 'POST'.", cid)
    url = obj.get("url")
    if url not in URLS:
        return bad(
            "invalid_url",
            f"Line {number}: url must be {URL!r} or {CHAT_URL!r}, got {str(url)[:80]!r}.",
            cid,
        )
    body = obj.get("body")
    if not isinstance(body, dict):
        return bad("invalid_body", f"Line {number}: body must be a JSON object.", cid)
    return _Line(number, cid, body, None, url)


def _done(path: Path) -> set[str]:
    """Keys already written to ``path`` (custom ids, and ``line:N`` of bad lines); a
    partial last line (a run killed mid-write) is cut off."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    keys = set()
    for raw in data[:end].splitlines():
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        err = rec.get("error")
        if isinstance(err, dict) and "line" in err:
            keys.add(f"line:{err['line']}")
        elif rec.get("custom_id") is not None:
            keys.add(rec["custom_id"])
    return keys


def record_json(record: dict[str, Any]) -> str:
    """One output line's JSON; a lone surrogate from the input is escaped, still JSON."""
    try:
        text = json.dumps(record, ensure_ascii=False)
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(record)
    return text


class _Writer:
    """Appends records to the output and errors files, one flushed line each."""

    def __init__(self, out: Path, errors: Path | None) -> None:
        self._lock = threading.Lock()
        self.out: IO[str] = open(out, "a", encoding="utf-8")
        self.errors = self.out if errors is None else open(errors, "a", encoding="utf-8")

    def write(self, record: dict[str, Any], *, error: bool = False) -> None:
        self.write_text(record_json(record), error=error)

    def write_text(self, text: str, *, error: bool = False) -> None:
        """Append one line of JSON text, flushed."""
        with self._lock:
            f = self.errors if error else self.out
            f.write(text + "\n")
            f.flush()

    def close(self) -> None:
        for f in {id(self.out): self.out, id(self.errors): self.errors}.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()


def _record(
    cid: str | None, status: int | None, body: Any, error: Any = None, rid: str | None = None
) -> dict:
    response = None
    if status is not None:
        response = {"status_code": status, "request_id": rid or request_id(), "body": body}
    return {
        "id": "batch_req_" + secrets.token_hex(12),
        "custom_id": cid,
        "response": response,
        "error": error,
    }


def _failure(cid: str, exc: BaseException) -> dict:
    """A request's 500 line, its traceback logged under the same request id (as served)."""
    rid = request_id()
    log.error("batch request %s (custom_id %r) failed", rid, cid, exc_info=exc)
    return _record(cid, 500, server_error(exc, rid), rid=rid)


class Answers:
    """Turns ``(custom_id, body)`` into output records on one scheduler, at most
    ``in_flight`` at a time. ``on_record(record, kind, tokens)`` gets each record once, with
    its kind ("completed", "rejected" or "failed"), on the caller's or the worker's thread.

    Shared by the local run, each Ray worker and the server's ``/v1/batches``
    (``background=True``: the batch yields to interactive requests, see
    :meth:`Scheduler.submit <sampler.scheduler.Scheduler.submit>`).
    """

    def __init__(
        self,
        sched: Any,
        on_record: Callable[[dict, str, int], None],
        *,
        in_flight: int = 256,
        background: bool = False,
        limits: Any = None,
    ) -> None:
        self.sched, self.on_record, self.in_flight = sched, on_record, in_flight
        self.background, self.limits = background, limits
        self._slots = threading.BoundedSemaphore(in_flight)
        self._lock = threading.Lock()
        self._open: set[str] = set()  # submitted, record not written yet
        self._writing: set[str] = set()  # its record is being written now
        self.jobs: dict[str, Any] = {}  # custom_id -> its running Job (for cancel)

    def submit(
        self,
        cid: str,
        body: dict[str, Any],
        stop: Callable[[], bool] | None = None,
        url: str = URL,
    ) -> bool:
        """Answer one body: at once when the contract rejects it, else when it finishes.
        Waits for a free slot; returns False, with no record, when ``stop()`` becomes true
        while waiting or the scheduler has closed (the request is left for a resume)."""
        try:
            if body.get("stream") is True:
                raise RequestError(
                    "Streaming is not available in a batch: remove 'stream' from the body.",
                    param="stream",
                    code="invalid_value",
                )
            parse = parse_chat_request if url == CHAT_URL else parse_request
            req = parse(body, self.sched.engine.info, self.limits)  # model required
        except RequestError as err:
            self.on_record(_record(cid, err.status, err.to_dict()), "rejected", 0)
            return True
        except Exception as exc:  # a bug met by this body alone: its own 500
            self.on_record(_failure(cid, exc), "failed", 0)
            return True
        while not self._slots.acquire(timeout=0.1):
            if stop is not None and stop():
                return False
        with self._lock:
            self._open.add(cid)
        try:
            job = self.sched.submit(
                req, functools.partial(self._finish, cid), background=self.background
            )
        except Exception as exc:
            with self._lock:
                mine = cid in self._open  # (else cancel() took it, and its slot)
                self._open.discard(cid)
            if mine:
                self._slots.release()
            if getattr(self.sched, "closed", False):
                return False  # shutting down: not this request's failure
            if mine:
                self.on_record(_failure(cid, exc), "failed", 0)
            return True
        with self._lock:
            if cid in self._open:
                self.jobs[cid] = job
                return True
        self.sched.cancel(job)  # cancelled while it was being submitted
        return True

    def _finish(self, cid: str, event: tuple[str, Any]) -> None:
        kind, value = event
        with self._lock:
            if cid not in self._open or cid in self._writing:  # one record per request
                return
            self._writing.add(cid)
            self.jobs.pop(cid, None)
        try:
            if kind == "response":
                tokens = value["usage"]["completion_tokens"]
                self.on_record(_record(cid, 200, value), "completed", tokens)
            else:  # "error": a failure while running it
                self.on_record(_failure(cid, value), "failed", 0)
        finally:  # running until its record is written; the slot always comes back
            with self._lock:
                self._open.discard(cid)
                self._writing.discard(cid)
            self._slots.release()

    @property
    def running(self) -> int:
        """Requests submitted whose record is not written yet."""
        with self._lock:
            return len(self._open)

    def cancel(self) -> int:
        """Stop every running request whose record is not being written (no record is
        written for them); returns how many. Wait for :attr:`running` to reach 0 before
        closing what ``on_record`` writes to."""
        with self._lock:
            cids = [c for c in self._open if c not in self._writing]
            jobs = [self.jobs.pop(c) for c in cids if c in self.jobs]
            self._open.difference_update(cids)
        for job in jobs:
            self.sched.cancel(job)
        for _ in cids:
            self._slots.release()
        return len(cids)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until no record is being written (after :meth:`cancel`)."""
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.running

    def drain(self) -> None:
        """Block until every submitted request has its record."""
        for _ in range(self.in_flight):
            self._slots.acquire()
        for _ in range(self.in_flight):
            self._slots.release()


def _start(out: Path, errs: Path | None, resume: bool) -> tuple[set[str], _Writer]:
    """What the output already holds (with ``resume``; else the files start afresh)."""
    done: set[str] = set()
    for p in (out, errs):
        if p is None:
            continue
        if resume:
            done |= _done(p)
        elif p.exists():
            p.unlink()
    return done, _Writer(out, errs)


def pending(
    input_path: str | os.PathLike, done: set[str], writer: _Writer, summary: BatchSummary
) -> Iterator[tuple[str, dict[str, Any], str]]:
    """The requests still to run, ``(custom_id, body, url)``; bad lines are written on the
    way and what ``done`` holds is skipped, both counted in ``summary``."""
    for line in read_lines(input_path):
        summary.lines += 1
        key = line.custom_id if line.problem is None else f"line:{line.number}"
        if key in done:
            summary.skipped += 1
            continue
        if line.problem is not None:
            code, message = line.problem
            err = {"code": code, "message": message, "line": line.number}
            writer.write(_record(line.custom_id, None, None, err), error=True)
            summary.bad_lines += 1
            continue
        assert line.body is not None and line.custom_id is not None
        yield line.custom_id, line.body, line.url


def count_lines(path: str | os.PathLike) -> int:
    """Non-blank lines of a file (the progress bar's total)."""
    with open(path, "rb") as f:
        return sum(1 for raw in f if raw.strip())


def progress_bar(enabled: bool, input_path: str | os.PathLike) -> Any:
    """A tqdm bar of requests on stderr with tokens/s and an ETA (a no-op when disabled)."""
    from tqdm import tqdm

    total = count_lines(input_path) if enabled else None
    return tqdm(disable=not enabled, total=total, unit="req", desc="batch", leave=False)


def run_batch(
    engine: Any,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    errors_path: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = False,
    max_sequences: int = 128,
    in_flight: int = 256,
) -> BatchSummary:
    """Run a Batch API input file on ``engine``; returns the :class:`BatchSummary`.

    Without ``resume`` the output (and errors) file is started afresh.
    """
    from .scheduler import Scheduler

    out, errs = Path(output_path), None if errors_path is None else Path(errors_path)
    done, writer = _start(out, errs, resume)
    summary, t0 = BatchSummary(), time.monotonic()
    bar = progress_bar(progress, input_path)
    lock = threading.Lock()

    def on_record(record: dict, kind: str, tokens: int) -> None:
        writer.write(record)
        with lock:
            setattr(summary, kind, getattr(summary, kind) + 1)
            summary.tokens += tokens
        bar.update()
        bar.set_postfix_str(f"{summary.tokens / max(1e-9, time.monotonic() - t0):.0f} tok/s")

    sched = Scheduler(engine, max_sequences=max_sequences, max_waiting=in_flight)
    answers = Answers(sched, on_record, in_flight=in_flight)
    try:
        passed = 0  # skipped and bad lines the bar has counted
        for cid, body, url in pending(input_path, done, writer, summary):
            bar.update(summary.skipped + summary.bad_lines - passed)
            passed = summary.skipped + summary.bad_lines
            answers.submit(cid, body, url=url)
        bar.update(summary.skipped + summary.bad_lines - passed)
        answers.drain()
    finally:
        sched.close()
        writer.close()
        bar.close()
    summary.seconds = time.monotonic() - t0
    return summary
