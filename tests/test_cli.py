"""The ``sampler`` command: flags map to request fields, exit codes, streaming output."""

import io
import json

import pytest

from sampler import cli


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_complete_streams_text(capsys):
    code, out, err = run(capsys, "complete", "Hello", "--max-tokens", "5", "--seed", "1")
    assert code == 0 and err == ""
    code, js, _ = run(capsys, "complete", "Hello", "--max-tokens", "5", "--seed", "1", "--json")
    assert out == json.loads(js)["choices"][0]["text"] + "\n"


def test_json_has_every_flag_applied(capsys):
    code, out, _ = run(
        capsys,
        "complete",
        "Hi",
        "--json",
        "--max-tokens",
        "3",
        "--temperature",
        "0.5",
        "--top-p",
        "0.9",
        "--n",
        "2",
        "--best-of",
        "3",
        "--logprobs",
        "2",
        "--echo",
        "--stop",
        "zz",
        "--stop",
        "yy",
        "--seed",
        "3",
        "--presence-penalty",
        "0.5",
        "--frequency-penalty",
        "0.5",
        "--logit-bias",
        "100257=-100",
        "--logit-bias",
        "11=2",
    )
    assert code == 0
    resp = json.loads(out)
    assert len(resp["choices"]) == 2
    assert all(c["text"].startswith("Hi") for c in resp["choices"])
    assert resp["choices"][0]["logprobs"]["token_logprobs"][0] is None
    assert resp["usage"]["completion_tokens"] == 9


def test_sampling_trace_flag(capsys):
    code, out, _ = run(
        capsys, "complete", "Hi", "--json", "--max-tokens", "2", "--logprobs", "1",
        "--sampling-trace", "2", "--logprobs-mode", "processed", "--seed", "1",
    )  # fmt: skip
    assert code == 0
    trace = json.loads(out)["choices"][0]["logprobs"]["sampling_trace"]
    assert len(trace) == 2 and all(len(t["ids"]) >= 2 for t in trace)
    code, _, err = run(capsys, "complete", "Hi", "--sampling-trace", "2")
    assert code == 2 and "sampling_trace" in err


def test_prompt_from_stdin(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("From stdin"))
    code, out, _ = run(capsys, "complete", "--max-tokens", "0", "--echo", "--json")
    assert code == 0 and json.loads(out)["choices"][0]["text"] == "From stdin"


def test_bad_request_exit_2_names_parameter(capsys):
    code, out, err = run(capsys, "complete", "x", "--n", "200")
    assert code == 2 and out == ""
    assert "Invalid 'n'" in err and "(param: n)" in err
    code, _, err = run(capsys, "complete", "x", "--logit-bias", "AI=3")
    assert code == 2 and "logit_bias" in err


def test_bad_flag_values_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["complete", "x", "--logit-bias", "5"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["complete", "x", "--temperature", "hot"])
    assert e.value.code == 2
    capsys.readouterr()


def test_unknown_model_exit_2(capsys):
    code, _, err = run(capsys, "complete", "x", "--model", "no-such-model")
    assert code == 2 and "--model" in err


def test_models_lists_the_tiny_model(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "tiny-random-cl100k" in out


def test_n_above_one_prints_each_choice(capsys):
    code, out, _ = run(capsys, "complete", "x", "--n", "2", "--max-tokens", "2", "--seed", "1")
    assert code == 0 and "--- choice 0 (length) ---" in out and "--- choice 1" in out
