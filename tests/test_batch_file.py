"""``sampler batch``: OpenAI Batch API files run on one model, continuously batched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sampler.batch_file import run_batch

MODEL = "tiny-random-cl100k"


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from sampler.engine import Engine

    return Engine.load(tiny_model_dir)


def _line(cid, body, **over):
    return json.dumps(
        {"custom_id": cid, "method": "POST", "url": "/v1/completions", "body": body, **over}
    )


def _bodies(count, max_tokens=6):
    out = {}
    for i in range(count):
        out[f"r{i}"] = {
            "model": MODEL,
            "prompt": f"Request number {i}:",
            "seed": i,
            "max_tokens": max_tokens + i % 5,
            "n": 1 + i % 3,
            "logprobs": [None, 0, 2][i % 3],
            "temperature": [1.0, 0.0, 0.7][i % 3],
        }
    return out


def _write(path, bodies):
    path.write_text("".join(_line(cid, b) + "\n" for cid, b in bodies.items()))


def _read(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _stable(body):
    """A response body without what differs between two runs of the same request."""
    return {k: v for k, v in body.items() if k not in ("id", "created")}


def test_each_body_equals_engine_complete(engine, tmp_path):
    bodies = _bodies(12)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(src, bodies)
    summary = run_batch(engine, src, out)
    recs = _read(out)
    assert sorted(r["custom_id"] for r in recs) == sorted(bodies)
    assert summary.completed == 12 and summary.lines == 12
    for r in recs:
        assert r["error"] is None and r["response"]["status_code"] == 200
        assert r["id"].startswith("batch_req_") and r["response"]["request_id"].startswith("req_")
        alone = engine.complete(bodies[r["custom_id"]])
        assert _stable(r["response"]["body"]) == _stable(alone)
    assert summary.tokens == sum(r["response"]["body"]["usage"]["completion_tokens"] for r in recs)


def test_chat_lines_beside_completions_lines(engine, tmp_path):
    chats = {
        f"c{i}": {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"Question {i}?"}],
            "max_completion_tokens": 5 + i,
            "seed": i,
            "logprobs": i % 2 == 0,
            "n": 1 + i % 2,
        }
        for i in range(4)
    }
    chats["c_bad"] = {"model": MODEL, "messages": [], "max_tokens": 2}
    bodies = _bodies(4)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [_line(cid, b) for cid, b in bodies.items()]
    lines += [_line(cid, b, url="/v1/chat/completions") for cid, b in chats.items()]
    src.write_text("\n".join(lines) + "\n")
    summary = run_batch(engine, src, out)
    assert (summary.completed, summary.rejected) == (8, 1)
    got = {r["custom_id"]: r["response"] for r in _read(out)}
    for cid, body in chats.items():
        if cid == "c_bad":
            assert got[cid]["status_code"] == 400
            assert got[cid]["body"]["error"]["param"] == "messages"
            continue
        assert got[cid]["body"]["object"] == "chat.completion"
        assert _stable(got[cid]["body"]) == _stable(engine.chat(body))
    for cid, body in bodies.items():
        assert _stable(got[cid]["body"]) == _stable(engine.complete(body))


def test_bad_lines_get_their_own_error_lines(engine, tmp_path):
    good = {"model": MODEL, "prompt": "Hi", "max_tokens": 2, "seed": 1}
    lines = [
        _line("ok1", good),
        "not json",
        "[1, 2]",
        _line("ok1", good),  # a duplicate custom_id
        _line("m", good, method="GET"),
        _line("u", good, url="/v1/embeddings"),
        _line("b", [1]),
        json.dumps({"method": "POST", "url": "/v1/completions", "body": good}),
        "",
        _line("t", {**good, "temperature": 9}),
        _line("nomodel", {**good, "model": "nope"}),
        _line("s", {**good, "stream": True}),
        _line("nm", {"prompt": "Hi", "max_tokens": 2}),
        _line("ok2", good),
    ]
    src, out, errs = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    src.write_text("\n".join(lines) + "\n")
    summary = run_batch(engine, src, out, errors_path=errs)
    bad = {(e["error"]["line"], e["error"]["code"]) for e in _read(errs)}
    assert bad == {
        (2, "invalid_json"),
        (3, "invalid_request"),
        (4, "duplicate_custom_id"),
        (5, "invalid_method"),
        (6, "invalid_url"),
        (7, "invalid_body"),
        (8, "missing_custom_id"),
    }
    assert all(e["response"] is None for e in _read(errs))
    got = {r["custom_id"]: r["response"] for r in _read(out)}
    assert set(got) == {"ok1", "ok2", "t", "nomodel", "s", "nm"}
    assert got["nm"]["status_code"] == 400 and got["nm"]["body"]["error"]["param"] == "model"
    assert got["ok1"]["status_code"] == got["ok2"]["status_code"] == 200
    assert got["t"]["status_code"] == 400
    assert got["t"]["body"]["error"]["param"] == "temperature"
    assert got["nomodel"]["status_code"] == 404
    assert got["nomodel"]["body"]["error"]["code"] == "model_not_found"
    assert got["s"]["body"]["error"]["param"] == "stream"
    assert (summary.completed, summary.rejected, summary.bad_lines) == (2, 4, 7)
    assert summary.lines == 13  # the blank line is not a line


def test_empty_input(engine, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("")
    summary = run_batch(engine, src, out)
    assert out.read_text() == "" and summary.lines == 0


def test_resume_cuts_a_partial_line_and_skips_what_is_written(engine, tmp_path):
    bodies = _bodies(6)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(src, bodies)
    run_batch(engine, src, out)
    full = {r["custom_id"]: r for r in _read(out)}
    kept = list(full.values())[:2]
    out.write_text("".join(json.dumps(r) + "\n" for r in kept) + '{"id": "batch_req_half')
    summary = run_batch(engine, src, out, resume=True)
    recs = _read(out)
    assert sorted(r["custom_id"] for r in recs) == sorted(bodies)
    assert recs[:2] == kept and summary.skipped == 2 and summary.completed == 4
    for r in recs:
        assert _stable(r["response"]["body"]) == _stable(full[r["custom_id"]]["response"]["body"])


def test_kill_9_then_resume_writes_each_request_once(tiny_model_dir, tmp_path):
    bodies = _bodies(40, max_tokens=30)
    src, out, ref = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "ref.jsonl"
    _write(src, bodies)
    cmd = [
        sys.executable,
        "-m",
        "sampler.cli",
        "batch",
        str(src),
        "--model",
        MODEL,
        "--max-batch",
        "8",
    ]
    proc = subprocess.Popen(
        [*cmd, "-o", str(out)], env=os.environ.copy(), stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 5):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = out.read_text().count("\n")
    assert 5 <= before < 40, before  # killed in the middle
    assert subprocess.run([*cmd, "-o", str(out), "--resume"], env=os.environ.copy()).returncode == 0
    assert subprocess.run([*cmd, "-o", str(ref)], env=os.environ.copy()).returncode == 0
    recs, whole = _read(out), {r["custom_id"]: r for r in _read(ref)}
    assert sorted(r["custom_id"] for r in recs) == sorted(bodies)  # each exactly once
    for r in recs:
        assert _stable(r["response"]["body"]) == _stable(whole[r["custom_id"]]["response"]["body"])


def test_command_line(tiny_model_dir, tmp_path):
    from sampler.cli import main

    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(src, _bodies(3))
    assert main(["batch", str(src), "-o", str(out), "--model", MODEL]) == 0
    assert len(_read(out)) == 3
    one = tmp_path / "one.jsonl"  # --workers 1 is the local run, line for line
    assert main(["batch", str(src), "-o", str(one), "--model", MODEL, "--workers", "1"]) == 0
    bodies = lambda path: {r["custom_id"]: _stable(r["response"]["body"]) for r in _read(path)}  # noqa: E731
    assert bodies(one) == bodies(out)
    assert main(["batch", str(tmp_path / "missing.jsonl"), "-o", str(out)]) == 1


def test_bytes_that_are_not_utf8_and_lone_surrogates(engine, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    good = {"model": MODEL, "prompt": "é", "max_tokens": 2, "seed": 3}
    src.write_bytes(
        _line("sur", {**good, "prompt": "a\ud800b"}).encode()  # json.dumps escapes it
        + b"\n\xff\xfe\n"
        + _line("ok", good).encode()
        + b"\n"
    )
    summary = run_batch(engine, src, out)
    recs = {r["custom_id"]: r for r in _read(out)}
    assert recs[None]["error"]["code"] == "invalid_json" and recs[None]["error"]["line"] == 2
    assert recs["sur"]["response"]["status_code"] == 400
    assert recs["sur"]["response"]["body"]["error"]["param"] == "prompt"
    assert recs["ok"]["response"]["status_code"] == 200
    assert (summary.completed, summary.rejected, summary.bad_lines) == (1, 1, 1)


def test_a_body_that_trips_a_bug_gets_its_own_500_logged_under_its_id(
    engine, tmp_path, monkeypatch, caplog
):
    import sampler.batch_file as bf

    real = bf.parse_request

    def parse(body, info, limits=None):
        if body.get("prompt") == "boom":
            raise ZeroDivisionError("a bug")
        return real(body, info, limits)

    monkeypatch.setattr(bf, "parse_request", parse)
    good = {"model": MODEL, "prompt": "Hi", "max_tokens": 2, "seed": 1}
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(_line("bad", {**good, "prompt": "boom"}) + "\n" + _line("ok", good) + "\n")
    with caplog.at_level("ERROR", logger="sampler.batch_file"):
        summary = run_batch(engine, src, out)
    recs = {r["custom_id"]: r["response"] for r in _read(out)}
    assert recs["ok"]["status_code"] == 200 and recs["bad"]["status_code"] == 500
    rid = recs["bad"]["request_id"]
    assert recs["bad"]["body"]["error"]["type"] == "server_error"
    assert rid in recs["bad"]["body"]["error"]["message"]
    logged = [r for r in caplog.records if rid in r.getMessage()]
    assert logged and logged[0].exc_info[0] is ZeroDivisionError
    assert (summary.completed, summary.failed) == (1, 1)


def test_answers_cancel_writes_no_record_and_gives_every_slot_back(engine):
    """Cancelled requests get no record, their slots come back (a later request runs),
    and a record already being written is waited for."""
    from sampler.batch_file import Answers
    from sampler.scheduler import Scheduler

    sched = Scheduler(engine, max_sequences=4)
    records: list[str] = []
    answers = Answers(sched, lambda rec, kind, tok: records.append(rec["custom_id"]), in_flight=3)
    try:
        body = {"model": MODEL, "prompt": "Long", "max_tokens": 200, "seed": 1}
        for i in range(3):
            assert answers.submit(f"c{i}", body)
        assert answers.running == 3
        assert not answers.submit("blocked", body, stop=lambda: True)  # no slot: stopped
        assert answers.cancel() == 3 and answers.wait_idle(10) and answers.running == 0
        assert answers.submit("after", {**body, "max_tokens": 2})
        answers.drain()
    finally:
        sched.close()
    assert records == ["after"]
