"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from sampler.tiny import build_tiny_random


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``tiny-random-cl100k`` model folder, built once per test session (~1 s)."""
    return build_tiny_random(tmp_path_factory.mktemp("models") / "tiny-random-cl100k")
