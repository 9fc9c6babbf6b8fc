"""The ``sampling_trace`` extension: hand-computed stages, agreement with the reported
logprobs, validation, streaming, and the best_of candidates it adds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sampler import Engine
from sampler import reference as ref
from sampler.errors import RequestError
from sampler.params import SamplingParams
from sampler.processors import TokenCounts
from sampler.trace import STAGES, trace_step

LN2 = math.log(2.0)


def test_stages_by_hand():
    """p = [.5, .3, .15, .05]; bias +ln 2 on id 3; id 0 generated once, presence ln 2;
    T = 0.5; top_p 0.8. Worked out on paper:
      bias:        [.5, .3, .15, .1] / 1.05
      penalties:   [.25, .3, .15, .1] / .8          = [.3125, .375, .1875, .125]
      temperature: squares: [.0625, .09, .0225, .01] / .185
      top_p:       id 1 (.486) then id 0 (.338): .824 >= .8, kept {0, 1}
                   [.0625, .09] / .1525             = [.40984, .59016, 0, 0]
    """
    z = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    params = SamplingParams(
        temperature=0.5,
        top_p=0.8,
        presence_penalty=LN2,
        logit_bias=(np.array([3]), np.array([LN2])),
    )
    counts = TokenCounts()
    counts.add(0)
    t = trace_step(z, params, counts, token=1, k=4, text=lambda j: f"<{j}>")
    assert t["ids"] == [0, 1, 2, 3]
    assert t["tokens"] == ["<0>", "<1>", "<2>", "<3>"]
    expect = {
        "raw": [0.5, 0.3, 0.15, 0.05],
        "logit_bias": [0.5 / 1.05, 0.3 / 1.05, 0.15 / 1.05, 0.1 / 1.05],
        "penalties": [0.3125, 0.375, 0.1875, 0.125],
        "temperature": [0.0625 / 0.185, 0.09 / 0.185, 0.0225 / 0.185, 0.01 / 0.185],
        "top_p": [0.0625 / 0.1525, 0.09 / 0.1525, 0.0, 0.0],
    }
    for stage in STAGES:
        got = [0.0 if lp == -9999.0 else math.exp(lp) for lp in t[stage]]
        assert got == pytest.approx(expect[stage], abs=2e-6), stage
    assert t["top_p"][2:] == [-9999.0, -9999.0]  # outside the nucleus: -inf, written so
    assert t["nucleus"] == 2 and t["in_nucleus"] == [True, True, False, False]
    assert t["bias"] == pytest.approx([0, 0, 0, LN2], abs=1e-6)
    assert t["penalty"] == pytest.approx([LN2, 0, 0, 0], abs=1e-6)
    assert t["chosen"] == 1


def test_ids_are_each_stages_top_k_and_the_chosen_token():
    z = np.log(np.array([0.4, 0.3, 0.2, 0.1], dtype=np.float32))
    # a bias lifts id 3 to the top after step 1; token 2 was drawn
    params = SamplingParams(logit_bias=(np.array([3]), np.array([5.0])))
    t = trace_step(z, params, TokenCounts(), token=2, k=1)
    assert t["ids"] == [0, 2, 3]  # raw top-1 (0), the chosen (2), top-1 after bias (3)
    t = trace_step(z, SamplingParams(), TokenCounts(), token=0, k=0)
    assert t["ids"] == [0]


def test_greedy_row_is_traced_at_temperature_one():
    z = np.log(np.array([0.6, 0.4], dtype=np.float32))
    t = trace_step(z, SamplingParams(temperature=0.0), TokenCounts(), token=0, k=2)
    assert [math.exp(v) for v in t["temperature"]] == pytest.approx([0.6, 0.4], abs=1e-6)


def definition_trace(z, params, generated, token, k):
    """The trace built from :mod:`sampler.reference` alone: full sorts, fsum normalisers."""
    bias = dict(zip(*(a.tolist() for a in params.logit_bias))) if params.logit_bias else {}
    rows = {"raw": ref._f32(z)}
    rows["logit_bias"] = ref.logit_bias(rows["raw"], bias)
    rows["penalties"] = ref.penalties(
        rows["logit_bias"], generated, params.presence_penalty, params.frequency_penalty
    )
    rows["temperature"] = ref.temperature(rows["penalties"], params.temperature or 1.0)
    rows["top_p"] = ref.top_p(rows["temperature"], params.top_p)
    ids = {token, *(j for name in STAGES for j in ref.top_ids(rows[name], k))}
    ids = sorted(ids, key=lambda j: (-float(rows["raw"][j]), j))
    out = {"ids": ids, "nucleus": int(np.isfinite(rows["top_p"]).sum())}
    for name in STAGES:
        out[name] = [ref.reported(float(ref.logprobs(rows[name])[j])) for j in ids]
    return out


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    vocab=st.integers(2, 300),
    k=st.integers(0, 6),
    temperature=st.sampled_from([0.0, 0.3, 1.0, 1.7]),
    top_p=st.sampled_from([0.0, 0.2, 0.9, 1.0]),
    presence=st.floats(-2, 2),
    frequency=st.floats(-2, 2),
)
def test_trace_equals_the_definition(seed, vocab, k, temperature, top_p, presence, frequency):
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal(vocab) * 3).astype(np.float32)  # [V]
    z[rng.random(vocab) < 0.1] = -np.inf  # masked ids
    z[rng.integers(vocab)] = 0.0  # (at least one finite)
    generated = rng.integers(0, vocab, size=rng.integers(0, 8)).tolist()
    bias_ids = np.unique(rng.integers(0, vocab, size=3))
    params = SamplingParams(
        temperature=temperature,
        top_p=top_p,
        presence_penalty=presence,
        frequency_penalty=frequency,
        logit_bias=(bias_ids, rng.uniform(-100, 100, bias_ids.size)),
    )
    counts = TokenCounts()
    for t in generated:
        counts.add(t)
    token = int(rng.integers(vocab))
    got = trace_step(z, params, counts, token, k)
    want = definition_trace(z, params, generated, token, k)
    assert got["ids"] == want["ids"] and got["nucleus"] == want["nucleus"]
    for name in STAGES:  # (the fast normaliser sums float32 exponentials: ~1e-8 apart)
        assert got[name] == pytest.approx(want[name], abs=1e-6), name


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine.load(tiny_model_dir)


PARAMS = [
    {},
    {"temperature": 0.7, "top_p": 0.9},
    {"temperature": 1.3, "presence_penalty": 1.5, "frequency_penalty": -0.5},
    {"temperature": 0.0, "logit_bias": {"15": 4, "220": -3}},
    {"top_p": 0.05, "frequency_penalty": 2.0, "n": 2},
]


@pytest.mark.parametrize("params", PARAMS)
def test_trace_agrees_with_the_reported_logprobs(engine, params):
    """raw = logprobs_mode "raw", top_p = "processed", chosen = the token returned, and
    asking for the trace changes nothing else in the response."""
    body = {"prompt": "Hello there", "max_tokens": 6, "seed": 3, "logprobs": 3, **params}
    plain = engine.complete(body)
    traced = engine.complete(body, sampling_trace=4)
    processed = engine.complete(body, logprobs_mode="processed")
    for c0, c1, cp in zip(plain["choices"], traced["choices"], processed["choices"]):
        lp, lt = c0["logprobs"], c1["logprobs"]
        assert c1["text"] == c0["text"]
        assert {k: v for k, v in lt.items() if k != "sampling_trace"} == lp
        assert len(lt["sampling_trace"]) == len(lp["tokens"])
        for i, t in enumerate(lt["sampling_trace"]):
            chosen = t["ids"].index(t["chosen"])
            assert t["tokens"][chosen] == lp["tokens"][i]
            assert t["raw"][chosen] == pytest.approx(lp["token_logprobs"][i], abs=1e-6)
            want = cp["logprobs"]["token_logprobs"][i]
            assert t["top_p"][chosen] == pytest.approx(want, abs=1e-6)
            for name, value in lp["top_logprobs"][i].items():  # the reported top ids, traced
                assert name in t["tokens"]
                assert t["raw"][t["tokens"].index(name)] == pytest.approx(value, abs=1e-6)


def test_stream_carries_the_same_trace(engine):
    body = {"prompt": "Hi", "max_tokens": 5, "seed": 9, "logprobs": 2, "sampling_trace": 3}
    whole = engine.complete(body)["choices"][0]["logprobs"]["sampling_trace"]
    parts = []
    for chunk in engine.complete(body, stream=True):
        for c in chunk["choices"]:
            parts += (c["logprobs"] or {}).get("sampling_trace", [])
    assert parts == whole


def test_echo_entries_have_no_trace(engine):
    body = {"prompt": "one two", "max_tokens": 2, "echo": True, "logprobs": 1}
    lp = engine.complete(body, sampling_trace=1, seed=1)["choices"][0]["logprobs"]
    prompt = len(engine.tokenizer.encode("one two"))
    assert lp["sampling_trace"][:prompt] == [None] * prompt
    assert all(t is not None for t in lp["sampling_trace"][prompt:])


def test_best_of_candidates(engine):
    """Every candidate with its mean raw logprob; the n best (ties: the lower candidate)
    are the choices, in that order."""
    body = {"prompt": "Once", "max_tokens": 4, "seed": 5, "logprobs": 0, "n": 2, "best_of": 4}
    resp = engine.complete(body, sampling_trace=0)
    cands = resp["candidates"]
    assert [c["candidate"] for c in cands] == [0, 1, 2, 3]
    ranked = sorted(cands, key=lambda c: (-c["mean_logprob"], c["candidate"]))
    assert [c["index"] for c in ranked] == [0, 1, None, None]
    assert [c["text"] for c in ranked[:2]] == [c["text"] for c in resp["choices"]]
    # the mean of the raw logprobs of each returned candidate's tokens (none cut by a stop)
    for c, choice in zip(ranked, resp["choices"]):
        trace = choice["logprobs"]["sampling_trace"]
        raw = [t["raw"][t["ids"].index(t["chosen"])] for t in trace]
        assert c["mean_logprob"] == pytest.approx(sum(raw) / len(raw), abs=1e-6)
    assert "candidates" not in engine.complete(body)  # only with the extension


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sampling_trace": 3}, "needs logprobs too"),
        ({"sampling_trace": 21, "logprobs": 1}, "integer above maximum value"),
        ({"sampling_trace": -1, "logprobs": 1}, "integer below minimum value"),
        ({"sampling_trace": True, "logprobs": 1}, "expected an integer"),
        ({"sampling_trace": "3", "logprobs": 1}, "expected an integer"),
    ],
)
def test_sampling_trace_validation(engine, fields, message):
    with pytest.raises(RequestError) as err:
        engine.complete(prompt="x", **fields)
    assert err.value.param == "sampling_trace"
    assert message in err.value.message
