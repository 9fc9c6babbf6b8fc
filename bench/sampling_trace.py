"""What the ``sampling_trace`` extension (the playground's data) costs a request.

    python bench/sampling_trace.py [--model tiny-random-cl100k smollm2-135m-instruct]
                                   [--tokens 32] [--rounds 5]

One request of ``--tokens`` tokens with ``logprobs: 5``, ``temperature: 0.8``,
``top_p: 0.9`` and ``presence_penalty: 0.5``, with and without ``sampling_trace: 8``:
medians of interleaved rounds, milliseconds per token, and the ratio. The trace runs on
the scheduler's thread, so in a shared batch this is also what it adds to every other
sequence's step.
"""

from __future__ import annotations

import argparse
import statistics
import time

from sampler import Engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", nargs="+", default=["tiny-random-cl100k"])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print("| model | vocab | ms/token | with sampling_trace: 8 | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name in args.model:
        engine = Engine.load(name)
        body = {
            "prompt": "The capital of France is",
            "max_tokens": args.tokens,
            "seed": 1,
            "logprobs": 5,
            "temperature": 0.8,
            "top_p": 0.9,
            "presence_penalty": 0.5,
        }
        engine.complete(body, sampling_trace=8)  # warm up
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for traced in (False, True):
                extra = {"sampling_trace": 8} if traced else {}
                start = time.perf_counter()
                resp = engine.complete(body, **extra)
                tokens = resp["usage"]["completion_tokens"]
                times[traced].append((time.perf_counter() - start) * 1000 / tokens)
        plain, traced = (statistics.median(times[t]) for t in (False, True))
        print(
            f"| {name} | {engine.vocab_size:,} | {plain:.2f} | {traced:.2f} "
            f"| {traced / plain:.2f}x |"
        )


if __name__ == "__main__":
    main()
