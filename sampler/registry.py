"""The models the engine knows by name, and where their folders live.

A name resolves to a model folder (an ONNX file + ``refsampler.json``); a path to such a
folder works too. Built models are cached under :func:`cache_dir` and built atomically,
so an interrupted build never leaves a half-written folder behind.

>>> [m.name for m in known_models()][:1]
['tiny-random-cl100k']
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

__all__ = ["DEFAULT_MODEL", "ModelEntry", "known_models", "resolve", "cache_dir"]

DEFAULT_MODEL = "tiny-random-cl100k"


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


def _tiny_folder() -> Path:
    from .tiny import TINY_BUILD_VERSION

    return cache_dir() / "models" / f"tiny-random-cl100k-v{TINY_BUILD_VERSION}"


def _tiny_build() -> Path:
    from .tiny import build_tiny_random

    return build_tiny_random(_tiny_folder())


_MODELS: dict[str, ModelEntry] = {
    "tiny-random-cl100k": ModelEntry(
        name="tiny-random-cl100k",
        description="2-layer random Llama over cl100k_base, built locally in seconds (tests)",
        folder=_tiny_build,
        cached=lambda: (_tiny_folder() / "refsampler.json").is_file(),
    ),
}


def known_models() -> list[ModelEntry]:
    return list(_MODELS.values())


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
