"""The server's batch runner: runs ``/v1/batches`` one at a time, beside live traffic.

A thread takes the oldest batch not yet ended from the :class:`~sampler.batch_store.Store`
and moves it through OpenAI's statuses: ``validating`` (every line is checked; a file with
a malformed line fails whole, with the line numbers in ``errors``, as OpenAI does), then
``in_progress`` (the requests run on the served models' schedulers as *background* jobs,
so interactive requests come first, see :class:`~sampler.scheduler.Scheduler`), then
``finalizing`` and ``completed``. 200 responses go to the output file, others (a body the
contract rejects, a 500) to the error file, a line each, flushed as it is written.

A restarted server finds its batches still ``in_progress`` and resumes them: the lines
already written stay, a partial last line is cut off, and only the rest run. ``cancel``
stops the running requests; what completed is kept in the output file.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .batch_file import Answers, _done, _Writer, count_lines, read_lines
from .batch_store import Store

__all__ = ["Runner"]

log = logging.getLogger("sampler.batch")
MAX_ERRORS = 100  # validation errors listed in a failed batch's ``errors``
IN_FLIGHT = 64  # background requests queued or running at a time, per model


class Runner:
    """Runs the store's batches on ``schedulers`` (model name -> Scheduler)."""

    def __init__(self, store: Store, schedulers: dict[str, Any], limits: Any = None) -> None:
        self.store, self.schedulers, self.limits = store, schedulers, limits
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sampler-batches", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """A batch was created or cancelled: look again."""
        self._wake.set()

    def close(self) -> None:
        """Stop (a running batch stays ``in_progress``: the next start resumes it)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)

    # -- the thread
    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            todo = self.store.active_batches()
            for bid in todo:
                if self._stop.is_set():
                    return
                try:
                    self._run(bid)
                except Exception:  # a bug: this batch fails, the runner goes on
                    log.exception("batch %s failed", bid)
                    self.store.update_batch(
                        bid,
                        status="failed",
                        errors=_errors([("server_error", "The batch failed on the server.")]),
                    )
            if not todo:
                self._wake.wait(timeout=5)

    def _cancelling(self, bid: str) -> bool:
        batch = self.store.get_batch(bid)
        return batch is None or batch["status"] == "cancelling"

    def _run(self, bid: str) -> None:
        batch = self.store.get_batch(bid)
        assert batch is not None
        if batch["status"] == "validating":
            batch = self._validate(batch)
        if batch["status"] == "in_progress":
            self._execute(batch)
            batch = self.store.get_batch(bid) or batch
            if self._stop.is_set():
                return  # still in_progress: resumed at the next start
            if batch["status"] == "in_progress":  # (unless a cancel came in between)
                batch = self.store.update_batch(bid, expect=("in_progress",), status="finalizing")
                batch = batch or self.store.get_batch(bid)
                assert batch is not None
        if batch["status"] in ("finalizing", "cancelling"):
            self._finalize(batch)

    def _validate(self, batch: dict) -> dict:
        problems: list[tuple[str, str, int | None]] = []
        total = 0
        path = self.store.file_path(batch["input_file_id"])
        if not path.exists():
            problems.append(("file_not_found", "The input file was deleted.", None))
        else:
            for line in read_lines(path):
                total += 1
                if line.problem is not None and len(problems) < MAX_ERRORS:
                    problems.append((*line.problem, line.number))
                elif line.problem is None and line.url != batch["endpoint"]:
                    if len(problems) < MAX_ERRORS:
                        problems.append(
                            (
                                "invalid_url",
                                f"Line {line.number}: url {line.url!r} does not match the "
                                f"batch's endpoint {batch['endpoint']!r}.",
                                line.number,
                            )
                        )
                elif line.problem is None and line.body is not None:
                    model = line.body.get("model")
                    unknown = isinstance(model, str) and model not in self.schedulers
                    if unknown and len(problems) < MAX_ERRORS:
                        problems.append(
                            (
                                "model_not_found",
                                f"Line {line.number}: model {str(model)[:80]!r} is not served "
                                "here.",
                                line.number,
                            )
                        )
        if total == 0 and not problems:
            problems.append(("empty_file", "The input file has no requests.", None))
        bid, was = batch["id"], ("validating",)  # a cancel meanwhile wins over both
        if problems:
            done = self.store.update_batch(
                bid, expect=was, status="failed", errors=_errors(problems)
            )
        else:
            counts = {"total": total, "completed": 0, "failed": 0}
            done = self.store.update_batch(
                bid, expect=was, status="in_progress", request_counts=counts
            )
        return done or self.store.get_batch(bid) or batch

    def _execute(self, batch: dict) -> None:
        bid = batch["id"]
        out, err = self.store.work_paths(bid)
        done = _done(out) | _done(err)  # a restart: keep what was written, cut a partial line
        counts = {
            "total": batch["request_counts"]["total"],
            "completed": count_lines(out) if out.exists() else 0,
            "failed": count_lines(err) if err.exists() else 0,
        }
        writer = _Writer(out, err)
        lock = threading.Lock()

        def on_record(record: dict, kind: str, tokens: int) -> None:
            writer.write(record, error=kind != "completed")
            with lock:
                counts["completed" if kind == "completed" else "failed"] += 1

        answers = {
            name: Answers(
                sched, on_record, in_flight=IN_FLIGHT, background=True, limits=self.limits
            )
            for name, sched in self.schedulers.items()
        }
        first = next(iter(answers.values()))
        saved, stop = time.monotonic(), False

        def save(force: bool = False) -> bool:
            """Write the counts, and look for a cancel, at most twice a second; True when
            the run must stop."""
            nonlocal saved, stop
            if force or time.monotonic() - saved > 0.5:
                with lock:
                    snapshot = dict(counts)
                self.store.update_batch(bid, request_counts=snapshot)
                stop = stop or self._cancelling(bid)
                saved = time.monotonic()
            return stop or self._stop.is_set()

        stopped = False
        try:
            for line in read_lines(self.store.file_path(batch["input_file_id"])):
                if line.custom_id in done or line.body is None or line.custom_id is None:
                    continue
                model = line.body.get("model")
                target = answers.get(model, first) if isinstance(model, str) else first
                # waits while IN_FLIGHT are out; False: stopped meanwhile, no record
                if not target.submit(line.custom_id, line.body, stop=save, url=line.url) or save():
                    stopped = True
                    break
            while not stopped and any(a.running for a in answers.values()):
                time.sleep(0.05)
                stopped = save()
        finally:
            for a in answers.values():
                a.cancel()  # (nothing is left unless the batch stopped early)
            for a in answers.values():
                a.wait_idle()  # a record being written lands before the files close
            writer.close()
            save(force=True)

    def _finalize(self, batch: dict) -> None:
        """Publish the output and error files (each id saved as soon as its file is moved,
        so a crash here loses neither), then end the batch."""
        bid = batch["id"]
        out, err = self.store.work_paths(bid)
        for key, path, name in (
            ("output_file_id", out, "output"),
            ("error_file_id", err, "errors"),
        ):
            if batch.get(key):
                continue  # published before a restart
            if path.exists() and path.stat().st_size:
                f = self.store.add_file(path, f"{bid}_{name}.jsonl", "batch_output")
                batch = self.store.update_batch(bid, **{key: f["id"]})
            else:
                path.unlink(missing_ok=True)
        end = "cancelled" if batch["status"] == "cancelling" else "completed"
        self.store.update_batch(bid, status=end)


def _errors(problems: list[tuple]) -> dict[str, Any]:
    data = []
    for p in problems:
        code, message, line = (*p, None)[:3]
        data.append({"code": code, "message": message, "param": None, "line": line})
    return {"object": "list", "data": data}
