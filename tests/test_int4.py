"""The int4 option: GGUF Q4_0/Q4_1 matrices kept as 4-bit blocks for ONNX Runtime's
MatMulNBits. Same model as the float32 conversion of the same file, to float32 rounding."""

from __future__ import annotations

import json

import gguf_reference as ref
import numpy as np
import pytest

from sampler import cli
from sampler.convert import convert_gguf
from sampler.decoder import Decoder
from sampler.gguf_int4 import llama_int4_weights
from sampler.gguf_llama import llama_weights, read_gguf
from sampler.onnx_llama import Int4Matrix, LlamaConfig, build_llama, random_weights

LAYER_MATRICES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def all_logits(decoder: Decoder, tokens) -> np.ndarray:
    rows = {}
    decoder.prefill([tokens], on_logits=lambda p, pos, lg: rows.update(zip(pos.tolist(), lg)))
    return np.stack([rows[i] for i in range(len(tokens))])


def incremental(decoder: Decoder, tokens, n_prompt: int) -> np.ndarray:
    last, cache = decoder.prefill([tokens[:n_prompt]])
    out = [last[0]]
    for t in tokens[n_prompt:]:
        logits, cache = decoder.step(cache, [t])
        out.append(logits[0])
    return np.stack(out)


def run_graph(model, tokens) -> np.ndarray:
    """Logits [S, V] of a built graph, one full-sequence pass from an empty cache."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    S = len(tokens)
    feeds = {
        "input_ids": np.array([tokens], np.int64),
        "attention_mask": np.ones((1, S), np.int64),
        "position_ids": np.arange(S, dtype=np.int64)[None],
    }
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values."):
            feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
    return sess.run(["logits"], feeds)[0][0]


@pytest.mark.parametrize("qtype", ["Q4_1", "Q4_0"])
def test_int4_conversion_equals_float32(tmp_path, qtype):
    src = ref.write_tiny_gguf(tmp_path / "m.gguf", qtype, seed=11)
    model = read_gguf(src)
    dense = llama_weights(model)
    int4 = llama_int4_weights(model)
    # every layer matrix is kept, and dequantises to exactly the float32 conversion's values
    assert sorted(int4) == sorted(f"layers.{i}.{m}" for i in range(2) for m in LAYER_MATRICES)
    for name, w in int4.items():
        assert w.kind == qtype and np.array_equal(w.dense(), dense[name]), name

    a = Decoder.load(convert_gguf(src, tmp_path / "fp32"))
    b = Decoder.load(convert_gguf(src, tmp_path / "int4", weight_dtype="int4"))
    manifest = json.loads((tmp_path / "int4" / "refsampler.json").read_text())
    assert manifest["weights"] == "int4" and manifest["int4_accuracy_level"] == 0
    import onnx

    graph = onnx.load(str(tmp_path / "int4" / "model.onnx")).graph
    assert sum(n.op_type == "MatMulNBits" for n in graph.node) == 2 * 4  # qkv, o, gate_up, down

    tokens = np.random.default_rng(5).integers(0, a.vocab_size, 40).tolist()
    full_a, full_b = all_logits(a, tokens), all_logits(b, tokens)
    assert full_a.std() > 1.0
    assert np.abs(full_a - full_b).max() < 1e-4
    assert np.abs(full_b - ref.forward(src, tokens)).max() < 1e-4
    # incremental decoding (KV cache) gives the full-sequence logits
    assert np.abs(incremental(b, tokens, 25) - full_b[24:]).max() < 1e-4


def _random_int4(rng, rows: int, cols: int, kind: str) -> Int4Matrix:
    nb = cols // 32
    q = rng.integers(0, 16, (rows, nb, 32)).astype(np.uint8)
    d = (rng.random((rows, nb)) * 0.02 / np.sqrt(cols) * 8 + 1e-3).astype(np.float16)
    m = (
        None
        if kind == "Q4_0"
        else (-8 * d.astype(np.float32) + rng.standard_normal((rows, nb)).astype(np.float32) * 0.01)
    )
    return Int4Matrix(kind, q, d.astype(np.float32), None if m is None else m.astype(np.float32))


def test_mixed_block_types_and_dense_fallback():
    """Q/K/V of mixed Q4_0/Q4_1 share one MatMulNBits; a dense part makes the group dense;
    with a float dtype the same dict builds exactly the graph of the dequantised weights."""
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        max_position=64,
    )
    rng = np.random.default_rng(3)
    weights = random_weights(cfg, rng)
    mixed: dict = dict(weights)
    for i in range(cfg.num_layers):
        for j, m in enumerate(LAYER_MATRICES):
            name = f"layers.{i}.{m}"
            if i == 1 and m == "up_proj":
                continue  # gate_up of layer 1: one dense part -> dense MatMul
            rows, cols = weights[name].shape
            mixed[name] = _random_int4(rng, rows, cols, ("Q4_0", "Q4_1")[(i + j) % 2])
    dense = {k: v.dense() if isinstance(v, Int4Matrix) else v for k, v in mixed.items()}
    assert (
        build_llama(mixed, cfg).SerializeToString() == build_llama(dense, cfg).SerializeToString()
    )

    int4 = build_llama(mixed, cfg, weight_dtype="int4")
    ops = [n.op_type for n in int4.graph.node]
    assert ops.count("MatMulNBits") == 7
    assert {o.domain for o in int4.opset_import} == {"", "com.microsoft"}
    tokens = rng.integers(0, cfg.vocab_size, 30).tolist()
    expected = run_graph(build_llama(dense, cfg), tokens)
    assert expected.std() > 0.1
    assert np.abs(run_graph(int4, tokens) - expected).max() < 1e-4


def test_accuracy_level_is_passed_and_checked():
    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        max_position=16,
    )
    rng = np.random.default_rng(0)
    w: dict = random_weights(cfg, rng)
    w["layers.0.o_proj"] = _random_int4(rng, 32, 32, "Q4_1")
    model = build_llama(w, cfg, weight_dtype="int4", int4_accuracy_level=4)
    node = next(n for n in model.graph.node if n.op_type == "MatMulNBits")
    assert {a.name: a.i for a in node.attribute}["accuracy_level"] == 4
    with pytest.raises(ValueError, match="int4_accuracy_level"):
        build_llama(w, cfg, weight_dtype="int4", int4_accuracy_level=7)
    with pytest.raises(ValueError, match="embedding and the head must be dense"):
        build_llama({**w, "embed_tokens": _random_int4(rng, 50, 32, "Q4_0")}, cfg)


def test_int4_needs_4bit_matrices_and_cli(tmp_path, capsys):
    src = ref.write_tiny_gguf(tmp_path / "f.gguf", "F32")
    with pytest.raises(ValueError, match="no Q4_0 or Q4_1 layer matrices"):
        convert_gguf(src, tmp_path / "f", weight_dtype="int4")
    assert not (tmp_path / "f").exists()

    src = ref.write_tiny_gguf(tmp_path / "tiny.gguf", "Q4_1", tied=True)
    assert cli.main(["convert", str(src), "--weights", "int4"]) == 0
    out = tmp_path / "tiny"
    assert capsys.readouterr().out.strip() == str(out)
    assert json.loads((out / "refsampler.json").read_text())["weights"] == "int4"
    fp32 = Decoder.load(convert_gguf(src, tmp_path / "fp32"))
    tokens = list(range(5, 35))
    assert np.abs(all_logits(Decoder.load(out), tokens) - all_logits(fp32, tokens)).max() < 1e-4
