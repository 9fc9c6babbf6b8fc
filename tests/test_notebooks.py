"""Every notebook in ``notebooks/`` runs top to bottom without an error.

The kernel inherits this process's environment (``conftest.py``: a private
``SAMPLER_HOME``, ``SAMPLER_MODEL=tiny-random-cl100k``, ``SAMPLER_OFFLINE=1``), so the
notebooks run on the tiny model and their SmolLM2 cells say they are skipped. Outputs are
not saved: the committed outputs come from ``make notebooks``.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path) -> None:  # ~5-15 s each: a kernel, the tiny model
    nb = nbformat.read(path, as_version=4)
    env_ok = os.environ.get("SAMPLER_OFFLINE") and os.environ.get("SAMPLER_HOME")
    assert env_ok, "conftest.py sets SAMPLER_HOME and SAMPLER_OFFLINE: nothing may download"
    client = nbclient.NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
