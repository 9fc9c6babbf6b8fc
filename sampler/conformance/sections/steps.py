"""§3 one step of sampling, observed through the server's own raw logprobs.

A server reports the raw distribution's top tokens (§4); from them the kit knows, for the
first step of a prompt, each reported token's exact probability at T = 1, bounds on it at
T < 1 (the unreported tail is at most the rest of the mass, each tail token at most the
last reported one), and exact ratios between reported tokens at any T. Deterministic checks
use margins far above float32 rounding; statistical ones state their false-failure bound.
"""

from __future__ import annotations

import math
from typing import Any

from ..client import Broken, Failed
from ..kit import Context, check, lp
from ..stats import ALPHA, binomial_outside
from .request import IDS, PROMPT

PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "1, 2, 3, 4,",
    "def main():\n   ",
    "My favourite colour is",
    "The weather today",
    "In 1492, Columbus",
    "Dear Sir or",
    "She opened the door and",
    "The best way to learn",
    "import numpy as",
    "Roses are red,",
]


def first_step(ctx: Context, prompt: Any) -> list[tuple[str, float]]:
    """The reported raw top-5 of a prompt's first step, most probable first."""

    def probe() -> list[tuple[str, float]]:
        resp = ctx.complete(prompt=prompt, max_tokens=1, logprobs=5, temperature=0)
        tops = lp(resp["choices"][0])["top_logprobs"]
        if not tops or not isinstance(tops[0], dict) or not tops[0]:
            raise Broken(f"no top_logprobs for {prompt!r}: {tops!r:.120}")
        return sorted(tops[0].items(), key=lambda kv: -kv[1])

    return ctx.memo(f"first:{prompt!r}", probe)


def sampled(ctx: Context, count: int, **fields: Any) -> list[str]:
    """The first token (as logprobs name it) of ``count`` independent choices."""
    out = []
    for c in ctx.samples(count, max_tokens=1, logprobs=0, **fields):
        toks = lp(c)["tokens"]
        out.append(toks[0] if toks else "")
    return out


def best_prompt(ctx: Context, score: Any) -> tuple[str, list[tuple[str, float]], Any]:
    """The prompt whose first step scores highest (score returns None to reject one)."""
    best = None
    for prompt in PROMPTS:
        top = first_step(ctx, prompt)
        s = score([math.exp(v) for _, v in top])
        if s is not None and (best is None or s[0] > best[2][0]):
            best = (prompt, top, s)
    if best is None:
        raise Broken("the kit found no prompt whose reported distribution suits this check")
    return best


@check(
    "3",
    "OpenAI",
    "temperature 0 picks the most probable raw token at every step.",
    "T = 0, logprobs 5, 8 tokens of 3 prompts: each token is the top of its alternatives",
)
def greedy_top_raw(ctx: Context) -> str:
    n = 0
    for prompt in PROMPTS[:3]:
        body = ctx.body(prompt=prompt, max_tokens=8, logprobs=5, temperature=0)
        obj = lp(ctx.client.ok(body).body["choices"][0])
        for i, (tok, val, top) in enumerate(
            zip(obj["tokens"], obj["token_logprobs"], obj["top_logprobs"])
        ):
            if not top:
                continue
            best = max(top.values())
            if val is None or val < best - 1e-4:
                raise Failed(
                    f"step {i}: chose {tok!r} ({val}) under {max(top, key=top.get)!r} ({best})",
                    body,
                )
            n += 1
    return f"{n} steps, each the top raw token"


@check(
    "3",
    "OpenAI",
    "A tiny top_p keeps only the most probable token.",
    "top_p 1e-6, T = 1, 32 choices of 4 tokens with logprobs 1",
)
def tiny_top_p(ctx: Context) -> str:
    body = ctx.body(prompt=PROMPTS[1], max_tokens=4, logprobs=1, top_p=1e-6)
    n = 0
    for c in ctx.samples(32, prompt=PROMPTS[1], max_tokens=4, logprobs=1, top_p=1e-6):
        obj = lp(c)
        for i, (tok, val, top) in enumerate(
            zip(obj["tokens"], obj["token_logprobs"], obj["top_logprobs"])
        ):
            if top and (val is None or val < max(top.values()) - 1e-4):
                raise Failed(f"step {i}: {tok!r} ({val}) is not the top token", body)
            n += 1
    return f"{n} steps, each the top token"


def _nucleus_two(p: list[float]) -> tuple[float, float, float] | None:
    if len(p) < 3 or p[1] < 0.04 or p[0] + p[1] > 0.97:
        return None
    return (p[2] / (p[0] + p[1] + p[2]), p[0] + p[1] / 2, 0.0)


@check(
    "3",
    "OpenAI",
    "top_p samples only inside the minimal nucleus: the fewest most probable "
    "tokens whose probability reaches top_p.",
    "a prompt with raw p1, p2, p3; top_p = p1 + p2/2 (nucleus {t1, t2}); 256 choices at T = 1",
)
def top_p_minimal_nucleus(ctx: Context) -> str:
    prompt, top, (_, top_p, _) = best_prompt(ctx, _nucleus_two)
    (t1, l1), (t2, l2) = top[0], top[1]
    body = ctx.body(prompt=prompt, max_tokens=1, logprobs=0, top_p=round(top_p, 6), temperature=1)
    got = sampled(ctx, 256, prompt=prompt, top_p=round(top_p, 6), temperature=1.0)
    outside = [t for t in got if t not in (t1, t2)]
    if outside:
        raise Failed(
            f"{len(outside)} of 256 outside the nucleus {{{t1!r}, {t2!r}}}: {outside[0]!r}", body
        )
    k = got.count(t2)
    share = math.exp(l2) / (math.exp(l1) + math.exp(l2))
    pv = binomial_outside(k, len(got), share, share)
    if pv < ALPHA / 2:
        raise Failed(f"{t2!r} drawn {k}/256, expected share {share:.3f} (p ≤ {pv:.1e})", body)
    return f"nucleus {{{t1!r}, {t2!r}}} at top_p {top_p:.3f}: {k}/256 {t2!r} (share {share:.3f})"


def _sharpened(p: list[float], t: float = 0.5) -> tuple[float, float, float] | None:
    if len(p) < 2 or p[1] / p[0] < 0.3:
        return None
    w = [x ** (1 / t) for x in p]
    rest = max(0.0, 1.0 - sum(p))
    low = w[0] / (sum(w) + p[-1] ** (1 / t - 1) * rest)  # t1's tempered share, at least
    if low < p[0] + 0.1:
        return None
    return (p[1] / p[0], (p[0] + low) / 2, low)


@check(
    "3",
    "OpenAI",
    "temperature is applied before top_p (llama.cpp's default order applies it last).",
    "T = 0.5 and a top_p between t1's raw and tempered probability: only t1 "
    "may be drawn (temperature last would also draw t2); 128 choices",
)
def temperature_before_top_p(ctx: Context) -> str:
    prompt, top, (_, top_p, low) = best_prompt(ctx, _sharpened)
    t1 = top[0][0]
    body = ctx.body(prompt=prompt, max_tokens=1, temperature=0.5, top_p=round(top_p, 6))
    got = sampled(ctx, 128, prompt=prompt, temperature=0.5, top_p=round(top_p, 6))
    other = [t for t in got if t != t1]
    if other:
        raise Failed(
            f"{len(other)} of 128 not {t1!r} (first {other[0]!r}); p1 raw "
            f"{math.exp(top[0][1]):.3f}, tempered ≥ {low:.3f}, top_p {top_p:.3f}",
            body,
        )
    return f"128/128 {t1!r}: raw p1 {math.exp(top[0][1]):.3f} < top_p {top_p:.3f} ≤ {low:.3f}"


def _broad(p: list[float]) -> tuple[float, float, float] | None:
    return (1 - p[0], 0.0, 0.0) if len(p) >= 3 else None


def _frequencies(ctx: Context, **fields: Any) -> str:
    prompt, top, _ = best_prompt(ctx, _broad)
    body = ctx.body(prompt=prompt, max_tokens=1, logprobs=0, **fields)
    got = sampled(ctx, 400, prompt=prompt, **fields)
    rest = max(0.0, 1 - sum(math.exp(v) for _, v in top))
    cats: list[tuple[str | None, float]] = [(t, math.exp(v)) for t, v in top] + [(None, rest)]
    known = {t for t, _ in top}
    worst = 1.0
    for t, p in cats:
        k = sum(1 for g in got if (g == t if t is not None else g not in known))
        pv = binomial_outside(k, len(got), p, p)
        worst = min(worst, pv)
        if pv < ALPHA / (2 * len(cats)):
            name = repr(t) if t is not None else "the unreported rest"
            raise Failed(f"{name}: {k}/400 drawn, reported p = {p:.4f} (p-value ≤ {pv:.1e})", body)
    return f"{len(cats)} categories within bounds (smallest p-value bound {worst:.2g})"


@check(
    "3",
    "OpenAI",
    "At T = 1, top_p = 1 the draw follows the model's raw distribution (no hidden top_k, min_p "
    "or repetition penalty).",
    "T = 1 and top_p = 1 sent, 400 choices of one token; each reported token's count "
    f"and the rest's against the reported probabilities (false failure ≤ {ALPHA:g})",
)
def sample_frequencies(ctx: Context) -> str:
    return _frequencies(ctx, temperature=1.0, top_p=1.0)


@check(
    "3",
    "OpenAI",
    "temperature and top_p left out mean 1 and 1: the draw follows the raw distribution.",
    f"neither sent, 400 choices of one token, as sample_frequencies (false failure ≤ {ALPHA:g})",
)
def sampling_defaults(ctx: Context) -> str:
    return _frequencies(ctx)


@check(
    "3",
    "OpenAI",
    "At T ≠ 1 the draw follows p^(1/T), renormalised.",
    "T = 0.6 and 1.6, 400 choices each: counts of t1 against t2 and t3, whose ratio is exact "
    f"(false failure ≤ {ALPHA:g})",
)
def tempered_frequencies(ctx: Context) -> str:
    prompt, top, _ = best_prompt(ctx, _broad)
    notes = []
    for t in (0.6, 1.6):
        body = ctx.body(prompt=prompt, max_tokens=1, logprobs=0, temperature=t, top_p=1.0)
        got = sampled(ctx, 400, prompt=prompt, temperature=t, top_p=1.0)
        for j in (1, 2):
            a, b = top[0], top[j]
            k, m = got.count(a[0]), got.count(a[0]) + got.count(b[0])
            share = 1 / (1 + math.exp((b[1] - a[1]) / t))
            pv = binomial_outside(k, m, share, share)
            if pv < ALPHA / 8:
                raise Failed(
                    f"T={t}: {a[0]!r} {k} of {m} against {b[0]!r}, expected share "
                    f"{share:.3f} (p-value ≤ {pv:.1e})",
                    body,
                )
            notes.append(f"{k}/{m}~{share:.2f}")
    return "T 0.6, 1.6: " + ", ".join(notes)


def _text_of(ctx: Context, token: int) -> str | None:
    try:
        resp = ctx.complete(prompt=[token], max_tokens=0, echo=True, logprobs=0)
        return lp(resp["choices"][0])["tokens"][0]
    except (Failed, IndexError):
        return None


@check(
    "3",
    "OpenAI",
    "logit_bias +100 forces a token.",
    "bias +100 on one id: the greedy token, and 4 choices of 3 tokens at T = 1, are that id's text",
)
def logit_bias_force(ctx: Context) -> str:
    x = IDS[0]
    fields = {"prompt": PROMPT, "logit_bias": {str(x): 100}}
    body = ctx.body(max_tokens=3, **fields)
    one = ctx.complete(max_tokens=1, temperature=0, **fields)["choices"][0]["text"]
    want = _text_of(ctx, x) or one
    texts = [c["text"] for c in ctx.samples(4, max_tokens=3, **fields)]
    if one != want or any(t != want * 3 for t in texts):
        raise Failed(f"texts {texts} with id {x} ({want!r}) forced", body)
    return f"4 choices of {want * 3!r}"


def greedy_first(ctx: Context, prompt: Any, bias: dict[int, float], **fields: Any) -> str:
    """The text of the first greedy token (no logprobs needed)."""
    resp = ctx.complete(
        prompt=prompt,
        max_tokens=1,
        temperature=0,
        logit_bias={str(k): v for k, v in bias.items()},
        **fields,
    )
    return resp["choices"][0]["text"]
