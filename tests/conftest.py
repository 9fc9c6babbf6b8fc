"""Shared fixtures. Built models go to a private folder: tests never touch the user's cache,
and the default model is the tiny one, so no test downloads anything."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_HOME: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _HOME
    _HOME = tempfile.mkdtemp(prefix="refsampler-test-")
    os.environ["SAMPLER_HOME"] = _HOME
    # The default model is fetched (~93 MB) on first use: tests must never do that.
    os.environ["SAMPLER_MODEL"] = "tiny-random-cl100k"
    os.environ["SAMPLER_OFFLINE"] = "1"  # and a pull that slips through fails instead


def pytest_unconfigure(config: pytest.Config) -> None:
    if _HOME:
        shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The ``tiny-random-cl100k`` model folder, built once per test process (~1 s)."""
    from sampler.registry import resolve

    return resolve("tiny-random-cl100k")


@pytest.fixture(scope="session")
def tiny_gqa_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """``tiny-random-cl100k``'s weights in the GroupQueryAttention graph (in-place cache)."""
    from sampler.onnx_llama import build_llama, save_model
    from sampler.tiny import TINY_CONFIG, tiny_weights

    out = tmp_path_factory.mktemp("tiny-gqa")
    save_model(build_llama(tiny_weights(), TINY_CONFIG, attention="gqa"), out / "model.onnx")
    shutil.copy(tiny_model_dir / "refsampler.json", out / "refsampler.json")
    return out
