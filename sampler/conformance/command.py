"""``sampler conformance BASE_URL --model ID``: the kit from the command line.

Exit status: 0 when every check that ran passed, 1 otherwise (or when the server cannot be
reached), 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_parser", "main"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    k = sub.add_parser(
        "conformance",
        help="check any OpenAI-compatible Completions server against the contract",
        description="Send a bounded set of short requests to BASE_URL and check each rule of "
        "the Completions contract from outside (HTTP only).",
    )
    k.add_argument(
        "base_url",
        metavar="BASE_URL",
        help="as the openai SDK's base_url, e.g. http://127.0.0.1:8000/v1",
    )
    k.add_argument("--model", required=True, help="the model id to send")
    k.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY'")
    k.add_argument(
        "--profile",
        choices=("openai", "strict"),
        default="openai",
        help="openai: OpenAI's behaviour (default); strict: also refsampler's "
        "[decided] and [beyond] guarantees",
    )
    k.add_argument(
        "--only",
        nargs="+",
        metavar="SECTION",
        help="spec sections to check (1 … 10), e.g. --only 3 4",
    )
    k.add_argument("--json", metavar="FILE", help="write the results as JSON")
    k.add_argument("--markdown", metavar="FILE", help="write the results as a Markdown table")
    k.add_argument("--seed", type=int, default=0, help="makes the run reproducible (default 0)")
    k.add_argument(
        "--timeout", type=float, default=120.0, help="seconds per request (default %(default)s)"
    )


def main(args: argparse.Namespace) -> int:
    try:
        import httpx  # noqa: F401
    except ImportError:
        print(
            "error: the conformance kit needs httpx: pip install 'refsampler[conformance]'",
            file=sys.stderr,
        )
        return 1
    from .kit import run

    sections = {str(s) for s in range(1, 11)}
    bad = [s for s in args.only or () if s not in sections]
    if bad:
        print(f"error: --only: no spec section {bad[0]!r} (sections are 1 … 10)", file=sys.stderr)
        return 2
    report = run(
        args.base_url,
        args.model,
        api_key=args.api_key,
        profile=args.profile,
        only=args.only,
        seed=args.seed,
        progress=sys.stderr.isatty(),
        timeout=args.timeout,
    )
    if isinstance(report.server.get("models"), str) and "connection" in report.server["models"]:
        print(f"error: cannot reach {args.base_url}: {report.server['models']}", file=sys.stderr)
        return 1
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    if args.markdown:
        Path(args.markdown).write_text(report.markdown())
    return 0 if report.ok else 1
