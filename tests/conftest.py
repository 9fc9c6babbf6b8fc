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
