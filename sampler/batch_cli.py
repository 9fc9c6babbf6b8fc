"""``sampler batch``: an OpenAI Batch API file run locally, or spread over Ray Data.

The work is :mod:`sampler.batch_file`'s (one engine) and :mod:`sampler.batch_ray`'s (Ray
actors); this module reads the flags and reports.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from .cli import EXIT_BAD_REQUEST, EXIT_FAILED, EXIT_OK

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
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


def run(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> int:
    """Run the file on one local engine (``load``: the CLI's), or on Ray Data."""
    if not os.path.isfile(args.input):
        print(f"error: {args.input}: no such file", file=sys.stderr)
        return EXIT_FAILED
    if args.workers is not None and args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return EXIT_BAD_REQUEST
    if args.ray is not None or (args.workers or 1) > 1:
        return _ray(args)
    from .batch_file import run_batch

    engine = load(args)
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


def _ray(args: argparse.Namespace) -> int:
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
