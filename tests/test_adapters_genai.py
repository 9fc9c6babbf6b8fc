"""onnxruntime-genai runs the tiny cl100k model, refsampler samples: the same tokens, text
and logprobs as ``sampler.Engine`` on the same model file, seeded, for B = 1 and 4."""

from __future__ import annotations

import json

import pytest

og = pytest.importorskip("onnxruntime_genai")  # the `genai` extra (also in `test`)

from sampler import Engine  # noqa: E402
from sampler.adapters import genai  # noqa: E402
from sampler.adapters.core import completion_text, logprobs_object  # noqa: E402

EOT = 100_257


@pytest.fixture(scope="module")
def folders(tiny_model_dir, tmp_path_factory):
    out = genai.prepare(tiny_model_dir, tmp_path_factory.mktemp("genai") / "tiny")
    return tiny_model_dir, out


def test_prepare_writes_a_config_genai_loads(folders):
    _, out = folders
    cfg = json.loads((out / "genai_config.json").read_text())
    dec = cfg["model"]["decoder"]
    assert (dec["num_hidden_layers"], dec["num_key_value_heads"], dec["head_size"]) == (2, 2, 16)
    assert cfg["model"]["pad_token_id"] == 100256  # a masked non-token: no prompt holds it
    assert cfg["model"]["eos_token_id"] == EOT
    og.Model(str(out))


FIELDS = dict(
    temperature=0.9,
    top_p=0.85,
    presence_penalty=0.5,
    frequency_penalty=0.7,
    logit_bias={"11": 3.0, "1917": -2},
    logprobs=2,
)


@pytest.mark.parametrize(
    "prompts,n,seed",
    [
        ([[9906, 11, 1917]], 1, 11),  # B = 1
        ([[9906, 11, 1917, 13], [40, 1093]], 2, -5),  # B = 4, prompts of two lengths
    ],
)
def test_genai_with_our_sampler_equals_the_engine(folders, prompts, n, seed):
    model_dir, out = folders
    engine = Engine.load(model_dir)
    tok = engine.tokenizer
    gens = genai.generate(
        str(out), prompts, n=n, max_tokens=8, seed=seed, mask_ids=engine.info.masked_ids, **FIELDS
    )
    resp = engine.complete(prompt=prompts, n=n, max_tokens=8, seed=seed, **FIELDS)
    assert len(gens) == len(resp["choices"]) == len(prompts) * n
    for g in gens:
        choice = resp["choices"][g.prompt * n + g.candidate]
        base = len(tok.decode_bytes(prompts[g.prompt]).decode("utf-8", "replace"))
        assert choice["text"] == completion_text(g.tokens, tok.token_bytes, [EOT])
        assert choice["finish_reason"] == g.finish_reason
        assert choice["logprobs"] == logprobs_object(
            g.logprobs, tok.token_bytes, end_ids=[EOT], offset=base
        )
    if n > 1:  # candidates of one prompt differ: their generators differ
        assert gens[0].tokens != gens[1].tokens


def test_greedy_and_an_end_token(folders):
    """Greedy rows, and a bias that makes the end token the argmax at once: the row stops
    with "stop" and the end token last, like the engine."""
    model_dir, out = folders
    engine = Engine.load(model_dir)
    gens = genai.generate(
        str(out),
        [[9906], [40, 1093, 1521]],
        [{"temperature": 0, "logit_bias": {str(EOT): 100}}, {"temperature": 0}],
        max_tokens=4,
        mask_ids=engine.info.masked_ids,
    )
    assert gens[0].tokens == [EOT] and gens[0].finish_reason == "stop"
    want = engine.complete(prompt=[[40, 1093, 1521]], temperature=0, max_tokens=4, logprobs=0)[
        "choices"
    ][0]
    assert gens[1].finish_reason == want["finish_reason"] == "length"
    tok = engine.tokenizer
    assert completion_text(gens[1].tokens, tok.token_bytes, [EOT]) == want["text"]


def test_refuses_a_prompt_holding_the_pad_id(folders):
    _, out = folders
    with pytest.raises(ValueError, match="pad id 100256"):
        genai.generate(str(out), [[1, 100256]], max_tokens=1)


def test_refuses_a_groupqueryattention_graph(tiny_gqa_model_dir, tmp_path):
    """genai feeds attention_mask, not the in-place cache's seqlens_k: say so up front
    instead of failing inside genai at the first step."""
    with pytest.raises(ValueError, match="GroupQueryAttention graph.*--attention exact"):
        genai.prepare(tiny_gqa_model_dir, tmp_path / "g")
    assert not (tmp_path / "g").exists()
