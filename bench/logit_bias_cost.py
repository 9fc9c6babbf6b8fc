"""What a large ``logit_bias`` costs: validation once per request, and every step of every
sequence that carries it (docs/server.md, "Large logit_bias objects").

    python bench/logit_bias_cost.py [--keys 0 300 1024 10000 100000] [--rounds 7]

One row of cl100k_base's width (a peaked random row), ``sample_step`` for one sequence at
three settings, the medians of interleaved rounds, and the ratio to the same setting
without a bias; then ``parse_request`` of a body with that many keys.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from sampler.params import ModelInfo, SamplingParams, parse_request
from sampler.step import Row, sample_step
from sampler.tokenizer import get_tokenizer

SETTINGS = {
    "T=1": (1.0, None, 1.0),
    "T=0.7 top_p=0.9": (0.7, None, 0.9),
    "T=0.7 top_p=0.9 logprobs=2": (0.7, 2, 0.9),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, nargs="+", default=[0, 300, 1024, 10_000, 100_000])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    vocab = 100_277
    z = (rng.standard_normal((1, vocab)) * 2).astype(np.float32)  # [1, V]
    z[0, :5] += 20  # a few likely tokens, as a trained model's rows have
    cells = {}
    for keys in args.keys:
        bias = (np.arange(10, 10 + keys), rng.uniform(-5, 5, keys)) if keys else None
        for name, (t, lp, p) in SETTINGS.items():
            cells[keys, name] = Row(
                SamplingParams(temperature=t, top_p=p, logprobs=lp, logit_bias=bias)
            )
    times: dict = {k: [] for k in cells}
    for _ in range(args.rounds):
        for k, row in cells.items():
            start = time.perf_counter()
            for _ in range(30):
                sample_step(z, [row], [0.3])
            times[k].append((time.perf_counter() - start) / 30 * 1e6)
    print(f"{'keys':>7} | " + " | ".join(f"{n:>28}" for n in SETTINGS))
    for keys in args.keys:
        row = []
        for name in SETTINGS:
            us = statistics.median(times[keys, name])
            base = statistics.median(times[args.keys[0], name])
            row.append(f"{us:8.0f} us/step ({us / base:4.2f}x)")
        print(f"{keys:>7} | " + " | ".join(f"{c:>28}" for c in row))
    tok = get_tokenizer("cl100k_base")
    info = ModelInfo("m", tok, context_length=2048, end_ids=(100257,))
    for keys in args.keys:
        body = {"model": "m", "prompt": "x", "logit_bias": {str(i): 1 for i in range(keys)}}
        start = time.perf_counter()
        parse_request(body, info)
        print(f"validating {keys:>7} keys: {(time.perf_counter() - start) * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
