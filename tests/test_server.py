"""The HTTP server, driven by the official ``openai`` SDK against a real uvicorn on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest
from serving import running

from sampler import Engine
from sampler.server import ServerConfig, create_app

KEY = "test-key"
MODEL = "tiny-random-cl100k"


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine.load(tiny_model_dir)


@pytest.fixture(scope="module")
def app(engine):
    return create_app(engine, ServerConfig(api_key=KEY, max_body_bytes=2**20))


@pytest.fixture(scope="module")
def base(app):
    with running(app) as url:
        yield url


@pytest.fixture()
def client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0)


def http(method, url, body=None, headers=None, raw=False):
    """(status, parsed JSON or text) with the standard library, for what the SDK hides."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Authorization": f"Bearer {KEY}", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
            return resp.status, (text if raw else json.loads(text))
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read().decode())


def dump(obj):
    """An SDK object as the JSON dict it came from (extra fields included)."""
    return obj.model_dump(exclude_unset=True)


# --- the happy paths, SDK in, same answers as the library ----------------------------------
def test_non_stream_equals_library(client, engine):
    body = dict(prompt="Hello there", max_tokens=8, seed=3, logprobs=2, temperature=0.9)
    got = dump(client.completions.create(model=MODEL, **body))
    want = engine.complete(model=MODEL, **body)
    assert got["choices"] == want["choices"] and got["usage"] == want["usage"]
    assert got["object"] == "text_completion" and got["model"] == MODEL
    assert got["system_fingerprint"] == want["system_fingerprint"]


def test_stream_with_usage_equals_non_stream(client):
    body = dict(model=MODEL, prompt="Stream me", max_tokens=10, seed=5, n=2, logprobs=1)
    full = dump(client.completions.create(**body))
    chunks = list(
        client.completions.create(**body, stream=True, stream_options={"include_usage": True})
    )
    texts = ["", ""]
    for ch in chunks[:-1]:
        (c,) = ch.choices
        texts[c.index] += c.text
        assert ch.usage is None
    assert chunks[-1].choices == [] and dump(chunks[-1].usage) == full["usage"]
    assert texts == [c["text"] for c in full["choices"]]


def test_sse_framing(base):
    status, text = http(
        "POST",
        base + "/v1/completions",
        {"model": MODEL, "prompt": "x", "max_tokens": 3, "stream": True},
        raw=True,
    )
    assert status == 200
    events = text.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])
    assert json.loads(events[0][len("data: ") :])["object"] == "text_completion"


def test_multiple_prompts_and_n(client):
    r = dump(
        client.completions.create(model=MODEL, prompt=["a", "b c", "d"], n=2, max_tokens=4, seed=1)
    )
    assert [c["index"] for c in r["choices"]] == list(range(6))
    assert r["usage"]["completion_tokens"] == 24


def test_echo_logprobs_max_tokens_zero(client, engine):
    prompt = [9906, 1917, 0, 11]
    r = dump(
        client.completions.create(model=MODEL, prompt=prompt, echo=True, max_tokens=0, logprobs=1)
    )
    lp = r["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == 4 and lp["token_logprobs"][0] is None
    assert r["choices"][0]["finish_reason"] == "length"
    want = engine.complete(model=MODEL, prompt=prompt, echo=True, max_tokens=0, logprobs=1)
    assert r["choices"] == want["choices"]


def test_best_of_and_stop(client, engine):
    body = dict(prompt="Best", max_tokens=6, seed=11, n=2, best_of=4, stop=["e", "\n"])
    r = dump(client.completions.create(model=MODEL, **body))
    assert r["choices"] == engine.complete(model=MODEL, **body)["choices"]
    assert all("e" not in c["text"] and "\n" not in c["text"] for c in r["choices"])


def test_seed_reproducible(client):
    a = dump(client.completions.create(model=MODEL, prompt="Seed", max_tokens=12, seed=99))
    b = dump(client.completions.create(model=MODEL, prompt="Seed", max_tokens=12, seed=99))
    assert a["choices"] == b["choices"] and a["id"] != b["id"]


def test_async_client(base):
    async def go():
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0)
        r = await client.completions.create(model=MODEL, prompt="Async", max_tokens=4, seed=2)
        stream = await client.completions.create(
            model=MODEL, prompt="Async", max_tokens=4, seed=2, stream=True
        )
        text = "".join([c.choices[0].text async for c in stream])
        await client.close()
        return r.choices[0].text, text

    full, streamed = asyncio.run(go())
    assert full == streamed


def test_models_and_health(client, base):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    card = dump(client.models.retrieve(MODEL))
    assert card["object"] == "model" and card["owned_by"] == "refsampler"
    assert card["refsampler"]["extensions"]["logprobs_mode"] == ["raw", "processed"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    status, body = http("GET", base + "/health")
    assert status == 200 and body["status"] == "ok" and MODEL in body["models"]


# --- concurrency ---------------------------------------------------------------------------------
def test_concurrent_seeded_streams_equal_their_solo_twins(client, app, engine):
    bodies = [
        dict(
            prompt=f"Concurrent request number {i}" + " more" * i,
            max_tokens=12 + i,
            seed=100 + i,
            logprobs=1,
            temperature=0.8,
            top_p=0.9,
        )
        for i in range(8)
    ]
    solo = [engine.complete(model=MODEL, **b) for b in bodies]
    results: list = [None] * 8
    steps_before = app.state.models[MODEL].scheduler.steps

    def stream(i):
        chunks = client.completions.create(model=MODEL, stream=True, **bodies[i])
        text, tokens = "", []
        for ch in chunks:
            c = ch.choices[0]
            text += c.text
            if c.logprobs is not None:
                tokens += c.logprobs.tokens
        results[i] = (text, tokens)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(8):
        want = solo[i]["choices"][0]
        assert results[i] == (want["text"], want["logprobs"]["tokens"])
    steps = app.state.models[MODEL].scheduler.steps - steps_before
    total = sum(s["usage"]["completion_tokens"] for s in solo)
    assert steps < total  # requests shared steps: the batch was really shared


def test_client_disconnect_frees_its_sequences(base, app):
    sched = app.state.models[MODEL].scheduler
    client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0)
    stream = client.completions.create(
        model=MODEL, prompt="Long", max_tokens=1500, stream=True, logit_bias={"100257": -100}
    )
    for _, _chunk in zip(range(3), stream):
        pass
    assert sched.load["running"] == 1
    stream.close()
    deadline = time.time() + 10
    while sched.load["running"] and time.time() < deadline:
        time.sleep(0.05)
    assert sched.load["running"] == 0


# --- errors ---------------------------------------------------------------------------------------
def test_bad_request_errors_name_the_parameter(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="x", n=200)
    assert e.value.status_code == 400 and e.value.param == "n"
    assert e.value.code == "integer_above_max_value"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="x", logit_bias={"AI": 1})
    assert e.value.param == "logit_bias"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="x", stream=True, best_of=3)
    assert e.value.param == "best_of"


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-9", prompt="x")
    assert e.value.param == "model" and e.value.code == "model_not_found"


def test_api_key(base):
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
        status, body = http(
            "POST", base + "/v1/completions", {"model": MODEL, "prompt": "x"}, headers=headers
        )
        assert status == 401 and set(body["error"]) == {"message", "type", "param", "code"}
    status, _ = http("GET", base + "/health", headers={"Authorization": ""})
    assert status == 200  # health needs no key


def test_routes_methods_body_size_and_json(base):
    status, body = http("GET", base + "/v1/nothing")
    assert status == 404 and body["error"]["message"] == "Invalid URL (GET /v1/nothing)"
    status, body = http("GET", base + "/v1/completions")
    assert status == 405 and "Invalid method" in body["error"]["message"]
    status, body = http("POST", base + "/v1/completions", b"{not json")
    assert status == 400 and "could not parse the JSON body" in body["error"]["message"]
    big = {"model": MODEL, "prompt": "x" * (2**20 + 10)}
    status, body = http("POST", base + "/v1/completions", big)
    assert status == 413 and body["error"]["type"] == "invalid_request_error"
    status, body = http(
        "POST", base + "/v1/completions", {"model": MODEL, "prompt": "x", "top_k": 1}
    )
    assert status == 400 and body["error"]["param"] == "top_k"  # 422 never


def test_limits_and_queue_full(engine):
    app = create_app(engine, ServerConfig(max_prompts=2, max_sequences=4, max_waiting=0))
    with running(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=MODEL, prompt=["a", "b", "c"])
        assert e.value.param == "prompt"
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=MODEL, prompt="a", n=2, best_of=5)
        assert e.value.param == "best_of"
        with pytest.raises(openai.RateLimitError) as e:  # no room to wait at all
            client.completions.create(model=MODEL, prompt="a", max_tokens=2)
        assert e.value.status_code == 429


def test_internal_error_is_500_with_its_text(engine, monkeypatch):
    from sampler import engine as engine_module

    def broken(self):
        raise RuntimeError("boom in the step")

    app = create_app(engine)
    with running(app) as url:
        monkeypatch.setattr(engine_module.Batch, "advance", broken)
        status, body = http("POST", url + "/v1/completions", {"model": MODEL, "prompt": "x"})
        assert status == 500 and body["error"]["type"] == "server_error"
        assert "boom in the step" in body["error"]["message"]
        status, text = http(
            "POST",
            url + "/v1/completions",
            {"model": MODEL, "prompt": "x", "stream": True},
            raw=True,
        )
        assert status == 200  # the stream had begun: the error is sent in-band
        event = json.loads(text.strip().split("\n\n")[-1][len("data: ") :])
        assert "boom in the step" in event["error"]["message"]
        monkeypatch.undo()


def test_every_500_is_logged_with_its_traceback_and_request_id(engine, monkeypatch, caplog):
    """Issue 13 B: a failure on the scheduler thread reaches the log with its traceback (the
    worker's frames) and the request id that the response carries."""
    from sampler import engine as engine_module

    def broken(self):
        raise RuntimeError("boom on the worker")

    app = create_app(engine)
    with running(app) as url, caplog.at_level("ERROR", logger="sampler"):
        monkeypatch.setattr(engine_module.Batch, "advance", broken)
        for stream in (False, True):
            req = urllib.request.Request(
                url + "/v1/completions",
                method="POST",
                data=json.dumps({"model": MODEL, "prompt": "x", "stream": stream}).encode(),
            )
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    rid, text = resp.headers["x-request-id"], resp.read().decode()
            except urllib.error.HTTPError as e:
                rid, text = e.headers["x-request-id"], e.read().decode()
            assert rid.startswith("req_") and rid in text  # the message names the id
            record = next(r for r in caplog.records if rid in r.getMessage())
            assert record.exc_info and record.exc_info[1].args == ("boom on the worker",)
            frames = "".join(__import__("traceback").format_exception(*record.exc_info))
            assert "in broken" in frames  # the traceback reaches into the worker's call
        monkeypatch.undo()


def test_serve_logs_the_sampler_loggers_next_to_uvicorn():
    from sampler.server import log_config

    cfg = log_config()
    assert cfg["loggers"]["sampler"]["handlers"] == cfg["loggers"]["uvicorn"]["handlers"]


def test_a_failing_row_fails_only_its_own_request(engine, monkeypatch):
    """Issue 13 C: a row that raises inside sample_step (injected: temperature 0.123) fails
    its request alone -- a 500, or in-band in a stream -- and concurrent requests sharing
    its steps finish with exactly their solo outputs (seeded)."""
    from sampler import batch as engine_module  # (where the batch steps its rows)

    real = engine_module.sample_step

    def poisoned(logits, rows, uniforms, **kw):
        if any(r.params.temperature == 0.123 for r in rows):
            raise IndexError("injected failure of one row")
        return real(logits, rows, uniforms, **kw)

    bodies = [
        dict(
            prompt=f"Innocent {i}",
            max_tokens=150,
            seed=i,
            n=1 + i % 2,
            logprobs=1,
            temperature=0.9,
            stream=bool(i % 2),
            logit_bias={"100257": -100},
        )
        for i in range(4)
    ]
    solo = [engine.complete(model=MODEL, **{**b, "stream": False}) for b in bodies]
    monkeypatch.setattr(engine_module, "sample_step", poisoned)
    app = create_app(engine)
    results: list = [None] * 4
    with running(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)

        def run(i):
            b = bodies[i]
            if not b["stream"]:
                results[i] = client.completions.create(model=MODEL, **b).model_dump()["choices"]
                return
            texts = {}
            for ch in client.completions.create(model=MODEL, **b):
                c = ch.choices[0]
                texts[c.index] = texts.get(c.index, "") + c.text
            results[i] = texts

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        sched = app.state.models[MODEL].scheduler
        deadline = time.time() + 60
        while sched.load["running"] < 6:  # all innocent sequences are in the batch
            assert time.time() < deadline, sched.load
            time.sleep(0.01)
        bad = {"model": MODEL, "prompt": "Hello", "max_tokens": 5, "temperature": 0.123}
        status, body = http("POST", url + "/v1/completions", bad)
        assert status == 500 and "injected failure of one row" in body["error"]["message"]
        status, text = http("POST", url + "/v1/completions", {**bad, "stream": True}, raw=True)
        assert status == 200 and '"error"' in text.split("\n\n")[-2] and "[DONE]" not in text
        assert sched.load["running"] == 6  # the bad rows met the innocent ones, which go on
        for t in threads:
            t.join(60)
        assert app.state.models[MODEL].scheduler.load == {
            "running": 0,
            "waiting": 0,
            "background": 0,
        }
    for i, b in enumerate(bodies):
        if b["stream"]:
            assert results[i] == {c["index"]: c["text"] for c in solo[i]["choices"]}
        else:
            assert results[i] == solo[i]["choices"]


def test_hostile_bodies_get_clean_400s(base):
    """Issue 13 E: deep nesting, lone surrogates, huge numbers; and 429 says when to retry."""
    deep = b"[" * 100_000 + b"]" * 100_000
    status, body = http("POST", base + "/v1/completions", deep)
    assert status == 400 and "nests arrays or objects too deeply" in body["error"]["message"]
    for raw, param in (
        (b'{"model":"tiny-random-cl100k","prompt":"x","mo\\ud800":1}', "mo\\ud800"),
        (b'{"model":"\\ud800","prompt":"x"}', "model"),
        (b'{"model":"tiny-random-cl100k","prompt":"x","logit_bias":{"\\ud800":1}}', "logit_bias"),
        (
            b'{"model":"tiny-random-cl100k","prompt":"x","presence_penalty":1' + b"0" * 400 + b"}",
            "presence_penalty",
        ),
    ):
        status, body = http("POST", base + "/v1/completions", raw)
        assert status in (400, 404) and body["error"]["param"] == param, body


def test_a_temperature_below_float32s_range_is_the_greedy_limit(client):
    """Issue 13 A, through the server: T = 1e-300 no longer crashes; with one maximum it
    picks what T = 0 picks, and processed logprobs are the limit's point mass."""
    common = dict(model=MODEL, prompt="x", max_tokens=4, seed=1)
    greedy = client.completions.create(temperature=0, **common).choices[0].text
    for extra in ({}, {"top_p": 0.5, "logprobs": 2}):
        r = client.completions.create(temperature=1e-300, **common, **extra)
        assert r.choices[0].text == greedy
    r = client.completions.create(
        temperature=1e-300, logprobs=1, **common, extra_body={"logprobs_mode": "processed"}
    )
    assert r.choices[0].logprobs.token_logprobs == [0.0] * 4


def test_busy_answers_429_with_retry_after(engine):
    app = create_app(engine, ServerConfig(max_waiting=0))
    with running(app) as url:
        req = urllib.request.Request(
            url + "/v1/completions",
            method="POST",
            data=json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 2}).encode(),
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        assert e.value.code == 429 and e.value.headers["Retry-After"] == "1"
        assert e.value.headers["x-request-id"].startswith("req_")


# --- the command ---------------------------------------------------------------------------
def test_sampler_serve_command(tiny_model_dir):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sampler.cli",
            "serve",
            "--model",
            str(tiny_model_dir),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ},
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                status, body = http("GET", f"http://127.0.0.1:{port}/health")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        assert status == 200 and body["status"] == "ok"
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        name = client.models.list().data[0].id
        assert (
            client.completions.create(model=name, prompt="hi", max_tokens=2).usage.completion_tokens
            == 2
        )
    finally:
        proc.terminate()
        proc.wait(20)
