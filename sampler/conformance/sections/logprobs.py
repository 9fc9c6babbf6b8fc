"""§4 logprobs: the arrays' shape and order, raw values, offsets and the bytes: form."""

from __future__ import annotations

import json
import re

from ..client import Failed
from ..kit import Context, check, logsumexp, lp
from .request import IDS, PROMPT
from .steps import PROMPTS

BYTES = re.compile(r"^bytes:(\\x[0-9a-f]{2})+$")


def _sample(ctx: Context, k: int) -> tuple[dict, list[dict]]:
    body = ctx.body(prompt=PROMPTS[:2], max_tokens=8, logprobs=k, n=2, seed=ctx.new_seed())
    return body, [lp(c) for c in ctx.client.ok(body).body["choices"]]


@check(
    "4",
    "OpenAI",
    "tokens, token_logprobs, top_logprobs and text_offset have one entry per token.",
    "2 prompts × n = 2, 8 tokens, logprobs 3",
)
def array_lengths(ctx: Context) -> str:
    body, objs = _sample(ctx, 3)
    for i, o in enumerate(objs):
        sizes = {k: len(o[k]) for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}
        if len(set(sizes.values())) != 1:
            raise Failed(f"choice {i}: lengths {sizes}", body)
    return f"{len(objs)} choices, arrays of equal length"


@check(
    "4",
    "OpenAI",
    "top_logprobs holds at most k + 1 entries (the k most likely, plus the "
    "chosen token when it is not among them), most probable first, the chosen one included.",
    "2 prompts × n = 2, 8 tokens, logprobs 3",
)
def top_logprobs_order(ctx: Context) -> str:
    body, objs = _sample(ctx, 3)
    n = 0
    for o in objs:
        for i, (tok, top) in enumerate(zip(o["tokens"], o["top_logprobs"])):
            vals = list(top.values())
            if len(vals) > 4 or vals != sorted(vals, reverse=True):
                raise Failed(f"step {i}: {json.dumps(top)[:160]}", body)
            if tok not in top:
                raise Failed(f"step {i}: chosen {tok!r} not in {list(top)}", body)
            n += 1
    return f"{n} entries, ≤ 4 keys each, descending, chosen token present"


@check(
    "4",
    "OpenAI",
    "logprobs 0 reports only the chosen token in each top_logprobs entry.",
    "8 tokens with logprobs 0",
)
def logprobs_zero(ctx: Context) -> str:
    body = ctx.body(prompt=PROMPT, max_tokens=8, logprobs=0, seed=ctx.new_seed())
    o = lp(ctx.client.ok(body).body["choices"][0])
    for i, (tok, top) in enumerate(zip(o["tokens"], o["top_logprobs"])):
        if not isinstance(top, dict) or list(top) != [tok]:
            raise Failed(f"step {i}: {json.dumps(top)[:120]} for token {tok!r}", body)
    return f"{len(o['tokens'])} entries, each the chosen token alone"


@check(
    "4",
    "OpenAI",
    "Reported logprobs are the raw model's: logit_bias does not move them.",
    "T = 0, logprobs 5: the first step's alternatives with and without bias +100 on one id, "
    "and the forced token's own logprob",
)
def raw_logprobs(ctx: Context) -> str:
    plain = lp(ctx.complete(prompt=PROMPT, max_tokens=1, logprobs=5, temperature=0)["choices"][0])[
        "top_logprobs"
    ][0]
    body = ctx.body(
        prompt=PROMPT, max_tokens=1, logprobs=5, temperature=0, logit_bias={str(IDS[0]): 100}
    )
    o = lp(ctx.client.ok(body).body["choices"][0])
    forced, val, top = o["tokens"][0], o["token_logprobs"][0], o["top_logprobs"][0]
    if val is None or val > -0.5:
        raise Failed(
            f"the forced token {forced!r} is reported with logprob {val} (processed)", body
        )
    for key, v in plain.items():
        if key in top and abs(top[key] - v) > 1e-3:
            raise Failed(f"{key!r}: {v} without bias, {top[key]} with", body)
    if not set(plain) <= set(top):
        raise Failed(f"alternatives {list(plain)} without bias, {list(top)} with", body)
    return f"alternatives unchanged; forced {forced!r} at its raw {val:.3f}"


@check(
    "4",
    "OpenAI",
    "text_offset counts characters of prompt + completion: it starts at "
    "len(prompt) without echo and at 0 with it, and never decreases.",
    "6 tokens with logprobs 0, without and with echo",
)
def text_offsets(ctx: Context) -> str:
    body = ctx.body(prompt=PROMPT, max_tokens=6, logprobs=0, seed=ctx.new_seed())
    off = lp(ctx.client.ok(body).body["choices"][0])["text_offset"]
    if not off or off[0] != len(PROMPT) or off != sorted(off):
        raise Failed(f"offsets {off} for a prompt of {len(PROMPT)} characters", body)
    body = ctx.body(prompt=PROMPT, max_tokens=2, logprobs=0, echo=True)
    echo = lp(ctx.client.ok(body).body["choices"][0])["text_offset"]
    if not echo or echo[0] != 0 or echo != sorted(echo):
        raise Failed(f"echoed offsets {echo}", body)
    return f"starts at {off[0]} = len(prompt); echoed from 0"


@check(
    "4",
    "OpenAI",
    "A token that is not valid UTF-8 alone is written bytes:\\xNN… (lowercase "
    "hex), never with U+FFFD.",
    "echo of ids 0–511 with logprobs 0 (single-byte tokens live there in byte-level vocabularies)",
)
def bytes_form(ctx: Context) -> str:
    body = ctx.body(prompt=list(range(512)), max_tokens=0, echo=True, logprobs=0)
    reply = ctx.client.post(body)
    if reply.status == 400:  # some low ids are special tokens: try the next 512 alone
        body = ctx.body(prompt=list(range(512, 1024)), max_tokens=0, echo=True, logprobs=0)
    toks = lp(ctx.client.ok(body).body["choices"][0])["tokens"]
    marked = [t for t in toks if t.startswith("bytes:")]
    bad = [t for t in marked if not BYTES.match(t)] + [t for t in toks if "\ufffd" in t]
    if bad:
        raise Failed(f"{len(bad)} tokens written wrongly, e.g. {bad[0]!r}", body)
    return f"{len(marked)} of {len(toks)} tokens in bytes: form, all well formed"


@check(
    "4",
    "OpenAI",
    "The alternatives are log-probabilities: their logsumexp is at most 0.",
    "2 prompts × n = 2, 8 tokens, logprobs 5",
)
def alternatives_normalised(ctx: Context) -> str:
    body, objs = _sample(ctx, 5)
    worst = -1e9
    for o in objs:
        for top in o["top_logprobs"]:
            s = logsumexp(top.values())
            worst = max(worst, s)
            if s > 1e-4:
                raise Failed(f"logsumexp {s:.5f} > 0 for {json.dumps(top)[:120]}", body)
    return f"largest logsumexp {worst:.4f}"
