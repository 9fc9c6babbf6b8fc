"""The ``sampler`` command: a thin shell around :class:`sampler.engine.Engine`.

    sampler complete [PROMPT] [--model NAME|DIR] [--max-tokens N] [--temperature T] ... [--json]
    sampler models
    sampler pull NAME
    sampler batch INPUT.jsonl -o OUTPUT.jsonl [--errors FILE] [--resume] [--model M]
                           [--ray [ADDRESS]] [--workers N]
    sampler conformance BASE_URL --model ID [--profile openai|strict] [--only SECTION ...]
    sampler convert PATH.gguf [--out DIR] [--weights float32|float16|int4] [--name NAME]
                           [--attention gqa|exact|fast]

The default model is ``$SAMPLER_MODEL`` or ``smollm2-135m-instruct``, fetched and converted
on first use (said on stderr). Exit codes: 0 ok, 1 a pull or conversion failed, 2 bad request
(the message, naming the parameter, goes to stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any, cast

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_BAD_REQUEST = 0, 1, 2


def _logit_bias_item(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected ID=BIAS, got {text!r}")
    try:
        return key.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"BIAS in {text!r} is not a number") from None


def add_sampling_flags(c: argparse.ArgumentParser) -> None:
    """The flags ``complete`` and ``chat`` share: the model and the sampling fields."""
    c.add_argument(
        "--model",
        help="a known model name or a model folder (default: "
        "$SAMPLER_MODEL or smollm2-135m-instruct)",
    )
    c.add_argument("--max-tokens", type=int)
    c.add_argument("--temperature", type=float)
    c.add_argument("--top-p", type=float)
    c.add_argument("--n", type=int)
    c.add_argument("--stop", action="append", help="a stop string (repeatable, at most 4)")
    c.add_argument("--seed", type=int)
    c.add_argument("--presence-penalty", type=float)
    c.add_argument("--frequency-penalty", type=float)
    c.add_argument(
        "--logit-bias",
        action="append",
        type=_logit_bias_item,
        metavar="ID=BIAS",
        help="add BIAS to token ID's logit (repeatable)",
    )
    c.add_argument("--logprobs-mode", choices=("raw", "processed"))
    c.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")


def _parser() -> argparse.ArgumentParser:
    from . import batch_cli, model_cli  # (each command's flags, next to its code)

    parser = argparse.ArgumentParser(
        prog="sampler", description="OpenAI Completions semantics, run locally on the CPU."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("complete", help="complete a prompt (streams text as it is generated)")
    c.add_argument("prompt", nargs="?", help="the prompt; read from stdin when omitted")
    add_sampling_flags(c)
    c.add_argument("--best-of", type=int)
    c.add_argument("--logprobs", type=int)
    c.add_argument("--echo", action="store_true", default=None)
    c.add_argument("--suffix")
    c.add_argument(
        "--sampling-trace",
        type=int,
        metavar="K",
        help="with --json: each token's distribution after each step, top K ids (extension)",
    )
    c.add_argument("--json", action="store_true", help="print the full response object")

    from .chat_cli import add_parser as add_chat

    add_chat(sub, add_sampling_flags)
    model_cli.add_parsers(sub)

    s = sub.add_parser("serve", help="serve the OpenAI Completions API over HTTP")
    s.add_argument(
        "--model", action="append", help="a model to serve (repeatable; default: the default model)"
    )
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    s.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    s.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 routes")
    s.add_argument(
        "--max-batch",
        type=int,
        default=64,
        help="sequences decoded together at most (default %(default)s)",
    )
    s.add_argument(
        "--max-queue",
        type=int,
        default=256,
        help="requests waiting for a place before 429 (default %(default)s)",
    )
    s.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    s.add_argument(
        "--batch-dir",
        help="where /v1/files and /v1/batches keep their state (default $SAMPLER_HOME/batches)",
    )
    s.add_argument(
        "--max-upload-mb",
        type=int,
        default=200,
        help="the largest file /v1/files accepts, in MiB (default %(default)s)",
    )

    batch_cli.add_parser(sub)
    from .conformance.command import add_parser  # argparse only (httpx loads when run)

    add_parser(sub)
    return parser


_FIELDS = (
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "best_of",
    "logprobs",
    "echo",
    "suffix",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logprobs_mode",
    "sampling_trace",
)


def _request(args: argparse.Namespace, prompt: str) -> dict[str, Any]:
    return {"prompt": prompt, **sampling_fields(args, _FIELDS)}


def sampling_fields(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The request fields the flags set (``names``, then ``stop`` and ``logit_bias``)."""
    body: dict[str, Any] = {}
    for name in names:
        value = getattr(args, name)
        if value is not None:
            body[name] = value
    if args.stop is not None:
        body["stop"] = args.stop
    if args.logit_bias is not None:
        body["logit_bias"] = dict(args.logit_bias)
    return body


def _load(args: argparse.Namespace) -> Any:
    """The engine ``--model`` names (``--threads`` ORT threads), or the exit status after
    saying on stderr why it could not be loaded."""
    from .engine import Engine
    from .pull import PullError
    from .registry import default_model

    try:
        return Engine.load(args.model or default_model(), threads=args.threads)
    except FileNotFoundError as err:
        print(f"error: --model: {err}", file=sys.stderr)
        return EXIT_BAD_REQUEST
    except PullError as err:
        print(
            f"error: {err}\n(try `--model tiny-random-cl100k`, which needs no download)",
            file=sys.stderr,
        )
        return EXIT_FAILED


def _complete(args: argparse.Namespace) -> int:
    from .errors import RequestError

    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    engine = _load(args)
    if isinstance(engine, int):
        return engine
    body = _request(args, prompt)
    streamable = (body.get("best_of") or 0) <= (body.get("n") or 1)
    try:
        if args.json:
            json.dump(engine.complete(body), sys.stdout, indent=2, ensure_ascii=False)
            print()
        elif streamable and (body.get("n") or 1) == 1:
            for chunk in cast(Iterator[dict], engine.complete({**body, "stream": True})):
                for choice in chunk["choices"]:
                    sys.stdout.write(choice["text"])
                    sys.stdout.flush()
            print()
        else:
            for choice in cast(dict, engine.complete(body))["choices"]:
                print(f"--- choice {choice['index']} ({choice['finish_reason']}) ---")
                print(choice["text"])
    except RequestError as err:
        where = f" (param: {err.param})" if err.param else ""
        print(f"error: {err.message}{where}", file=sys.stderr)
        return EXIT_BAD_REQUEST
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    try:
        from .server import ServerConfig, serve
    except ImportError as err:
        print(
            f"error: the server needs the 'server' extra ({err}); pip install 'refsampler[server]'",
            file=sys.stderr,
        )
        return EXIT_FAILED
    from .batch_store import FolderBusy, held
    from .registry import cache_dir, default_model

    default = str(cache_dir() / "batches")
    batch_dir: str | None = args.batch_dir or default
    if args.batch_dir is None and held(default):  # a second server at the defaults
        print(
            f"warning: another server runs the Batch API in {default}; this one serves "
            "without /v1/files and /v1/batches (give it its own --batch-dir for them)",
            file=sys.stderr,
        )
        batch_dir = None
    config = ServerConfig(
        api_key=args.api_key,
        max_sequences=args.max_batch,
        max_waiting=args.max_queue,
        batch_dir=batch_dir,
        max_upload_bytes=args.max_upload_mb * 2**20,
    )
    try:
        serve(
            args.model or [default_model()],
            host=args.host,
            port=args.port,
            threads=args.threads,
            config=config,
        )
    except FileNotFoundError as err:
        print(f"error: --model: {err}", file=sys.stderr)
        return EXIT_BAD_REQUEST
    except FolderBusy as err:  # another server holds --batch-dir
        print(f"error: --batch-dir: {err}", file=sys.stderr)
        return EXIT_BAD_REQUEST
    return EXIT_OK


def _conformance(args: argparse.Namespace) -> int:
    from .conformance.command import main as conformance

    return conformance(args)


def _chat(args: argparse.Namespace) -> int:
    from .chat_cli import run

    engine = _load(args)
    return engine if isinstance(engine, int) else run(engine, args)


def main(argv: Sequence[str] | None = None) -> int:
    from . import batch_cli, model_cli

    args = _parser().parse_args(argv)
    commands = {
        "complete": _complete,
        "pull": model_cli.pull,
        "convert": model_cli.convert,
        "serve": _serve,
        "batch": lambda args: batch_cli.run(args, _load),
        "conformance": _conformance,
        "chat": _chat,
    }
    if args.command in commands:
        return commands[args.command](args)
    return model_cli.models()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
