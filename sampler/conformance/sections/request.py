"""§1 validation and §2 prompts: what a server accepts, refuses, and how it reads prompts."""

from __future__ import annotations

import json
from typing import Any

from ..client import Broken, Failed
from ..kit import Context, check, choice, lp

PROMPT = "The capital of France is"
IDS = [1820, 1917, 2033, 1024, 1212]  # ordinary ids of any vocabulary of 5,000 or more


def refused(ctx: Context, body: dict[str, Any], *, status: int = 400) -> dict[str, Any]:
    """Send ``body``; require ``status`` with OpenAI's four-key error body; the error."""
    reply = ctx.client.post(body)
    if reply.status >= 500:
        raise Broken(f"HTTP {reply.status} instead of {status}: {reply.text[:200]}", body)
    if reply.status != status:
        raise Failed(f"HTTP {reply.status} instead of {status}: {reply.text[:160]}", body)
    err = reply.error
    if err is None:
        raise Failed(f"HTTP {status} without an error object: {reply.text[:160]}", body)
    missing = [k for k in ("message", "type", "param", "code") if k not in err]
    if missing:
        raise Failed(f"the error body lacks {', '.join(missing)}: {json.dumps(err)[:160]}", body)
    if not isinstance(err["message"], str) or not err["message"]:
        raise Failed(f"the error has no message: {json.dumps(err)[:160]}", body)
    return err


def names(err: dict[str, Any], param: str, body: dict[str, Any]) -> None:
    if err.get("param") != param:
        raise Failed(f"param is {err.get('param')!r}, not {param!r}: {err['message'][:120]}", body)


# (parameter, bad value, why) — each must be a 400 naming the parameter
RANGES = [
    ("max_tokens", -1, "below 0"),
    ("temperature", -0.5, "below 0"),
    ("temperature", 2.5, "above 2"),
    ("top_p", -0.1, "below 0"),
    ("top_p", 1.5, "above 1"),
    ("n", 0, "below 1"),
    ("n", 129, "above 128"),
    ("best_of", 0, "below 1"),
    ("best_of", 21, "above 20"),
    ("logprobs", -1, "below 0"),
    ("logprobs", 6, "above 5"),
    ("presence_penalty", -2.5, "below -2"),
    ("presence_penalty", 2.5, "above 2"),
    ("frequency_penalty", -2.5, "below -2"),
    ("frequency_penalty", 2.5, "above 2"),
    ("logit_bias", {"1820": 150}, "a value above 100"),
    ("logit_bias", {"1820": -150}, "a value below -100"),
]
TYPES = [
    ("n", "2", "a string"),
    ("logprobs", 1.5, "a float"),
    ("max_tokens", True, "a boolean"),
    ("temperature", "hot", "a string"),
    ("top_p", [0.5], "a list"),
    ("echo", "yes", "a string"),
    ("stop", 5, "a number"),
    ("seed", 1.5, "a float"),
    ("logit_bias", [1, 2], "a list"),
    ("logit_bias", {"AI": 1}, "a key that is not an id"),
    ("stream", "true", "a string"),
    ("prompt", {"text": "x"}, "an object"),
    ("prompt", [], "an empty list"),
]


def _each(ctx: Context, cases: list[tuple[str, Any, str]]) -> str:
    bad = []
    for param, value, why in cases:
        body = {**ctx.body(prompt=PROMPT, max_tokens=1), param: value}
        try:
            names(refused(ctx, body), param, body)
        except Broken:
            raise
        except Failed as f:
            bad.append((f"{param}={json.dumps(value)} ({why}): {f.evidence}", body))
    if bad:
        raise Failed(f"{len(bad)} of {len(cases)} wrong; first: {bad[0][0]}", bad[0][1])
    return f"all {len(cases)} refused with 400, four keys, param named"


@check(
    "1",
    "OpenAI",
    "Each parameter out of its range → 400 with all four error keys and "
    "param naming it (logit_bias values −100 … 100, never clamped).",
    "17 requests, one parameter just out of range in each",
)
def out_of_range(ctx: Context) -> str:
    return _each(ctx, RANGES)


@check(
    "1",
    "OpenAI",
    "A wrong JSON type for a parameter (booleans are not integers) → 400 naming the parameter.",
    "13 requests, one wrongly typed value in each",
)
def wrong_types(ctx: Context) -> str:
    return _each(ctx, TYPES)


@check(
    "1",
    "OpenAI",
    "null means the default for every optional parameter.",
    "one request with every optional parameter null",
)
def nulls_are_defaults(ctx: Context) -> str:
    fields = (
        "max_tokens",
        "temperature",
        "top_p",
        "n",
        "logprobs",
        "echo",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "stream",
        "suffix",
    )
    resp = ctx.complete(prompt=PROMPT, **{f: None for f in fields})
    c = choice(resp)
    if c.get("logprobs") is not None:
        raise Failed("logprobs: null still returned a logprobs object", ctx.body(prompt=PROMPT))
    if len(resp["choices"]) != 1:
        raise Failed(f"n: null gave {len(resp['choices'])} choices", ctx.body(prompt=PROMPT))
    return f"200, one choice, {resp.get('usage', {}).get('completion_tokens')} tokens"


@check(
    "1",
    "OpenAI",
    "model and prompt are required: missing or null → 400 naming them.",
    "four requests: each of model and prompt left out, then null",
)
def required_fields(ctx: Context) -> str:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"prompt": PROMPT}, "model"),
        ({"model": None, "prompt": PROMPT}, "model"),
        ({"model": ctx.model}, "prompt"),
        ({"model": ctx.model, "prompt": None}, "prompt"),
    ]
    for body, param in cases:
        names(refused(ctx, {**body, "max_tokens": 1}), param, body)
    return "all four refused with 400 naming the field"


@check(
    "1",
    "OpenAI",
    "An unknown request field → 400 'Unrecognized request argument supplied: NAME'.",
    "one request with the field 'frobnicate'",
)
def unknown_field(ctx: Context) -> str:
    body = ctx.body(prompt=PROMPT, max_tokens=1, frobnicate=1)
    err = refused(ctx, body)
    if "frobnicate" not in err["message"] or "nrecognized" not in err["message"]:
        raise Failed(f"the message does not name the field: {err['message'][:120]}", body)
    return err["message"][:80]


@check(
    "1",
    "OpenAI",
    "An unknown model → 404 with code model_not_found.",
    "one request for model 'no-such-model-xyz'",
)
def unknown_model(ctx: Context) -> str:
    body = {"model": "no-such-model-xyz", "prompt": PROMPT, "max_tokens": 1}
    err = refused(ctx, body, status=404)
    if err.get("code") != "model_not_found":
        raise Failed(f"code is {err.get('code')!r}: {err['message'][:120]}", body)
    return err["message"][:80]


@check(
    "1",
    "OpenAI",
    "A body that is not a JSON object → 400 'We could not parse the JSON "
    "body of your request.' (param and code null).",
    "the bytes '{\"model\": ' posted",
)
def non_json_body(ctx: Context) -> str:
    raw = b'{"model": '
    reply = ctx.client.post(None, raw=raw)
    err = reply.error
    if reply.status != 400 or err is None:
        raise Failed(f"HTTP {reply.status}: {reply.text[:160]}", raw.decode())
    missing = [k for k in ("message", "type", "param", "code") if k not in err]
    if missing or "parse the JSON" not in str(err.get("message")):
        raise Failed(f"error body {json.dumps(err)[:160]}", raw.decode())
    return "400 with the parse message"


@check(
    "1",
    "OpenAI",
    "prompt + max_tokens over the context → 400 'This model's maximum "
    "context length is C tokens, however you requested R tokens (P in your prompt; M for "
    "the completion)…'",
    "max_tokens = 10,000,000 on a short prompt",
)
def context_length(ctx: Context) -> str:
    body = ctx.body(prompt=PROMPT, max_tokens=10_000_000)
    err = refused(ctx, body)
    msg = err["message"]
    if "maximum context length" not in msg or "10000000 for the completion" not in msg:
        raise Failed(f"message: {msg[:160]}", body)
    return msg[:90]


@check(
    "1",
    "OpenAI",
    "stream_options without stream → 400 naming stream_options.",
    "stream_options.include_usage with stream absent",
)
def stream_options_alone(ctx: Context) -> str:
    body = ctx.body(prompt=PROMPT, max_tokens=1, stream_options={"include_usage": True})
    err = refused(ctx, body)
    names(err, "stream_options", body)
    return err["message"][:80]


# --- §2 prompts ------------------------------------------------------------------------------
@check(
    "2",
    "OpenAI",
    "The four prompt forms: str, list[str], list[int], list[list[int]]; one "
    "choice per prompt (n = 1).",
    "four requests, one per form",
)
def prompt_forms(ctx: Context) -> str:
    forms = [(PROMPT, 1), ([PROMPT, "Hello"], 2), (IDS, 1), ([IDS, IDS[:2]], 2)]
    for prompt, want in forms:
        body = ctx.body(prompt=prompt, max_tokens=2, temperature=0)
        got = ctx.client.ok(body).body["choices"]
        if len(got) != want:
            raise Failed(f"{len(got)} choices for {want} prompt(s)", body)
    return "all four forms answered, one choice per prompt"


@check(
    "2",
    "OpenAI",
    "A token-id prompt is used exactly as given: echoed, its tokens are the "
    "ids given, each id one token, and prompt_tokens counts them.",
    "echo + logprobs 0 + max_tokens 0 of five ids, then of each id alone",
)
def token_ids_verbatim(ctx: Context) -> str:
    body = ctx.body(prompt=IDS, max_tokens=0, echo=True, logprobs=0)
    resp = ctx.client.ok(body).body
    got = lp(choice(resp))["tokens"]
    if len(got) != len(IDS):
        raise Failed(f"{len(IDS)} ids echoed as {len(got)} tokens: {got}", body)
    if resp.get("usage", {}).get("prompt_tokens") != len(IDS):
        raise Failed(f"prompt_tokens = {resp.get('usage')}", body)
    alone = ctx.complete(prompt=[[i] for i in IDS], max_tokens=0, echo=True, logprobs=0)
    singles = [lp(c)["tokens"] for c in alone["choices"]]
    if [s[0] if s else None for s in singles] != got:
        raise Failed(f"ids together read {got}, alone {singles}", body)
    if choice(resp)["text"] != "".join(choice(alone, i)["text"] for i in range(len(IDS))):
        raise Failed("the echoed text is not the ids' texts joined", body)
    return f"{len(IDS)} ids → {len(got)} tokens {got}"


@check(
    "2",
    "OpenAI",
    "P prompts × n choices → P·n choices, index = p·n + j, sorted by index.",
    "2 prompts, n = 2, echo on: each choice's text starts with its own prompt",
)
def choice_index_order(ctx: Context) -> str:
    prompts = ["Alpha beta", "Gamma delta"]
    body = ctx.body(prompt=prompts, n=2, max_tokens=2, echo=True, seed=ctx.new_seed())
    got = ctx.client.ok(body).body["choices"]
    if [c.get("index") for c in got] != [0, 1, 2, 3]:
        raise Failed(f"indexes {[c.get('index') for c in got]}", body)
    for c in got:
        if not c["text"].startswith(prompts[c["index"] // 2]):
            raise Failed(f"choice {c['index']} belongs to another prompt: {c['text'][:40]!r}", body)
    return "indexes 0, 1, 2, 3, prompts in order"


@check(
    "2",
    "OpenAI",
    "usage.prompt_tokens counts each prompt once, whatever n is.",
    "the same prompt with n = 1 and n = 3",
)
def prompt_tokens_once(ctx: Context) -> str:
    one = ctx.complete(prompt=PROMPT, max_tokens=1)["usage"]["prompt_tokens"]
    body = ctx.body(prompt=PROMPT, max_tokens=1, n=3)
    three = ctx.client.ok(body).body["usage"]["prompt_tokens"]
    if one != three:
        raise Failed(f"prompt_tokens {one} with n=1, {three} with n=3", body)
    return f"prompt_tokens {one} for n = 1 and n = 3"
