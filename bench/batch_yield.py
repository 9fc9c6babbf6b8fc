"""Benchmark: how long an interactive request takes while the server runs a batch.

    python bench/batch_yield.py                       # tiny-random-cl100k, 400 batch requests
    python bench/batch_yield.py --model smollm2-135m-instruct --requests 100

Run from the repository root with the project venv. One `sampler serve` app (in this
process, uvicorn on loopback, one ONNX Runtime thread) answers a probe, an interactive
request of 16 tokens sent one after another, in three conditions:

1. idle;
2. while a ``/v1/batches`` batch of ``--requests`` seeded requests runs (background jobs,
   which yield to interactive ones);
3. while the same requests arrive as ordinary interactive requests, 64 at a time (what the
   probe would meet if the batch were run by a client loop against ``/v1/completions``).

Prints the probe's median and 90th-percentile latency in each, and how long the batch took.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import openai  # noqa: E402
import uvicorn  # noqa: E402

from sampler.engine import Engine  # noqa: E402
from sampler.server import ServerConfig, create_app  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from batch import bodies  # noqa: E402


def serve(app):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}"


def probe(client, model, busy, out):
    """Interactive requests one after another while ``busy()``; latencies to ``out``."""
    i = 0
    while busy():
        t0 = time.perf_counter()
        client.completions.create(
            model=model, prompt=f"Probe {i}", max_tokens=16, seed=i, temperature=0.7
        )
        out.append(time.perf_counter() - t0)
        i += 1


def summary(name, xs):
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(0.9 * len(xs)))]
    print(
        f"  {name:44s} p50 {statistics.median(xs) * 1000:7.0f} ms   "
        f"p90 {p90 * 1000:7.0f} ms   ({len(xs)} probes)"
    )
    return statistics.median(xs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny-random-cl100k")
    p.add_argument("--requests", type=int, default=400)
    args = p.parse_args()
    engine = Engine.load(args.model)
    reqs = bodies(engine.name, args.requests)
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(engine, ServerConfig(batch_dir=tmp))
        server, url = serve(app)
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        idle: list[float] = []
        t_end = time.perf_counter() + 5
        probe(client, engine.name, lambda: time.perf_counter() < t_end or len(idle) < 10, idle)

        data = "".join(
            json.dumps(
                {"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions", "body": b}
            )
            + "\n"
            for i, b in enumerate(reqs)
        ).encode()
        f = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
        t0 = time.perf_counter()
        batch = client.batches.create(
            input_file_id=f.id, endpoint="/v1/completions", completion_window="24h"
        )
        during: list[float] = []
        state = {"status": batch.status}

        def running() -> bool:
            state["status"] = client.batches.retrieve(batch.id).status
            return state["status"] not in ("completed", "failed", "cancelled")

        probe(client, engine.name, running, during)
        while running():
            time.sleep(0.05)
        batch_secs = time.perf_counter() - t0
        assert state["status"] == "completed", state

        loaded: list[float] = []
        left = {"n": len(reqs)}
        lock = threading.Lock()

        def one(body):
            client.completions.create(**body)
            with lock:
                left["n"] -= 1

        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            futures = [pool.submit(one, b) for b in reqs]
            probe(client, engine.name, lambda: left["n"] > 0, loaded)
            for fut in futures:
                fut.result()
        loop_secs = time.perf_counter() - t0
        server.should_exit = True
        app.state.shutdown()

    print(f"probe: 16 tokens on {engine.name}; load: {args.requests} requests (bench/batch.py's)")
    base = summary("idle", idle)
    mid = summary(f"during /v1/batches ({batch_secs:.1f} s)", during)
    busy = summary(f"during 64 concurrent clients ({loop_secs:.1f} s)", loaded)
    print(
        f"  probe latency over idle: {mid / base:.2f}x beside the batch, "
        f"{busy / base:.2f}x beside the same load as interactive requests"
    )


if __name__ == "__main__":
    main()
