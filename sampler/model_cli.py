"""``sampler models``, ``sampler pull`` and ``sampler convert``: the models this install
knows, fetching one ahead of first use, and turning a GGUF file into a model folder.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .cli import EXIT_BAD_REQUEST, EXIT_FAILED, EXIT_OK

__all__ = ["add_parsers", "models", "pull", "convert"]


def add_parsers(sub: Any) -> None:
    from .onnx_llama import ATTENTIONS  # NumPy only (onnx loads when a graph is built)

    sub.add_parser("models", help="list the models this install knows")

    p = sub.add_parser("pull", help="fetch and convert a known model now (else: on first use)")
    p.add_argument("name", help="a known model name (see `sampler models`)")

    v = sub.add_parser("convert", help="convert a Llama, Qwen2 or Qwen3 GGUF into a model folder")
    v.add_argument("gguf", metavar="PATH.gguf", help="a llama, qwen2, qwen3 or gemma3 GGUF file")
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


def models() -> int:
    from .registry import default_model, known_models

    default = default_model()
    for m in known_models():
        mark = "*" if m.name == default else " "
        state = "ready" if m.cached() else m.first_use
        print(f"{mark} {m.name:<24} {m.description} [{state}]")
    return EXIT_OK


def pull(args: argparse.Namespace) -> int:
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


def convert(args: argparse.Namespace) -> int:
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
