"""Benchmark: the server under 1, 8 and 32 concurrent clients against the same requests
run one after another.

    python bench/serve_load.py [--model tiny-random-cl100k] [--requests 32] [--max-tokens 32]

Starts the real server (``sampler serve`` in a child process on a free loopback port, one
ONNX Runtime thread: clients and server do not share a GIL) and drives it with the official
``openai`` SDK from this process, each client a thread streaming its requests. Every request
is seeded and distinct (prompt i, seed i). For each concurrency level it prints throughput
(completion tokens/s over the wall time of the whole set), time-to-first-token p50/p95, and
the ratio to the sequential run, plus a check that every concurrent answer equals the
sequential one (continuous batching must not change a seeded result). Target (issue 4):
8 concurrent >= 3x sequential throughput.
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[_var] = "1"

import argparse
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai


def start(model: str) -> tuple[str, subprocess.Popen]:
    """``sampler serve`` on a free port; returns its base URL once /health answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sampler.cli", "serve", "--model", model, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600  # the first use of a model may build or fetch it
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
            return f"http://127.0.0.1:{port}/v1", proc
        except OSError as err:
            if proc.poll() is not None:
                raise SystemExit(f"sampler serve exited with {proc.returncode}") from err
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("sampler serve did not come up")


def one(client: openai.OpenAI, model: str, i: int, max_tokens: int) -> dict:
    """Stream request i; its text, completion tokens and time to first token."""
    t0 = time.perf_counter()
    first, text, usage = None, "", None
    stream = client.completions.create(
        model=model,
        prompt=f"Request {i}: tell me about number {i * 7}",
        max_tokens=max_tokens,
        seed=i,
        temperature=0.8,
        stream=True,
        stream_options={"include_usage": True},
        logit_bias={"100257": -100} if "cl100k" in model else None,
    )
    for chunk in stream:
        if chunk.choices:
            if first is None and chunk.choices[0].text:
                first = time.perf_counter() - t0
            text += chunk.choices[0].text
        elif chunk.usage is not None:
            usage = chunk.usage
    return {"text": text, "tokens": usage.completion_tokens, "ttft": first or 0.0}


def run_level(client, model, n_requests, concurrency, max_tokens):
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda i: one(client, model, i, max_tokens), range(n_requests)))
    wall = time.perf_counter() - t0
    ttft = sorted(r["ttft"] for r in results)
    return {
        "wall": wall,
        "tok_s": sum(r["tokens"] for r in results) / wall,
        "ttft_p50": statistics.median(ttft),
        "ttft_p95": ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))],
        "texts": [r["text"] for r in results],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny-random-cl100k")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    url, proc = start(args.model)
    client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0)
    try:
        name = client.models.list().data[0].id
        one(client, name, 0, 4)  # warm-up
        base = run_level(client, name, args.requests, 1, args.max_tokens)
        print(
            f"model {name}, {args.requests} requests x {args.max_tokens} tokens, "
            f"1 ORT thread, {os.cpu_count()} cpus, server in a child process"
        )
        print(
            f"{'clients':>8} {'wall s':>8} {'tok/s':>8} {'ttft p50':>9} {'ttft p95':>9} "
            f"{'vs seq':>7} same"
        )
        for level in (1, 8, 32):
            r = (
                base
                if level == 1
                else run_level(client, name, args.requests, level, args.max_tokens)
            )
            same = r["texts"] == base["texts"]
            print(
                f"{level:>8} {r['wall']:>8.2f} {r['tok_s']:>8.1f} {r['ttft_p50'] * 1e3:>7.0f}ms "
                f"{r['ttft_p95'] * 1e3:>7.0f}ms {r['tok_s'] / base['tok_s']:>6.2f}x {same}"
            )
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
