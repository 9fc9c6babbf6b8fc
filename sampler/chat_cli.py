"""``sampler chat``: talk to the model through its chat template, in the terminal.

    sampler chat                       # a conversation: one line per turn, replies streamed
    sampler chat "Hi" --json           # one message, the whole chat.completion object
    echo "Hi" | sampler chat --seed 1  # each line of stdin is a turn

The flags are ``sampler complete``'s sampling flags (``--logprobs K`` asks for K
alternatives per token, ``top_logprobs``); ``--system`` starts the conversation with a
system message. In a conversation each reply joins the history the next turn is rendered
from; ``/reset`` forgets it, ``/exit`` (or end of input) ends. A turn the server would
refuse prints its error and the conversation goes on.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO, cast

__all__ = ["add_parser", "run"]

_FIELDS = (
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logprobs_mode",
)


def add_parser(sub: Any, add_sampling_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    c = sub.add_parser(
        "chat", help="chat with the model through its chat template (streams the replies)"
    )
    c.add_argument("message", nargs="?", help="one message (else: a conversation on stdin)")
    c.add_argument("--system", help="a system message to start the conversation with")
    add_sampling_flags(c)
    c.add_argument(
        "--logprobs", type=int, metavar="K", help="report K alternatives per token (with --json)"
    )
    c.add_argument("--json", action="store_true", help="print the whole response object")


def run(engine: Any, args: argparse.Namespace, stdin: TextIO | None = None) -> int:
    from .cli import EXIT_BAD_REQUEST, EXIT_OK, sampling_fields
    from .errors import RequestError

    stdin = stdin or sys.stdin
    fields = sampling_fields(args, _FIELDS)
    if args.logprobs is not None:
        fields.update(logprobs=True, top_logprobs=args.logprobs)
    history = [{"role": "system", "content": args.system}] if args.system else []
    one = args.message is not None or args.json
    if one:
        message = args.message if args.message is not None else stdin.read()
        turns: Iterator[str] = iter([message])
    else:
        turns = _lines(stdin)
    status = EXIT_OK
    for text in turns:
        if not one and text.strip() in ("/exit", "/quit"):
            break
        if not one and text.strip() == "/reset":
            history = history[:1] if args.system else []
            print("(history cleared)", file=sys.stderr)
            continue
        body = {**fields, "messages": [*history, {"role": "user", "content": text}]}
        try:
            reply = _turn(engine, body, args.json)
        except RequestError as err:
            where = f" (param: {err.param})" if err.param else ""
            print(f"error: {err.message}{where}", file=sys.stderr)
            status = EXIT_BAD_REQUEST
            if one:
                return status
            continue
        history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
    return status


def _lines(stdin: TextIO) -> Iterator[str]:
    while True:
        if stdin.isatty():
            print("you> ", end="", file=sys.stderr, flush=True)
        line = stdin.readline()
        if not line:
            return
        if line.strip():
            yield line.rstrip("\n")


def _turn(engine: Any, body: dict[str, Any], whole: bool) -> str:
    """Answer one turn on stdout; returns the reply kept in the history (choice 0)."""
    if whole:
        response = cast(dict, engine.chat(body))
        json.dump(response, sys.stdout, indent=2, ensure_ascii=False)
        print()
        return response["choices"][0]["message"]["content"]
    if (body.get("n") or 1) > 1:
        choices = cast(dict, engine.chat(body))["choices"]
        for choice in choices:
            print(f"--- choice {choice['index']} ({choice['finish_reason']}) ---")
            print(choice["message"]["content"])
        return choices[0]["message"]["content"]
    reply = ""
    for chunk in cast(Iterator[dict], engine.chat({**body, "stream": True})):
        for choice in chunk["choices"]:
            piece = choice["delta"].get("content") or ""
            reply += piece
            sys.stdout.write(piece)
            sys.stdout.flush()
    print()
    return reply
