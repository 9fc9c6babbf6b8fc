"""llama-cpp-python with the OpenAI step: a tiny random Llama GGUF (written here, no
download) decodes through ``llama_cpp.generate`` with the same tokens and logprobs as
``sampler.Engine`` fed the logits llama.cpp computed; the processor and the logprobs helper
on their own run without llama-cpp-python.

llama-cpp-python builds from source, so it is not in the test extra: install
``refsampler[llama]`` to run the tests that need it (they are skipped otherwise)."""

from __future__ import annotations

from pathlib import Path

import gguf_reference as ref
import numpy as np
import pytest
from replay import ReplayDecoder

from sampler import Engine
from sampler import processors as P
from sampler.adapters import llama_cpp as A
from sampler.adapters.core import completion_text, logprobs_object
from sampler.model import load_config


# --- without llama-cpp-python: the processor's contract ------------------------------------
def test_penalties_count_generated_tokens_only_and_scores_are_a_strided_view():
    rng = np.random.default_rng(5)
    z = rng.standard_normal(40).astype(np.float32)
    rec = np.zeros(40, dtype=[("id", np.intc), ("logit", np.single), ("p", np.single)])
    rec["logit"] = z  # llama-cpp-python hands the processor such a field view
    prompt = [3, 3, 9]
    proc = A.LogitsProcessor(
        draw=False,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        temperature=0.5,
        logit_bias={"9": 1.0},
    )
    for generated in ([], [3], [3, 4]):
        out = proc(np.array(prompt + generated, np.intc), rec["logit"])
    want = P.logit_bias(z[None], [{9: 1.0}])
    want = P.penalties(want, [P.count_tokens([3, 4])], 0.5, 0.25)
    np.testing.assert_array_equal(out, P.temperature(want, 0.5)[0])
    np.testing.assert_array_equal(rec["logit"], z)  # not modified


def test_logprobs_from_scores_is_the_engines_logprobs_object():
    z = np.log(np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]], np.float32))
    texts = [b"a", b"\xc3", b"\xa9"]
    got = A.logprobs_from_scores(z, [1, 2], 1, texts.__getitem__, offset=4)
    assert got["tokens"] == ["bytes:\\xc3", "bytes:\\xa9"]
    assert got["text_offset"] == [4, 4]  # both bytes start the one character é
    assert got["top_logprobs"][0] == {
        "a": pytest.approx(np.log(0.6)),
        "bytes:\\xc3": pytest.approx(np.log(0.3)),
    }
    assert got["token_logprobs"][1] == pytest.approx(np.log(0.6))


# --- with llama-cpp-python: a tiny GGUF, against the engine fed llama.cpp's logits ----------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    llama_cpp = pytest.importorskip("llama_cpp")
    from sampler import cli

    root = tmp_path_factory.mktemp("llama")
    src = ref.write_tiny_gguf(root / "tiny.gguf", "F32")
    assert cli.main(["convert", str(src)]) == 0  # for the engine's tokenizer and mask
    engine = Engine.load(root / "tiny")
    llm = llama_cpp.Llama(str(src), n_ctx=64, n_threads=1, verbose=False)
    return llm, engine


class _Recorder:
    def __init__(self) -> None:
        self.steps: list[np.ndarray] = []

    def __call__(self, input_ids, scores):
        self.steps.append(np.array(scores, dtype=np.float32))
        return scores


FIELDS = dict(
    temperature=0.9,
    top_p=0.9,
    presence_penalty=0.8,
    frequency_penalty=0.5,
    logit_bias={"100": 2.0},
    logprobs=2,
)


@pytest.mark.parametrize("prompts,n,seed", [([[5, 6, 7]], 1, 4), ([[5, 6, 7], [40, 41]], 2, 9)])
def test_llama_with_our_step_equals_the_engine_fed_the_same_logits(tiny, prompts, n, seed):
    llm, real = tiny
    tok, ends = real.tokenizer, real.end_ids
    gens, steps = [], []
    for p, prompt in enumerate(prompts):
        for c in range(n):  # one candidate at a time, to record each one's logits
            rec = _Recorder()
            g = A.generate(
                llm,
                prompt,
                n=c + 1,
                max_tokens=6,
                seed=seed,
                prompt_index=p,
                mask_ids=real.info.masked_ids,
                end_ids=ends,
                logits_processor=[rec],
                **FIELDS,
            )[c]
            gens.append(g)
            steps.append(rec.steps[-len(g.tokens) :])
    for p in range(len(prompts)):  # llama.cpp gave every candidate the same first row
        for c in range(1, n):
            np.testing.assert_array_equal(steps[p * n + c][0], steps[p * n][0])
    cfg = load_config(real.decoder.config.path)
    decoder = ReplayDecoder(
        cfg, real.vocab_size, lambda s, t: steps[s][t], [g.tokens for g in gens], n
    )
    engine = Engine(decoder, tok)
    resp = engine.complete(prompt=prompts, n=n, max_tokens=6, seed=seed, **FIELDS)
    for g in gens:
        choice = resp["choices"][g.prompt * n + g.candidate]
        base = len(tok.decode_bytes(prompts[g.prompt]).decode("utf-8", "replace"))
        assert choice["text"] == completion_text(g.tokens, tok.token_bytes, ends)
        assert choice["finish_reason"] == g.finish_reason
        assert choice["logprobs"] == logprobs_object(
            g.logprobs, tok.token_bytes, end_ids=ends, offset=base
        )


def test_logprobs_from_llama_scores_equal_the_processors_records(tiny):
    llama_cpp = pytest.importorskip("llama_cpp")
    _, real = tiny
    src = Path(real.decoder.config.path).parent / "tiny.gguf"
    llm = llama_cpp.Llama(str(src), n_ctx=64, n_threads=1, verbose=False, logits_all=True)
    prompt = [5, 6, 7]
    g = A.generate(llm, prompt, max_tokens=4, seed=1, logprobs=3)[0]
    rows = np.asarray(llm.scores)[len(prompt) - 1 : len(prompt) - 1 + len(g.tokens)]  # [n, V]
    tb = A.token_bytes(llm)
    got = A.logprobs_from_scores(rows, g.tokens, 3, tb)
    assert got == logprobs_object(g.logprobs, tb)
