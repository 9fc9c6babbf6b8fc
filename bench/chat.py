"""What the chat layer costs: a chat request against the Completions request for its
rendered prompt (the same tokens, the same sampling), and the rendering alone.

    python bench/chat.py [--model tiny-random-cl100k smollm2-135m-instruct]
                         [--tokens 16] [--rounds 7]

Each round runs both requests, interleaved; medians. The request: a system and a user
message, ``max_completion_tokens`` tokens, ``temperature: 0.8``, ``top_p: 0.9``,
``logprobs`` with 5 alternatives (``top_logprobs`` in chat). The chat layer is the
validation of the messages, the template's rendering, and the chat shapes; the model and
the sampling are the same work, so the ratio should stay near 1.
"""

from __future__ import annotations

import argparse
import statistics
import time

from sampler import Engine
from sampler.chat_request import parse_chat_request

MESSAGES = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France, and why is it famous?"},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", nargs="+", default=["tiny-random-cl100k"])
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print("| model | prompt tokens | completions ms | chat ms | ratio | render + validate ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.model:
        engine = Engine.load(name)
        chat = {
            "model": engine.name,
            "messages": MESSAGES,
            "max_completion_tokens": args.tokens,
            "seed": 1,
            "temperature": 0.8,
            "top_p": 0.9,
            "logprobs": True,
            "top_logprobs": 5,
            "logit_bias": {str(i): -100 for i in engine.end_ids},  # all tokens generated
        }
        req = parse_chat_request(chat, engine.info)
        plain = {
            "prompt": req.prompts[0].text,
            "max_tokens": args.tokens,
            "seed": 1,
            "temperature": 0.8,
            "top_p": 0.9,
            "logprobs": 5,
            "logit_bias": chat["logit_bias"],
        }
        times: dict[str, list[float]] = {"completions": [], "chat": [], "parse": []}
        for _ in range(args.rounds):
            for kind, run in (
                ("completions", lambda: engine.complete(plain)),
                ("chat", lambda: engine.chat(chat)),
                ("parse", lambda: parse_chat_request(chat, engine.info)),
            ):
                t0 = time.perf_counter()
                run()
                times[kind].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(
            f"| {engine.name} | {len(req.prompts[0].tokens)} | {med['completions']:.1f} "
            f"| {med['chat']:.1f} | {med['chat'] / med['completions']:.3f} | {med['parse']:.2f} |"
        )


if __name__ == "__main__":
    main()
