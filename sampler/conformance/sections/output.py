"""§6 seed, §7 stop, §8 suffix and §9 n / best_of: what ends up in the choices."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..client import Failed
from ..kit import Context, check, lp
from .request import PROMPT, names, refused
from .steps import PROMPTS, best_prompt


def _key(c: dict[str, Any]) -> tuple:
    o = c.get("logprobs") or {}
    return (
        c.get("text"),
        c.get("finish_reason"),
        tuple(o.get("tokens") or ()),
        tuple(o.get("token_logprobs") or ()),
    )


def _seeded(ctx: Context, **fields: Any) -> dict[str, Any]:
    return ctx.body(prompt=PROMPTS[1], max_tokens=8, logprobs=1, seed=ctx.new_seed(), **fields)


def _n_of(ctx: Context, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The choices of ``body``, which must be ``n`` of them (else the check proves nothing)."""
    got = ctx.client.ok(body).body["choices"]
    if len(got) != body.get("n", 1):
        raise Failed(f"{len(got)} choices for n = {body.get('n', 1)}", body)
    return got


# --- §6 seed ---------------------------------------------------------------------------------
@check(
    "6",
    "OpenAI",
    "The same request with the same seed gives the same choices.",
    "T = 1, 8 tokens, logprobs 1, sent twice",
)
def same_seed_same_output(ctx: Context) -> str:
    body = _seeded(ctx, n=1)
    a, b = (_n_of(ctx, body) for _ in range(2))
    if [_key(c) for c in a] != [_key(c) for c in b]:
        raise Failed(f"texts {[c['text'] for c in a]} then {[c['text'] for c in b]}", body)
    return f"identical twice: {[c['text'] for c in a]}"


@check(
    "6",
    "beyond",
    "A seeded request's choices do not depend on what else is in the batch.",
    "the request alone, then 6 copies sent at once among 6 other requests",
)
def seed_under_load(ctx: Context) -> str:
    body = _seeded(ctx, n=1)
    alone = [_key(c) for c in _n_of(ctx, body)]
    others = [ctx.body(prompt=p, max_tokens=12, n=3, seed=i) for i, p in enumerate(PROMPTS[:6])]
    mix = [body, *others[:3], body, body, *others[3:], body, body, body]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(ctx.client.ok, mix))
    for r, b in zip(got, mix):
        if b is body and [_key(c) for c in r.body["choices"]] != alone:
            raise Failed(
                f"alone {[k[0] for k in alone]}, under load "
                f"{[c['text'] for c in r.body['choices']]}",
                body,
            )
    return "6 copies under load identical to the request alone"


@check(
    "6",
    "beyond",
    "Choice k of a seeded request does not change when n grows.",
    "the same seed with n = 2 and n = 4: the first two choices",
)
def seed_n_growth(ctx: Context) -> str:
    body = _seeded(ctx, n=2)
    two = [_key(c) for c in _n_of(ctx, body)]
    four = [_key(c) for c in _n_of(ctx, {**body, "n": 4})]
    if four[:2] != two:
        raise Failed(f"n=2 {[k[0] for k in two]}, n=4 {[k[0] for k in four[:2]]}", body)
    return "first two choices unchanged"


@check(
    "6",
    "beyond",
    "A seeded stream carries exactly the non-stream choices: per choice, the "
    "chunks' texts and logprobs arrays concatenate to the non-stream ones.",
    "T = 1, n = 2, 8 tokens, logprobs 1, with and without stream",
)
def stream_equals_nonstream(ctx: Context) -> str:
    body = _seeded(ctx, n=2)
    plain = _n_of(ctx, body)
    joined: dict[int, dict[str, Any]] = {}
    for ev in ctx.stream(**{k: v for k, v in body.items() if k != "model"}):
        if not isinstance(ev, dict):
            continue
        for c in ev.get("choices") or []:
            j = joined.setdefault(
                c["index"],
                {
                    "text": "",
                    "finish_reason": None,
                    "logprobs": {"tokens": [], "token_logprobs": []},
                },
            )
            j["text"] += c.get("text") or ""
            j["finish_reason"] = c.get("finish_reason") or j["finish_reason"]
            for k in ("tokens", "token_logprobs"):
                j["logprobs"][k] += (c.get("logprobs") or {}).get(k) or []
    for c in plain:
        if _key(c) != _key(joined.get(c["index"], {})):
            raise Failed(
                f"choice {c['index']}: {c['text']!r} plain, "
                f"{joined.get(c['index'], {}).get('text')!r} streamed",
                body,
            )
    return f"{len(plain)} choices equal in stream and non-stream"


@check(
    "6",
    "OpenAI",
    "n > 1 choices are independent draws: at T = 1 they are not all the same.",
    "n = 16, 4 tokens, on a prompt whose top first token has p ≤ 0.5 (all identical by "
    "chance: ≤ 0.5^15 ≈ 3e-5)",
)
def n_choices_differ(ctx: Context) -> str:
    prompt, top, _ = best_prompt(ctx, lambda p: (1 - p[0],) if p[0] <= 0.5 else None)
    body = ctx.body(prompt=prompt, max_tokens=4, n=16, seed=ctx.new_seed())
    got = [c["text"] for c in ctx.client.ok(body).body["choices"]]
    if len(got) != 16:
        raise Failed(f"{len(got)} choices for n = 16", body)
    if len(set(got)) == 1:
        raise Failed(f"16 identical choices {got[0]!r} (top p {math.exp(top[0][1]):.2f})", body)
    return f"{len(set(got))} distinct texts of 16"


# --- §7 stop ---------------------------------------------------------------------------------
def stop_case(ctx: Context) -> tuple[str, str, str]:
    """(prompt, greedy text, a stop string spanning two of its tokens), memoised."""

    def find() -> tuple[str, str, str]:
        for prompt in PROMPTS:
            body = ctx.body(prompt=prompt, max_tokens=16, temperature=0, logprobs=0)
            try:
                c = ctx.client.ok(body).body
                toks, text = lp(c["choices"][0])["tokens"], c["choices"][0]["text"]
            except Failed:  # no usable logprobs: two characters of the text, boundary unknown
                text = ctx.complete(prompt=prompt, max_tokens=16, temperature=0)["choices"][0]
                text, toks = text["text"], []
                for k in range(2, len(text) - 2):
                    s = text[k : k + 2]
                    if s.strip() and text.find(s) == k:
                        return prompt, text, s
                continue
            for k in range(1, len(toks) - 1):
                a, b = toks[k], toks[k + 1]
                if a and b and not a.startswith("bytes:") and not b.startswith("bytes:"):
                    s = a[-1] + b[0]
                    if text.find(s) > 0 and s.strip():
                        return prompt, text, s
        raise Failed("no greedy continuation offered a stop string across two tokens")

    return ctx.memo("stop_case", find)


@check(
    "7",
    "OpenAI",
    "A stop string ends the text before it, across token boundaries; it "
    "never appears in the text; finish_reason is stop.",
    "a greedy continuation, then the same request with a stop string made of the last "
    "character of one token and the first of the next",
)
def stop_cut(ctx: Context) -> str:
    prompt, text, s = stop_case(ctx)
    body = ctx.body(prompt=prompt, max_tokens=16, temperature=0, stop=[s])
    c = ctx.client.ok(body).body["choices"][0]
    want = text[: text.find(s)]
    if c["text"] != want or c.get("finish_reason") != "stop":
        raise Failed(
            f"text {c['text']!r} ({c.get('finish_reason')}), expected {want!r} (stop)", body
        )
    return f"stop {s!r}: {want!r}, finish_reason stop"


@check(
    "7",
    "decided",
    "After a stop cut the logprobs arrays keep exactly the tokens that start before the cut.",
    "the stop_cut request with logprobs 0: entries against text_offset",
)
def stop_logprobs_cut(ctx: Context) -> str:
    prompt, text, s = stop_case(ctx)
    full = lp(ctx.complete(prompt=prompt, max_tokens=16, temperature=0, logprobs=0)["choices"][0])[
        "text_offset"
    ]
    body = ctx.body(prompt=prompt, max_tokens=16, temperature=0, logprobs=0, stop=[s])
    o = lp(ctx.client.ok(body).body["choices"][0])
    cut = len(prompt) + text.find(s)
    want = sum(1 for off in full if off < cut)
    if len(o["tokens"]) != want or any(
        len(o[k]) != want for k in ("token_logprobs", "text_offset")
    ):
        raise Failed(f"{len(o['tokens'])} entries kept, {want} tokens start before the cut", body)
    return f"{want} entries kept of {len(full)}"


@check(
    "7",
    "OpenAI",
    "max_tokens reached → finish_reason length, completion_tokens = max_tokens.",
    "3 tokens, T = 0, on prompts until one does not end early",
)
def max_tokens_length(ctx: Context) -> str:
    for prompt in PROMPTS:
        body = ctx.body(prompt=prompt, max_tokens=3, temperature=0)
        resp = ctx.client.ok(body).body
        if resp["choices"][0].get("finish_reason") == "stop":
            continue  # the end token came first
        if resp["choices"][0].get("finish_reason") != "length":
            raise Failed(f"finish_reason {resp['choices'][0].get('finish_reason')!r}", body)
        if resp["usage"]["completion_tokens"] != 3:
            raise Failed(f"completion_tokens {resp['usage']['completion_tokens']}", body)
        return "finish_reason length, completion_tokens 3"
    raise Failed("every prompt ended in its first 3 tokens")


@check("7", "OpenAI", "At most 4 stop strings: 5 → 400 naming stop.", "stop with 5 strings")
def at_most_four_stops(ctx: Context) -> str:
    body = ctx.body(prompt=PROMPT, max_tokens=1, stop=["a", "b", "c", "d", "e"])
    names(refused(ctx, body), "stop", body)
    return "400 naming stop"


# --- §8 suffix -------------------------------------------------------------------------------
@check(
    "8",
    "decided",
    "suffix inserts (the text is the middle only) with a FIM model; without "
    "FIM tokens it is a 400 naming suffix, never ignored.",
    "a suffix on a short prompt",
)
def suffix_insertion(ctx: Context) -> str:
    body = ctx.body(
        prompt="def add(a, b):\n    ", suffix="\n\nprint(add(1, 2))\n", max_tokens=8, temperature=0
    )
    reply = ctx.client.post(body)
    if reply.status == 400:
        names(refused(ctx, body), "suffix", body)
        return "refused, naming suffix (no FIM tokens)"
    c = ctx.client.ok(body).body["choices"][0]
    if c["text"].endswith(body["suffix"]) or c["text"].startswith(body["prompt"]):
        raise Failed(f"text {c['text']!r} holds the prompt or suffix", body)
    return f"middle {c['text']!r}"


@check("8", "decided", "echo with suffix → 400 naming suffix.", "echo and a suffix")
def suffix_with_echo(ctx: Context) -> str:
    body = ctx.body(prompt="def f(", suffix="):\n", echo=True, max_tokens=2)
    names(refused(ctx, body), "suffix", body)
    return "400 naming suffix"
