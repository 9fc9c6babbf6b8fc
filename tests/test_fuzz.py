"""Issue 13: no body, however hostile, gets a 5xx or harms the server; every refusal is an
OpenAI error body that names a field the body has (or null for the whole body).

Run by ``make test`` with a few hundred examples per boundary; ``pytest -m slow
tests/test_fuzz.py`` runs 5,000 through the HTTP server (see docs/server.md for the
figure). Bodies come from ``tests/fuzz_bodies.py``.
"""

from __future__ import annotations

import http.client
import json
import os
from collections import Counter
from urllib.parse import urlsplit

import pytest
from fuzz_bodies import MODEL, bodies, chat_bodies
from hypothesis import HealthCheck, assume, given, settings
from serving import running

from sampler import Engine
from sampler.errors import RequestError, encodable
from sampler.server import ServerConfig, create_app

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "250"))
SLOW_EXAMPLES = 5000
BUDGET = 400  # row-steps a valid request may cost here (sequences x max_tokens)
_SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine.load(tiny_model_dir)


@pytest.fixture(scope="module")
def server(engine):
    app = create_app(engine, ServerConfig(max_sequences=16))
    with running(app) as url:
        yield urlsplit(url), app


def _cheap(engine: Engine, obj) -> bool:
    """False for a valid request that would generate more than the budget (the server
    would run it correctly, just slowly: not what this test is for)."""
    if not isinstance(obj, dict):
        return True
    try:
        req = engine.parse({"model": MODEL, **obj} if "model" not in obj else obj)
    except RequestError:
        return True
    return len(req.prompts) * req.best_of * req.max_tokens <= BUDGET


def _post(url, raw: bytes, path: str = "/v1/completions") -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    try:
        conn.request("POST", path, body=raw, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def check_refusal(obj, err: dict) -> None:
    """The four keys; ``param`` is null, a top-level field of the body (lone surrogates
    in it escaped, as the message's are), or the required field the body lacks."""
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    if err["code"] == "missing_required_parameter":
        assert err["param"] in ("model", "prompt"), err
        assert not isinstance(obj, dict) or obj.get(err["param"]) is None, err
    elif err["param"] is not None:
        assert isinstance(obj, dict), err
        assert err["param"] in {encodable(k) for k in obj}, err


def check_over_http(url, obj, raw: bytes) -> int:
    status, headers, payload = _post(url, raw)
    assert status in (200, 400, 404), (status, payload[:500])
    if status != 200:
        check_refusal(obj, json.loads(payload)["error"])
        return status
    if headers.get("content-type", "").startswith("text/event-stream"):
        events = [e for e in payload.decode().split("\n\n") if e]
        assert events[-1] == "data: [DONE]", events[-3:]
        for e in events[:-1]:
            assert "error" not in json.loads(e[len("data: ") :]), e
    else:
        assert json.loads(payload)["object"] == "text_completion"
    return status


def _still_answers(url, engine) -> None:
    body = {"model": MODEL, "prompt": "still here", "max_tokens": 3, "seed": 7}
    status, _, payload = _post(url, json.dumps(body).encode())
    assert status == 200
    assert json.loads(payload)["choices"] == engine.complete(body)["choices"]


def _fuzz_http(server, engine, examples: int) -> Counter:
    """Run the property over ``examples`` bodies; returns the statuses seen."""
    url, app = server
    seen: Counter = Counter()

    @settings(max_examples=examples, **_SETTINGS)
    @given(bodies())
    def prop(case):
        obj, raw = case
        assume(_cheap(engine, obj))
        seen[check_over_http(url, obj, raw)] += 1

    prop()
    _still_answers(url, engine)
    assert app.state.models[MODEL].scheduler.load == {"running": 0, "waiting": 0, "background": 0}
    assert seen[200] and seen[400] and seen[404], seen  # the bodies reach every outcome
    return seen


def test_no_body_gets_a_5xx_over_http(server, engine):
    _fuzz_http(server, engine, EXAMPLES)


@pytest.mark.slow
def test_no_body_gets_a_5xx_over_http_5000(server, engine):
    seen = _fuzz_http(server, engine, SLOW_EXAMPLES)
    print(
        f"\n{sum(seen.values())} requests (with hypothesis's shrinking and replays): "
        + ", ".join(f"{k}: {v}" for k, v in sorted(seen.items()))
    )


@settings(max_examples=EXAMPLES, **_SETTINGS)
@given(bodies())
def test_the_library_raises_only_request_errors(engine, case):
    """The same boundary for ``Engine.complete``: an invalid body raises RequestError,
    never another exception; a valid one completes (streams included)."""
    obj, raw = case
    if obj is None:
        try:
            obj = json.loads(raw)  # a body that is JSON but not an object
        except (ValueError, RecursionError):
            return  # bytes that are not JSON never reach the library
    assume(_cheap(engine, obj))
    try:
        out = engine.complete(obj)
        if not isinstance(out, dict):
            list(out)
    except RequestError as e:
        check_refusal(obj, e.to_dict()["error"])


# -- the chat endpoint and /tokenize: the same property


def _cheap_chat(engine: Engine, obj) -> bool:
    from sampler.chat_request import parse_chat_request

    if not isinstance(obj, dict):
        return True
    try:
        req = parse_chat_request({"model": MODEL, **obj}, engine.info)
    except RequestError:
        return True
    return req.n * req.max_tokens <= BUDGET


def check_chat_refusal(obj, err: dict) -> None:
    """As :func:`check_refusal`, but a field inside a message is named by its path
    (``messages.[0].content.[1].type``)."""
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    param = err["param"]
    if param is None:
        return
    assert isinstance(obj, dict), err
    top = param.split(".")[0]
    assert top in {encodable(k) for k in obj} or (
        err["code"] == "missing_required_parameter" and top in ("model", "messages")
    ), err


@settings(max_examples=EXAMPLES, **_SETTINGS)
@given(chat_bodies())
def test_no_chat_body_gets_a_5xx(server, engine, case):
    url, app = server
    obj, raw = case
    assume(_cheap_chat(engine, obj))
    status, headers, payload = _post(url, raw, "/v1/chat/completions")
    assert status in (200, 400, 404), (status, payload[:500])
    if status != 200:
        check_chat_refusal(obj, json.loads(payload)["error"])
    elif headers.get("content-type", "").startswith("text/event-stream"):
        events = [e for e in payload.decode().split("\n\n") if e]
        assert events[-1] == "data: [DONE]", events[-3:]
        for e in events[:-1]:
            assert json.loads(e[len("data: ") :])["object"] == "chat.completion.chunk", e
    else:
        assert json.loads(payload)["object"] == "chat.completion"
    # /tokenize takes the same messages: a 200 or a 400 naming a field, never a 5xx
    if isinstance(obj, dict) and obj.get("messages") is not None:
        body = json.dumps({"messages": obj["messages"]}).encode()
        status, _, payload = _post(url, body, "/tokenize")
        assert status in (200, 400), (status, payload[:500])
        if status == 400:
            check_chat_refusal({"messages": obj["messages"]}, json.loads(payload)["error"])


@settings(max_examples=EXAMPLES, **_SETTINGS)
@given(chat_bodies())
def test_engine_chat_raises_only_request_errors(engine, case):
    obj, raw = case
    if obj is None:
        return
    assume(_cheap_chat(engine, obj))
    try:
        out = engine.chat(obj)
        if not isinstance(out, dict):
            list(out)
    except RequestError as e:
        check_chat_refusal(obj, e.to_dict()["error"])
