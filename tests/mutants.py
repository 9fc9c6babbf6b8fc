"""Servers that break one rule each: the conformance kit must catch every one of them.

A mutant is our own server with one defect put in, either in the model work (a changed
sampling step, patched in for the test) or on the wire (a proxy that rewrites requests or
responses). Each names the checks it must fail, and the checks it may also fail because they
lean on the broken feature; every other check must still pass.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sampler import reference

# --- wire mutants: a rewriting proxy ----------------------------------------------------------
Edit = Callable[[dict[str, Any]], dict[str, Any]]


def proxy(
    app: Any, *, request: Edit | None = None, response: Any = None, events: Any = None
) -> Any:
    """An ASGI app in front of ``app``: ``request(body) -> body`` rewrites each JSON request;
    ``response(body, status, request) -> body`` each JSON response; ``events(list, request)
    -> list`` the parsed events of each stream."""

    async def asgi(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        raw = b""
        while True:
            msg = await receive()
            raw += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if isinstance(body, dict) and request is not None:  # the app gets the edited body,
            raw = json.dumps(request(json.loads(raw))).encode()  # the edits see the original
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:  # the client stays: the app's disconnect listener waits until it is done
                await asyncio.Event().wait()
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}

        start: dict = {}
        chunks: list[bytes] = []

        async def keep(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                start.update(msg)
            elif msg["type"] == "http.response.body":
                chunks.append(msg.get("body", b""))

        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        headers.append((b"content-length", str(len(raw)).encode()))
        await app({**scope, "headers": headers}, replay, keep)
        out = b"".join(chunks)
        kind = dict(start.get("headers", [])).get(b"content-type", b"")
        if not isinstance(body, dict):  # GET /health, /v1/models, a body not JSON: as is
            pass
        elif kind.startswith(b"text/event-stream") and events is not None:
            out = _rewrite_events(out, lambda evs: events(evs, body))
        elif kind.startswith(b"application/json") and response is not None:
            out = json.dumps(response(json.loads(out), start["status"], body)).encode()
        hs = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
        hs.append((b"content-length", str(len(out)).encode()))
        await send({**start, "headers": hs})
        await send({"type": "http.response.body", "body": out})

    asgi.state = app.state  # type: ignore[attr-defined]  (tests/serving.py shuts it down)
    return asgi


def _rewrite_events(raw: bytes, edit: Callable[[list], list]) -> bytes:
    evs = []
    for block in raw.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block[6:]
            evs.append(data if data == "[DONE]" else json.loads(data))
    out = edit(evs)
    return "".join(f"data: {e if e == '[DONE]' else json.dumps(e)}\n\n" for e in out).encode()


# --- the mutants --------------------------------------------------------------------------------
@dataclass
class Mutant:
    name: str
    must: set[str]  # checks that must not pass
    may: set[str] = field(default_factory=set)  # checks that may also not pass
    wire: dict[str, Any] = field(default_factory=dict)  # proxy(...) keyword arguments
    patch: Callable[[Any], None] | None = None  # patch(monkeypatch): a model-work defect


def _choices(body: dict, each: Callable[[dict], None]) -> dict:
    for c in body.get("choices") or []:
        each(c)
    return body


def _no_prompt_logprobs(body: dict, status: int, req: dict) -> dict:
    if status != 200 or not req.get("echo") or req.get("logprobs") is None:
        return body
    prompts = req["prompt"]
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    n = req.get("n") or 1

    def cut(c: dict) -> None:
        o, prompt = c.get("logprobs"), prompts[c["index"] // n]
        if not o:
            return
        if isinstance(prompt, str):
            k = sum(1 for off in o["text_offset"] if off < len(prompt))
        else:
            k = len(prompt)
        for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            o[key] = o[key][k:]

    return _choices(body, cut)


def _first_not_null(body: dict, status: int, req: dict) -> dict:
    def fill(c: dict) -> None:
        o = c.get("logprobs")
        if req.get("echo") and o and o["token_logprobs"] and o["token_logprobs"][0] is None:
            o["token_logprobs"][0] = 0.0
            o["top_logprobs"][0] = {o["tokens"][0]: 0.0}

    return _choices(body, fill)


def _leak_stop(evs: list, req: dict) -> list:
    stops = _stops(req)
    if not stops:
        return evs
    s = stops[0]
    out = []
    for e in evs:
        if isinstance(e, dict) and e.get("choices") and e["choices"][0].get("finish_reason"):
            leak = json.loads(json.dumps(e))
            leak["choices"][0].update(text=s, finish_reason=None, logprobs=None)
            out.append(leak)
        out.append(e)
    return out


def _stops(req: dict | None) -> list[str]:
    """The request's stop strings, when they are valid ones (else the server refuses)."""
    stop = (req or {}).get("stop")
    stops = [stop] if isinstance(stop, str) else stop
    ok = isinstance(stops, list) and 0 < len(stops) <= 4
    return stops if ok and all(isinstance(x, str) and x for x in stops) else []


def _drop_stop(req: dict) -> dict:
    if _stops(req) and not req.get("stream"):
        req.pop("stop")
    return req


def _keep_stop(body: dict, status: int, req: dict) -> dict:
    stops = _stops(req)
    if status != 200 or not stops:
        return body

    def cut(c: dict) -> None:
        hits = [(c["text"].find(s), s) for s in stops if s in c["text"]]
        if hits:
            at, s = min(hits)
            c["text"], c["finish_reason"] = c["text"][: at + len(s)], "stop"

    return _choices(body, cut)


def _random_seed(req: dict) -> dict:
    if isinstance(req.get("seed"), int) and not isinstance(req["seed"], bool):
        req["seed"] = random.randrange(2**31)
    return req


def _n(req: dict | None) -> int:
    """The request's n when it is a valid one above 1 (else 1: left to the server)."""
    n = (req or {}).get("n")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 < n <= 128:
        return 1
    best = (req or {}).get("best_of")
    return n if best is None or (isinstance(best, int) and n <= best <= 20) else 1


def _n_as_one(req: dict) -> dict:
    if _n(req) > 1:
        req["n"] = 1
        req.pop("best_of", None)
    return req


def _copies(body: dict, status: int, req: dict) -> dict:
    n = _n(req)
    if status == 200 and n > 1 and len(body.get("choices", [])) >= 1:
        per = body["choices"]
        body["choices"] = [{**per[i // n], "index": i} for i in range(len(per) * n)]
    return body


def _copied_events(evs: list, req: dict) -> list:
    n = _n(req)
    if n == 1:
        return evs
    out = []
    for e in evs:
        if isinstance(e, dict) and e.get("choices"):
            c = e["choices"][0]
            out += [{**e, "choices": [{**c, "index": c["index"] * n + j}]} for j in range(n)]
        else:
            out.append(e)
    return out


def _no_best_of(req: dict) -> dict:
    best = req.get("best_of")
    if isinstance(best, int) and not isinstance(best, bool) and 1 <= best <= 20:
        req.pop("best_of")
    return req


def _usage_per_choice(body: dict, status: int, req: dict) -> dict:
    u = body.get("usage")
    if status == 200 and u:
        u["prompt_tokens"] *= len(body["choices"])
        u["total_tokens"] = u["prompt_tokens"] + u["completion_tokens"]
    return body


def _no_param(body: dict, status: int, req: dict) -> dict:
    if status >= 400 and isinstance(body.get("error"), dict):
        body["error"].pop("param", None)
    return body


def _clamp_bias(req: dict) -> dict:
    bias = req.get("logit_bias")
    if isinstance(bias, dict):
        req["logit_bias"] = {
            k: max(-5.0, min(5.0, v)) if isinstance(v, (int, float)) else v for k, v in bias.items()
        }
    return req


def _nan(body: dict, status: int, req: dict) -> dict:
    def spoil(c: dict) -> None:
        o = c.get("logprobs")
        if req.get("echo") and (req.get("logprobs") or 0) >= 5 and o and len(o["tokens"]) > 1:
            o["token_logprobs"][1] = math.nan

    return _choices(body, spoil)


# --- model-work mutants ---------------------------------------------------------------------------
def _step_mutant(choose: Callable[[np.ndarray, Any, float], int | None]) -> Callable[[Any], None]:
    """A patch of the batch's step: ``choose(logits_row, row, uniform)`` picks the token
    instead (None: as the real step); its logprobs stay the raw model's."""

    def patch(monkeypatch: Any) -> None:
        import sampler.batch as batch

        real = batch.sample_step

        def step(logits: np.ndarray, rows: Any, uniforms: Any, **kw: Any) -> Any:
            out = real(logits, rows, uniforms, **kw)
            for b, row in enumerate(rows):
                tok = choose(logits[b], row, uniforms[b])
                if tok is not None and tok != int(out.tokens[b]):
                    raw = float(reference.logprobs(logits[b])[tok])
                    out.tokens[b], out.logprob[b], out.reported[b] = tok, raw, raw
            return out

        monkeypatch.setattr(batch, "sample_step", step)

    return patch


def _biased(z: np.ndarray, row: Any) -> np.ndarray:
    bias = row.params.logit_bias
    return z if bias is None else reference.logit_bias(z, dict(zip(*(b.tolist() for b in bias))))


def _kept(z: np.ndarray, keep: list[int]) -> np.ndarray:
    out = np.full_like(z, -np.inf)
    out[keep] = z[keep]
    return out


def _temperature_last(z: np.ndarray, row: Any, u: float) -> int | None:
    p = row.params
    if p.temperature in (0.0, 1.0) or p.top_p >= 1.0:
        return None
    z = _biased(z, row)
    return reference.draw(
        reference.temperature(_kept(z, reference.nucleus(z, p.top_p)), p.temperature), u
    )


def _loose_nucleus(z: np.ndarray, row: Any, u: float) -> int | None:
    p = row.params
    if p.temperature == 0.0 or p.top_p >= 1.0:
        return None
    t = reference.temperature(_biased(z, row), p.temperature)
    keep = reference.nucleus(t, p.top_p)
    order = reference.by_probability(t)
    return reference.draw(_kept(t, [int(i) for i in order[: len(keep) + 1]]), u)


def _hidden_top_k(z: np.ndarray, row: Any, u: float) -> int | None:
    p = row.params
    if p.temperature == 0.0:
        return None
    z = _biased(z, row)
    z = _kept(z, [int(i) for i in reference.by_probability(z)[:3]])
    return reference.draw(reference.processed(z, temperature=p.temperature, top_p=p.top_p), u)


def _prompt_penalised(monkeypatch: Any) -> None:
    from sampler.engine import Completion

    real = Completion.start

    def start(self: Any, batch: Any) -> None:
        real(self, batch)
        for prompt, group in zip(self.req.prompts, self.groups):
            for c in group:
                for t in prompt.tokens:
                    c.row.counts.add(int(t))

    monkeypatch.setattr(Completion, "start", start)


BIAS_USERS = {
    "logit_bias_force",
    "logit_bias_ban",
    "penalties_skip_prompt",
    "raw_logprobs",
    "echo_matches_generation",
}
ERRORS = {
    "required_fields",
    "out_of_range",
    "wrong_types",
    "non_json_body",
    "unknown_field",
    "unknown_model",
    "context_length",
    "stream_options_alone",
    "at_most_four_stops",
    "suffix_with_echo",
    "best_of_below_n",
    "best_of_stream",
}
SAMPLERS = {
    "sampling_defaults",
    "top_p_minimal_nucleus",
    "sample_frequencies",
    "tempered_frequencies",
    "tiny_top_p",
    "temperature_before_top_p",
    "logit_bias_ban",
    "n_choices_differ",
}

MUTANTS = [
    Mutant(
        "temperature after top_p",
        {"temperature_before_top_p"},
        patch=_step_mutant(_temperature_last),
    ),
    Mutant(
        "a nucleus one token too large",
        {"top_p_minimal_nucleus"},
        {"tiny_top_p", "temperature_before_top_p"},
        patch=_step_mutant(_loose_nucleus),
    ),
    Mutant(
        "a hidden top_k of 3",
        {"sample_frequencies"},
        {
            "tempered_frequencies",
            "logit_bias_ban",
            "top_p_minimal_nucleus",
            "temperature_before_top_p",
            "sampling_defaults",
        },
        patch=_step_mutant(_hidden_top_k),
    ),
    Mutant("the prompt counted in penalties", {"penalties_skip_prompt"}, patch=_prompt_penalised),
    Mutant(
        "logit_bias clamped to ±5",
        {"out_of_range", "logit_bias_force"},
        BIAS_USERS,
        wire={"request": _clamp_bias},
    ),
    Mutant(
        "prompt logprobs missing with echo",
        {"echo_first_null", "echo_scoring"},
        {
            "token_ids_verbatim",
            "echo_matches_generation",
            "text_offsets",
            "bytes_form",
            "logit_bias_force",
        },
        wire={"response": _no_prompt_logprobs},
    ),
    Mutant("first echo entry not null", {"echo_first_null"}, wire={"response": _first_not_null}),
    Mutant(
        "stop text leaked in a stream chunk", {"stop_stream_no_leak"}, wire={"events": _leak_stop}
    ),
    Mutant(
        "the stop string kept",
        {"stop_cut", "stop_logprobs_cut"},
        wire={"request": _drop_stop, "response": _keep_stop},
    ),
    Mutant(
        "seed ignored",
        {"same_seed_same_output"},
        {"seed_under_load", "seed_n_growth", "stream_equals_nonstream", "best_of_picks_best"},
        wire={"request": _random_seed},
    ),
    Mutant(
        "n > 1 choices identical",
        {"n_choices_differ"},
        SAMPLERS
        | {
            "best_of_ranked",
            "best_of_picks_best",
            "best_of_usage",
            "seed_n_growth",
            "best_of_stream",
            "best_of_below_n",
        },
        wire={"request": _n_as_one, "response": _copies, "events": _copied_events},
    ),
    Mutant(
        "best_of ignored",
        {"best_of_ranked", "best_of_picks_best"},
        {"best_of_usage", "best_of_stream", "best_of_below_n"},
        wire={"request": _no_best_of},
    ),
    Mutant(
        "usage counts the prompt per choice",
        {"prompt_tokens_once"},
        wire={"response": _usage_per_choice},
    ),
    Mutant(
        "an error without param",
        {"out_of_range", "wrong_types"},
        ERRORS,
        wire={"response": _no_param},
    ),
    Mutant("NaN logprobs", {"no_nan"}, {"echo_matches_generation"}, wire={"response": _nan}),
]


class _Setattr:
    """What the patches need of pytest's monkeypatch, in a process of its own."""

    def setattr(self, obj: Any, name: str, value: Any) -> None:
        setattr(obj, name, value)


def main(argv: list[str]) -> None:
    """``python tests/mutants.py NAME PORT``: serve tiny-random-cl100k with mutant NAME's
    defect put in ("" for none) on 127.0.0.1:PORT, until killed."""
    import uvicorn

    from sampler.engine import Engine
    from sampler.server import create_app

    name, port = argv[0], int(argv[1])
    mutant = next((m for m in MUTANTS if m.name == name), None) if name else None
    if name and mutant is None:
        raise SystemExit(f"no mutant {name!r}")
    if mutant is not None and mutant.patch is not None:
        mutant.patch(_Setattr())
    app = create_app(Engine.load("tiny-random-cl100k"))
    served = proxy(app, **mutant.wire) if mutant is not None and mutant.wire else app
    uvicorn.run(served, host="127.0.0.1", port=port, log_level="warning")


@contextmanager
def serving(mutant: Mutant | None) -> Iterator[str]:
    """The base URL (``.../v1``) of our server with ``mutant``'s defect put in, served by
    a process of its own (the kit and the server then do not share one GIL)."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    name = mutant.name if mutant is not None else ""
    proc = subprocess.Popen([sys.executable, __file__, name, str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}")
            try:
                urllib.request.urlopen(url + "/health", timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield url + "/v1"
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
