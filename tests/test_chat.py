"""The chat endpoint: templates rendered as HF renders them, every sampling rule the
Completions endpoint's for the rendered prompt, OpenAI's chat shapes, and every refusal
naming its field. The tiny model's template is ``sampler.tiny.TINY_CHAT_TEMPLATE``."""

from __future__ import annotations

import json
import shutil
import threading
import urllib.error
import urllib.request

import chat_templates
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving import running

from sampler import Engine
from sampler.chat_request import parse_chat_request
from sampler.chat_template import render
from sampler.errors import RequestError
from sampler.model import ChatConfig
from sampler.scheduler import Scheduler
from sampler.server import ServerConfig, create_app

MODEL = "tiny-random-cl100k"
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine.load(tiny_model_dir)


@pytest.fixture(scope="module")
def base(engine):
    with running(create_app(engine, ServerConfig())) as url:
        yield url


@pytest.fixture()
def client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)


# -- rendering: by hand, then against HF transformers' apply_chat_template


def test_tiny_template_by_hand(engine):
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "c"},
        {"role": "user", "content": "d"},
    ]
    req = parse_chat_request({"model": MODEL, "messages": messages}, engine.info)
    eot = "<|endoftext|>"
    want = f"system: Be brief.{eot}\nuser: a\nb{eot}\nassistant: c{eot}\nuser: d{eot}\nassistant:"
    assert req.prompts[0].text == want
    tok = engine.tokenizer
    assert req.prompts[0].tokens.count(100257) == 4  # the markup's special token, as one id
    assert tok.decode_bytes(req.prompts[0].tokens).decode() == want
    assert req.max_tokens == 2048 - len(req.prompts[0].tokens)  # the rest of the context


def hf_tokenizer():
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models

    vocab = models.WordLevel({"<unk>": 0}, unk_token="<unk>")  # (rendering uses no vocabulary)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(vocab), bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


TEXT = st.text(st.characters(codec="utf-8", exclude_characters="{}%#"), max_size=12)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": TEXT},
    optional={"name": st.text("abc", min_size=1, max_size=3)},
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(MESSAGE, min_size=1, max_size=5),
    template=st.sampled_from(["SMOLLM2", "FEATURES", "VARIABLES"]),
    generation=st.booleans(),
)
def test_rendering_equals_hf_apply_chat_template(messages, template, generation):
    hf = hf_tokenizer()
    source = getattr(chat_templates, template)
    chat = ChatConfig(source, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    try:
        want = hf.apply_chat_template(
            messages, chat_template=source, tokenize=False, add_generation_prompt=generation
        )
    except Exception as err:  # the template refused them: so must we, with its message
        with pytest.raises(RequestError) as e:
            render(chat, messages, add_generation_prompt=generation)
        assert e.value.param == "messages" and str(err) in e.value.message
        return
    assert render(chat, messages, add_generation_prompt=generation) == want


def test_smollm2_template_by_hand():
    chat = ChatConfig(chat_templates.SMOLLM2, "<|im_start|>", "<|im_end|>")
    got = render(chat, HI)
    system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    want = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    assert got == want + "<|im_start|>assistant\n"


# -- the sampling is the Completions endpoint's for the rendered prompt

PARAMS = st.fixed_dictionaries(
    {
        "max_completion_tokens": st.integers(1, 10),
        "seed": st.integers(0, 2**63 - 1),
    },
    optional={
        "temperature": st.sampled_from([0, 0.3, 1.0, 1.7]),
        "top_p": st.sampled_from([0.1, 0.5, 0.95, 1.0]),
        "presence_penalty": st.floats(-2, 2),
        "frequency_penalty": st.floats(-2, 2),
        "n": st.integers(1, 3),
        "top_logprobs": st.integers(0, 5),
        "stop": st.sampled_from([["e"], [" ", "a"], ["\n"]]),
        "logit_bias": st.sampled_from([{"100257": 3}, {"279": -100, "13": 5}]),
        "logprobs_mode": st.sampled_from(["raw", "processed"]),
    },
)


def as_completion(body):
    """The Completions body with the same sampling as a chat body."""
    out = {k: v for k, v in body.items() if k not in ("messages", "top_logprobs")}
    out["max_tokens"] = out.pop("max_completion_tokens")
    if "top_logprobs" in body:
        out["logprobs"] = body["top_logprobs"]
    return out


def same_choice(chat_choice, choice, tok):
    """A chat choice says what the Completions choice says: text, finish reason, and each
    kept token with its logprob and alternatives (the end token is left out of chat's)."""
    assert chat_choice["message"]["content"] == choice["text"]
    assert chat_choice["finish_reason"] == choice["finish_reason"]
    if choice["logprobs"] is None:
        assert chat_choice["logprobs"] is None
        return
    lp = choice["logprobs"]
    content = chat_choice["logprobs"]["content"]
    kept = len(lp["tokens"]) - (lp["tokens"][-1:] == ["<|endoftext|>"])  # (only the end id)
    assert len(content) == kept
    assert [e["token"] for e in content] == lp["tokens"][:kept]
    assert [e["logprob"] for e in content] == lp["token_logprobs"][:kept]
    for e, top in zip(content, lp["top_logprobs"]):
        best: dict[str, float] = {}
        for alt in [*e["top_logprobs"], e]:
            best[alt["token"]] = max(best.get(alt["token"], -1e300), alt["logprob"])
        assert best == top
    assert (
        b"".join(bytes(e["bytes"]) for e in content).decode("utf-8", "replace") == (choice["text"])
        or choice["finish_reason"] == "stop"
    )  # (a stop string cuts inside a token)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=PARAMS, messages=st.lists(MESSAGE, min_size=1, max_size=3))
def test_chat_equals_completions_of_the_rendered_prompt(engine, params, messages):
    body = {"messages": messages, **params}
    if "top_logprobs" in body:
        body["logprobs"] = True
    chat = engine.chat(body)
    prompt = parse_chat_request({"model": MODEL, **body}, engine.info).prompts[0].text
    done = engine.complete(
        prompt=prompt, **as_completion({k: v for k, v in body.items() if k != "logprobs"})
    )
    assert chat["object"] == "chat.completion" and chat["id"].startswith("chatcmpl-")
    assert chat["usage"] == done["usage"]
    assert chat["system_fingerprint"] == done["system_fingerprint"]
    assert len(chat["choices"]) == len(done["choices"]) == params.get("n", 1)
    for c, d in zip(chat["choices"], done["choices"]):
        assert c["index"] == d["index"]
        same_choice(c, d, engine.tokenizer)


def test_the_end_token_is_in_completions_logprobs_only(engine):
    body = {"messages": HI, "max_tokens": 3, "logit_bias": {"100257": 100}}
    chat = engine.chat({**body, "logprobs": True})["choices"][0]
    rest = {k: v for k, v in body.items() if k != "messages"}
    done = engine.complete(prompt=render(engine.info.chat, HI), logprobs=0, **rest)["choices"][0]
    assert done["logprobs"]["tokens"] == ["<|endoftext|>"] and done["finish_reason"] == "stop"
    assert chat["logprobs"]["content"] == [] and chat["finish_reason"] == "stop"
    assert chat["message"]["content"] == ""


def collect(chunks):
    """A chat stream joined back into the non-stream response's choices."""
    choices: dict[int, dict] = {}
    usage = None
    for ch in chunks:
        assert ch["object"] == "chat.completion.chunk"
        if ch.get("usage"):
            usage = ch["usage"]
        for c in ch["choices"]:
            if c["index"] not in choices:  # the role comes first, with nothing else
                assert c["delta"] == {"role": "assistant", "content": "", "refusal": None}
                choices[c["index"]] = {"text": "", "content": None, "finish": None}
                continue
            got = choices[c["index"]]
            assert got["finish"] is None  # nothing after the finish reason
            got["text"] += c["delta"].get("content", "")
            if c["logprobs"] is not None:
                got["content"] = (got["content"] or []) + c["logprobs"]["content"]
            got["finish"] = c["finish_reason"]
    return choices, usage


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=PARAMS)
def test_stream_equals_non_stream(engine, params):
    body = {"messages": HI, **params, "logprobs": "top_logprobs" in params}
    whole = engine.chat(body)
    choices, usage = collect(
        engine.chat({**body, "stream": True, "stream_options": {"include_usage": True}})
    )
    assert usage == whole["usage"]
    for c in whole["choices"]:
        got = choices[c["index"]]
        assert got["text"] == c["message"]["content"]
        assert got["finish"] == c["finish_reason"]
        if c["logprobs"] is None:
            assert got["content"] is None
        else:  # (a choice that keeps no token streams no logprobs)
            assert (got["content"] or []) == c["logprobs"]["content"]


def test_mixed_batch_each_request_equals_its_solo_run(engine):
    bodies = [
        (
            "chat",
            {
                "messages": [{"role": "user", "content": f"Question {i}?"}],
                "max_completion_tokens": 8 + i,
                "seed": i,
                "temperature": 0.9,
                "logprobs": True,
                "top_logprobs": 2,
            },
        )
        for i in range(4)
    ] + [
        (
            "completions",
            {
                "prompt": f"Completion number {i}",
                "max_tokens": 9 + i,
                "seed": 50 + i,
                "logprobs": 2,
                "top_p": 0.9,
            },
        )
        for i in range(4)
    ]
    solo = [engine.chat(b) if kind == "chat" else engine.complete(b) for kind, b in bodies]
    sched = Scheduler(engine, max_sequences=16)
    results: list = [None] * len(bodies)
    done = threading.Event()
    try:
        jobs = []
        for i, (kind, b) in enumerate(bodies):
            body = {"model": MODEL, **b}
            req = parse_chat_request(body, engine.info) if kind == "chat" else engine.parse(body)

            def sink(event, i=i):
                if event[0] == "response":
                    results[i] = event[1]
                    if all(r is not None for r in results):
                        done.set()

            jobs.append(sched.submit(req, sink))
        assert done.wait(60)
        steps = sched.steps
    finally:
        sched.close()
    for got, want in zip(results, solo):
        for key in ("id", "created"):
            got.pop(key), want.pop(key)
        assert got == want
    assert steps < sum(s["usage"]["completion_tokens"] for s in solo)  # they shared steps


# -- the HTTP endpoint with real clients


def test_sdk_sync_stream_and_async(client, base, engine):
    r = client.chat.completions.create(
        model=MODEL, messages=HI, max_completion_tokens=6, seed=3, logprobs=True, top_logprobs=3
    )
    want = engine.chat(messages=HI, max_completion_tokens=6, seed=3, logprobs=True, top_logprobs=3)
    assert r.choices[0].message.content == want["choices"][0]["message"]["content"]
    assert r.choices[0].message.role == "assistant"
    assert [t.logprob for t in r.choices[0].logprobs.content] == [
        t["logprob"] for t in want["choices"][0]["logprobs"]["content"]
    ]
    assert r.usage.total_tokens == want["usage"]["total_tokens"]

    text = ""
    stream = client.chat.completions.create(
        model=MODEL,
        messages=HI,
        max_tokens=6,
        seed=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    assert text == want["choices"][0]["message"]["content"]
    assert usage.completion_tokens == want["usage"]["completion_tokens"]

    import asyncio

    async def go():
        async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="x", max_retries=0) as c:
            return await asyncio.gather(
                *[
                    c.chat.completions.create(model=MODEL, messages=HI, max_tokens=6, seed=3)
                    for _ in range(3)
                ]
            )

    for r in asyncio.run(go()):
        assert r.choices[0].message.content == want["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"messages": []}, "messages"),
        ({"messages": "Hi"}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.[0].role"),
        ({"messages": [{"content": "x"}]}, "messages.[0].role"),
        ({"messages": [{"role": ["user"], "content": "x"}]}, "messages.[0].role"),
        ({"messages": [{"role": {"a": 1}, "content": "x"}]}, "messages.[0].role"),
        ({"messages": [{"role": "\ud800", "content": "x"}]}, "messages.[0].role"),
        ({"messages": [{"role": "user"}]}, "messages.[0].content"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.[0].content"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:,"}}],
                    }
                ]
            },
            "messages.[0].content.[0].type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages.[0].content.[0].text",
        ),
        ({"messages": [{"role": "user", "content": "x", "name": 3}]}, "messages.[0].name"),
        ({"messages": [{"role": "user", "content": "x", "colour": "red"}]}, "messages.[0].colour"),
        (
            {"messages": [{"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]}]},
            "messages.[0].tool_calls",
        ),
        ({"messages": [{"role": "user", "content": "\ud800"}]}, "messages.[0].content"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"store": True}, "store"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"metadata": {"a": 1}}, "metadata"),
        ({"parallel_tool_calls": 1}, "parallel_tool_calls"),
        ({"best_of": 2}, "best_of"),
        ({"echo": True}, "echo"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": 3}, "logprobs"),
        ({"max_tokens": 5, "max_completion_tokens": 5}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"n": 0}, "n"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"logit_bias": {"100258": 1}}, "logit_bias"),
        ({"sampling_trace": 3}, "sampling_trace"),
        ({"model": "nope"}, "model"),
    ],
)
def test_refusals_name_the_field(base, extra, param):
    status, body = post(base, {"model": MODEL, "messages": HI, **extra})
    assert status == (404 if param == "model" else 400)
    assert body["error"]["param"] == param, body
    assert body["error"]["type"] == "invalid_request_error"


def post(base, body):
    """(status, JSON) of a raw POST: ASCII JSON, so a lone surrogate can be sent."""
    req = urllib.request.Request(
        base + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_null_unsupported_fields_are_absent(client):
    r = client.post(
        "/chat/completions",
        body={
            "model": MODEL,
            "messages": HI,
            "max_tokens": 2,
            "tools": [],
            "store": False,
            "metadata": {"job": "x"},
            "parallel_tool_calls": True,
            "modalities": ["text"],
            "service_tier": None,
        },
        cast_to=object,
    )
    assert r["object"] == "chat.completion"


def test_context_overflow_and_template_refusals(engine, tiny_model_dir, tmp_path):
    with pytest.raises(RequestError) as e:
        engine.chat(messages=[{"role": "user", "content": "word " * 2100}])
    assert "maximum context length is 2048" in e.value.message
    assert e.value.param == "messages" and "leaves no room for a reply" in e.value.message
    with pytest.raises(RequestError) as e:  # (a length asked for: the Completions message)
        engine.chat(messages=[{"role": "user", "content": "word " * 2040}], max_tokens=9)
    # user : (" word" x 2040) " " <|endoftext|> \n assistant :  = 2 + 2040 + 5 tokens
    assert "(2047 in your prompt; 9 for the completion)" in e.value.message

    def with_chat(chat):
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        shutil.copytree(tiny_model_dir, folder)
        manifest = json.loads((folder / "refsampler.json").read_text())
        manifest["chat"] = chat
        (folder / "refsampler.json").write_text(json.dumps(manifest))
        return Engine.load(folder)

    for chat, says in [
        (None, "has no chat template"),
        ({"template": "{% if %}"}, "chat template cannot be used: line 1"),
        ({"template": "{{ raise_exception('no ' + messages[0].role) }}"}, "refused them: no user"),
        ({"template": "{{ messages.pop() }}"}, "could not render them"),  # the sandbox holds
        ({"template": "{{ 1 / (messages | length - 1) }}"}, "ZeroDivisionError"),
        ({"template": "{{ 10.0 ** 400 }}"}, "OverflowError"),
        ({"template": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"}, "RecursionError"),
        (
            {
                "template": "{% for m in messages %}{% macro f() %}{% break %}{% endmacro %}"
                "{% endfor %}"
            },
            "chat template cannot be used: SyntaxError",
        ),
    ]:
        with pytest.raises(RequestError) as e:
            with_chat(chat).chat(messages=HI)
        assert e.value.param == "messages" and says in e.value.message, e.value.message
        assert e.value.status == 400


def test_langchain_chat_openai(base, engine):
    lc = pytest.importorskip("langchain_openai")
    llm = lc.ChatOpenAI(
        base_url=base + "/v1",
        api_key="unused",
        model=MODEL,
        max_tokens=6,
        seed=5,
        temperature=0.7,
        max_retries=0,
    )
    want = engine.chat(messages=HI, max_tokens=6, seed=5, temperature=0.7)
    assert llm.invoke("Hi").content == want["choices"][0]["message"]["content"]
    assert "".join(c.content for c in llm.stream("Hi")) == want["choices"][0]["message"]["content"]
