"""The HF transformers adapter: the kept set against HF's own warpers, the processed logits
against our processors, and a tiny random GPT-2 generating through ``hf.generate`` with the
same tokens and logprobs as ``sampler.Engine`` fed the same logits step by step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # in the test extra: runs in CI (see pyproject.toml)
transformers = pytest.importorskip("transformers")

from replay import ReplayDecoder  # noqa: E402

from sampler import Engine, RequestError  # noqa: E402
from sampler import processors as P  # noqa: E402
from sampler.adapters import hf  # noqa: E402
from sampler.adapters.core import completion_text, logprobs_object, masked_ids  # noqa: E402
from sampler.model import ModelConfig  # noqa: E402
from sampler.tokenizer import get_tokenizer  # noqa: E402

V = 100_277  # cl100k_base's width, so the engine's tokenizer and mask apply
EOT = 100_257


# --- the kept set: ours against TemperatureLogitsWarper + TopPLogitsWarper ----------------
@pytest.mark.parametrize("t", [0.3, 0.7, 1.0, 1.6])
@pytest.mark.parametrize("p", [0.05, 0.3, 0.6, 0.9, 0.99])
def test_kept_set_equals_hf_warpers_on_random_logits(t, p):
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    rng = np.random.default_rng(12)
    broad = rng.standard_normal((6, 3000)).astype(np.float32) * 2  # [6, V']
    peaked = broad.copy()
    peaked[:, :3] += 9
    z = np.concatenate([broad, peaked])  # [12, V']
    ours = np.isfinite(P.top_p(P.temperature(z, t), p))
    scores = torch.from_numpy(z.copy())
    if t != 1.0:
        scores = TemperatureLogitsWarper(t)(None, scores)
    theirs = torch.isfinite(TopPLogitsWarper(p)(None, scores)).numpy()
    np.testing.assert_array_equal(ours, theirs)


def test_ties_at_the_cut_are_where_we_differ_from_hf():
    """Four equal tokens, top_p 0.5: both keep two. Ours are the lower ids (spec §3);
    HF's rule removes the low end of an ascending sort, so which tied ids survive depends
    on torch's (unstable) sort order — on CPU it kept the higher ids."""
    from transformers import TopPLogitsWarper

    z = np.zeros((1, 4), np.float32)
    ours = np.flatnonzero(np.isfinite(P.top_p(z, 0.5))[0]).tolist()
    theirs = torch.isfinite(TopPLogitsWarper(0.5)(None, torch.from_numpy(z)))[0]
    assert ours == [0, 1]
    assert int(theirs.sum()) == 2


# --- the processor on its own ---------------------------------------------------------------
def test_process_mode_equals_our_processors_and_counts_generated_tokens_only():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((2, 50)).astype(np.float32)
    prompt = [[7, 7, 7, 9], [1, 2, 3, 4]]  # 7 in the prompt must not be penalised
    generated = [[7, 8, 8], [5]]
    ids = torch.tensor([prompt[0] + generated[0], prompt[1] + generated[1] + [0, 0]])
    proc = hf.OpenAILogitsProcessor(
        [
            {
                "temperature": 0.7,
                "top_p": 0.8,
                "presence_penalty": 0.4,
                "frequency_penalty": 0.3,
                "logit_bias": {"3": 2.5},
            },
            {"temperature": 1.3, "top_p": 0.5},
        ],
        prompt_length=4,
        draw=False,
    )
    # walk the generation as HF does: first call at the prompt, then one column per step
    for width in range(4, 8):
        out = proc(ids[:, :width], torch.from_numpy(z.copy()))
    want = P.logit_bias(z, [{3: 2.5}, None])
    counts = [P.count_tokens(generated[0]), P.count_tokens(generated[1] + [0, 0])]
    want = P.penalties(want, counts, [0.4, 0.0], [0.3, 0.0])
    want = P.top_p(P.temperature(want, [0.7, 1.3]), [0.8, 0.5])
    np.testing.assert_array_equal(out.numpy(), want)


def test_scores_are_not_modified_unless_inplace():
    z = torch.randn(2, 30)
    before = z.clone()
    ids = torch.zeros(2, 3, dtype=torch.long)
    out = hf.OpenAILogitsProcessor(temperature=0.5, top_p=0.5, seed=1)(ids, z)
    assert torch.equal(z, before) and out is not z
    assert (torch.isfinite(out).sum(dim=1) == 1).all()  # draw mode: one token left
    same = hf.OpenAILogitsProcessor(temperature=0.5, inplace=True, draw=False)(
        torch.zeros(2, 3, dtype=torch.long), z
    )
    assert same is z and torch.equal(z, before / 0.5)


def test_validation_is_the_api_s():
    with pytest.raises(RequestError, match="Expected a value <= 1, but got 1.5"):
        hf.OpenAILogitsProcessor(top_p=1.5)
    with pytest.raises(RequestError, match="Unrecognized request argument supplied: top_k"):
        hf.OpenAILogitsProcessor(top_k=5)
    proc = hf.OpenAILogitsProcessor(logit_bias={"40": 1})
    with pytest.raises(RequestError, match="Maximum value is 29"):
        proc(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 30))


# --- a tiny GPT-2 through generate, against the engine fed the same logits ----------------
@pytest.fixture(scope="module")
def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=V,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=EOT,
        eos_token_id=EOT,
        tie_word_embeddings=False,
    )
    model = GPT2LMHeadModel(cfg).eval()  # random weights, built from the config: no download
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.4)  # logits with std ~2: neither flat nor one-hot
    return model


class _Recorder:
    """Keeps the raw scores HF computed at each step (runs before the OpenAI step)."""

    def __init__(self) -> None:
        self.steps: list[np.ndarray] = []

    def __call__(self, input_ids, scores):
        self.steps.append(scores.numpy().copy())  # [B, V]
        return scores


FIELDS = dict(
    temperature=0.8,
    top_p=0.9,
    presence_penalty=0.6,
    frequency_penalty=0.4,
    logit_bias={"1917": 4.0, "13": -3},
    logprobs=3,
)


@pytest.mark.parametrize(
    "prompts,n,seed", [([[9906, 11, 1917]], 1, 7), ([[9906, 11, 1917], [40, 1093, 1521]], 2, 2024)]
)
def test_generate_equals_the_engine_fed_the_same_logits(gpt2, prompts, n, seed):
    tok = get_tokenizer("cl100k_base")
    mask = masked_ids(tok, V, [EOT])
    rec = _Recorder()
    gens = hf.generate(
        gpt2,
        prompts,
        n=n,
        max_new_tokens=6,
        seed=seed,
        mask_ids=mask,
        logits_processor=[rec],
        **FIELDS,
    )
    assert len(gens) == len(prompts) * n
    for p in range(len(prompts)):  # HF computed the same row for each copy of a prompt
        for c in range(1, n):
            np.testing.assert_array_equal(rec.steps[0][p * n + c], rec.steps[0][p * n])
    width = max(len(g.tokens) for g in gens)
    tokens = np.array([g.tokens + [EOT] * (width - len(g.tokens)) for g in gens])
    config = ModelConfig(
        name="hf-replay",
        onnx="-",
        tokenizer="cl100k_base",
        context_length=64,
        eos_token_ids=(EOT,),
        fim=None,
        path=Path("."),
        digest="replay",
    )
    decoder = ReplayDecoder(config, V, lambda s, t: rec.steps[t][s], tokens, n)
    engine = Engine(decoder, tok)
    resp = engine.complete(prompt=prompts, n=n, max_tokens=6, seed=seed, **FIELDS)
    for g in gens:
        choice = resp["choices"][g.prompt * n + g.candidate]
        base = len(tok.decode_bytes(prompts[g.prompt]).decode("utf-8", "replace"))
        assert choice["text"] == completion_text(g.tokens, tok.token_bytes, [EOT])
        assert choice["finish_reason"] == g.finish_reason
        assert choice["logprobs"] == logprobs_object(
            g.logprobs, tok.token_bytes, end_ids=[EOT], offset=base
        )


def test_draw_mode_survives_hf_sampling_and_warpers_after_it(gpt2):
    """With do_sample=True and HF's own temperature/top-k/top-p after the processor, the
    tokens are still the processor's: one finite token survives any warper."""
    ids = torch.tensor([[9906, 11, 1917]])
    want = hf.generate(gpt2, ids, max_new_tokens=5, seed=3, temperature=0.9, top_p=0.8)[0]
    proc = hf.OpenAILogitsProcessor(
        seed=3, temperature=0.9, top_p=0.8, prompt_length=3, end_ids=[EOT]
    )
    torch.manual_seed(123)
    out = gpt2.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=True,
        temperature=0.5,
        top_k=20,
        top_p=0.7,
        max_new_tokens=5,
        logits_processor=transformers.LogitsProcessorList([proc]),
        pad_token_id=EOT,
    )
    assert out[0, 3:].tolist() == want.tokens


def test_a_processor_that_changes_the_choice_is_caught(gpt2):
    class Flip:
        def __call__(self, input_ids, scores):  # picks another token than ours
            out = torch.full_like(scores, -float("inf"))
            out[:, 5] = 0.0
            return out

    ids = torch.tensor([[9906, 11, 1917]])
    proc = hf.OpenAILogitsProcessor(seed=3, prompt_length=3, end_ids=[EOT])
    with pytest.raises(RuntimeError, match="changed the choice"):
        gpt2.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=3,
            pad_token_id=EOT,
            logits_processor=transformers.LogitsProcessorList([proc, Flip()]),
        )


def test_generation_config_that_would_run_first_is_refused(gpt2):
    import copy

    model = copy.copy(gpt2)
    model.generation_config = copy.deepcopy(gpt2.generation_config)
    model.generation_config.suppress_tokens = [5]
    with pytest.raises(ValueError, match="suppress_tokens"):
        hf.generate(model, [[1, 2]], max_new_tokens=1)
