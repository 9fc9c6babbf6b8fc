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
import os
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
    from .onnx_llama import ATTENTIONS  # NumPy only (onnx loads when a graph is built)

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

    sub.add_parser("models", help="list the models this install knows")

    p = sub.add_parser("pull", help="fetch and convert a known model now (else: on first use)")
    p.add_argument("name", help="a known model name (see `sampler models`)")

    v = sub.add_parser("convert", help="convert a Llama, Qwen2 or Qwen3 GGUF into a model folder")
    v.add_argument("gguf", metavar="PATH.gguf", help="a llama, qwen2 or qwen3 GGUF file")
    v.add_argument("--out", help="the model folder to create (default: PATH without .gguf)")
    v.add_argument(
        "--weights",
        choices=("float32", "float16", "int4"),
        default="float32",
        help="how the ONNX file stores the weights (compute is float32 either way; "
        "int4 keeps Q4_0/Q4_1 matrices as 4-bit blocks for ONNX Runtime's "
        "MatMulNBits)",
    )
    v.add_argument("--name", help="the model id in responses (default: the folder's name)")
    v.add_argument(
        "--attention",
        choices=ATTENTIONS,
        help="gqa (the default when the head size is a multiple of 8, else "
        "exact): ONNX Runtime's GroupQueryAttention with the KV cache updated "
        "in place; exact/fast: the Hugging Face/Optimum cache I/O (past and "
        "new keys concatenated every step), attention sums in float64/float32",
    )

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

    b = sub.add_parser(
        "batch", help="run an OpenAI Batch API file of /v1/completions requests (JSONL)"
    )
    b.add_argument("input", metavar="INPUT.jsonl")
    b.add_argument("-o", "--output", required=True, metavar="OUTPUT.jsonl")
    b.add_argument(
        "--errors",
        metavar="ERRORS.jsonl",
        help="lines that are not requests go here (default: the output)",
    )
    b.add_argument(
        "--resume", action="store_true", help="keep what OUTPUT already holds and run only the rest"
    )
    b.add_argument("--model", help="the model (default: $SAMPLER_MODEL or smollm2-135m-instruct)")
    b.add_argument(
        "--max-batch",
        type=int,
        default=128,
        help="sequences decoded together at most (default %(default)s)",
    )
    b.add_argument(
        "--threads", type=int, default=1, help="ONNX Runtime threads per worker (default 1)"
    )
    b.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run on Ray Data: a local cluster, or the one at ADDRESS ('auto', ray://host:10001)",
    )
    b.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="engines (Ray actors) to spread the lines over; N > 1 implies --ray "
        "(default: 1 locally, the cluster's CPUs / --threads on Ray)",
    )

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


def _models() -> int:
    from .registry import default_model, known_models

    default = default_model()
    for m in known_models():
        mark = "*" if m.name == default else " "
        state = "ready" if m.cached() else m.first_use
        print(f"{mark} {m.name:<24} {m.description} [{state}]")
    return EXIT_OK


def _pull(args: argparse.Namespace) -> int:
    from .pull import PullError
    from .registry import pull

    try:
        folder = pull(args.name)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_REQUEST
    except PullError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(folder)
    return EXIT_OK


def _convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .convert import convert_gguf

    src = Path(args.gguf)
    out = Path(args.out) if args.out else src.with_suffix("")
    if out == src:
        out = src.with_name(src.name + ".model")
    if not src.is_file():
        print(f"error: {src}: no such file", file=sys.stderr)
        return EXIT_FAILED
    try:
        folder = convert_gguf(
            src,
            out,
            name=args.name,
            weight_dtype=args.weights,
            attention=args.attention,
            progress=sys.stderr.isatty(),
            log=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(folder)
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


def _batch(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.input):
        print(f"error: {args.input}: no such file", file=sys.stderr)
        return EXIT_FAILED
    if args.workers is not None and args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return EXIT_BAD_REQUEST
    if args.ray is not None or (args.workers or 1) > 1:
        return _batch_ray(args)
    from .batch_file import run_batch

    engine = _load(args)
    if isinstance(engine, int):
        return engine
    summary = run_batch(
        engine,
        args.input,
        args.output,
        errors_path=args.errors,
        resume=args.resume,
        progress=sys.stderr.isatty(),
        max_sequences=args.max_batch,
    )
    print(summary.line(), file=sys.stderr)
    return EXIT_OK


def _batch_ray(args: argparse.Namespace) -> int:
    from .batch_ray import RayMissing, run_batch_ray
    from .pull import PullError
    from .registry import default_model, resolve

    model = args.model or default_model()
    address = args.ray or None
    if address is None and "RAY_ADDRESS" not in os.environ:
        try:  # a local cluster: fetch and convert once here, not in every worker
            model = str(resolve(model))
        except (FileNotFoundError, PullError) as err:
            print(f"error: --model: {err}", file=sys.stderr)
            return EXIT_BAD_REQUEST if isinstance(err, FileNotFoundError) else EXIT_FAILED
    try:
        summary = run_batch_ray(
            model,
            args.input,
            args.output,
            address=address,
            workers=args.workers,
            threads=args.threads,
            errors_path=args.errors,
            resume=args.resume,
            progress=sys.stderr.isatty(),
            max_sequences=args.max_batch,
        )
    except RayMissing as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_REQUEST
    print(summary.line(), file=sys.stderr)
    return EXIT_OK


def _conformance(args: argparse.Namespace) -> int:
    from .conformance.command import main as conformance

    return conformance(args)


def _chat(args: argparse.Namespace) -> int:
    from .chat_cli import run

    engine = _load(args)
    return engine if isinstance(engine, int) else run(engine, args)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {
        "complete": _complete,
        "pull": _pull,
        "convert": _convert,
        "serve": _serve,
        "batch": _batch,
        "conformance": _conformance,
        "chat": _chat,
    }
    if args.command in commands:
        return commands[args.command](args)
    return _models()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
