"""The documentation site builds with ``mkdocs build --strict``: a broken link or anchor,
a page missing from the nav, or an unresolvable docstring reference fails the suite.

The build reads the notebooks' committed outputs (``docs/_hooks/notebooks.py``) and
executes nothing; it needs no network (no web fonts, no social cards).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_docs_build_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(site),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stdout}\n{run.stderr}"
    assert (site / "index.html").is_file()
    for page in [
        "quickstart",
        "parameters",
        "semantics",
        "comparison",
        "api/processors",
        "api/engine",
    ]:
        assert (site / page / "index.html").is_file(), page
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        html = (site / "notebooks" / nb.stem / "index.html").read_text(encoding="utf-8")
        assert "<img" in html, f"{nb.name}: no plot in its page (outputs not committed?)"
