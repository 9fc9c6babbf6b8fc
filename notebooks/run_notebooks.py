"""Execute the notebooks and save them with their outputs (``make notebooks``).

    python notebooks/run_notebooks.py                # every notebook, in place
    python notebooks/run_notebooks.py 03_logprobs_echo.ipynb

The notebooks use whatever models this machine has: SmolLM2 cells run when
``smollm2-135m-instruct`` is pulled (``sampler pull smollm2-135m-instruct``) and say they are
skipped otherwise. CI re-executes them without saving (``tests/test_notebooks.py``), on the
tiny model only. Volatile metadata (timings) is dropped so that a re-run diffs cleanly, and consecutive
prints are joined into one output.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def execute(path: Path, *, timeout: int = 600) -> nbformat.NotebookNode:
    """Run every cell of ``path`` in a fresh kernel (cwd: the notebooks folder)."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(HERE)}})
    client.execute()
    return nb


def _clean(nb: nbformat.NotebookNode) -> None:
    """Drop timings; join consecutive prints into one output (as a reader sees them)."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        outputs = []
        for out in cell.get("outputs", []):
            prev = outputs[-1] if outputs else None
            if (prev is not None and out.output_type == "stream" == prev.output_type
                    and out.name == prev.name):
                prev.text += out.text
            else:
                outputs.append(out)
        if cell.cell_type == "code":
            cell.outputs = outputs
    nb.metadata.get("language_info", {}).pop("version", None)


def main(argv: list[str]) -> int:
    paths = [HERE / a if not Path(a).exists() else Path(a) for a in argv] or sorted(
        HERE.glob("*.ipynb"))
    for path in paths:
        t0 = time.perf_counter()
        nb = execute(path)
        _clean(nb)
        nbformat.write(nb, path)
        print(f"{path.name}: {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
