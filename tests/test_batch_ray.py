"""``sampler batch --ray`` / ``--workers N``: the same lines on a real local Ray cluster.

Ray Data is in the test extra, so ``make test`` runs these on a local cluster; without it
(``pip install 'refsampler[ray]'``) the cluster test is skipped and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_batch_file import MODEL, _bodies, _line, _read, _stable, _write

from sampler.batch_file import run_batch


def _key(rec):
    return rec["custom_id"] if rec["response"] is not None else ("line", rec["error"]["line"])


def _comparable(rec):
    """What must be equal between two runs: all but the ids and ``created``."""
    out = {k: v for k, v in rec.items() if k != "id"}
    if rec["response"] is not None:
        out["response"] = {
            "status_code": rec["response"]["status_code"],
            "body": _stable(rec["response"]["body"]),
        }
    return out


def test_ray_with_two_workers_equals_the_local_run_and_resumes(tiny_model_dir, tmp_path):
    pytest.importorskip("ray.data", reason="Ray Data: pip install 'refsampler[ray]'")
    from sampler.engine import Engine

    bodies = _bodies(40)
    src, local, ray_out = tmp_path / "in.jsonl", tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    _write(src, bodies)
    with open(src, "a") as f:  # bad lines and a rejected body go through the driver
        f.write("not json\n" + _line("r3", {"model": MODEL}) + "\n")
        f.write(_line("bad_t", {"model": MODEL, "prompt": "x", "temperature": -1}) + "\n")
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
        f.write(_line("chat", {**chat, "seed": 4}, url="/v1/chat/completions") + "\n")
    assert run_batch(Engine.load(tiny_model_dir), src, local).lines == 44
    whole = {_key(r): _comparable(r) for r in _read(local)}
    assert len(whole) == 44  # 40, bad_t, chat, error lines for the invalid JSON and repeated r3
    assert whole["chat"]["response"]["body"]["object"] == "chat.completion"
    # a run that died after 10 lines, in the middle of the 11th: --resume finishes it on Ray
    kept = _read(local)[:10]
    ray_out.write_text("".join(json.dumps(r) + "\n" for r in kept) + '{"id": "batch_req_x')
    cmd = [sys.executable, "-m", "sampler.cli", "batch", str(src), "-o", str(ray_out)]
    cmd += ["--model", MODEL, "--workers", "2", "--resume"]
    run = subprocess.run(cmd, env=os.environ.copy(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "ray: 2 workers" in run.stderr and "10 skipped" in run.stderr
    got = _read(ray_out)
    assert len(got) == len(whole)  # each line exactly once
    assert {_key(r): _comparable(r) for r in got} == whole


def test_ray_missing_says_how_to_install(tiny_model_dir, tmp_path):
    src = tmp_path / "in.jsonl"
    _write(src, _bodies(1))
    code = (
        "import sys; sys.modules['ray'] = None; from sampler.cli import main; "
        f"sys.exit(main(['batch', {str(src)!r}, '-o', {str(tmp_path / 'o.jsonl')!r}, "
        f"'--model', {MODEL!r}, '--ray']))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 2
    assert "pip install 'refsampler[ray]'" in run.stderr


def test_workers_must_be_positive(tmp_path):
    from sampler.cli import main

    src = tmp_path / "in.jsonl"
    src.write_text("")
    assert main(["batch", str(src), "-o", str(tmp_path / "o"), "--workers", "0"]) == 2
