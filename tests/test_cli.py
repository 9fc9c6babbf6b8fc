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


def test_chat_one_message_streams_the_json_reply(capsys):
    flags = ["--max-tokens", "5", "--seed", "2", "--temperature", "0.8", "--system", "Be brief."]
    code, out, err = run(capsys, "chat", "Hi", *flags)
    assert code == 0 and err == ""
    code, js, _ = run(capsys, "chat", "Hi", *flags, "--json", "--logprobs", "2")
    reply = json.loads(js)
    assert out == reply["choices"][0]["message"]["content"] + "\n"
    assert len(reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 2
    from sampler import Engine

    want = Engine.load("tiny-random-cl100k").chat(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=5,
        seed=2,
        temperature=0.8,
    )
    assert reply["choices"][0]["message"] == want["choices"][0]["message"]


def test_chat_conversation_keeps_the_history(capsys, monkeypatch):
    from sampler import Engine

    engine = Engine.load("tiny-random-cl100k")
    monkeypatch.setattr("sys.stdin", io.StringIO("first\nsecond\n/reset\nthird\n/exit\nnever\n"))
    code, out, err = run(capsys, "chat", "--max-tokens", "4", "--seed", "7")
    assert code == 0 and "(history cleared)" in err
    first = engine.chat(messages=[{"role": "user", "content": "first"}], max_tokens=4, seed=7)
    a = first["choices"][0]["message"]["content"]
    history = [{"role": "user", "content": "first"}, {"role": "assistant", "content": a}]
    second = engine.chat(
        messages=[*history, {"role": "user", "content": "second"}], max_tokens=4, seed=7
    )
    third = engine.chat(messages=[{"role": "user", "content": "third"}], max_tokens=4, seed=7)
    replies = [
        a,
        second["choices"][0]["message"]["content"],
        third["choices"][0]["message"]["content"],
    ]
    assert out == "".join(r + "\n" for r in replies)


def test_chat_refusal_exit_2_and_the_conversation_goes_on(capsys, monkeypatch):
    code, _, err = run(capsys, "chat", "Hi", "--top-p", "3")
    assert code == 2 and "(param: top_p)" in err
    monkeypatch.setattr("sys.stdin", io.StringIO("a\n"))
    code, out, err = run(capsys, "chat", "--max-tokens", "2", "--logit-bias", "100258=1")
    assert code == 2 and "(param: logit_bias)" in err
