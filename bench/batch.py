"""Benchmark: a Batch API file through ``sampler batch`` against a loop of Engine.complete.

    python bench/batch.py                      # 1,000 seeded requests on tiny-random-cl100k
    python bench/batch.py --requests 200 --model smollm2-135m-instruct

Run from the repository root with the project venv. Both sides get the same seeded
requests (mixed max_tokens 4–19, n 1–3, logprobs none/0/2, temperatures 1, 0 and 0.7) and
one ONNX Runtime thread; the loop answers them one at a time, the batch shares one
continuously batched model batch of ``--max-batch`` sequences, and the Ray column runs
the same file with ``--workers`` Ray Data actors (a local cluster started for it; its
start-up is timed separately). Prints requests/s and completion tokens/s of each, the
ratios, and Ray's overhead per request against the same work on one local process.
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny-random-cl100k")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--max-batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="Ray actors (0: no Ray column)")
    args = p.parse_args()
    engine = Engine.load(args.model)
    reqs = bodies(engine.name, args.requests)
    t0 = time.perf_counter()
    loop_tokens = sum(engine.complete(b)["usage"]["completion_tokens"] for b in reqs)
    loop = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        src.write_text(
            "".join(
                json.dumps(
                    {"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions", "body": b}
                )
                + "\n"
                for i, b in enumerate(reqs)
            )
        )
        summary = run_batch(engine, src, out, max_sequences=args.max_batch)
        ray_run = ray_start = ray_fixed = None
        if args.workers:
            import ray

            from sampler.batch_ray import run_batch_ray

            t0 = time.perf_counter()
            ray.init(
                num_cpus=args.workers,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
            )
            ray_start = time.perf_counter() - t0
            two = Path(tmp) / "two.jsonl"  # Ray's fixed cost: a run of two requests
            two.write_text("".join(src.read_text().splitlines(keepends=True)[:2]))
            ray_fixed = run_batch_ray(
                str(resolve(args.model)), two, Path(tmp) / "two.out.jsonl", workers=args.workers
            ).seconds
            ray_run = run_batch_ray(
                str(resolve(args.model)),
                src,
                Path(tmp) / "ray.jsonl",
                workers=args.workers,
                max_sequences=args.max_batch,
            )
            ray.shutdown()
            assert ray_run.completed == len(reqs) and ray_run.tokens == loop_tokens
    assert summary.completed == len(reqs) and summary.tokens == loop_tokens
    n = args.requests
    print(f"{n} requests on {engine.name}, {loop_tokens} completion tokens")
    rows = [("loop of Engine.complete", loop), ("sampler batch", summary.seconds)]
    if ray_run is not None:
        rows.append((f"sampler batch --workers {args.workers} (Ray)", ray_run.seconds))
    for name, secs in rows:
        print(
            f"  {name:34s} {n / secs:8.1f} req/s {loop_tokens / secs:9.0f} tok/s "
            f"({secs:.1f} s, {loop / secs:.2f}x the loop)"
        )
    if ray_run is not None and ray_start is not None and ray_fixed is not None:
        # Ray's cost: the same requests on `workers` processes would take summary/workers
        ideal = summary.seconds / args.workers
        print(
            f"  Ray: cluster start {ray_start:.1f} s (not in its column); a run of 2 requests "
            f"{ray_fixed:.1f} s (actor pool start, model loads); beyond that and an ideal "
            f"{args.workers}-way split of the local run, "
            f"{(ray_run.seconds - ray_fixed - ideal) / n * 1000:.1f} ms per request"
        )


if __name__ == "__main__":
    main()
