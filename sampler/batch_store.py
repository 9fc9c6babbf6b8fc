"""The server's Batch API state: files on disk, files and batches in SQLite (WAL).

Everything lives under one folder (``$SAMPLER_HOME/batches`` by default): ``state.sqlite3``
holds one row per file and per batch, ``files/`` the files' bytes, ``work/`` the output and
error lines of running batches (appended and flushed per line, so a restarted server resumes
a batch where it stopped). The objects are returned in the shapes of OpenAI's File and
Batch objects. Ids carry 128 random bits (``file-…``, ``batch_…``): they cannot be guessed.

>>> import tempfile
>>> store = Store(tempfile.mkdtemp())
>>> f = store.add_file(b'{"custom_id": "a"}\\n', "in.jsonl", "batch")
>>> f["object"], f["bytes"], f["purpose"], store.get_file(f["id"]) == f
('file', 19, 'batch', True)
>>> store.get_file("file-nope") is None
True
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["Store", "FolderBusy", "ACTIVE", "DONE"]

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")  # a runner resumes these
DONE = ("completed", "failed", "cancelled", "expired")
WINDOW = 24 * 3600  # completion_window "24h" [decided: a batch here never expires]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    purpose TEXT NOT NULL,
    filename TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL,
    data TEXT NOT NULL  -- the Batch object, as JSON
);
"""


class FolderBusy(RuntimeError):
    """Another server holds the batch folder."""


def held(root: str | os.PathLike) -> bool:
    """Whether a running server holds the batch folder ``root`` now."""
    lock = Path(root) / "runner.lock"
    if not lock.exists():
        return False
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


class Store:
    """Files and batches under ``root``; safe to use from any thread."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.files_dir = self.root / "files"
        self.work_dir = self.root / "work"
        for d in (self.files_dir, self.work_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._owner = open(self.root / "runner.lock", "a")  # one server per folder
        try:
            fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._owner.close()
            raise FolderBusy(
                f"another server is running the batches in {self.root} (one per folder)"
            ) from None
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.root / "state.sqlite3", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self._owner.close()

    # -- files
    def file_path(self, file_id: str) -> Path:
        return self.files_dir / file_id

    def add_file(self, data: bytes | Path, filename: str, purpose: str) -> dict[str, Any]:
        """Store bytes (or move a finished temporary file) as a new file object."""
        fid = new_id("file-")
        path = self.file_path(fid)
        if isinstance(data, Path):
            os.replace(data, path)
        else:
            path.write_bytes(data)
        size = path.stat().st_size
        row = (fid, purpose, filename, size, int(time.time()))
        with self._lock:
            self._db.execute(
                "INSERT INTO files (id, purpose, filename, bytes, created_at) VALUES (?,?,?,?,?)",
                row,
            )
        return _file(row)

    def get_file(self, file_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, purpose, filename, bytes, created_at FROM files WHERE id = ?",
                (file_id,),
            ).fetchone()
        return None if row is None else _file(row)

    def list_files(
        self, *, purpose: str | None, limit: int, after: str | None, ascending: bool
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of files, newest first unless ``ascending``; and whether more follow."""
        sql = "SELECT id, purpose, filename, bytes, created_at FROM files WHERE 1=1"
        args: list[Any] = []
        if purpose is not None:
            sql, args = sql + " AND purpose = ?", [*args, purpose]
        if after is not None:
            cmp = ">" if ascending else "<"
            sql += f" AND seq {cmp} (SELECT seq FROM files WHERE id = ?)"
            args.append(after)
        sql += f" ORDER BY seq {'ASC' if ascending else 'DESC'} LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, [*args, limit + 1]).fetchall()
        return [_file(r) for r in rows[:limit]], len(rows) > limit

    def delete_file(self, file_id: str) -> bool:
        with self._lock:
            gone = self._db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount
        self.file_path(file_id).unlink(missing_ok=True)
        return bool(gone)

    # -- batches
    def add_batch(
        self, input_file_id: str, endpoint: str, window: str, metadata: dict | None
    ) -> dict[str, Any]:
        now = int(time.time())
        batch = {
            "id": new_id("batch_"),
            "object": "batch",
            "endpoint": endpoint,
            "errors": None,
            "input_file_id": input_file_id,
            "completion_window": window,
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + WINDOW,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": metadata,
        }
        with self._lock:
            self._db.execute(
                "INSERT INTO batches (id, status, data) VALUES (?,?,?)",
                (batch["id"], batch["status"], json.dumps(batch)),
            )
        return batch

    def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM batches WHERE id = ?", (batch_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def list_batches(self, *, limit: int, after: str | None) -> tuple[list[dict], bool]:
        """A page of batches, newest first; and whether more follow."""
        sql, args = "SELECT data FROM batches", []
        if after is not None:
            sql, args = sql + " WHERE seq < (SELECT seq FROM batches WHERE id = ?)", [after]
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY seq DESC LIMIT ?", [*args, limit + 1])
            data = [json.loads(r[0]) for r in rows.fetchall()]
        return data[:limit], len(data) > limit

    def update_batch(
        self, batch_id: str, *, expect: tuple[str, ...] | None = None, **changes: Any
    ) -> Any:
        """Set fields of a batch (``status`` changes stamp ``<status>_at``); returns it.
        With ``expect``, only if its status is one of those (else None, nothing changed):
        the runner and a cancel never overwrite each other's status."""
        with self._lock:
            row = self._db.execute("SELECT data FROM batches WHERE id = ?", (batch_id,)).fetchone()
            batch = json.loads(row[0])
            if expect is not None and batch["status"] not in expect:
                return None
            status = changes.get("status")
            if status is not None and status != batch["status"] and f"{status}_at" in batch:
                batch[f"{status}_at"] = int(time.time())
            batch.update(changes)
            self._db.execute(
                "UPDATE batches SET status = ?, data = ? WHERE id = ?",
                (batch["status"], json.dumps(batch), batch_id),
            )
        return batch

    def active_batches(self) -> list[str]:
        """Ids of batches not yet ended, oldest first (what a runner has to do)."""
        marks = ",".join("?" * len(ACTIVE))
        with self._lock:
            rows = self._db.execute(
                f"SELECT id FROM batches WHERE status IN ({marks}) ORDER BY seq", ACTIVE
            ).fetchall()
        return [r[0] for r in rows]

    def uses(self, file_id: str) -> str | None:
        """A batch not yet ended that reads ``file_id``, if any."""
        for bid in self.active_batches():
            batch = self.get_batch(bid)
            if batch is not None and batch["input_file_id"] == file_id:
                return bid
        return None

    def work_paths(self, batch_id: str) -> tuple[Path, Path]:
        """Where a running batch appends its output and error lines."""
        return (
            self.work_dir / f"{batch_id}.output.jsonl",
            self.work_dir / f"{batch_id}.errors.jsonl",
        )


def _file(row: tuple) -> dict[str, Any]:
    fid, purpose, filename, size, created = row
    return {
        "id": fid,
        "object": "file",
        "bytes": size,
        "created_at": created,
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }
