"""Benchmark: a Batch API file through ``sampler batch`` against a loop of Engine.complete.

    python bench/batch.py                      # 1,000 seeded requests on tiny-random-cl100k
    python bench/batch.py --requests 200 --model smollm2-135m-instruct

Run from the repository root with the project venv. Both sides get the same seeded
requests (mixed max_tokens 4–19, n 1–3, logprobs none/0/2, temperatures 1, 0 and 0.7) and
one ONNX Runtime thread; the loop answers them one at a time, the batch shares one
continuously batched model batch of ``--max-batch`` sequences. Prints requests/s and
completion tokens/s of each, and the ratio. (A Ray column joins when ``--ray`` lands.)
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
    p.add_argument("--max-batch", type=int, default=64)
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
    assert summary.completed == len(reqs) and summary.tokens == loop_tokens
    print(f"{args.requests} requests on {engine.name}, {loop_tokens} completion tokens")
    print(
        f"  loop of Engine.complete: {args.requests / loop:8.1f} req/s "
        f"{loop_tokens / loop:9.0f} tok/s ({loop:.1f} s)"
    )
    print(
        f"  sampler batch:           {args.requests / summary.seconds:8.1f} req/s "
        f"{summary.tokens / summary.seconds:9.0f} tok/s ({summary.seconds:.1f} s)"
    )
    print(f"  batch / loop: {loop / summary.seconds:.2f}x")


if __name__ == "__main__":
    main()
