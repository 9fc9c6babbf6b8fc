"""The runtime-free part of the adapters: validation, per-row generators and draws equal to
the engine's step, the processed distribution, and the Completions-shaped logprobs."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from sampler import RequestError
from sampler import processors as P
from sampler.adapters import core
from sampler.step import Row, sample_step


def test_sampling_params_validates_like_the_api():
    p = core.sampling_params({"temperature": 0.5, "logit_bias": {"7": 1, 7: 2}}, seed=-3)
    assert p.temperature == 0.5 and p.seed == -3
    assert p.logit_bias[0].tolist() == [7] and p.logit_bias[1].tolist() == [2.0]  # later key wins
    cases = [
        ({"temperature": 2.5}, "temperature", "Expected a value <= 2"),
        ({"presence_penalty": "a"}, "presence_penalty", "expected a number"),
        ({"logit_bias": {"x": 1}}, "logit_bias", "non-negative integers"),
        ({"logit_bias": {"3": 101}}, "logit_bias", "Expected a value <= 100"),
        ({"logit_bias": {"3": float("nan")}}, "logit_bias", "finite"),
        ({"logprobs": 6}, "logprobs", "Expected a value <= 5"),
        ({"seed": 2**63}, "seed", "integer above maximum value"),
        ({"n": 2}, "n", "Unrecognized request argument supplied: n"),
    ]
    for fields, param, message in cases:
        with pytest.raises(RequestError, match=message) as e:
            core.sampling_params(fields)
        assert e.value.param == param
    with pytest.raises(RequestError, match="Maximum value is 9"):
        core.sampling_params({"logit_bias": {"10": 1}}, vocab_size=10)


def test_rows_draw_as_the_engine_does():
    """Row (p, c) uses SeedSequence(seed, spawn_key=(p, c)) and one uniform per step: the
    same tokens as sample_step fed those uniforms, whatever the other rows are."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4, 500)).astype(np.float32) * 2  # [4, V]
    params = [
        core.sampling_params(seed=9, top_p=0.8, temperature=0.7, logprobs=1),
        core.sampling_params(seed=9, temperature=0.0, logit_bias={"3": 50}),
    ]
    seqs = core.Sequences.for_prompts(params, n=2)
    assert seqs.keys == [(0, 0), (0, 1), (1, 0), (1, 1)]
    out = seqs.step(z)
    gens = [
        np.random.Generator(np.random.PCG64(np.random.SeedSequence(9, spawn_key=k)))
        for k in seqs.keys
    ]
    want = sample_step(
        z,
        [Row(params[0]), Row(params[0]), Row(params[1]), Row(params[1])],
        [g.random() for g in gens],
    )
    np.testing.assert_array_equal(out.tokens, want.tokens)
    assert out.tokens[2] == out.tokens[3] == 3  # greedy rows with the bias
    assert len(seqs.records[0]) == 1 and seqs.records[2] is None
    one = core.Sequences([params[0]], seed_keys=[(0, 1)])  # row (0, 1) alone: the same draw
    assert one.step(z[1:2]).tokens[0] == out.tokens[1]


def test_unseeded_rows_of_a_request_share_fresh_entropy_but_not_draws():
    p = core.sampling_params()
    a = core.Sequences.for_prompts([p], n=2)
    assert a.entropy[0] == a.entropy[1]
    b = core.Sequences.for_prompts([p], n=2)
    assert a.entropy[0] != b.entropy[0]


def test_process_is_steps_0_to_4_and_greedy_rows_keep_their_argmax():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((2, 30)).astype(np.float32)
    params = [
        core.sampling_params(temperature=0.6, top_p=0.7, frequency_penalty=1.0),
        core.sampling_params(temperature=0.0, logit_bias={"4": 30}),
    ]
    seqs = core.Sequences(params, seed_keys=[(0, 0), (1, 0)], mask_ids=[5, 6])
    seqs.observe([2, 9])
    seqs.observe([2, 9])
    got = seqs.process(z)
    masked = z.copy()
    masked[:, [5, 6]] = -np.inf
    want = P.penalties(masked[:1], [P.count_tokens([2, 2])], 0.0, 1.0)
    want = P.top_p(P.temperature(want, 0.6), 0.7)
    np.testing.assert_array_equal(got[:1], want)
    assert np.flatnonzero(np.isfinite(got[1])).tolist() == [4]
    assert np.isfinite(z).all()  # the input is not modified


def test_logprobs_object_keeps_the_end_token_last_and_offsets_in_characters():
    texts = {0: b"a", 1: b"\xc3", 2: b"\xa9", 3: b"<end>"}
    e = lambda t, lp: core.TokenLogprob(t, lp, np.array([t]), np.array([lp]))  # noqa: E731
    entries = [e(0, -0.1), e(1, -0.2), e(2, -math.inf), e(3, -0.4), e(0, -0.5)]
    got = core.logprobs_object(entries, texts.__getitem__, end_ids=[3], offset=10)
    assert got["tokens"] == ["a", "bytes:\\xc3", "bytes:\\xa9", "<end>"]  # stops at the end id
    assert got["text_offset"] == [10, 11, 11, 12]
    assert got["token_logprobs"] == [-0.1, -0.2, -9999.0, -0.4]
    assert got["top_logprobs"][2] == {"bytes:\\xa9": -9999.0}
    assert core.completion_text([0, 1, 2, 3, 0], texts.__getitem__, [3]) == "aé"


def test_importing_the_adapters_package_imports_no_runtime():
    code = (
        "import sys, sampler.adapters, sampler.adapters.core, sampler.adapters.genai, "
        "sampler.adapters.llama_cpp\n"
        "print(' '.join(m for m in ('torch', 'transformers', 'vllm', 'llama_cpp', "
        "'onnxruntime_genai', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
