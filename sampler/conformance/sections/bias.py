"""§3 logit_bias bans and penalties, found with greedy steps and logit_bias alone.

The kit knows no token ids but the ones it sends. To ban a token the model prefers, it
finds that token's id: banning a block of ids with −100 changes the greedy choice exactly
when the block holds it (a block the server refuses is split), so a scan and a bisection
name it. To see whether a prompt token is penalised, it finds the bias at which a prompt
token just becomes the greedy choice (to 0.25); a penalty of 1 then removes it only if the
server counts the prompt.
"""

from __future__ import annotations

from ..client import Failed, Refused
from ..kit import Context, check
from .request import IDS, PROMPT
from .steps import greedy_first

BLOCK = 1024
MAX_BLOCKS = 256  # ids below 262,144


def _banned_changes(ctx: Context, ids: list[int], greedy: str) -> bool | None:
    """Does banning ``ids`` change the greedy token? None: the server refused the ban."""
    try:
        return greedy_first(ctx, PROMPT, {i: -100 for i in ids}) != greedy
    except Refused:
        return None


def _locate(ctx: Context, ids: list[int], greedy: str, known: bool | None) -> int | None:
    if not ids:
        return None
    r = _banned_changes(ctx, ids, greedy) if known is None else known
    if r is False:
        return None
    if len(ids) == 1:
        return ids[0] if r else None
    mid = len(ids) // 2
    found = _locate(ctx, ids[:mid], greedy, None)
    return found if found is not None else _locate(ctx, ids[mid:], greedy, None)


def greedy_id(ctx: Context) -> tuple[int, str]:
    """The id of PROMPT's greedy first token (memoised), found by banning blocks of ids."""

    def find() -> tuple[int, str]:
        greedy = greedy_first(ctx, PROMPT, {})
        refused = 0
        for b in range(MAX_BLOCKS):
            ids = list(range(b * BLOCK, (b + 1) * BLOCK))
            r = _banned_changes(ctx, ids, greedy)
            refused = refused + 1 if r is None else 0
            if refused >= 3:
                break
            if r is not False:
                found = _locate(ctx, ids, greedy, r)
                if found is not None:
                    return found, greedy
        raise Failed(
            f"banning every id below {b * BLOCK} with −100 never changed the greedy "
            f"token {greedy!r}",
            ctx.body(prompt=PROMPT, temperature=0),
        )

    return ctx.memo("greedy_id", find)


@check(
    "3",
    "OpenAI",
    "logit_bias −100 bans a token.",
    "the greedy token's id is found by "
    "banning blocks of ids; banned alone: T = 0 picks another token, and 64 choices at T = 1 "
    "never draw it",
)
def logit_bias_ban(ctx: Context) -> str:
    tid, text = greedy_id(ctx)
    body = ctx.body(prompt=PROMPT, max_tokens=1, logit_bias={str(tid): -100})
    now = greedy_first(ctx, PROMPT, {tid: -100})
    if now == text:
        raise Failed(f"id {tid} ({text!r}) banned, T = 0 still chose it", body)
    got = [
        c["text"] for c in ctx.samples(64, prompt=PROMPT, max_tokens=1, logit_bias={str(tid): -100})
    ]
    if text in got:
        raise Failed(f"id {tid} ({text!r}) banned, drawn {got.count(text)}/64 at T = 1", body)
    return f"id {tid} ({text!r}) banned: greedy → {now!r}, 0/64 draws"


def _margin(ctx: Context, prompt: list[int], x: int, want: str) -> float:
    """The smallest bias (to 0.25) at which id ``x`` is the greedy first token."""
    if greedy_first(ctx, prompt, {x: 100.0}) != want:
        raise Failed(f"bias +100 on id {x} did not make it the greedy token", None)
    lo, hi = -100.0, 100.0  # not chosen at lo (checked below), chosen at hi
    if greedy_first(ctx, prompt, {x: lo}) == want:
        raise Failed(f"id {x} is chosen even with bias −100", None)
    while hi - lo > 0.25:
        mid = (lo + hi) / 2
        if greedy_first(ctx, prompt, {x: mid}) == want:
            hi = mid
        else:
            lo = mid
    return hi


@check(
    "3",
    "OpenAI",
    "Penalties count this sequence's generated tokens only, not the prompt.",
    "a prompt holding id X three times; the bias b at which X just wins the first greedy step "
    "(to 0.25); with b and presence_penalty 1, or frequency_penalty 0.5, X must still win",
)
def penalties_skip_prompt(ctx: Context) -> str:
    x = IDS[2]
    prompt = IDS + [x, x]  # x three times
    want = greedy_first(ctx, prompt, {x: 100.0})
    b = _margin(ctx, prompt, x, want)
    if greedy_first(ctx, prompt, {x: b}) != want:  # the margin holds on a second look
        body = ctx.body(prompt=prompt, max_tokens=1, temperature=0, logit_bias={str(x): b})
        raise Failed(f"id {x} is no longer chosen at bias {b} without penalties", body)
    for name, value in (("presence_penalty", 1.0), ("frequency_penalty", 0.5)):
        body = ctx.body(
            prompt=prompt, max_tokens=1, temperature=0, logit_bias={str(x): b}, **{name: value}
        )
        if greedy_first(ctx, prompt, {x: b}, **{name: value}) != want:
            raise Failed(
                f"{name} {value} moved the first step off id {x} ({want!r}) at bias "
                f"{b}: the prompt's tokens were counted (unpenalised margin < 0.25)",
                body,
            )
    return f"id {x} ({want!r}) wins by < 0.25 at bias {b}; penalties leave it chosen"
