"""The step benchmark runs end to end (a smoke test: its numbers are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_sampler_step_benchmark_runs_and_reports_every_cell(tmp_path):
    out = tmp_path / "step.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "sampler_step.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    cells = {(c["kind"], c["batch"]) for c in report["results"]}
    assert cells == {(k, b) for k in ("peaked", "broad", "flat") for b in (1, 8)}
    assert "full/floor" in proc.stdout and "target 1" in proc.stdout
