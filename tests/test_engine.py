"""The engine end to end on the tiny model: every section of the spec that a response
shows, checked against an independent slow path where values are involved."""

import re
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sampler import Engine, RequestError
from sampler import reference as ref
from sampler.decoder import Decoder
from sampler.tokenizer import get_tokenizer

TOK = get_tokenizer("cl100k_base")
EOT = 100257


@pytest.fixture(scope="module", params=["exact", "gqa"])
def engine(request, tiny_model_dir):
    """The tiny model in both graph kinds: the HF/Optimum cache I/O (exact attention) and
    GroupQueryAttention with the cache updated in place."""
    folder = (
        tiny_model_dir
        if request.param == "exact"
        else request.getfixturevalue("tiny_gqa_model_dir")
    )
    return Engine(Decoder.load(folder), TOK)


@pytest.fixture(scope="module")
def full_logits(tiny_model_dir):
    """Logits of every position of a sequence, from a plain ORT session with no cache."""
    import onnxruntime as ort

    sess = ort.InferenceSession(
        str(tiny_model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    pasts = [i for i in sess.get_inputs() if i.name.startswith("past_key_values")]

    def run(tokens):
        ids = np.array([tokens], dtype=np.int64)
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None],
        }
        for i in pasts:
            feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
        return sess.run(["logits"], feeds)[0][0]  # [S, V]

    return run


def masked(row):
    z = np.array(row, dtype=np.float32)
    z[TOK.masked_ids(z.size, (EOT,))] = -np.inf
    return z


def uniforms(seed, p, c, n):
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(p, c))))
    return [rng.random() for _ in range(n)]


def reference_tokens(
    full_logits,
    prompt,
    *,
    seed,
    max_tokens,
    temperature=1.0,
    top_p=1.0,
    presence=0.0,
    frequency=0.0,
    bias=None,
    p=0,
    c=0,
):
    """The slow path: full-sequence logits each step, reference processors, same uniforms."""
    seq, out = list(prompt), []
    for u in uniforms(seed, p, c, max_tokens):
        z = masked(full_logits(seq)[-1])
        if bias:
            z = ref.logit_bias(z, bias)
        z = ref.penalties(z, out, presence, frequency)
        tok = ref.step(z, temperature=temperature, top_p=top_p, uniform=u)
        out.append(tok)
        if tok == EOT:
            break
        seq.append(tok)
    return out


# --- the slow reference, token for token ----------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        dict(temperature=1.0),
        dict(temperature=0.7, top_p=0.9),
        dict(temperature=1.3, top_p=0.5, presence=0.8, frequency=0.6),
        dict(temperature=0.0, presence=1.5, frequency=2.0),
        dict(temperature=1.0, top_p=0.3, bias={220: 8.0, 13: 5.0, 11: -100.0}),
        dict(temperature=0.5, top_p=0.0),
    ],
)
def test_tokens_equal_slow_reference(engine, full_logits, params):
    prompt = TOK.encode("The quick brown fox")
    body = {
        "prompt": prompt,
        "max_tokens": 12,
        "seed": 1234,
        "logprobs": 0,
        "n": 2,
        "temperature": params["temperature"],
        "top_p": params.get("top_p", 1.0),
        "presence_penalty": params.get("presence", 0.0),
        "frequency_penalty": params.get("frequency", 0.0),
    }
    if params.get("bias"):
        body["logit_bias"] = {str(k): v for k, v in params["bias"].items()}
    resp = engine.complete(body)
    for c, choice in enumerate(resp["choices"]):
        expected = reference_tokens(full_logits, prompt, seed=1234, max_tokens=12, c=c, **params)
        texts = [TOK.token_text(t) for t in expected]  # an end token included (decided)
        assert choice["logprobs"]["tokens"] == texts
        assert resp["usage"]["completion_tokens"] >= len(expected)
        text = TOK.decode_bytes([t for t in expected if t != EOT]).decode("utf-8", "replace")
        assert choice["text"] == text


# --- echo scoring -------------------------------------------------------------------------
def test_echo_scoring_equals_full_sequence_log_softmax(engine, full_logits):
    prompt = TOK.encode("Scoring a sentence, one token at a time: 😊 ok")
    resp = engine.complete(prompt=prompt, echo=True, max_tokens=0, logprobs=1)
    (choice,) = resp["choices"]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(prompt)
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    logits = full_logits(prompt)  # [S, V]
    for i in range(1, len(prompt)):
        expected = ref.logprobs(masked(logits[i - 1]))[prompt[i]]
        assert abs(lp["token_logprobs"][i] - expected) < 1e-5
        assert len(lp["top_logprobs"][i]) <= 2
    assert choice["text"] == TOK.decode_bytes(prompt).decode()
    assert choice["finish_reason"] == "length"
    assert resp["usage"] == {
        "prompt_tokens": len(prompt),
        "completion_tokens": 0,
        "total_tokens": len(prompt),
    }


def test_echo_with_generation_concatenates(engine):
    plain = engine.complete(prompt="Once upon", max_tokens=5, seed=3, logprobs=2)
    echoed = engine.complete(prompt="Once upon", max_tokens=5, seed=3, logprobs=2, echo=True)
    a, b = plain["choices"][0], echoed["choices"][0]
    assert b["text"] == "Once upon" + a["text"]
    n = len(TOK.encode("Once upon"))
    assert b["logprobs"]["tokens"][n:] == a["logprobs"]["tokens"]
    assert b["logprobs"]["text_offset"][n:] == a["logprobs"]["text_offset"]
    assert b["logprobs"]["text_offset"][:n] == [0, 4]
    assert echoed["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"]


def test_echo_without_logprobs_and_empty_prompt(engine):
    r = engine.complete(prompt="", echo=True, max_tokens=0)
    assert r["choices"][0]["text"] == "" and r["usage"]["prompt_tokens"] == 0
    r = engine.complete(prompt="", echo=True, max_tokens=0, logprobs=2)
    assert r["choices"][0]["logprobs"]["tokens"] == []
    r = engine.complete(prompt="", max_tokens=3, seed=1)
    assert r["usage"] == {"prompt_tokens": 0, "completion_tokens": 3, "total_tokens": 3}


# --- logprobs -----------------------------------------------------------------------------
def test_logprobs_shape_and_content(engine, full_logits):
    prompt = TOK.encode("Hello there")
    r = engine.complete(prompt=prompt, max_tokens=6, seed=9, logprobs=3)
    lp = r["choices"][0]["logprobs"]
    tokens = reference_tokens(full_logits, prompt, seed=9, max_tokens=6)
    assert lp["tokens"] == [TOK.token_text(t) for t in tokens]
    for i, t in enumerate(tokens):
        top = lp["top_logprobs"][i]
        assert 3 <= len(top) <= 4 and lp["tokens"][i] in top
        values = list(top.values())
        assert values == sorted(values, reverse=True)
        full = ref.logprobs(masked(full_logits(prompt + tokens[:i])[-1]))
        assert abs(lp["token_logprobs"][i] - full[t]) < 1e-5
        assert top[lp["tokens"][i]] == lp["token_logprobs"][i]
        for j in ref.top_ids(full, 3):
            assert abs(top[TOK.token_text(j)] - full[j]) < 1e-5
    assert lp["text_offset"][0] == len("Hello there")


def test_logprobs_zero_reports_only_the_sampled_token(engine):
    r = engine.complete(prompt="abc", max_tokens=4, seed=2, logprobs=0)
    lp = r["choices"][0]["logprobs"]
    for t, top in zip(lp["tokens"], lp["top_logprobs"]):
        assert list(top) == [t]


def test_text_offsets_follow_the_text(engine):
    r = engine.complete(prompt="Offsets:", max_tokens=10, seed=5, logprobs=1)
    ch = r["choices"][0]
    offsets = ch["logprobs"]["text_offset"]
    assert offsets[0] == len("Offsets:")
    for tok_text, offset in zip(ch["logprobs"]["tokens"], offsets):
        if not tok_text.startswith("bytes:"):
            start = offset - len("Offsets:")
            assert ch["text"][start : start + len(tok_text)] == tok_text


def test_processed_logprobs_mode(engine, full_logits):
    prompt = TOK.encode("Processed")
    base = dict(prompt=prompt, max_tokens=5, seed=4, logprobs=2)
    raw = engine.complete(**base)["choices"][0]["logprobs"]
    same = engine.complete(**base, logprobs_mode="processed")["choices"][0]["logprobs"]
    assert np.allclose(raw["token_logprobs"], same["token_logprobs"], atol=1e-9)
    cut = engine.complete(**base, top_p=0.3, logprobs_mode="processed")["choices"][0]["logprobs"]
    tokens = reference_tokens(full_logits, prompt, seed=4, max_tokens=5, top_p=0.3)
    assert cut["tokens"] == [TOK.token_text(t) for t in tokens]
    for i, t in enumerate(tokens):
        z = masked(full_logits(prompt + tokens[:i])[-1])
        full = ref.logprobs(z)
        nucleus = ref.nucleus(z, 0.3)
        mass = np.log(np.exp(full[nucleus]).sum())
        assert abs(cut["token_logprobs"][i] - (full[t] - mass)) < 1e-5  # renormalised
        outside = [j for j in ref.top_ids(full, 2) if j not in nucleus]
        for j in outside:
            assert cut["top_logprobs"][i][TOK.token_text(j)] == -9999.0


# --- seed, n, best_of -----------------------------------------------------------------------
def test_same_seed_same_output_different_seed_differs(engine):
    a = engine.complete(prompt="Seeds", max_tokens=16, seed=42)
    b = engine.complete(prompt="Seeds", max_tokens=16, seed=42)
    c = engine.complete(prompt="Seeds", max_tokens=16, seed=43)
    assert a["choices"] == b["choices"]
    assert a["choices"][0]["text"] != c["choices"][0]["text"]
    assert a["system_fingerprint"] == c["system_fingerprint"]
    assert a["id"] != b["id"]


def test_no_seed_draws_fresh_entropy(engine):
    texts = {engine.complete(prompt="Fresh", max_tokens=16)["choices"][0]["text"] for _ in range(3)}
    assert len(texts) > 1


def test_negative_seed_works(engine):
    a = engine.complete(prompt="x", max_tokens=5, seed=-1)
    b = engine.complete(prompt="x", max_tokens=5, seed=-1)
    assert a["choices"] == b["choices"]


def test_choice_k_unchanged_when_n_grows(engine):
    one = engine.complete(prompt="Grow", max_tokens=8, seed=7, n=1, logprobs=1)
    three = engine.complete(prompt="Grow", max_tokens=8, seed=7, n=3, logprobs=1)
    assert three["choices"][0] == one["choices"][0]
    assert [c["index"] for c in three["choices"]] == [0, 1, 2]
    assert len({c["text"] for c in three["choices"]}) == 3


def test_best_of_returns_top_mean_logprob(engine):
    bias = {str(EOT): -100}  # no end token: every candidate runs to max_tokens
    all5 = engine.complete(prompt="Best", max_tokens=6, seed=11, n=5, logprobs=0, logit_bias=bias)
    best2 = engine.complete(
        prompt="Best", max_tokens=6, seed=11, n=2, best_of=5, logprobs=0, logit_bias=bias
    )
    assert all(c["finish_reason"] == "length" for c in all5["choices"])
    means = [np.mean(c["logprobs"]["token_logprobs"]) for c in all5["choices"]]
    order = sorted(range(5), key=lambda i: (-means[i], i))[:2]
    assert [c["text"] for c in best2["choices"]] == [all5["choices"][i]["text"] for i in order]
    assert [c["index"] for c in best2["choices"]] == [0, 1]
    assert best2["usage"]["completion_tokens"] == all5["usage"]["completion_tokens"] == 30


def test_multiple_prompts_index_and_usage(engine):
    r = engine.complete(prompt=["a b", "c", "d e f"], n=2, max_tokens=3, seed=1)
    assert [c["index"] for c in r["choices"]] == list(range(6))
    assert r["usage"]["prompt_tokens"] == len(TOK.encode("a b")) + 1 + len(TOK.encode("d e f"))
    assert r["usage"]["completion_tokens"] == 18


def test_batch_independence_of_a_prompts_choices(engine):
    """Prompt 0's choices do not depend on the other prompts in the request."""
    a = engine.complete(prompt=["Same start", "short"], max_tokens=10, seed=5, n=2, logprobs=2)
    b = engine.complete(
        prompt=["Same start", "a much longer other prompt than the first"],
        max_tokens=10,
        seed=5,
        n=2,
        logprobs=2,
    )
    assert a["choices"][:2] == b["choices"][:2]  # bit for bit, logprobs included
    g1 = engine.complete(prompt="Greedy one", max_tokens=10, temperature=0, logprobs=1)
    g2 = engine.complete(prompt=["x y z w", "Greedy one"], max_tokens=10, temperature=0, logprobs=1)
    assert g1["choices"][0]["text"] == g2["choices"][1]["text"]
    np.testing.assert_allclose(
        g1["choices"][0]["logprobs"]["token_logprobs"],
        g2["choices"][1]["logprobs"]["token_logprobs"],
        atol=1e-5,
    )


# --- stop and end of text -------------------------------------------------------------------
def test_stop_string_trims_and_logprobs_follow(engine):
    free = engine.complete(prompt="Stop here", max_tokens=20, temperature=0, logprobs=1)
    text = free["choices"][0]["text"]
    stop = text[5:8]
    r = engine.complete(prompt="Stop here", max_tokens=20, temperature=0, logprobs=1, stop=stop)
    ch = r["choices"][0]
    assert ch["text"] == text[: text.index(stop)]
    assert ch["finish_reason"] == "stop"
    cut = len("Stop here") + text.index(stop)
    assert all(o < cut for o in ch["logprobs"]["text_offset"])
    n_kept = sum(o < cut for o in free["choices"][0]["logprobs"]["text_offset"])
    assert ch["logprobs"]["tokens"] == free["choices"][0]["logprobs"]["tokens"][:n_kept]


def test_end_of_text_finishes_with_stop(engine):
    r = engine.complete(prompt="End", max_tokens=5, seed=1, logprobs=1, logit_bias={str(EOT): 100})
    ch = r["choices"][0]
    assert ch["text"] == "" and ch["finish_reason"] == "stop"
    # never in the text, but in the logprobs arrays, so that a scorer reading the last
    # entry as the generated token (lm-evaluation-harness) reads the right one
    assert ch["logprobs"]["tokens"] == ["<|endoftext|>"]
    assert ch["logprobs"]["text_offset"] == [len("End")]
    top = ch["logprobs"]["top_logprobs"][0]  # raw: the bias that forced it is not in it
    assert "<|endoftext|>" in top and len(top) <= 2
    assert r["usage"]["completion_tokens"] == 1


def test_echo_scoring_with_one_generated_token_keeps_the_end_token_last(engine, full_logits):
    """lm-evaluation-harness sends echo + max_tokens 1 and drops the last entry."""
    prompt = TOK.encode("Scored text")
    r = engine.complete(
        prompt=prompt,
        echo=True,
        max_tokens=1,
        logprobs=1,
        temperature=0,
        logit_bias={str(EOT): 100},
    )
    lp = r["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(prompt) + 1 and lp["tokens"][-1] == "<|endoftext|>"
    logits = full_logits(prompt)
    expected = ref.logprobs(masked(logits[0]))[prompt[1]]
    assert abs(lp["token_logprobs"][1] - expected) < 1e-5
    assert r["choices"][0]["text"] == "Scored text"


def test_max_tokens_zero_without_echo(engine):
    r = engine.complete(prompt="Nothing", max_tokens=0)
    assert r["choices"][0]["text"] == "" and r["choices"][0]["finish_reason"] == "length"
    assert r["usage"]["completion_tokens"] == 0


# --- suffix -----------------------------------------------------------------------------------
def test_suffix_returns_the_middle_only(engine):
    r = engine.complete(prompt="def f(x):\n    ", suffix="\n    return y", max_tokens=4, seed=3)
    prompt_tokens = 3 + len(TOK.encode("def f(x):\n    ")) + len(TOK.encode("\n    return y"))
    assert r["usage"]["prompt_tokens"] == prompt_tokens
    r2 = engine.complete(
        prompt=TOK.encode("def f(x):\n    "), suffix="\n    return y", max_tokens=4, seed=3
    )
    assert r2["choices"] == r["choices"]
    stopped = engine.complete(prompt="a", suffix="b", max_tokens=4, logit_bias={str(EOT): 100})
    assert stopped["choices"][0]["text"] == ""
    assert stopped["choices"][0]["finish_reason"] == "stop"


# --- streaming ----------------------------------------------------------------------------------
def collect(chunks, n_choices):
    """Each choice's text, logprobs and finish_reason from its chunks, as a client joins
    them: logprobs stay null until a chunk carries some (spec §10)."""
    texts = [""] * n_choices
    lps = [None] * n_choices
    finish = [None] * n_choices
    for ch in chunks:
        (c,) = ch["choices"]
        i = c["index"]
        assert finish[i] is None, "a chunk after the choice finished"
        texts[i] += c["text"]
        if c["logprobs"] is not None:
            last = c["finish_reason"] is not None and lps[i] is None
            assert c["logprobs"]["tokens"] or last, (
                "logprobs are null in a chunk without tokens (but a choice's last chunk, "
                "when no chunk before it carried any)"
            )
            lps[i] = lps[i] or {k: [] for k in c["logprobs"]}
            for k in lps[i]:
                lps[i][k] += c["logprobs"][k]
        finish[i] = c["finish_reason"]
    return texts, lps, finish


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    temperature=st.sampled_from([0.0, 0.8, 1.5]),
    top_p=st.sampled_from([1.0, 0.7]),
    n=st.integers(1, 3),
    logprobs=st.sampled_from([None, 0, 2]),
    echo=st.booleans(),
    stop=st.sampled_from([None, "e", ["a", "\n"], "th", [" ", "a"]]),
    max_tokens=st.integers(0, 10),
    presence=st.sampled_from([0.0, 1.0]),
    seed=st.integers(0, 2**32),
    prompt=st.sampled_from(["Streaming", "", "😊 and ", "a" * 5, "a b c d e f"]),
)
def test_stream_equals_non_stream(
    engine, temperature, top_p, n, logprobs, echo, stop, max_tokens, presence, seed, prompt
):
    body = dict(
        prompt=prompt,
        temperature=temperature,
        top_p=top_p,
        n=n,
        logprobs=logprobs,
        echo=echo,
        stop=stop,
        max_tokens=max_tokens,
        presence_penalty=presence,
        seed=seed,
    )
    full = engine.complete(body)
    texts, lps, finish = collect(engine.complete({**body, "stream": True}), n)
    for i, choice in enumerate(full["choices"]):
        assert texts[i] == choice["text"]
        assert finish[i] == choice["finish_reason"]
        if logprobs is None:
            assert choice["logprobs"] is None
        else:
            assert lps[i] == choice["logprobs"]


def test_stream_and_non_stream_agree_on_an_empty_logprobs_object(engine):
    """Issue 13 D: a stop string at the very start keeps no token. The response has empty
    logprobs arrays; the stream's last chunk of each choice carries the same empty object
    (no earlier chunk carried logprobs), so joining the chunks gives the response."""
    body = {
        "prompt": "a b c d e f",
        "max_tokens": 15,
        "seed": -130700380326,
        "n": 3,
        "logprobs": 0,
        "stop": [" ", "a"],
        "temperature": 0,
    }
    full = engine.complete(body)
    empty = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    assert [c["logprobs"] for c in full["choices"]] == [empty] * 3
    chunks = list(engine.complete({**body, "stream": True}))
    texts, lps, finish = collect(chunks, 3)
    assert lps == [empty] * 3 and texts == [c["text"] for c in full["choices"]]
    assert all(c["choices"][0]["logprobs"] == empty for c in chunks)


def test_stream_chunk_shape_and_usage(engine):
    chunks = list(
        engine.complete(
            prompt="Chunks",
            max_tokens=5,
            seed=1,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and re.fullmatch(r"cmpl-[A-Za-z0-9]{29}", ids.pop())
    for c in chunks[:-1]:
        assert c["object"] == "text_completion" and c["usage"] is None
        assert len(c["choices"]) == 1
    last = chunks[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 10
    plain = list(engine.complete(prompt="Chunks", max_tokens=5, seed=1, stream=True))
    assert all("usage" not in c for c in plain)
    finals = [c for c in plain if c["choices"][0]["finish_reason"] is not None]
    assert len(finals) == 1 and finals[0] is plain[-1]


def test_stream_errors_raise_before_iteration(engine):
    with pytest.raises(RequestError) as e:
        engine.complete(prompt="x", stream=True, best_of=2)
    assert e.value.param == "best_of"


# --- shape, keyword form, errors ----------------------------------------------------------------
def test_response_shape(engine):
    r = engine.complete({"model": "tiny-random-cl100k", "prompt": "Shape", "max_tokens": 2})
    assert set(r) == {"id", "object", "created", "model", "system_fingerprint", "choices", "usage"}
    assert r["object"] == "text_completion" and isinstance(r["created"], int)
    assert r["model"] == "tiny-random-cl100k"
    assert re.fullmatch(r"fp_[0-9a-f]{10}", r["system_fingerprint"])
    assert set(r["choices"][0]) == {"text", "index", "logprobs", "finish_reason"}
    assert r["choices"][0]["logprobs"] is None


def test_unknown_model_is_404(engine):
    with pytest.raises(RequestError) as e:
        engine.complete(model="gpt-4", prompt="x")
    assert e.value.status == 404 and e.value.code == "model_not_found"


def test_request_dict_and_keywords_merge(engine):
    a = engine.complete({"prompt": "kw", "seed": 1}, max_tokens=3)
    b = engine.complete(prompt="kw", seed=1, max_tokens=3)
    assert a["choices"] == b["choices"]


def test_invalid_body_type(engine):
    with pytest.raises(RequestError) as e:
        engine.complete([1, 2])
    assert "could not parse the JSON body" in e.value.message


def test_fingerprint_follows_model_file_and_tokenizer():
    from sampler.response import fingerprint

    base = fingerprint("aa", "cl100k_base")
    assert base == fingerprint("aa", "cl100k_base")
    assert base != fingerprint("ab", "cl100k_base")
    assert base != fingerprint("aa", {"name": "x", "sha256": "00"})


def test_requests_joining_a_running_batch_equal_their_solo_runs(engine):
    """Continuous batching on both cache kinds: a request admitted while another runs is
    merged into its batch (KVCache.merge / SharedKVCache.merge), and rows that finish are
    taken out; every seeded choice still equals the request run alone."""
    from sampler.scheduler import Scheduler

    bodies = [
        dict(prompt="Once upon a time", max_tokens=12, seed=3, n=2, temperature=1.0, stream=True),
        dict(
            prompt=["The", "A much longer prompt about the sea and"],
            max_tokens=5,
            seed=4,
            logprobs=2,
            top_p=0.9,
        ),
        dict(prompt="x", max_tokens=8, seed=5, best_of=3, n=2, presence_penalty=1.0),
    ]
    sched = Scheduler(engine)
    responses: dict[int, object] = {}
    later = []

    def sink_for(k):
        def sink(event):
            kind, payload = event
            if kind == "chunks":
                responses.setdefault(k, []).extend(payload)
                if k == 0 and not later:  # the first request is running: add the rest
                    later.extend(
                        sched.submit(engine.parse(**b), sink_for(i))
                        for i, b in enumerate(bodies[1:], start=1)
                    )
            elif kind in ("response", "error"):
                responses[k] = payload

        return sink

    try:
        first = sched.submit(engine.parse(**bodies[0]), sink_for(0))
        assert first.wait(60) and len(later) == 2 and all(j.wait(60) for j in later)
        assert sched.steps < 12 + 5 + 8  # the later requests really ran beside the first
    finally:
        sched.close()

    def texts(chunks):
        out: dict[int, str] = {}
        for c in chunks:
            for choice in c["choices"]:
                out[choice["index"]] = out.get(choice["index"], "") + choice["text"]
        return out

    assert texts(responses[0]) == texts(engine.complete(**bodies[0]))
    for k in (1, 2):
        solo = engine.complete(**bodies[k])
        assert [c["text"] for c in responses[k]["choices"]] == [c["text"] for c in solo["choices"]]
        assert [c["logprobs"] for c in responses[k]["choices"]] == [
            c["logprobs"] for c in solo["choices"]
        ]


def test_background_jobs_yield_to_interactive_ones_and_keep_their_output(engine):
    """Batch work (background) fills a full batch; an interactive request that arrives does
    not wait for it: background jobs are preempted, it runs at once, and the preempted
    jobs start again and still return exactly their solo outputs."""
    import threading

    from sampler.scheduler import Scheduler

    sched = Scheduler(engine, max_sequences=4)
    order: list[str] = []
    out: dict[str, dict] = {}
    lock = threading.Lock()

    def sink_for(name):
        def sink(event):
            kind, payload = event
            if kind in ("response", "error"):
                with lock:
                    order.append(name)
                    out[name] = payload

        return sink

    back = {f"b{i}": dict(prompt=f"Batch {i}", max_tokens=40, seed=i, n=2) for i in range(3)}
    fore = dict(prompt="Interactive", max_tokens=3, seed=9, n=2)
    try:
        jobs = [
            sched.submit(engine.parse(**b), sink_for(k), background=True) for k, b in back.items()
        ]
        while sched.steps < 3:  # two background jobs fill the batch (2 x n=2), one waits
            threading.Event().wait(0.005)
        fj = sched.submit(engine.parse(**fore), sink_for("fore"))
        assert fj.wait(60) and all(j.wait(120) for j in jobs)
    finally:
        sched.close()
    assert order[0] == "fore"  # it did not wait for 40-token background jobs
    assert sched.preempted >= 1
    for name, body in {**back, "fore": fore}.items():
        solo = engine.complete(**body)
        assert [c["text"] for c in out[name]["choices"]] == [c["text"] for c in solo["choices"]]


def test_background_jobs_hold_at_most_their_share_while_interactive_ones_run(engine):
    """While an interactive stream runs, background jobs hold at most background_share
    sequences (each step stays short); once it ends they fill the batch again."""
    from sampler.scheduler import Scheduler

    sched = Scheduler(engine, max_sequences=8, background_share=2)
    held: list[int] = []

    def fore_sink(event):  # on the worker thread, between two steps
        if event[0] == "chunks":
            held.append(sum(j.size for j in sched._active if j.background))

    try:
        jobs = [
            sched.submit(
                engine.parse(prompt=f"B{i}", max_tokens=30, seed=i), lambda e: None, background=True
            )
            for i in range(8)
        ]
        while sched.steps < 2:
            threading.Event().wait(0.005)
        assert sched.load["running"] == 8  # alone, background jobs fill the batch
        fore = sched.submit(engine.parse(prompt="F", max_tokens=10, seed=1, stream=True), fore_sink)
        assert fore.wait(60) and all(j.wait(120) for j in jobs)
    finally:
        sched.close()
    assert held and max(held) <= 2


def test_requests_admitted_together_share_one_prefill_and_a_failing_one_fails_alone(
    engine, monkeypatch
):
    """Requests admitted between two steps are prefilled in one model call; if that call
    raises, each is prefilled alone and only the one that still raises fails."""
    from sampler.scheduler import Scheduler

    bodies = [
        dict(prompt=f"Prompt number {i}", max_tokens=4, seed=i, n=1 + i % 2) for i in range(4)
    ]
    real, calls = engine.decoder.prefill, []
    bad = engine.parse(prompt="boom boom", max_tokens=4).prompts[0].tokens

    def prefill(prompts, **kw):
        calls.append(len(prompts))
        if any(list(p) == list(bad) for p in prompts):
            raise IndexError("injected prefill failure")
        return real(prompts, **kw)

    for with_bad in (False, True):
        monkeypatch.setattr(engine.decoder, "prefill", prefill)
        calls.clear()
        events: dict[int, tuple] = {}
        sched = Scheduler(engine, max_sequences=64)
        todo = bodies + ([dict(prompt="boom boom", max_tokens=4)] if with_bad else [])
        with sched._cond:  # hold the worker: all of them are admitted in one round
            jobs = [
                sched.submit(engine.parse(**b), lambda e, k=k: events.__setitem__(k, e))
                for k, b in enumerate(todo)
            ]
        try:
            assert all(j.wait(60) for j in jobs)
        finally:
            sched.close()
        monkeypatch.setattr(engine.decoder, "prefill", real)
        assert calls[0] == len(todo)  # one call for every prompt admitted together
        for k, b in enumerate(bodies):
            kind, payload = events[k]
            assert kind == "response"
            solo = engine.complete(**b)
            assert [c["text"] for c in payload["choices"]] == [c["text"] for c in solo["choices"]]
        if with_bad:
            assert events[len(bodies)][0] == "error"
            assert isinstance(events[len(bodies)][1], IndexError)


def test_shared_cache_compact_and_append_equal_take_and_merge():
    """The in-place row moves of the GQA cache hold exactly what a copying take/merge
    holds, row for row (in the order they report)."""
    from sampler.kvcache import SharedKVCache

    rng = np.random.default_rng(0)

    def cache(batch, lengths, capacity=8):
        c = SharedKVCache.empty(batch, num_layers=2, num_kv_heads=1, head_dim=2, capacity=capacity)
        for buf in c.keys + c.values:
            buf[...] = rng.standard_normal(buf.shape)
        c.lengths[:] = lengths
        return c

    def rows(c, r):
        n = int(c.lengths[r])
        return [buf[r, :, :n].copy() for buf in c.keys + c.values]

    a = cache(5, [3, 1, 4, 2, 5])
    before = [rows(a, r) for r in range(5)]
    small, order = a.compact([0, 3, 4])
    assert sorted(order) == [0, 3, 4] and small.batch == 3
    for new, old in enumerate(order):
        assert all(np.array_equal(x, y) for x, y in zip(rows(small, new), before[old]))
    b, c = cache(2, [2, 6]), cache(1, [1])
    grown = small.append([b, c])  # room: 5 rows allocated, 3 used, 3 more needed -> copy
    again = grown.append([cache(1, [2])])  # into the spare rows, in place
    merged = SharedKVCache.merge([small, b, c])
    assert grown.lengths.tolist() == merged.lengths.tolist()
    for r in range(merged.batch):
        assert all(np.array_equal(x, y) for x, y in zip(rows(grown, r), rows(merged, r)))
        assert all(np.array_equal(x, y) for x, y in zip(rows(again, r), rows(merged, r)))
    assert again.batch == 7 and again.keys[0].base is grown.keys[0].base
