"""The ``sampler`` command: a thin shell around :class:`sampler.engine.Engine`.

    sampler complete [PROMPT] [--max-tokens N] [--temperature T] ... [--json]
    sampler models

Exit codes: 0 ok, 2 bad request (the message, naming the parameter, goes to stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

__all__ = ["main"]

EXIT_OK, EXIT_BAD_REQUEST = 0, 2


def _logit_bias_item(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected ID=BIAS, got {text!r}")
    try:
        return key.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"BIAS in {text!r} is not a number") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sampler", description="OpenAI Completions semantics, run locally on the CPU."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("complete", help="complete a prompt (streams text as it is generated)")
    c.add_argument("prompt", nargs="?", help="the prompt; read from stdin when omitted")
    c.add_argument("--model", help="a known model name or a model folder (default: the default model)")
    c.add_argument("--max-tokens", type=int)
    c.add_argument("--temperature", type=float)
    c.add_argument("--top-p", type=float)
    c.add_argument("--n", type=int)
    c.add_argument("--best-of", type=int)
    c.add_argument("--logprobs", type=int)
    c.add_argument("--echo", action="store_true", default=None)
    c.add_argument("--stop", action="append", help="a stop string (repeatable, at most 4)")
    c.add_argument("--suffix")
    c.add_argument("--seed", type=int)
    c.add_argument("--presence-penalty", type=float)
    c.add_argument("--frequency-penalty", type=float)
    c.add_argument(
        "--logit-bias", action="append", type=_logit_bias_item, metavar="ID=BIAS",
        help="add BIAS to token ID's logit (repeatable)",
    )  # fmt: skip
    c.add_argument("--logprobs-mode", choices=("raw", "processed"))
    c.add_argument("--json", action="store_true", help="print the full response object")
    c.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")

    sub.add_parser("models", help="list the models this install knows")
    return parser


_FIELDS = (
    "max_tokens", "temperature", "top_p", "n", "best_of", "logprobs", "echo", "suffix",
    "seed", "presence_penalty", "frequency_penalty", "logprobs_mode",
)  # fmt: skip


def _request(args: argparse.Namespace, prompt: str) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": prompt}
    for name in _FIELDS:
        value = getattr(args, name)
        if value is not None:
            body[name] = value
    if args.stop is not None:
        body["stop"] = args.stop
    if args.logit_bias is not None:
        body["logit_bias"] = dict(args.logit_bias)
    return body


def _complete(args: argparse.Namespace) -> int:
    from .engine import Engine
    from .errors import RequestError

    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    try:
        engine = Engine.load(args.model, threads=args.threads)
    except FileNotFoundError as err:
        print(f"error: --model: {err}", file=sys.stderr)
        return EXIT_BAD_REQUEST
    body = _request(args, prompt)
    streamable = (body.get("best_of") or 0) <= (body.get("n") or 1)
    try:
        if args.json:
            json.dump(engine.complete(body), sys.stdout, indent=2, ensure_ascii=False)
            print()
        elif streamable and (body.get("n") or 1) == 1:
            for chunk in engine.complete({**body, "stream": True}):
                for choice in chunk["choices"]:
                    sys.stdout.write(choice["text"])
                    sys.stdout.flush()
            print()
        else:
            for choice in engine.complete(body)["choices"]:
                print(f"--- choice {choice['index']} ({choice['finish_reason']}) ---")
                print(choice["text"])
    except RequestError as err:
        where = f" (param: {err.param})" if err.param else ""
        print(f"error: {err.message}{where}", file=sys.stderr)
        return EXIT_BAD_REQUEST
    return EXIT_OK


def _models() -> int:
    from .registry import DEFAULT_MODEL, known_models

    for m in known_models():
        mark = "*" if m.name == DEFAULT_MODEL else " "
        state = "ready" if m.cached() else "built/fetched on first use"
        print(f"{mark} {m.name:<24} {m.description} [{state}]")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "complete":
        return _complete(args)
    return _models()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
