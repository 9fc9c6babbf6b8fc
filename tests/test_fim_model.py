"""cl100k-fim-mini, the committed model: the engine loads it by name, it is the file its card
names, ``suffix`` returns the middle only and stops at <|endoftext|>, and a seeded completion
stays what a slow full-sequence reference produced when it was frozen."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from sampler import Engine
from sampler import reference as ref
from sampler.registry import resolve
from sampler.tokenizer import get_tokenizer

FOLDER = Path(__file__).resolve().parents[1] / "models" / "cl100k-fim-mini"
TOK = get_tokenizer("cl100k_base")
EOT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = 100257, 100258, 100259, 100260
LOW_LOGIT = -40.0

# Frozen once from the committed model (and checked then against reference_tokens below).
GOLDEN_PROMPT = "import os\n\n\ndef "
GOLDEN_PARAMS = {"max_tokens": 24, "temperature": 0.8, "top_p": 0.95, "seed": 1234}
GOLDEN_TOKENS: list[str] = [
    "0",
    " print",
    "('",
    "from",
    " f",
    " import",
    "_helper",
    " import",
    "_helper",
    "\n",
    "from",
    " test",
    ".support",
    " import",
    "_helper",
    "\n",
    "from",
    " test",
    " import",
    " test",
    "\n",
    "from",
    " test",
    ".support",
]


@pytest.fixture(scope="module")
def engine():
    return Engine.load("cl100k-fim-mini")


@pytest.fixture(scope="module")
def full_logits():
    """Logits of every position of a sequence: one plain ORT pass, no cache."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(
        str(FOLDER / "model.onnx"), opts, providers=["CPUExecutionProvider"]
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


MASKED = TOK.masked_ids(100_277, (EOT,))  # never sampled: non-tokens, specials but EOT


def masked(row):
    z = np.array(row, dtype=np.float32)
    z[MASKED] = -np.inf
    return z


def reference_tokens(full_logits, prompt, *, seed, max_tokens, temperature, top_p):
    """The slow path: full-sequence logits at every step, the engine's uniforms."""
    gen = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(0, 0))))
    seq, out = list(prompt), []
    for _ in range(max_tokens):
        u = gen.random()
        tok = ref.step(
            masked(full_logits(seq)[-1]), temperature=temperature, top_p=top_p, uniform=u
        )
        out.append(tok)
        if tok == EOT:
            break
        seq.append(tok)
    return out


def test_registered_in_the_repository():
    assert resolve("cl100k-fim-mini") == FOLDER
    assert (FOLDER / "model.onnx").stat().st_size < 25 * 2**20


def test_sha256_matches_the_model_card(engine):
    card = (FOLDER / "MODEL_CARD.md").read_text(encoding="utf-8")
    (stated,) = set(re.findall(r"sha256 `([0-9a-f]{64})`", card))
    assert hashlib.sha256((FOLDER / "model.onnx").read_bytes()).hexdigest() == stated
    assert engine.decoder.config.digest == stated
    assert engine.vocab_size == 100_277 and engine.info.fim == (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX)


def test_suffix_returns_the_middle_only_and_stops_at_end_of_text(engine, full_logits):
    # A seeded draw in which this small model ends the middle by itself (greedy decoding
    # tends to loop until max_tokens; see the model card).
    prefix, suffix = "def add(a, b):\n", "\n    return result\n"
    r = engine.complete(prompt=prefix, suffix=suffix, max_tokens=16, temperature=0.7, seed=24)
    (choice,) = r["choices"]
    seq = [FIM_PREFIX, *TOK.encode(prefix), FIM_SUFFIX, *TOK.encode(suffix), FIM_MIDDLE]
    expected = reference_tokens(
        full_logits, seq, seed=24, max_tokens=16, temperature=0.7, top_p=1.0
    )
    assert expected[-1] == EOT  # the model ends the middle by itself
    assert choice["finish_reason"] == "stop"
    assert choice["text"] == TOK.decode_bytes(expected[:-1]).decode()
    assert choice["text"] and not choice["text"].startswith(prefix)
    assert r["usage"] == {
        "prompt_tokens": len(seq),
        "completion_tokens": len(expected),
        "total_tokens": len(seq) + len(expected),
    }


def test_golden_seeded_completion(engine):
    r = engine.complete(prompt=GOLDEN_PROMPT, logprobs=0, **GOLDEN_PARAMS)
    assert r["choices"][0]["logprobs"]["tokens"] == GOLDEN_TOKENS


def test_golden_equals_slow_reference(engine, full_logits):
    """The golden is what the slow full-sequence reference draws (checked when frozen, and
    cheap enough to keep checking)."""
    p = GOLDEN_PARAMS
    expected = reference_tokens(
        full_logits,
        TOK.encode(GOLDEN_PROMPT),
        seed=p["seed"],
        max_tokens=p["max_tokens"],
        temperature=p["temperature"],
        top_p=p["top_p"],
    )
    assert [TOK.token_text(t) for t in expected if t != EOT] == GOLDEN_TOKENS


def test_unseen_ids_hold_the_fixed_low_logit_and_logit_bias_reaches_them(engine, full_logits):
    row = full_logits([EOT])[-1]
    unseen = np.flatnonzero(row == LOW_LOGIT)
    allowed = np.setdiff1d(unseen, MASKED)
    assert allowed.size > 1000
    target = int(allowed[0])
    r = engine.complete(
        prompt="x = ", max_tokens=1, temperature=0, logprobs=1, logit_bias={str(target): 100}
    )
    assert r["choices"][0]["logprobs"]["tokens"] == [TOK.token_text(target)]


# --- sampler.onnx_vocab on a tiny random model (no committed file needed) -------------------
def test_wrap_compact_vocab_maps_ids_and_spreads_the_other_slot():
    import onnxruntime as ort

    from sampler.onnx_llama import LlamaConfig, build_llama, random_weights
    from sampler.onnx_vocab import full_to_compact, wrap_compact_vocab

    n, kept = 40, np.array([7, 3, 30, 12, 0])  # compact ids 0..4, "other" is 5
    cfg = LlamaConfig(
        vocab_size=len(kept) + 1,
        hidden_size=16,
        intermediate_size=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        max_position=32,
        tie_word_embeddings=True,
    )
    inner = build_llama(random_weights(cfg, np.random.default_rng(1)), cfg)
    logq = np.full(n, -np.inf)
    logq[[1, 2, 39]] = np.log([0.5, 0.3, 0.2])  # seen but not kept; the rest unseen
    outer = wrap_compact_vocab(inner, kept, n_vocab=n, other_logq=logq)

    def run(model, ids):
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        ids = np.asarray([ids], np.int64)
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None],
            "past_key_values.0.key": np.zeros((1, 1, 0, 8), np.float32),
            "past_key_values.0.value": np.zeros((1, 1, 0, 8), np.float32),
        }
        return sess.run(["logits"], feeds)[0][0].astype(np.float64)

    full_ids = [12, 5, 39, 0, 21]  # 5, 39 and 21 are not kept: they enter as "other"
    table = full_to_compact(kept, n)
    assert table[full_ids].tolist() == [3, 5, 5, 4, 5]
    z = run(inner, table[full_ids])  # [S, 6]
    lp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    got = run(outer, full_ids)  # [S, 40]
    assert got.shape == (5, n)
    np.testing.assert_allclose(got[:, kept], lp[:, :5], atol=1e-5)
    np.testing.assert_allclose(got[:, [1, 2, 39]], lp[:, 5:] + logq[[1, 2, 39]], atol=1e-5)
    unseen = np.setdiff1d(np.arange(n), np.concatenate([kept, [1, 2, 39]]))
    assert np.all(got[:, unseen] == LOW_LOGIT)
    dropped = run(wrap_compact_vocab(inner, kept, n_vocab=n), full_ids)
    assert np.all(dropped[:, np.setdiff1d(np.arange(n), kept)] == LOW_LOGIT)
    with pytest.raises(ValueError, match="len\\(vocab_ids\\) \\+ 1"):
        wrap_compact_vocab(inner, kept[:3], n_vocab=n)


def test_wrap_compact_vocab_refuses_bad_tables():
    from sampler.onnx_llama import LlamaConfig, build_llama, random_weights
    from sampler.onnx_vocab import full_to_compact, wrap_compact_vocab

    with pytest.raises(ValueError, match="distinct"):
        full_to_compact(np.array([3, 3]), 10)
    with pytest.raises(ValueError, match="lie in"):
        full_to_compact(np.array([3, 10]), 10)
    cfg = LlamaConfig(
        vocab_size=4,
        hidden_size=8,
        intermediate_size=16,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        max_position=16,
    )
    inner = build_llama(random_weights(cfg, np.random.default_rng(0)), cfg)
    kept = np.array([5, 1, 7])
    with pytest.raises(ValueError, match="shape"):
        wrap_compact_vocab(inner, kept, n_vocab=10, other_logq=np.zeros(9))
    with pytest.raises(ValueError, match="log-probabilities"):
        wrap_compact_vocab(inner, kept, n_vocab=10, other_logq=np.full(10, 0.5))
    no_logits = type(inner)()
    no_logits.CopyFrom(inner)
    no_logits.graph.output[0].name = "scores"
    with pytest.raises(ValueError, match="no 'logits' output"):
        wrap_compact_vocab(no_logits, kept, n_vocab=10)


def test_without_the_repository_folder_it_says_so(monkeypatch, tmp_path, capsys):
    from sampler import cli, registry

    monkeypatch.setattr(registry, "_fim_mini_folder", lambda: tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="not shipped in wheels"):
        resolve("cl100k-fim-mini")
    assert cli.main(["models"]) == 0
    assert "not in this install" in capsys.readouterr().out
    assert cli.main(["complete", "x", "--model", "cl100k-fim-mini"]) == 2
    assert "not shipped in wheels" in capsys.readouterr().err
