"""``sampler batch --ray``: the same Batch API file, spread over Ray Data workers.

The driver reads the input, writes the error lines of bad lines and skips what a resumed
output holds, exactly as the local run does (:func:`sampler.batch_file.pending`). The good
lines become a Ray Dataset of ``(custom_id, body, url)`` rows; ``map_batches`` hands blocks of
them to a pool of actors, each holding one :class:`~sampler.engine.Engine` (loaded once per
actor) and one continuously batched scheduler; the records stream back to the driver, which
appends and flushes each line as the local run does. A seeded request's body does not
depend on what it was batched with (spec §6), so the output equals the local run's, line
for line, but for ``id``, ``created`` and ``request_id``.

Ray is an extra: ``pip install 'refsampler[ray]'``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .batch_file import Answers, BatchSummary, _start, pending, progress_bar, record_json

__all__ = ["run_batch_ray", "RayMissing", "INSTALL"]

INSTALL = "pip install 'refsampler[ray]'"
BLOCK = 64  # rows handed to an actor at a time
OVERLAP = 4  # blocks an actor works on at once: one's tail overlaps the next one's start


class RayMissing(RuntimeError):
    """``--ray`` without Ray installed."""


class _Worker:
    """A Ray Data actor: one engine, one scheduler, answering blocks of rows."""

    def __init__(self, model: str, threads: int, max_sequences: int) -> None:
        from .engine import Engine
        from .scheduler import Scheduler

        self.sched = Scheduler(Engine.load(model, threads=threads), max_sequences=max_sequences)

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records: list[tuple[str, str, int]] = []
        lock = threading.Lock()

        def on_record(record: dict, kind: str, tokens: int) -> None:
            with lock:
                records.append((record_json(record), kind, tokens))

        answers = Answers(self.sched, on_record, in_flight=BLOCK)
        for cid, body, url in zip(rows["custom_id"], rows["body"], rows["url"]):
            answers.submit(str(cid), json.loads(str(body)), url=str(url))
        answers.drain()
        return {
            "record": np.array([r[0] for r in records], dtype=object),
            "kind": np.array([r[1] for r in records], dtype=object),
            "tokens": np.array([r[2] for r in records], dtype=np.int64),
        }


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise RayMissing(f"--ray needs Ray Data, which is not installed: {INSTALL}") from err
    return ray


def _pool(ray: Any, workers: int) -> Any:
    """A fixed pool of ``workers`` actors, each running OVERLAP blocks at once on threads
    that share its scheduler (so one block's tail overlaps the next block's start)."""
    strategy = ray.data.ActorPoolStrategy
    try:
        return strategy(
            size=workers,
            max_tasks_in_flight_per_actor=OVERLAP,
            max_concurrent_calls_per_actor=OVERLAP,
            enable_true_multi_threading=True,
        )
    except TypeError:  # a Ray Data before these options: one block at a time per actor
        return strategy(size=workers)


def run_batch_ray(
    model: str,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    address: str | None = None,
    workers: int | None = None,
    threads: int = 1,
    errors_path: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = False,
    max_sequences: int = 128,
) -> BatchSummary:
    """Run a Batch API file on Ray: ``workers`` actors (default: the cluster's CPUs over
    ``threads``), each with its own ``Engine.load(model)``. ``address`` is an existing
    cluster's (``"auto"``, ``"ray://host:10001"``); without it, ``RAY_ADDRESS`` or else a
    local cluster is used. Returns the :class:`~sampler.batch_file.BatchSummary`."""
    ray = _ray()
    out, errs = Path(output_path), None if errors_path is None else Path(errors_path)
    done, writer = _start(out, errs, resume)
    summary, t0 = BatchSummary(), time.monotonic()
    bar = progress_bar(progress, input_path)
    started = not ray.is_initialized()
    try:
        rows = [
            {"custom_id": cid, "body": json.dumps(body), "url": url}
            for cid, body, url in pending(input_path, done, writer, summary)
        ]
        bar.update(summary.skipped + summary.bad_lines)
        if rows:
            if started:
                local = address is None and "RAY_ADDRESS" not in os.environ
                names = ("SAMPLER_HOME", "SAMPLER_MODEL") if local else ()  # same machine
                env = {k: os.environ[k] for k in names if k in os.environ}
                ray.init(
                    address=address,
                    runtime_env={"env_vars": {**env, "OMP_NUM_THREADS": str(threads)}},
                    logging_level="WARNING",
                    log_to_driver=False,
                    include_dashboard=False,
                )
            if workers is None:
                workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            logging.getLogger("ray.data").setLevel(logging.ERROR)  # (it warns of no bars)
            # blocks small enough that every worker gets OVERLAP of them, at most BLOCK rows
            block = max(1, min(BLOCK, -(-len(rows) // (workers * OVERLAP))))
            records = ray.data.from_items(rows).map_batches(
                _Worker,
                fn_constructor_kwargs={
                    "model": model,
                    "threads": threads,
                    "max_sequences": max_sequences,
                },
                batch_size=block,
                batch_format="numpy",
                compute=_pool(ray, workers),
                num_cpus=threads,
            )
            for batch in records.iter_batches(batch_size=None, batch_format="numpy"):
                for text, kind, tokens in zip(batch["record"], batch["kind"], batch["tokens"]):
                    writer.write_text(str(text))
                    setattr(summary, str(kind), getattr(summary, str(kind)) + 1)
                    summary.tokens += int(tokens)
                    bar.update()
                elapsed = max(1e-9, time.monotonic() - t0)
                bar.set_postfix_str(f"{summary.tokens / elapsed:.0f} tok/s")
    finally:
        writer.close()
        bar.close()
        if started and ray.is_initialized():
            ray.shutdown()
    summary.seconds = time.monotonic() - t0
    if workers is not None:
        summary.notes.append(f"ray: {workers} workers")
    return summary
