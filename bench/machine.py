"""What else the machine is doing while a benchmark runs (shared by the benchmarks)."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_busy_seconds() -> float | None:
    """Machine-wide busy CPU seconds so far, from /proc/stat (None off Linux)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")
