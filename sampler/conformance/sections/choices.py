"""§9 n and best_of: how many choices come back, and which."""

from __future__ import annotations

from typing import Any

from ..client import Failed
from ..kit import Context, check, lp
from .request import PROMPT, names, refused
from .steps import PROMPTS


def _mean(c: dict[str, Any]) -> float:
    vals = [v for v in lp(c)["token_logprobs"] if v is not None]
    return sum(vals) / len(vals) if vals else float("-inf")


@check("9", "OpenAI", "n choices per prompt.", "n = 3 on one prompt")
def n_choices(ctx: Context) -> str:
    body = ctx.body(prompt=PROMPT, max_tokens=2, n=3, seed=ctx.new_seed())
    got = ctx.client.ok(body).body["choices"]
    if len(got) != 3:
        raise Failed(f"{len(got)} choices for n = 3", body)
    return "3 choices"


@check(
    "9",
    "OpenAI",
    "best_of > n returns the n candidates with the highest mean logprob, best first.",
    "20 requests with best_of 3, n 2, 5 tokens, logprobs 0; where both choices "
    "ran to length, their means must not increase (an unranked server passes 14 by chance "
    "with p ≤ 2^-14 ≈ 6e-5)",
)
def best_of_ranked(ctx: Context) -> str:
    used = 0
    for i in range(20):
        body = ctx.body(
            prompt=PROMPTS[i % len(PROMPTS)],
            max_tokens=5,
            logprobs=0,
            n=2,
            best_of=3,
            seed=ctx.new_seed(),
        )
        got = ctx.client.ok(body).body["choices"]
        if len(got) != 2:
            raise Failed(f"{len(got)} choices for n = 2, best_of = 3", body)
        if any(c.get("finish_reason") != "length" for c in got):
            continue
        used += 1
        if _mean(got[0]) < _mean(got[1]) - 1e-6:
            raise Failed(f"means {_mean(got[0]):.4f} then {_mean(got[1]):.4f}", body)
    if used < 14:
        raise Failed(f"only {used} of 20 requests ran to length: too few to tell", None)
    return f"{used} requests, each best first"


@check(
    "9",
    "beyond",
    "best_of picks, from the candidates of the same seed, the n with the "
    "highest mean raw logprob over all their tokens, ties to the lower candidate.",
    "the same seed with n = best_of = 4 (all candidates) and with best_of 4, n 2",
)
def best_of_picks_best(ctx: Context) -> str:
    picked = []
    for prompt in PROMPTS[1:5]:  # an unranked server passes each by chance with p ≤ 1/6
        body = ctx.body(
            prompt=prompt, max_tokens=6, logprobs=0, best_of=4, n=2, seed=ctx.new_seed()
        )
        every = ctx.complete(**{**body, "n": 4})["choices"]
        if len(every) != 4:
            raise Failed(f"{len(every)} choices for n = best_of = 4", {**body, "n": 4})
        ranked = sorted(range(4), key=lambda k: (-_mean(every[k]), k))[:2]
        want = [every[k]["text"] for k in ranked]
        got = [c["text"] for c in ctx.client.ok(body).body["choices"]]
        if got != want:
            raise Failed(
                f"returned {got}; of {[c['text'] for c in every]} the best two are {want}", body
            )
        picked.append(ranked)
    return f"4 requests, candidates {picked} returned, best first"


@check("9", "OpenAI", "best_of < n → 400 naming best_of.", "best_of 1, n 2")
def best_of_below_n(ctx: Context) -> str:
    body = ctx.body(prompt=PROMPT, max_tokens=1, n=2, best_of=1)
    names(refused(ctx, body), "best_of", body)
    return "400 naming best_of"


@check("9", "decided", "best_of > n with stream → 400 naming best_of.", "best_of 3, n 1, stream")
def best_of_stream(ctx: Context) -> str:
    body = ctx.body(prompt=PROMPT, max_tokens=1, best_of=3, stream=True)
    names(refused(ctx, body), "best_of", body)
    return "400 naming best_of"


@check(
    "9",
    "decided",
    "usage.completion_tokens counts the tokens of every candidate computed.",
    "best_of 3, n 1, 4 tokens: completion_tokens ≥ the returned tokens + 2",
)
def best_of_usage(ctx: Context) -> str:
    body = ctx.body(prompt=PROMPT, max_tokens=4, logprobs=0, best_of=3, seed=ctx.new_seed())
    resp = ctx.client.ok(body).body
    shown = len(lp(resp["choices"][0])["tokens"])
    if resp["usage"]["completion_tokens"] < shown + 2:
        raise Failed(
            f"completion_tokens {resp['usage']['completion_tokens']} for 3 candidates "
            f"(returned one has {shown})",
            body,
        )
    return f"completion_tokens {resp['usage']['completion_tokens']}"
