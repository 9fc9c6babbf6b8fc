"""§10 response objects and server-sent events."""

from __future__ import annotations

import re
import time
from typing import Any

from ..client import Failed
from ..kit import Context, check, lp
from .request import IDS, PROMPT

ID = re.compile(r"^cmpl-[A-Za-z0-9]{29}$")
CHOICE_KEYS = {"text", "index", "logprobs", "finish_reason"}


@check(
    "10",
    "OpenAI",
    "The response object: id cmpl-…, object text_completion, created (unix "
    "seconds), model as requested, choices with text/index/logprobs/finish_reason, usage "
    "with total = prompt + completion.",
    "one request, n = 2",
)
def response_shape(ctx: Context) -> str:
    body = ctx.body(prompt=PROMPT, max_tokens=3, n=2, seed=ctx.new_seed())
    r = ctx.client.ok(body).body
    problems = []
    if not str(r.get("id", "")).startswith("cmpl-"):
        problems.append(f"id {r.get('id')!r}")
    if r.get("object") != "text_completion":
        problems.append(f"object {r.get('object')!r}")
    if not isinstance(r.get("created"), int) or abs(r["created"] - time.time()) > 86400:
        problems.append(f"created {r.get('created')!r}")
    if r.get("model") != ctx.model:
        problems.append(f"model {r.get('model')!r}")
    for c in r.get("choices", []):
        if not CHOICE_KEYS <= set(c):
            problems.append(f"choice keys {sorted(c)}")
            break
    u = r.get("usage") or {}
    if not all(
        isinstance(u.get(k), int) for k in ("prompt_tokens", "completion_tokens", "total_tokens")
    ):
        problems.append(f"usage {u}")
    elif u["total_tokens"] != u["prompt_tokens"] + u["completion_tokens"]:
        problems.append(f"usage {u} does not add up")
    if problems:
        raise Failed("; ".join(problems), body)
    return f"{r['id'][:12]}…, {len(r['choices'])} choices, usage {u}"


@check("10", "OpenAI", "The id is cmpl- and 29 alphanumerics.", "one request")
def id_format(ctx: Context) -> str:
    body = ctx.body(prompt=PROMPT, max_tokens=1)
    rid = ctx.client.ok(body).body.get("id")
    if not isinstance(rid, str) or not ID.match(rid):
        raise Failed(f"id {rid!r}", body)
    return rid


@check("10", "beyond", "system_fingerprint is present and stable across requests.", "two requests")
def system_fingerprint(ctx: Context) -> str:
    body = ctx.body(prompt=PROMPT, max_tokens=1)
    a, b = (ctx.client.ok(body).body.get("system_fingerprint") for _ in range(2))
    if not isinstance(a, str) or not a or a != b:
        raise Failed(f"system_fingerprint {a!r} then {b!r}", body)
    return a


def _stream(ctx: Context, **fields: Any) -> tuple[dict[str, Any], list[Any], dict[str, str]]:
    body = ctx.body(stream=True, **fields)
    reply = ctx.client.ok(body)
    return body, reply.events, reply.headers


@check(
    "10",
    "OpenAI",
    "stream: text/event-stream, every event 'data: <json>' and a blank line, "
    "ending with data: [DONE].",
    "a stream of 4 tokens",
)
def sse_framing(ctx: Context) -> str:
    body, events, headers = _stream(ctx, prompt=PROMPT, max_tokens=4)
    kind = headers.get("content-type", "")
    if not kind.startswith("text/event-stream"):
        raise Failed(f"content-type {kind!r}", body)
    if not events or events[-1] != "[DONE]" or events.count("[DONE]") != 1:
        raise Failed(f"{len(events)} events, last {events[-1] if events else None!r}", body)
    return f"{len(events)} events, [DONE] last"


@check(
    "10",
    "OpenAI",
    "Every chunk is a full text_completion object with the same id, created "
    "and model, one choice, and finish_reason null until that choice's last chunk.",
    "a stream with n = 2, 6 tokens",
)
def stream_chunks(ctx: Context) -> str:
    body, events, _ = _stream(ctx, prompt=PROMPT, max_tokens=6, n=2, seed=ctx.new_seed())
    chunks = [e for e in events if isinstance(e, dict)]
    if not chunks:
        raise Failed("no chunks", body)
    head = {k: chunks[0].get(k) for k in ("id", "created", "model")}
    finished: set[int] = set()
    for i, ch in enumerate(chunks):
        if {k: ch.get(k) for k in head} != head or ch.get("object") != "text_completion":
            raise Failed(f"chunk {i}: {str(ch)[:160]}", body)
        cs = ch.get("choices")
        if not isinstance(cs, list) or len(cs) != 1:
            raise Failed(
                f"chunk {i} has {cs if not isinstance(cs, list) else len(cs)} choices", body
            )
        j = cs[0].get("index")
        if j in finished:
            raise Failed(f"chunk {i}: choice {j} continues after its finish_reason", body)
        if cs[0].get("finish_reason") is not None:
            finished.add(j)
    if finished != {0, 1}:
        raise Failed(f"choices that finished: {sorted(finished)}", body)
    return f"{len(chunks)} chunks, one choice each, both finished once"


@check(
    "10",
    "OpenAI",
    "include_usage: every chunk has usage null, and a last chunk before "
    "[DONE] has choices [] and the usage.",
    "a stream of 3 tokens with include_usage",
)
def include_usage(ctx: Context) -> str:
    body, events, _ = _stream(
        ctx, prompt=PROMPT, max_tokens=3, stream_options={"include_usage": True}
    )
    chunks = [e for e in events if isinstance(e, dict)]
    if (
        not chunks
        or chunks[-1].get("choices") != []
        or not isinstance(chunks[-1].get("usage"), dict)
    ):
        raise Failed(f"last chunk {str(chunks[-1] if chunks else None)[:160]}", body)
    bad = [i for i, ch in enumerate(chunks[:-1]) if "usage" not in ch or ch["usage"] is not None]
    if bad:
        raise Failed(f"chunk {bad[0]} usage {chunks[bad[0]].get('usage', 'absent')!r}", body)
    plain = ctx.complete(prompt=PROMPT, max_tokens=3)["usage"]["prompt_tokens"]
    if chunks[-1]["usage"].get("prompt_tokens") != plain:
        raise Failed(f"usage {chunks[-1]['usage']}, non-stream prompt_tokens {plain}", body)
    return f"usage {chunks[-1]['usage']}"


@check("10", "decided", "Without include_usage, chunks have no usage key.", "a stream of 3 tokens")
def no_usage_without_option(ctx: Context) -> str:
    body, events, _ = _stream(ctx, prompt=PROMPT, max_tokens=3)
    with_key = [e for e in events if isinstance(e, dict) and "usage" in e]
    if with_key:
        raise Failed(f"{len(with_key)} chunks carry usage: {with_key[0].get('usage')!r}", body)
    return "no usage key"


@check(
    "10",
    "OpenAI",
    "Stream chunks never split a UTF-8 character: at T = 0 the chunks join "
    "to the non-stream text, and no chunk shows U+FFFD that the whole text lacks.",
    "T = 0, 24 tokens after a Japanese and an emoji prompt, stream and non-stream",
)
def stream_utf8(ctx: Context) -> str:
    shown = 0
    for prompt in ("日本語の文章を書いてください。", "Emoji: 🎉🎈🎂"):
        plain = ctx.complete(prompt=prompt, max_tokens=24, temperature=0)["choices"][0]["text"]
        body, events, _ = _stream(ctx, prompt=prompt, max_tokens=24, temperature=0)
        parts = [
            c.get("text") or ""
            for e in events
            if isinstance(e, dict)
            for c in e.get("choices") or []
        ]
        if "".join(parts) != plain:
            raise Failed(f"chunks join to {''.join(parts)!r}, non-stream {plain!r}", body)
        if any("\ufffd" in p for p in parts) and "\ufffd" not in plain:
            raise Failed(
                f"a chunk shows U+FFFD: {[p for p in parts if chr(0xFFFD) in p][0]!r}", body
            )
        shown += sum(1 for ch in plain if ord(ch) > 127)
    return f"chunks join exactly; {shown} non-ASCII characters"


@check(
    "7",
    "OpenAI",
    "A stream never shows text that a stop string removes: the chunks join "
    "to the non-stream cut text and never hold the stop string.",
    "the stop_cut request, streamed",
)
def stop_stream_no_leak(ctx: Context) -> str:
    from .output import stop_case

    prompt, text, s = stop_case(ctx)
    body, events, _ = _stream(ctx, prompt=prompt, max_tokens=16, temperature=0, stop=[s])
    joined = "".join(
        c.get("text") or "" for e in events if isinstance(e, dict) for c in e.get("choices") or []
    )
    if s in joined or joined != text[: text.find(s)]:
        raise Failed(
            f"chunks join to {joined!r}; stop {s!r}, expected {text[: text.find(s)]!r}", body
        )
    return f"{joined!r}"


# Run last (last=True), so it reads every body the run received.
@check(
    "4",
    "OpenAI",
    "No NaN or Infinity ever (JSON has none; −inf is reported as −9999.0).",
    "every body received during the run, read as strict JSON, and one echo of low ids with "
    "logprobs 5",
    last=True,
)
def no_nan(ctx: Context) -> str:
    body = ctx.body(prompt=IDS, max_tokens=4, echo=True, logprobs=5, seed=ctx.new_seed())
    ctx.client.post(body)  # read as strict JSON: a NaN is recorded in not_json
    if ctx.client.not_json:
        raise Failed(
            f"{len(ctx.client.not_json)} bodies not JSON; first: {ctx.client.not_json[0]}", body
        )
    o = lp(ctx.client.ok(body).body["choices"][0])
    low = [v for v in o["token_logprobs"] if v is not None and v < -9999.0]
    if low:
        raise Failed(f"a logprob below -9999.0: {low[0]}", body)
    return f"{ctx.client.sent} responses, none with NaN or Infinity"
