"""The definition: how a Completions request turns logits into text, one row at a time.

This is the contract (spec §3–§10, with the decisions of ``docs/semantics.md``) written as
code to be read: NumPy and the standard library only, plain loops, full sorts, nothing
imported from the rest of ``sampler``. The package's fast path is tested to give exactly
what this gives: the same token for the same uniform, the same logprobs to float64
rounding, the same choices for the same logits.

The arithmetic is part of the definition: logits are float32 and every step of 1–3 rounds
to float32; probabilities are ``e = exp(z - max z)`` in float32; the nucleus and the draw
both use exact integer weights ``floor(e * 2**43)``, so every sum is exact in any order.

>>> z = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
>>> [step(z, uniform=u, top_p=0.8) for u in (0.1, 0.7, 0.99)]
[0, 1, 1]
>>> nucleus(z, 0.8), [round(float(x), 3) for x in np.exp(logprobs(z))]
([0, 1], [0.5, 0.3, 0.2])
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Steps 1–4, in the order they apply (spec §3); step 5 draws from the result.
STEP_ORDER = ("logit_bias", "penalties", "temperature", "top_p")
WEIGHT_SCALE = 2**43  # the draw's integer weights: floor(e * 2**43)
NEG_INF_LOGPROB = -9999.0  # how a -inf logprob is reported (spec §4)


def _f32(z: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.array(z, dtype=np.float32)  # a copy: nothing here modifies its input


# --- steps 1-4: the row to sample from -----------------------------------------------------
def logit_bias(z: np.ndarray, bias: Mapping[int, float] | None) -> np.ndarray:
    """Step 1: ``z[j] + float32(bias[j])``, in float32."""
    out = _f32(z)
    for j, v in (bias or {}).items():
        out[j] = np.float32(out[j] + np.float32(v))
    return out


def penalties(z: np.ndarray, generated: Sequence[int], presence: float, frequency: float):
    """Step 2: ``z[j] - float32(c * frequency + presence)`` for each token ``j`` generated
    ``c > 0`` times by this sequence (never its prompt)."""
    out = _f32(z)
    for j, c in Counter(generated).items():
        out[j] = np.float32(out[j] - np.float32(c * frequency + presence))
    return out


def temperature(z: np.ndarray, t: float) -> np.ndarray:
    """Step 3: ``z / float32(t)`` in float32 (``t`` = 0 or 1: unchanged). When the row's
    maximum over ``t`` is not a finite float32 (``t`` below the range), the limit
    ``t -> 0+``: 0 at every maximum, ``-inf`` elsewhere."""
    z = _f32(z)
    if t in (0.0, 1.0):
        return z
    t32, top = np.float32(t), z.max()
    with np.errstate(all="ignore"):
        if t32 == 0 or not np.isfinite(top / t32):
            return np.where(z == top, np.float32(0), np.float32(-np.inf))
        return z / t32


def probabilities(z: np.ndarray) -> np.ndarray:
    """Unnormalised probabilities ``exp(z - max z)`` in float32 (largest value 1)."""
    z = _f32(z)
    with np.errstate(over="ignore"):  # a value far below the max: exp(-inf) = 0
        return np.exp(z - z.max())


def by_probability(z: np.ndarray) -> np.ndarray:
    """Every id, most probable first, ties to the lower id: a full, stable sort."""
    return np.argsort(-_f32(z), kind="stable")


def weights(z: np.ndarray) -> np.ndarray:
    """Integer weights ``w = floor(e * 2**43)`` (exact: a float32 times a power of two),
    the top id's ``2**43``: steps 4 and 5 sum these, exactly and in any order."""
    return np.floor(probabilities(z).astype(np.float64) * WEIGHT_SCALE).astype(np.int64)


def need(top_p: float, total: int) -> int:
    """``ceil(top_p * total)``, exactly: the weight a nucleus must reach."""
    num, den = float(top_p).as_integer_ratio()
    return -(-num * total // den)


def nucleus(logits: np.ndarray, top_p: float) -> list[int]:
    """Step 4's kept ids, increasing: the shortest run of ids in decreasing weight (ties to
    the lower id) whose exact sum of :func:`weights` reaches ``top_p`` times their total;
    never empty (``top_p = 0`` keeps the most probable id). The row has been through steps
    1–3; ``top_p = 1`` keeps every id [decided: docs/semantics.md]."""
    w = weights(logits)
    if top_p >= 1.0:
        return list(range(w.size))
    order = np.argsort(-w, kind="stable")  # a full, stable sort: ties to the lower id
    running = np.cumsum(w[order])  # exact int64 sums
    size = int(np.argmax(running >= need(top_p, int(w.sum())))) + 1
    return sorted(order[:size].tolist())


def top_p(z: np.ndarray, p: float) -> np.ndarray:
    """Step 4 as a row: ``-inf`` outside :func:`nucleus`."""
    kept = np.zeros(len(z), dtype=bool)
    kept[nucleus(z, p)] = True
    return np.where(kept, _f32(z), np.float32(-np.inf))


def processed(
    logits: np.ndarray,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    logit_bias: Mapping[int, float] | None = None,
    generated: Sequence[int] = (),
) -> np.ndarray:
    """Steps 1–4 in :data:`STEP_ORDER`: the row step 5 draws from (a greedy row,
    ``temperature = 0``, at temperature 1: what ``logprobs_mode: "processed"`` reports)."""
    steps = {
        "logit_bias": lambda z: globals()["logit_bias"](z, logit_bias),
        "penalties": lambda z: penalties(z, generated, presence_penalty, frequency_penalty),
        "temperature": lambda z: globals()["temperature"](z, temperature),
        "top_p": lambda z: globals()["top_p"](z, top_p),
    }
    z = _f32(logits)
    for name in STEP_ORDER:
        z = steps[name](z)
    return z


# --- step 5: the draw ----------------------------------------------------------------------
def draw(z: np.ndarray, uniform: float) -> int:
    """Step 5: integer weights ``w = floor(e * 2**43)`` in increasing id order, ``r =
    floor(floor(u * 2**53) * sum(w) / 2**53)``, and the first id whose running sum of ``w``
    exceeds ``r`` (an id below ``2**-43`` of the top has weight 0: never drawn)."""
    w = weights(z)
    r = int(uniform * 2**53) * int(w.sum()) >> 53  # < sum(w) for u < 1
    return int(np.argmax(np.cumsum(w) > r))  # int64 sums: exact


def greedy(z: np.ndarray) -> int:
    """``temperature = 0``: the largest value, ties to the lowest id."""
    return int(by_probability(z)[0])


def step(
    logits: np.ndarray,
    *,
    uniform: float,
    temperature: float = 1.0,
    top_p: float = 1.0,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    logit_bias: Mapping[int, float] | None = None,
    generated: Sequence[int] = (),
) -> int:
    """One token from a row of float32 logits ``[V]`` whose non-token ids are ``-inf``.
    ``generated``: this sequence's tokens so far; ``uniform``: in [0, 1), drawn even when
    the row is greedy (one per step, spec §6)."""
    z = penalties(
        globals()["logit_bias"](logits, logit_bias), generated, presence_penalty, frequency_penalty
    )
    if temperature == 0.0:
        return greedy(z)
    return draw(processed(z, temperature=temperature, top_p=top_p), uniform)


# --- logprobs (spec §4) --------------------------------------------------------------------
def logprobs(logits: np.ndarray) -> np.ndarray:
    """The raw log-softmax in float64 (``-inf`` kept): what ``logprobs`` reports."""
    z = np.asarray(logits, dtype=np.float64)
    finite = z[z > -np.inf]
    top = finite.max()
    return z - (top + math.log(math.fsum(np.exp(finite - top).tolist())))


def top_ids(z: np.ndarray, k: int) -> list[int]:
    """The ``k`` most probable ids of a row of logits, best first, ties to the lower id
    (ordered by the float32 logits: float64 logprobs could tie two of them)."""
    return by_probability(z)[:k].tolist()


def token_text(data: bytes) -> str:
    """A token as ``logprobs`` names it: its text, or ``bytes:\\xNN..`` (every byte) when
    its bytes are not valid UTF-8 on their own."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data)


def reported(lp: float) -> float:
    return NEG_INF_LOGPROB if lp == -math.inf else float(lp)


def top_logprobs(z: np.ndarray, k: int, chosen: int, text: Callable[[int], str]) -> dict:
    """A ``top_logprobs`` entry of the row ``z``: its ``k`` best ids and the chosen one,
    keyed by text (two ids with one text keep the larger logprob), best first."""
    best: dict[str, tuple[float, int]] = {}
    lp = logprobs(z)
    for j in [*top_ids(z, k), chosen]:
        key, value = text(j), reported(lp[j])
        if key not in best or (value, -j) > (best[key][0], -best[key][1]):
            best[key] = (value, j)
    return {key: v for key, (v, _) in sorted(best.items(), key=lambda kv: (-kv[1][0], kv[1][1]))}


# --- text (spec §7, §10) -------------------------------------------------------------------
def final_text(data: bytes) -> str:
    """The characters of ``data`` that are settled: a trailing valid but unfinished
    character waits for more bytes; every invalid byte sequence is U+FFFD at once."""
    for n in (1, 2, 3):
        if n > len(data):
            break
        try:
            data[-n:].decode("utf-8")
            break  # it ends with a complete character
        except UnicodeDecodeError as err:
            if err.start == 0 and err.reason == "unexpected end of data":
                return data[:-n].decode("utf-8", "replace")
    return data.decode("utf-8", "replace")


def offset(data: bytes, b: int) -> int:
    """The character offset of a token whose bytes start at ``data[b]``: the index of the
    character it starts, or of the character it starts inside."""
    left = data[:b].decode("utf-8", "replace")
    whole = left + data[b:].decode("utf-8", "replace")
    return len(left) if whole == data.decode("utf-8", "replace") else len(left) - 1


def stop_cut(text: str, stop: Sequence[str]) -> int | None:
    """Where the text is cut: the earliest start of any stop string in it (None: none)."""
    hits = [text.find(s) for s in stop if s in text]
    return min(hits) if hits else None


def held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters a stream holds back: the longest end of ``text`` that
    begins a stop string (a stop string could still complete there)."""
    return max((n for s in stop for n in range(1, len(s)) if text.endswith(s[:n])), default=0)


# --- a request's choices (spec §2, §5–§10) -------------------------------------------------
def generator(seed: int, prompt: int, candidate: int) -> np.random.Generator:
    """Candidate ``candidate`` of prompt ``prompt``: its own stream, one uniform a step."""
    seq = np.random.SeedSequence(seed % 2**64, spawn_key=(prompt, candidate))
    return np.random.Generator(np.random.PCG64(seq))


@dataclass(frozen=True)
class _Request:
    """What every candidate of a request shares (see :func:`complete`)."""

    logits: Callable[[Sequence[int]], np.ndarray]
    token_bytes: Callable[[int], bytes]
    end_ids: Sequence[int]
    max_tokens: int
    stop: Sequence[str]
    k: int | None  # logprobs
    mode: str  # logprobs_mode
    sampling: dict

    def name(self, j: int) -> str:
        return token_text(self.token_bytes(j))

    def entry(self, tok: int, row: np.ndarray, at: int) -> tuple:
        """One logprobs entry: the token's text, logprob, top_logprobs and offset."""
        assert self.k is not None
        return (
            self.name(tok),
            reported(logprobs(row)[tok]),
            top_logprobs(row, self.k, tok, self.name),
            at,
        )


def complete(
    logits: Callable[[Sequence[int]], np.ndarray],
    prompts: Sequence[Sequence[int]],
    *,
    token_bytes: Callable[[int], bytes],
    end_ids: Sequence[int],
    seed: int,
    max_tokens: int = 16,
    n: int = 1,
    best_of: int | None = None,
    stop: Sequence[str] = (),
    echo: bool = False,
    logprobs: int | None = None,
    logprobs_mode: str = "raw",
    **sampling,
) -> dict:
    """A request's ``choices`` and ``usage``, from ``logits(tokens)``: the masked float32
    row that follows ``tokens``. Prompts are token ids (an empty one reads the first end
    id, never shown or counted); ``sampling`` holds :func:`step`'s fields. One full forward
    pass per token: slow and plain. (``suffix`` only changes what the model reads: pass
    the FIM-wrapped ids as the prompt.)"""
    req = _Request(
        logits, token_bytes, end_ids, max_tokens, stop, logprobs, logprobs_mode, sampling
    )
    best_of = n if best_of is None else best_of
    choices, generated = [], 0
    for p, prompt in enumerate(prompts):
        head, echoed = _prompt(req, prompt, echo)
        reads = list(prompt) or [end_ids[0]]
        cands = [_candidate(req, reads, generator(seed, p, c)) for c in range(best_of)]
        generated += sum(c["count"] for c in cands)
        ranked = sorted(range(best_of), key=lambda c: (-cands[c]["mean"], c))  # best first
        for j, c in enumerate(ranked[:n] if best_of > n else range(n)):
            entries = echoed + [(*e[:3], len(head) + e[3]) for e in cands[c]["entries"]]
            keys = ("tokens", "token_logprobs", "top_logprobs", "text_offset")
            lp = {key: [e[i] for e in entries] for i, key in enumerate(keys)}
            text = (head if echo else "") + cands[c]["text"]
            finish = cands[c]["finish_reason"]
            lp_or_none = None if logprobs is None else lp
            choices.append(
                {"text": text, "index": p * n + j, "logprobs": lp_or_none, "finish_reason": finish}
            )
    counted = sum(len(p) for p in prompts)
    usage = {"prompt_tokens": counted, "completion_tokens": generated}
    return {"choices": choices, "usage": {**usage, "total_tokens": counted + generated}}


def _prompt(req: _Request, prompt: Sequence[int], echo: bool) -> tuple[str, list]:
    """A prompt's text and, when echoed with logprobs, its entries: the first token has no
    logprob, each later one the raw ``log p(token | the tokens before it)``."""
    data, entries, at = b"".join(req.token_bytes(j) for j in prompt), [], 0
    for i, tok in enumerate(prompt if echo and req.k is not None else ()):
        start, at = offset(data, at), at + len(req.token_bytes(tok))
        first = (req.name(tok), None, None, start)  # nothing before it to condition on
        entries.append(first if i == 0 else req.entry(tok, req.logits(prompt[:i]), start))
    return data.decode("utf-8", "replace"), entries


def _candidate(req: _Request, reads: list[int], rng: np.random.Generator) -> dict:
    """One candidate: tokens until an end id, a stop string in the settled text, or
    ``max_tokens``; its text cut at the stop, and the entries of the tokens that start
    before the cut (the end token last, at the end of the text, when nothing was cut)."""
    tokens: list[int] = []  # the generated tokens, the end token left out
    starts: list[int] = []  # where each one's bytes start
    rows: list[tuple[int, np.ndarray]] = []  # each token drawn, and the row it reports
    data, raw_sum, cut, finish = b"", 0.0, None, "length"
    at_1 = {**req.sampling, "temperature": req.sampling.get("temperature", 1.0) or 1.0}
    while len(rows) < req.max_tokens:  # (one row per token drawn, an end token included)
        u, z = rng.random(), req.logits(reads + tokens)
        tok = step(z, uniform=u, generated=tokens, **req.sampling)
        raw_sum += float(logprobs(z)[tok])  # best_of ranks by the raw mean
        row = z if req.mode == "raw" or req.k is None else processed(z, generated=tokens, **at_1)
        rows.append((tok, row))
        if tok in req.end_ids:  # (a greedy row reports its distribution at temperature 1)
            finish = "stop"
            break
        starts, tokens, data = starts + [len(data)], tokens + [tok], data + req.token_bytes(tok)
        if (cut := stop_cut(final_text(data), req.stop)) is not None:
            break
    text = data.decode("utf-8", "replace")  # the end: an unfinished character is U+FFFD
    cut = stop_cut(text, req.stop) if cut is None else cut
    offsets = [offset(data, b) for b in starts] + [len(text)]  # (the end token: at the end)
    kept = [(t, row, at) for (t, row), at in zip(rows, offsets) if cut is None or at < cut]
    entries = [req.entry(*e) for e in kept] if req.k is not None else []
    count, finish = len(rows), "stop" if cut is not None else finish
    return {
        "text": text[:cut],
        "finish_reason": finish,
        "entries": entries,
        "count": count,
        "mean": raw_sum / max(count, 1),
    }
