"""The server's Batch API (``/v1/files``, ``/v1/batches``) with the official SDK."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest
from serving import running
from test_batch_file import MODEL, _bodies, _line, _stable

from sampler.server import ServerConfig, create_app


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from sampler.engine import Engine

    return Engine.load(tiny_model_dir)


def _jsonl(bodies):
    return "".join(_line(cid, b) + "\n" for cid, b in bodies.items()).encode()


def _wait(client, bid, until=("completed", "failed", "cancelled"), timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(bid)
        if batch.status in until:
            return batch
        time.sleep(0.1)
    raise AssertionError(f"batch {bid} still {batch.status}")


def _lines(data: bytes):
    return [json.loads(x) for x in data.decode().splitlines()]


@pytest.fixture
def served(engine, tmp_path):
    cfg = ServerConfig(batch_dir=str(tmp_path / "batches"), max_upload_bytes=20000)
    with running(create_app(engine, cfg)) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0), url


def test_sdk_runs_a_batch_end_to_end(engine, served, tmp_path):
    client, _ = served
    bodies = _bodies(8)
    bodies["rejected"] = {"model": MODEL, "prompt": "x", "temperature": 7}
    f = client.files.create(file=("in.jsonl", _jsonl(bodies)), purpose="batch")
    assert f.id.startswith("file-") and len(f.id) == 5 + 32 and f.bytes == len(_jsonl(bodies))
    assert client.files.retrieve(f.id).filename == "in.jsonl"
    assert client.files.content(f.id).content == _jsonl(bodies)
    batch = client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/completions",
        completion_window="24h",
        metadata={"job": "eval-1"},
    )
    assert batch.status == "validating" and batch.metadata == {"job": "eval-1"}
    done = _wait(client, batch.id)
    assert done.status == "completed" and done.completed_at and done.in_progress_at
    assert (done.request_counts.total, done.request_counts.completed) == (9, 8)
    assert done.request_counts.failed == 1
    out = _lines(client.files.content(done.output_file_id).content)
    errs = _lines(client.files.content(done.error_file_id).content)
    assert sorted(r["custom_id"] for r in out) == sorted(k for k in bodies if k != "rejected")
    for r in out:  # each body is what Engine.complete answers for it alone
        alone = engine.complete(bodies[r["custom_id"]])
        assert _stable(r["response"]["body"]) == _stable(alone)
    assert [e["custom_id"] for e in errs] == ["rejected"]
    assert errs[0]["response"]["status_code"] == 400
    assert errs[0]["response"]["body"]["error"]["param"] == "temperature"
    assert batch.id in [b.id for b in client.batches.list()]
    assert {x.id for x in client.files.list()} >= {f.id, done.output_file_id}
    assert client.files.delete(done.output_file_id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.content(done.output_file_id)


def test_a_chat_batch_and_a_line_of_the_other_endpoint(engine, served):
    client, _ = served
    chats = {
        f"c{i}": {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"Hi {i}"}],
            "max_tokens": 4,
            "seed": i,
        }
        for i in range(3)
    }
    data = "".join(_line(c, b, url="/v1/chat/completions") + "\n" for c, b in chats.items())
    f = client.files.create(file=("chat.jsonl", data.encode()), purpose="batch")
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = _wait(client, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 3
    for r in _lines(client.files.content(done.output_file_id).content):
        assert _stable(r["response"]["body"]) == _stable(engine.chat(chats[r["custom_id"]]))
    # a Completions line in a chat batch fails it at validation, naming the line
    mixed = data + _line("p", {"model": MODEL, "prompt": "x"}) + "\n"
    f = client.files.create(file=("mixed.jsonl", mixed.encode()), purpose="batch")
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    failed = _wait(client, batch.id)
    assert failed.status == "failed"
    assert [(e.line, e.code) for e in failed.errors.data] == [(4, "invalid_url")]
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(
            input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"
        )
    assert e.value.body["param"] == "endpoint"


def test_sdk_cancels_a_running_batch(served):
    client, _ = served
    bodies = {k: {**b, "max_tokens": 60} for k, b in _bodies(60).items()}
    data = _jsonl(bodies)
    assert len(data) < 20000
    f = client.files.create(file=("in.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/completions", completion_window="24h"
    )
    _wait(client, batch.id, until=("in_progress",))
    with pytest.raises(openai.APIStatusError) as err:  # its input is in use
        client.files.delete(f.id)
    assert err.value.status_code == 409
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = _wait(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    assert done.request_counts.completed < 60
    if done.output_file_id:  # what completed before the cancel is kept
        got = _lines(client.files.content(done.output_file_id).content)
        assert len(got) == done.request_counts.completed
    with pytest.raises(openai.APIStatusError) as err:
        client.batches.cancel(batch.id)
    assert err.value.status_code == 409


def test_bad_requests_are_openai_errors(served):
    client, url = served
    with pytest.raises(openai.NotFoundError) as err:
        client.batches.retrieve("batch_nope")
    assert err.value.body["param"] == "batch_id"
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-" + "0" * 32)
    with pytest.raises(openai.NotFoundError) as err:
        client.batches.create(
            input_file_id="file-missing", endpoint="/v1/completions", completion_window="24h"
        )
    assert err.value.body["param"] == "input_file_id"
    f = client.files.create(file=("in.jsonl", b'{"custom_id": "a"}\n'), purpose="batch")
    for kwargs, param in [
        ({"endpoint": "/v1/embeddings", "completion_window": "24h"}, "endpoint"),
        ({"endpoint": "/v1/completions", "completion_window": "1h"}, "completion_window"),
    ]:
        with pytest.raises(openai.BadRequestError) as err:
            client.batches.create(input_file_id=f.id, **kwargs)
        assert err.value.body["param"] == param
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("in.jsonl", b"{}\n"), purpose="fine-tune")
    assert err.value.body["param"] == "purpose"
    with pytest.raises(openai.APIStatusError) as err:  # over max_upload_bytes (20,000)
        client.files.create(file=("big.jsonl", b"x" * 200_000), purpose="batch")
    assert err.value.status_code == 413 and err.value.body["code"] == "file_too_large"
    r = httpx.post(url + "/v1/files", json={"purpose": "batch"})
    assert r.status_code == 400 and "multipart" in r.json()["error"]["message"]
    r = httpx.post(  # two files in one form: a 400, not a 500
        url + "/v1/files",
        data={"purpose": "batch"},
        files=[("file", ("a.jsonl", b"{}\n")), ("file", ("b.jsonl", b"{}\n"))],
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(
        url + "/v1/files",
        content=b"--x\r\nbroken",
        headers={"content-type": "multipart/form-data"},  # no boundary
    )
    assert r.status_code == 400
    r = httpx.get(url + "/v1/batches", params={"limit": "0"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
    # a malformed line fails the batch at validation, with its line number (as OpenAI does)
    bad = client.files.create(
        file=("bad.jsonl", b'{"custom_id": "a", "method": "POST"}\nnot json\n'), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=bad.id, endpoint="/v1/completions", completion_window="24h"
    )
    failed = _wait(client, batch.id)
    assert failed.status == "failed" and failed.failed_at
    assert [(e.line, e.code) for e in failed.errors.data] == [
        (1, "invalid_url"),
        (2, "invalid_json"),
    ]


def test_the_api_key_guards_the_batch_routes(engine, tmp_path):
    cfg = ServerConfig(api_key="k", batch_dir=str(tmp_path / "b"))
    with running(create_app(engine, cfg)) as url:
        assert httpx.get(url + "/v1/batches").status_code == 401
        assert httpx.get(url + "/v1/files", headers={"Authorization": "Bearer k"}).is_success


def test_one_server_per_batch_dir(engine, tmp_path):
    cfg = ServerConfig(batch_dir=str(tmp_path / "b"))
    app = create_app(engine, cfg)
    try:
        with pytest.raises(RuntimeError, match="another server"):
            create_app(engine, cfg)
    finally:
        app.state.shutdown()


def test_a_second_server_at_the_default_folder_serves_without_batches(
    engine, tmp_path, monkeypatch, capsys
):
    from sampler import cli, server
    from sampler.registry import cache_dir

    seen = []
    monkeypatch.setattr(server, "serve", lambda models, **kw: seen.append(kw["config"]))
    app = create_app(engine, ServerConfig(batch_dir=str(cache_dir() / "batches")))
    try:
        assert cli.main(["serve", "--model", MODEL]) == 0  # the default folder is held
        assert seen[-1].batch_dir is None
        assert "serves without /v1/files and /v1/batches" in capsys.readouterr().err
        mine = str(cache_dir() / "batches")
        assert cli.main(["serve", "--model", MODEL, "--batch-dir", mine]) == 0
        assert seen[-1].batch_dir == mine  # (named: then create_app refuses it, exit 2)
    finally:
        app.state.shutdown()
    assert cli.main(["serve", "--model", MODEL]) == 0  # free again: the Batch API is on
    assert seen[-1].batch_dir == str(cache_dir() / "batches") and capsys.readouterr().err == ""


def _serve(home, port):
    cmd = [sys.executable, "-m", "sampler.cli", "serve", "--model", MODEL, "--port", str(port)]
    cmd += ["--max-batch", "8"]  # requests finish one after another, not all in one step
    return subprocess.Popen(
        cmd, env={**os.environ, "SAMPLER_HOME": str(home)}, stderr=subprocess.DEVNULL
    )


def _up(url, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health").is_success:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("the server did not start")


def test_a_server_killed_mid_batch_resumes_it(engine, tiny_model_dir, tmp_path):
    """kill -9 while a batch runs; the restarted server finishes it: each custom_id once,
    every body equal to Engine.complete's."""
    import shutil

    home = tmp_path / "home"
    shutil.copytree(tiny_model_dir.parent, home, dirs_exist_ok=True)  # the model, no rebuild
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    bodies = {k: {**b, "max_tokens": 30} for k, b in _bodies(40).items()}
    proc = _serve(home, port)
    try:
        _up(url)
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        f = client.files.create(file=("in.jsonl", _jsonl(bodies)), purpose="batch")
        bid = client.batches.create(
            input_file_id=f.id, endpoint="/v1/completions", completion_window="24h"
        ).id
        deadline = time.monotonic() + 60
        while client.batches.retrieve(bid).request_counts.completed < 5:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        before = client.batches.retrieve(bid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        work = home / "batches" / "work" / f"{bid}.output.jsonl"
        kept = [json.loads(x)["id"] for x in work.read_text().splitlines()[:-1]]
        assert kept  # lines written before the kill (the last may be partial)
        assert before.status == "in_progress" and before.request_counts.completed < 40
        proc = _serve(home, port)
        _up(url)
        done = _wait(client, bid)
        assert done.status == "completed" and done.request_counts.completed == 40
        out = _lines(client.files.content(done.output_file_id).content)
    finally:
        proc.kill()
        proc.wait()
    assert sorted(r["custom_id"] for r in out) == sorted(bodies)  # each exactly once
    assert set(kept) <= {r["id"] for r in out}  # kept, not run again
    for r in out:
        alone = engine.complete(bodies[r["custom_id"]])
        assert _stable(r["response"]["body"]) == _stable(alone)
