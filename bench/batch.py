"""Benchmark: a Batch API file through ``sampler batch`` against a loop of Engine.complete.

    python bench/batch.py                      # 1,000 seeded requests on tiny-random-cl100k
    python bench/batch.py --requests 200 --model smollm2-135m-instruct

Run from the repository root with the project venv. Both sides get the same seeded
requests (mixed max_tokens 4–19, n 1–3, logprobs none/0/2, temperatures 1, 0 and 0.7) and
one ONNX Runtime thread, each column in a fresh process. The loop answers them one at a
time, the batch shares one continuously batched model batch of ``--max-batch`` sequences
(the CLI's default, 128), and the Ray column runs
the same file with ``--workers`` Ray Data actors (a local cluster started for it; its
start-up is timed separately). Prints requests/s and completion tokens/s of each, the
ratios, and Ray's overhead per request against the same work on one local process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sampler.batch_file import run_batch  # noqa: E402
from sampler.engine import Engine  # noqa: E402
from sampler.registry import resolve  # noqa: E402


def bodies(model: str, count: int) -> list[dict]:
    return [
        {
            "model": model,
            "prompt": f"Request number {i}:",
            "seed": i,
            "max_tokens": 4 + i % 16,
            "n": 1 + i % 3,
            "logprobs": [None, 0, 2][i % 3],
            "temperature": [1.0, 0.0, 0.7][i % 3],
        }
        for i in range(count)
    ]


def write_input(path: Path, reqs: list[dict]) -> None:
    path.write_text(
        "".join(
            json.dumps(
                {"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions", "body": b}
            )
            + "\n"
            for i, b in enumerate(reqs)
        )
    )


def column(args: argparse.Namespace) -> dict:
    """One column, in this (fresh) process: seconds and completion tokens."""
    name = Engine.load(args.model).name if args.only != "ray" else None
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        if args.only == "loop":
            engine = Engine.load(args.model)
            reqs = bodies(engine.name, args.requests)
            t0 = time.perf_counter()
            tokens = sum(engine.complete(b)["usage"]["completion_tokens"] for b in reqs)
            return {"seconds": time.perf_counter() - t0, "tokens": tokens}
        if args.only == "batch":
            engine = Engine.load(args.model)
            write_input(src, bodies(name, args.requests))
            s = run_batch(engine, src, out, max_sequences=args.max_batch)
            return {"seconds": s.seconds, "tokens": s.tokens}
        import ray

        from sampler.batch_ray import run_batch_ray

        model = str(resolve(args.model))
        write_input(src, bodies(Engine.load(args.model).name, args.requests))
        t0 = time.perf_counter()
        ray.init(
            num_cpus=args.workers,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
        )
        start = time.perf_counter() - t0
        two = Path(tmp) / "two.jsonl"  # Ray's fixed cost: a run of two requests
        two.write_text("".join(src.read_text().splitlines(keepends=True)[:2]))
        fixed = run_batch_ray(model, two, Path(tmp) / "two.out", workers=args.workers).seconds
        s = run_batch_ray(model, src, out, workers=args.workers, max_sequences=args.max_batch)
        ray.shutdown()
        return {"seconds": s.seconds, "tokens": s.tokens, "start": start, "fixed": fixed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny-random-cl100k")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--max-batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="Ray actors (0: no Ray column)")
    p.add_argument("--only", choices=["loop", "batch", "ray"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.only:
        print(json.dumps(column(args)))
        return
    Engine.load(args.model)  # fetched and converted once, before any column is timed
    cols = ["loop", "batch"] + (["ray"] if args.workers else [])
    res = {}
    for col in cols:  # each in a fresh process: no column inherits another's heap
        cmd = [sys.executable, __file__, "--only", col, "--model", args.model]
        cmd += ["--requests", str(args.requests), "--max-batch", str(args.max_batch)]
        cmd += ["--workers", str(args.workers)]
        run = subprocess.run(cmd, capture_output=True, text=True, check=True)
        res[col] = json.loads(run.stdout.strip().splitlines()[-1])
    n, loop = args.requests, res["loop"]["seconds"]
    tokens = res["loop"]["tokens"]
    assert all(r["tokens"] == tokens for r in res.values()), res  # the same seeded work
    print(f"{n} requests on {args.model}, {tokens} completion tokens, --max-batch {args.max_batch}")
    names = {
        "loop": "loop of Engine.complete",
        "batch": "sampler batch",
        "ray": f"sampler batch --workers {args.workers} (Ray)",
    }
    for col in cols:
        secs = res[col]["seconds"]
        print(
            f"  {names[col]:34s} {n / secs:8.1f} req/s {tokens / secs:9.0f} tok/s "
            f"({secs:.1f} s, {loop / secs:.2f}x the loop)"
        )
    if "ray" in res:
        r, ideal = res["ray"], res["batch"]["seconds"] / args.workers
        print(
            f"  Ray: cluster start {r['start']:.1f} s (not in its column); a run of 2 requests "
            f"{r['fixed']:.1f} s (actor pool start, model loads); beyond that and an ideal "
            f"{args.workers}-way split of the local run, "
            f"{(r['seconds'] - r['fixed'] - ideal) / n * 1000:.1f} ms per request"
        )


if __name__ == "__main__":
    main()
