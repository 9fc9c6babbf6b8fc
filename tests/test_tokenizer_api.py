"""``/tokenizer_info``, ``/tokenize``, ``/detokenize``: the ids are the Completions
endpoint's, special-token texts come back as their ids (lm-eval finds its end and prefix
tokens that way), and every bad body is a 400 naming its field."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from serving import running

from sampler import Engine
from sampler.chat_request import parse_chat_request
from sampler.server import ServerConfig, create_app
from sampler.tiny import TINY_CHAT_TEMPLATE

MODEL = "tiny-random-cl100k"


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine.load(tiny_model_dir)


@pytest.fixture(scope="module")
def base(engine):
    with running(create_app(engine, ServerConfig())) as url:
        yield url


def call(base, path, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        base + path,
        data=data,
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_tokenizer_info_by_hand(base):
    status, info = call(base, "/tokenizer_info")
    assert status == 200
    assert info["eos_token"] == "<|endoftext|>" and info["bos_token"] is None
    assert info["eos_token_ids"] == [100257] and info["max_model_len"] == 2048
    assert info["chat_template"] == TINY_CHAT_TEMPLATE and info["tokenizer"] == "cl100k_base"
    assert call(base, f"/tokenizer_info?model={MODEL}")[1] == info


def test_what_lm_eval_asks(base, engine):
    """lm-eval 0.4.13's remote tokenizer, call for call (its probe, then the eot id)."""
    status, info = call(base, "/tokenizer_info")
    assert status == 200 and "eos_token" in info
    status, out = call(base, "/tokenize", {"prompt": "test", "add_special_tokens": False})
    assert status == 200 and out["tokens"] == [1985] and out["count"] == 1
    eot = call(base, "/tokenize", {"prompt": info["eos_token"], "add_special_tokens": False})
    assert eot[1]["tokens"] == [100257]  # one special id, not the pieces of its text
    status, out = call(base, "/detokenize", {"tokens": [9906, 1917, 100257]})
    assert out == {"prompt": "Hello world<|endoftext|>"}


@settings(max_examples=40, deadline=None)
@given(text=st.text(st.characters(codec="utf-8"), max_size=40))
def test_tokens_are_the_completions_prompt_and_round_trip(base, engine, text):
    status, out = call(base, "/tokenize", {"prompt": text, "model": MODEL})
    assert status == 200
    assert tuple(out["tokens"]) == engine.parse(prompt=text).prompts[0].shown
    assert call(base, "/detokenize", {"tokens": out["tokens"]})[1]["prompt"] == text


def test_messages_are_rendered_as_the_chat_endpoint_renders_them(base, engine):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]
    want = parse_chat_request({"model": MODEL, "messages": messages}, engine.info)
    assert call(base, "/tokenize", {"messages": messages})[1]["tokens"] == list(
        want.prompts[0].tokens
    )
    # lm-eval's apply_chat_template sends the messages as "prompt"
    assert call(base, "/tokenize", {"prompt": messages})[1]["tokens"] == list(
        want.prompts[0].tokens
    )


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/tokenize", {}, "prompt"),
        ("/tokenize", {"prompt": 5}, "prompt"),
        ("/tokenize", {"prompt": "a", "messages": []}, "messages"),
        ("/tokenize", {"messages": None}, "prompt"),
        ("/tokenize", {"prompt": "a", "add_special_tokens": "yes"}, "add_special_tokens"),
        ("/tokenize", {"prompt": "a", "colour": 1}, "colour"),
        ("/tokenize", {"messages": [{"role": "tool", "content": "x"}]}, "messages.[0].role"),
        ("/tokenize", {"prompt": "\ud800"}, "prompt"),
        ("/tokenize", {"prompt": [1, 2]}, "prompt"),
        ("/detokenize", {}, "tokens"),
        ("/detokenize", {"tokens": "1 2"}, "tokens"),
        ("/detokenize", {"tokens": [1, 2.5]}, "tokens"),
        ("/detokenize", {"tokens": [100270]}, "tokens"),
        ("/detokenize", {"tokens": [-1]}, "tokens"),
        ("/detokenize", {"tokens": [True]}, "tokens"),
        ("/detokenize", {"tokens": [1], "model": "nope"}, "model"),
    ],
)
def test_bad_bodies_name_the_field(base, path, body, param):
    status, out = call(base, path, body)
    assert status == (404 if param == "model" else 400)
    assert out["error"]["param"] == param, out


def test_unknown_model_and_api_key(engine, base):
    assert call(base, "/tokenizer_info?model=nope")[0] == 404
    with running(create_app(engine, ServerConfig(api_key="k"))) as keyed:
        assert call(keyed, "/tokenizer_info")[0] == 401
        assert call(keyed, "/tokenize", {"prompt": "a"})[0] == 401
        ok = {"Authorization": "Bearer k"}
        assert call(keyed, "/detokenize", {"tokens": [64]}, ok) == (200, {"prompt": "a"})
