"""The ONNX Llama graph against an independent float64 reference (tests/llama_reference.py)."""

from __future__ import annotations

import os
from pathlib import Path

import llama_reference as ref
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sampler import onnx_llama
from sampler.onnx_llama import LlamaConfig, build_llama, random_weights, save_model


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run(sess, cfg: LlamaConfig, ids, mask=None, positions=None, past=None):
    """logits [B, S, V] and presents for a batch with an empty (or given) past."""
    ids = np.atleast_2d(np.asarray(ids, np.int64))  # [B, S]
    B, S = ids.shape
    if past is None:
        empty = np.zeros((B, cfg.num_kv_heads, 0, cfg.head_dim), np.float32)
        past = [empty] * (2 * cfg.num_layers)
    P = past[0].shape[2]
    feeds = {
        "input_ids": ids,
        "attention_mask": np.ones((B, P + S), np.int64) if mask is None else mask,
        "position_ids": (
            np.broadcast_to(np.arange(P, P + S), (B, S)) if positions is None else positions
        ).astype(np.int64),
    }
    for i in range(cfg.num_layers):
        feeds[f"past_key_values.{i}.key"] = past[2 * i]
        feeds[f"past_key_values.{i}.value"] = past[2 * i + 1]
    out = sess.run(None, feeds)
    return out[0], out[1:]


def small_config(**overrides) -> LlamaConfig:
    base = dict(
        vocab_size=500,
        hidden_size=32,
        intermediate_size=48,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        max_position=256,
    )
    return LlamaConfig(**base | overrides)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("exact", [True, False])
def test_matches_reference(tied, exact):
    cfg = small_config(tie_word_embeddings=tied)
    w = random_weights(cfg, np.random.default_rng(1))
    tokens = np.random.default_rng(2).integers(0, cfg.vocab_size, 23)
    logits, presents = run(
        session(build_llama(w, cfg, attention="exact" if exact else "fast")), cfg, tokens
    )
    assert logits.shape == (1, 23, cfg.vocab_size) and logits.dtype == np.float32
    assert presents[0].shape == (1, cfg.num_kv_heads, 23, cfg.head_dim)
    assert np.abs(logits[0] - ref.forward(w, cfg, tokens)).max() < 1e-4


@pytest.mark.parametrize(
    "heads,head_dim,tied",
    [((4, 2), 8, False), ((4, 1), 8, True), ((2, 2), 16, False), ((6, 3), 24, True)],
)
def test_gqa_graph_matches_reference(tmp_path, heads, head_dim, tied):
    """The GroupQueryAttention graph (in-place cache, run by the Decoder) against the
    float64 reference, prefill and steps."""
    import json

    from sampler.decoder import Decoder

    cfg = LlamaConfig(
        vocab_size=400,
        hidden_size=24,
        intermediate_size=40,
        num_layers=2,
        num_heads=heads[0],
        num_kv_heads=heads[1],
        head_dim=head_dim,
        tie_word_embeddings=tied,
        max_position=64,
    )
    rng = np.random.default_rng(head_dim)
    w = random_weights(cfg, rng, scale=2.0)
    save_model(build_llama(w, cfg, attention="gqa"), tmp_path / "model.onnx")
    (tmp_path / "refsampler.json").write_text(
        json.dumps(
            {
                "format": "refsampler-model/1",
                "name": "g",
                "onnx": "model.onnx",
                "tokenizer": "cl100k_base",
                "context_length": 64,
                "eos_token_ids": [1],
                "fim": None,
            }
        )
    )
    dec = Decoder.load(tmp_path)
    assert dec.shared_cache
    tokens = rng.integers(0, cfg.vocab_size, 21)
    expected = ref.forward(w, cfg, tokens)  # [S, V]
    got = np.full(expected.shape, np.nan, np.float32)
    last, cache = dec.prefill(
        [tokens[:15].tolist()], on_logits=lambda p, pos, lg: got.__setitem__(pos, lg)
    )
    for t in tokens[15:]:
        logits, cache = dec.step(cache, [int(t)])
        got[cache.length - 1] = logits[0]
    assert np.abs(got - expected).max() < 1e-4


def test_unknown_attention_and_unsupported_gqa_are_refused():
    cfg = small_config()
    with pytest.raises(ValueError, match="attention must be one of"):
        build_llama(random_weights(cfg, np.random.default_rng(0)), cfg, attention="flash")
    odd = small_config(head_dim=4)  # ORT's GroupQueryAttention wants multiples of 8
    assert not onnx_llama.gqa_supported(odd) and onnx_llama.gqa_supported(cfg)
    with pytest.raises(ValueError, match="multiple of 8"):
        build_llama(random_weights(odd, np.random.default_rng(0)), odd, attention="gqa")


@settings(max_examples=12, deadline=None)
@given(
    vocab=st.integers(300, 1000),
    heads=st.sampled_from([(4, 2), (4, 1), (2, 2), (6, 3)]),
    head_dim=st.sampled_from([4, 8, 16]),
    ffn=st.integers(8, 64),
    theta=st.sampled_from([1e4, 1e5, 500.0]),
    eps=st.sampled_from([1e-5, 1e-6]),
    tied=st.booleans(),
    seq=st.integers(1, 20),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_configs_match_reference(vocab, heads, head_dim, ffn, theta, eps, tied, seq, seed):
    # head_dim need not be hidden/heads (it is a free parameter of the architecture)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=24,
        intermediate_size=ffn,
        num_layers=2,
        num_heads=heads[0],
        num_kv_heads=heads[1],
        head_dim=head_dim,
        rope_theta=theta,
        rms_norm_eps=eps,
        tie_word_embeddings=tied,
        max_position=64,
    )
    rng = np.random.default_rng(seed)
    w = random_weights(cfg, rng, scale=2.0)
    tokens = rng.integers(0, vocab, seq)
    logits, _ = run(session(build_llama(w, cfg)), cfg, tokens)
    assert np.abs(logits[0] - ref.forward(w, cfg, tokens)).max() < 1e-4


@pytest.mark.parametrize("tied", [False, True])
def test_fp16_weights_match_reference_on_rounded_weights(tied):
    cfg = small_config(tie_word_embeddings=tied)
    w = random_weights(cfg, np.random.default_rng(3))
    model = build_llama(w, cfg, weight_dtype="float16")
    dtypes = {t.name: t.data_type for t in model.graph.initializer}
    assert dtypes["layers.0.qkv_proj.T"] == onnx.TensorProto.FLOAT16
    assert dtypes["layers.0.input_layernorm"] == onnx.TensorProto.FLOAT  # vectors stay fp32
    rounded = {
        k: v.astype(np.float16).astype(np.float32) if v.ndim == 2 else v for k, v in w.items()
    }
    tokens = np.random.default_rng(4).integers(0, cfg.vocab_size, 17)
    logits, presents = run(session(model), cfg, tokens)
    assert presents[0].dtype == np.float32
    assert np.abs(logits[0] - ref.forward(rounded, cfg, tokens)).max() < 1e-4
    # the in-graph Cast is exact: same result as fp32 storage of the rounded weights
    np.testing.assert_array_equal(logits, run(session(build_llama(rounded, cfg)), cfg, tokens)[0])


def test_tied_head_stores_the_embedding_once():
    cfg = small_config(tie_word_embeddings=True)
    model = build_llama(random_weights(cfg, np.random.default_rng(0)), cfg)
    big = [t.name for t in model.graph.initializer if cfg.vocab_size in t.dims]
    assert big == ["embed_tokens.T"]


def test_graph_is_valid_standard_onnx():
    cfg = small_config()
    model = build_llama(random_weights(cfg, np.random.default_rng(0)), cfg)
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain for o in model.opset_import} == {""}
    assert [i.name for i in model.graph.input] == [
        "input_ids",
        "attention_mask",
        "position_ids",
    ] + [f"past_key_values.{i}.{p}" for i in range(2) for p in ("key", "value")] + [
        "logits_to_keep"
    ]
    assert [o.name for o in model.graph.output] == ["logits"] + [
        f"present.{i}.{p}" for i in range(2) for p in ("key", "value")
    ]
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa
    assert dims(model.graph.input[3]) == ["batch", 2, "past_sequence_length", 8]
    assert dims(model.graph.output[1]) == ["batch", 2, "total_sequence_length", 8]
    assert dims(model.graph.output[0]) == ["batch", "logits_length", 500]


@pytest.mark.parametrize("attention", ["exact", "gqa"])
def test_logits_to_keep_gives_the_last_rows_bit_for_bit(attention, tiny_model_dir):
    """A prefill that keeps only the last position's logits (no echo to score) samples
    from exactly the row the full prefill computes; without the input (a runtime that does
    not know it) the HF-style graph still returns every position."""
    from sampler.decoder import Decoder

    folder = tiny_model_dir
    if attention == "gqa":
        import shutil
        import tempfile

        from sampler.tiny import TINY_CONFIG, tiny_weights

        folder = Path(tempfile.mkdtemp())
        save_model(build_llama(tiny_weights(), TINY_CONFIG, attention="gqa"), folder / "model.onnx")
        shutil.copy(tiny_model_dir / "refsampler.json", folder / "refsampler.json")
    dec = Decoder.load(folder)
    assert dec.keeps_last
    prompts = [[5, 6, 7, 8, 9, 10, 11], [40, 41, 42]]
    full: dict[int, np.ndarray] = {}
    kept, _ = dec.prefill(prompts)  # [P, V], lm_head on the last positions only
    dec.prefill(prompts, on_logits=lambda p, pos, z: full.__setitem__(p, np.array(z[-1])))
    for p in range(len(prompts)):
        assert np.array_equal(kept[p], full[p])
    if attention == "exact":
        ids = np.array([prompts[0]], np.int64)
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "position_ids": np.arange(ids.shape[1])[None],
        }
        for i in range(dec.num_layers):
            for part in ("key", "value"):
                feeds[f"past_key_values.{i}.{part}"] = np.zeros(
                    (1, dec.num_kv_heads, 0, dec.head_dim), np.float32
                )
        assert dec.session.run(["logits"], feeds)[0].shape[1] == ids.shape[1]


def test_past_plus_new_tokens_equals_full_pass():
    cfg = small_config()
    sess = session(build_llama(random_weights(cfg, np.random.default_rng(5)), cfg))
    tokens = np.random.default_rng(6).integers(0, cfg.vocab_size, 12)
    full, _ = run(sess, cfg, tokens)
    first, past = run(sess, cfg, tokens[:7])
    rest, presents = run(sess, cfg, tokens[7:], past=past)  # 5 new tokens at once on a past
    assert presents[0].shape[2] == 12
    assert np.abs(np.concatenate([first, rest], axis=1) - full).max() < 1e-5


def test_padding_is_masked_and_finite():
    """Left padding: real rows equal the unpadded run; fully masked rows stay finite."""
    cfg = small_config()
    sess = session(build_llama(random_weights(cfg, np.random.default_rng(7)), cfg))
    tokens = np.random.default_rng(8).integers(0, cfg.vocab_size, 6)
    alone, _ = run(sess, cfg, tokens)
    pad = 4
    ids = np.concatenate([np.full(pad, 3), tokens])[None]  # [1, 10]
    mask = (np.arange(10) >= pad).astype(np.int64)[None]
    positions = np.maximum(np.arange(10) - pad, 0)[None]
    padded, presents = run(sess, cfg, ids, mask, positions)
    assert np.isfinite(padded).all() and all(np.isfinite(p).all() for p in presents)
    assert np.abs(padded[0, pad:] - alone[0]).max() < 1e-5


def test_rope_is_relative():
    """Shifting every position by the same offset leaves the logits unchanged (up to the
    fp32 rounding of the angle tables): checks the tables far from position 0."""
    cfg = small_config(max_position=2048)
    sess = session(build_llama(random_weights(cfg, np.random.default_rng(9)), cfg))
    tokens = np.random.default_rng(10).integers(0, cfg.vocab_size, 9)
    at0, _ = run(sess, cfg, tokens)
    shifted, _ = run(sess, cfg, tokens, positions=np.arange(2000, 2009)[None])
    assert np.abs(at0 - shifted).max() < 1e-3


def test_rope_tables_are_the_definition():
    cfg = small_config(rope_theta=1e5)
    cos, sin = onnx_llama.rope_tables(cfg)
    j, p = 3, 200
    angle = p * cfg.rope_theta ** (-2 * j / cfg.head_dim)
    assert cos.shape == (cfg.max_position, cfg.head_dim // 2)
    assert cos[p, j] == np.float32(np.cos(angle)) and sin[p, j] == np.float32(np.sin(angle))


def test_weight_errors_name_the_weight():
    cfg = small_config()
    w = random_weights(cfg, np.random.default_rng(0))
    with pytest.raises(ValueError, match="layers.1.up_proj"):
        build_llama({k: v for k, v in w.items() if k != "layers.1.up_proj"}, cfg)
    with pytest.raises(ValueError, match=r"'norm' has shape \(3,\)"):
        build_llama(w | {"norm": np.ones(3, np.float32)}, cfg)
    with pytest.raises(ValueError, match="lm_head"):
        build_llama(w, small_config(tie_word_embeddings=True))  # an unused head is a mistake
    with pytest.raises(ValueError, match="weight_dtype"):
        build_llama(w, cfg, weight_dtype="bfloat16")


def test_config_checks():
    assert small_config().head_dim == 8
    with pytest.raises(ValueError, match="num_kv_heads"):
        small_config(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="head_dim"):
        small_config(head_dim=5)


def test_save_model_is_atomic_and_loadable(tmp_path):
    cfg = small_config()
    model = build_llama(random_weights(cfg, np.random.default_rng(0)), cfg)
    path = save_model(model, tmp_path / "sub" / "model.onnx")
    assert sorted(os.listdir(path.parent)) == ["model.onnx"]  # no temp file left behind
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert onnx.load(str(path)).graph.initializer[0].name == model.graph.initializer[0].name


def test_save_model_external_data_above_the_limit(tmp_path, monkeypatch):
    from sampler import onnx_graph

    monkeypatch.setattr(onnx_graph, "PROTO_LIMIT", 2**26 + 1000)  # pretend the model is huge
    cfg = small_config()
    w = random_weights(cfg, np.random.default_rng(0))
    model = build_llama(w, cfg)
    path = save_model(model, tmp_path / "model.onnx")
    assert (tmp_path / "model.onnx.data").is_file()
    assert model.graph.initializer[0].raw_data  # the caller's model keeps its weights
    tokens = np.arange(5)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, _ = run(sess, cfg, tokens)
    assert np.abs(logits[0] - ref.forward(w, cfg, tokens)).max() < 1e-4
