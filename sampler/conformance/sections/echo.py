"""§5 echo: the prompt in the text and in the logprobs, and scoring with max_tokens 0."""

from __future__ import annotations

from ..client import Failed
from ..kit import Context, check, lp
from .request import IDS, PROMPT


@check(
    "5",
    "OpenAI",
    "With echo, text = prompt + completion.",
    "T = 0, 6 tokens, with and without echo",
)
def echo_text(ctx: Context) -> str:
    plain = ctx.complete(prompt=PROMPT, max_tokens=6, temperature=0)["choices"][0]["text"]
    body = ctx.body(prompt=PROMPT, max_tokens=6, temperature=0, echo=True)
    text = ctx.client.ok(body).body["choices"][0]["text"]
    if text != PROMPT + plain:
        raise Failed(f"{text!r} is not {PROMPT!r} + {plain!r}", body)
    return f"{text!r}"


@check(
    "5",
    "OpenAI",
    "With echo and logprobs, the arrays start with the prompt's tokens; the "
    "first has null token_logprobs and null top_logprobs, the others numbers.",
    "echo, logprobs 1, 2 tokens",
)
def echo_first_null(ctx: Context) -> str:
    body = ctx.body(prompt=PROMPT, max_tokens=2, echo=True, logprobs=1, temperature=0)
    resp = ctx.client.ok(body).body
    o = lp(resp["choices"][0])
    n = resp["usage"]["prompt_tokens"]
    if len(o["tokens"]) < n:
        raise Failed(f"{len(o['tokens'])} entries for {n} prompt tokens + 2", body)
    if o["token_logprobs"][0] is not None or o["top_logprobs"][0] is not None:
        raise Failed(f"first entry {o['token_logprobs'][0]!r}, {o['top_logprobs'][0]!r}", body)
    rest = o["token_logprobs"][1:]
    if any(not isinstance(v, (int, float)) for v in rest):
        raise Failed(f"later entries {rest}", body)
    return f"{n} prompt tokens, first null, then numbers"


@check(
    "5",
    "OpenAI",
    "echo with max_tokens 0 scores the prompt: text = prompt, finish_reason "
    "length, completion_tokens 0, one logprobs entry per prompt token.",
    "echo, max_tokens 0, logprobs 0",
)
def echo_scoring(ctx: Context) -> str:
    body = ctx.body(prompt=PROMPT, max_tokens=0, echo=True, logprobs=0)
    resp = ctx.client.ok(body).body
    c, u = resp["choices"][0], resp["usage"]
    problems = []
    if c["text"] != PROMPT:
        problems.append(f"text {c['text']!r}")
    if c.get("finish_reason") != "length":
        problems.append(f"finish_reason {c.get('finish_reason')!r}")
    if u.get("completion_tokens") != 0:
        problems.append(f"completion_tokens {u.get('completion_tokens')}")
    if len(lp(c)["tokens"]) != u.get("prompt_tokens"):
        problems.append(f"{len(lp(c)['tokens'])} entries for {u.get('prompt_tokens')} tokens")
    if problems:
        raise Failed("; ".join(problems), body)
    return f"{u['prompt_tokens']} prompt tokens scored, nothing generated"


@check(
    "5",
    "OpenAI",
    "An echoed prompt token's logprob is the one the token has when it is "
    "generated there (the lm-eval loglikelihood idiom).",
    "ids P + [X] echoed with max_tokens 0, against X forced after P (bias +100, raw logprob), "
    "and P's echo alternatives at its last position against P's first generated step",
)
def echo_matches_generation(ctx: Context) -> str:
    x = IDS[3]
    body = ctx.body(prompt=IDS + [x], max_tokens=0, echo=True, logprobs=5)
    echo = lp(ctx.client.ok(body).body["choices"][0])
    gen = lp(
        ctx.complete(prompt=IDS, max_tokens=1, logprobs=5, temperature=0, logit_bias={str(x): 100})[
            "choices"
        ][0]
    )
    a, b = echo["token_logprobs"][-1], gen["token_logprobs"][0]
    if a is None or b is None or abs(a - b) > 1e-2:
        raise Failed(f"id {x} after the prompt: echoed {a}, generated {b}", body)
    if echo["tokens"][-1] != gen["tokens"][0]:
        raise Failed(f"echoed token {echo['tokens'][-1]!r}, generated {gen['tokens'][0]!r}", body)
    ta, tb = echo["top_logprobs"][-1], gen["top_logprobs"][0]
    common = set(ta) & set(tb)
    worst = max((abs(ta[k] - tb[k]) for k in common), default=0.0)
    if len(common) < min(len(ta), len(tb)) - 1 or worst > 1e-2:
        raise Failed(f"alternatives echoed {ta}, generated {tb}", body)
    return f"{a:.4f} echoed vs {b:.4f} generated; alternatives within {worst:.1e}"
