"""The runtime: model folders, the Decoder with its KV cache, and the tiny test model."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import llama_reference as ref
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sampler.decoder import Decoder
from sampler.kvcache import KVCache, SharedKVCache
from sampler.model import ChatConfig, FimTokens, load_config
from sampler.onnx_llama import LlamaConfig, build_llama, random_weights, save_model
from sampler.tiny import TINY_BUILD_VERSION, build_tiny_random

EXACT = 1e-5  # incremental vs full, batched vs alone: same float32 math, different blocking
CFG = LlamaConfig(
    vocab_size=700,
    hidden_size=32,
    intermediate_size=48,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    max_position=128,
)
WEIGHTS = random_weights(CFG, np.random.default_rng(11), scale=2.0)


def manifest(**overrides) -> dict:
    return {
        "format": "refsampler-model/1",
        "name": "test-model",
        "onnx": "model.onnx",
        "tokenizer": "cl100k_base",
        "context_length": 128,
        "eos_token_ids": [1],
        "fim": {"prefix": 2, "middle": 3, "suffix": 4},
    } | overrides


def write_model(folder: Path, model=None, **overrides) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model if model is not None else build_llama(WEIGHTS, CFG), folder / "model.onnx")
    (folder / "refsampler.json").write_text(json.dumps(manifest(**overrides)))
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module", params=["exact", "gqa"])
def dec(request, tmp_path_factory) -> Decoder:
    """The decoder of each graph kind: the HF/Optimum cache I/O (exact attention) and
    GroupQueryAttention with the cache updated in place."""
    model = build_llama(WEIGHTS, CFG, attention=request.param)
    return Decoder.load(write_model(tmp_path_factory.mktemp(request.param), model))


def incremental_tolerance(dec: Decoder) -> float:
    """Steps vs a one-call prefill of the same tokens: GroupQueryAttention computes one
    query row differently from many (~1e-6 relative); the exact graph computes them alike."""
    return 5e-5 if dec.shared_cache else EXACT


def prompts_from(seed: int, lengths) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, CFG.vocab_size, n).tolist() for n in lengths]


def full_logits(dec: Decoder, tokens, **kw) -> np.ndarray:
    """Logits at every position of one prompt, collected through on_logits."""
    out = np.full((len(tokens), dec.vocab_size), np.nan, np.float32)
    dec.prefill([tokens], on_logits=lambda p, pos, lg: out.__setitem__(pos, lg), **kw)
    return out


def decode(dec: Decoder, cache: KVCache, steps: list[list[int]]) -> tuple[list, KVCache]:
    """Feed the given token columns; return the logits of each step."""
    seen = []
    for column in steps:
        logits, cache = dec.step(cache, np.array(column))
        seen.append(logits)
    return seen, cache


# ---------------------------------------------------------------- config


def test_load_config_reads_every_field(model_dir):
    cfg = load_config(model_dir)
    assert (cfg.name, cfg.onnx, cfg.tokenizer, cfg.context_length) == (
        "test-model",
        "model.onnx",
        "cl100k_base",
        128,
    )
    assert cfg.eos_token_ids == (1,) and cfg.fim == FimTokens(prefix=2, middle=3, suffix=4)
    assert cfg.path == model_dir and cfg.onnx_path == model_dir / "model.onnx"
    assert cfg.digest == hashlib.sha256((model_dir / "model.onnx").read_bytes()).hexdigest()


def test_fim_may_be_null(tmp_path, model_dir):
    (tmp_path / "model.onnx").symlink_to(model_dir / "model.onnx")
    (tmp_path / "refsampler.json").write_text(json.dumps(manifest(fim=None)))
    assert load_config(tmp_path).fim is None


def test_chat_may_be_absent_or_null_or_a_template(tmp_path, model_dir):
    (tmp_path / "model.onnx").symlink_to(model_dir / "model.onnx")
    for chat, want in [
        (None, None),
        ({"template": "t", "eos_token": "</s>"}, ChatConfig("t", eos_token="</s>")),
    ]:
        (tmp_path / "refsampler.json").write_text(json.dumps(manifest(chat=chat)))
        assert load_config(tmp_path).chat == want
    assert "chat" not in manifest() and load_config(model_dir).chat is None


def test_digest_sidecar_is_used_and_invalidated(tmp_path):
    folder = write_model(tmp_path / "m")
    onnx_file, sidecar = folder / "model.onnx", folder / "model.onnx.sha256"
    real = load_config(folder).digest
    cached = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps(cached | {"sha256": "f" * 64}))  # same key: trusted
    assert load_config(folder).digest == "f" * 64
    os.utime(onnx_file, ns=(cached["mtime_ns"] + 10**9,) * 2)  # touched: hashed again
    assert load_config(folder).digest == real


@pytest.mark.parametrize(
    "field", ["format", "name", "onnx", "tokenizer", "context_length", "eos_token_ids"]
)
def test_missing_field_is_named(tmp_path, model_dir, field):
    (tmp_path / "model.onnx").symlink_to(model_dir / "model.onnx")
    raw = manifest()
    del raw[field]
    (tmp_path / "refsampler.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=f"missing field '{field}'"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    "field,value",
    [
        ("format", "refsampler-model/2"),
        ("name", ""),
        ("name", 3),
        ("onnx", ["model.onnx"]),
        ("onnx", "absent.onnx"),
        ("tokenizer", 5),
        ("context_length", "2048"),
        ("context_length", 0),
        ("context_length", True),
        ("eos_token_ids", 100257),
        ("eos_token_ids", [-1]),
        ("fim", {"prefix": 1, "middle": 2}),
        ("fim", [1, 2, 3]),
        ("chat", "{{ messages }}"),
        ("chat", {"template": ""}),
        ("chat", {"template": "x", "eos_token": 2}),
        ("chat", {"template": "x", "colour": "red"}),
    ],
)
def test_bad_field_is_named(tmp_path, model_dir, field, value):
    (tmp_path / "model.onnx").symlink_to(model_dir / "model.onnx")
    (tmp_path / "refsampler.json").write_text(json.dumps(manifest(**{field: value})))
    with pytest.raises(ValueError, match=f"field '{field}'"):
        load_config(tmp_path)


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(ValueError, match="refsampler.json.*not found"):
        load_config(tmp_path)
    (tmp_path / "refsampler.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read model config"):
        load_config(tmp_path)
    (tmp_path / "refsampler.json").write_text("[]")
    with pytest.raises(ValueError, match="JSON object"):
        load_config(tmp_path)


# ---------------------------------------------------------------- decoder basics


def test_decoder_reads_the_graph_metadata(dec):
    assert (dec.num_layers, dec.num_kv_heads, dec.head_dim, dec.vocab_size) == (2, 2, 8, 700)
    assert dec.kv_dtype == np.float32 and dec.config.name == "test-model"


def test_vocab_from_a_first_run_when_the_graph_does_not_say(tmp_path):
    model = build_llama(WEIGHTS, CFG)
    model.graph.output[0].type.tensor_type.shape.dim[2].dim_param = "vocab"
    assert Decoder.load(write_model(tmp_path, model)).vocab_size == 700


def test_prefill_matches_the_reference(dec):
    tokens = prompts_from(0, [19])[0]
    expected = ref.forward(WEIGHTS, CFG, tokens)  # [S, V] float64
    assert np.abs(full_logits(dec, tokens) - expected).max() < 1e-4
    last, cache = dec.prefill([tokens])
    assert last.shape == (1, 700) and last.dtype == np.float32
    assert np.abs(last[0] - expected[-1]).max() < 1e-4
    assert (cache.batch, cache.length, cache.lengths.tolist()) == (1, 19, [19])


def test_incremental_equals_full(dec):
    tokens = prompts_from(1, [30])[0]
    full = full_logits(dec, tokens)
    k = 4
    last, cache = dec.prefill([tokens[:k]])
    steps, cache = decode(dec, cache, [[t] for t in tokens[k:]])
    incremental = np.concatenate([last] + steps)  # logits at positions k-1 .. 29
    assert np.abs(incremental - full[k - 1 :]).max() < incremental_tolerance(dec)
    assert cache.lengths.tolist() == [30] and cache.length == 30


def test_chunked_prefill_equals_unchunked(dec):
    prompts = prompts_from(2, [11, 4, 9])
    seen = {3: {}, 256: {}}
    for chunk, store in seen.items():

        def collect(p, pos, lg, store=store):
            assert not lg.flags.writeable and lg.shape == (len(pos), 700)
            store.setdefault(p, []).append((pos.copy(), lg.copy()))

        last, cache = dec.prefill(prompts, on_logits=collect, chunk_size=chunk)
        store["last"], store["next"] = last, dec.step(cache, np.array([5, 6, 7]))[0]
    small, big = seen[3], seen[256]
    assert np.abs(small["last"] - big["last"]).max() < EXACT
    assert np.abs(small["next"] - big["next"]).max() < EXACT
    for p, prompt in enumerate(prompts):
        positions = np.concatenate([pos for pos, _ in small[p]])
        assert positions.tolist() == list(range(len(prompt)))  # each position once, in order
        # left-padded columns [0,3) [3,6) [6,9) [9,11), prompt 1 from column 7; a shared
        # cache prefills each prompt alone from its first token
        assert len(small[p]) == ([4, 2, 3] if dec.shared_cache else [4, 2, 4])[p]
        a = np.concatenate([lg for _, lg in small[p]])
        b = np.concatenate([lg for _, lg in big[p]])
        assert np.abs(a - b).max() < EXACT


def test_returned_logits_are_fresh_and_writable(dec):
    last, cache = dec.prefill(prompts_from(3, [5, 3]))
    again, _ = dec.prefill(prompts_from(3, [5, 3]))
    logits, _ = dec.step(cache, np.array([1, 2]))
    for a in (last, logits):
        assert a.flags.writeable and a.flags.c_contiguous and a.dtype == np.float32
    last[:] = np.nan  # owned by the caller: the cache and later calls are unaffected
    assert np.abs(dec.step(cache, np.array([1, 2]))[0] - logits).max() == 0
    assert np.isfinite(again).all()


def test_input_errors(dec):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        dec.prefill([[1, 2], []])
    with pytest.raises(ValueError, match="no prompts"):
        dec.prefill([])
    with pytest.raises(ValueError, match="chunk_size"):
        dec.prefill([[1]], chunk_size=0)
    with pytest.raises(ValueError, match="token id 700"):
        dec.prefill([[1, 700]])
    with pytest.raises(ValueError, match="context length"):
        dec.prefill([[1] * 129])
    _, cache = dec.prefill([[1, 2], [3]])
    with pytest.raises(ValueError, match="3 tokens for a batch of 2"):
        dec.step(cache, np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="token id -1"):
        dec.step(cache, np.array([1, -1]))
    _, full = dec.prefill([[1] * 128])
    with pytest.raises(ValueError, match="context length"):
        dec.step(full, np.array([1]))


# ---------------------------------------------------------------- batch independence


@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=2, max_size=4),
    chunk=st.sampled_from([2, 5, 256]),
    n_steps=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_batched_rows_equal_rows_alone(dec, lengths, chunk, n_steps, seed):
    prompts = prompts_from(seed, lengths)
    rng = np.random.default_rng(seed)
    steps = rng.integers(0, CFG.vocab_size, (n_steps, len(prompts))).tolist()
    per_position: dict[int, dict[int, np.ndarray]] = {}
    batch_last, cache = dec.prefill(
        prompts,
        chunk_size=chunk,
        on_logits=lambda p, pos, lg: per_position.setdefault(p, {}).update(zip(pos, lg)),
    )
    batch_steps, _ = decode(dec, cache, steps)
    # the rows alone are prefilled in one chunk: under GQA a last chunk of one token runs
    # the one-query kernel, which rounds differently (chunk size, not batch, dependence;
    # test_gqa_rows_are_bit_exact_whatever_the_batch checks the batch part bit for bit)
    tol = incremental_tolerance(dec)
    for p, prompt in enumerate(prompts):
        alone_full = full_logits(dec, prompt)
        alone_last, alone_cache = dec.prefill([prompt])
        alone_steps, _ = decode(dec, alone_cache, [[s[p]] for s in steps])
        assert np.abs(batch_last[p] - alone_last[0]).max() < tol
        got = np.stack([per_position[p][i] for i in range(len(prompt))])
        assert np.abs(got - alone_full).max() < tol
        for b, a in zip(batch_steps, alone_steps):
            assert np.abs(b[p] - a[0]).max() < tol


def test_take_repeats_and_drops_rows(dec):
    prompts = prompts_from(4, [14, 3, 7])
    _, cache = dec.prefill(prompts)
    _, cache = dec.step(cache, np.array([10, 11, 12]))
    fanned = cache.take(np.repeat(np.arange(3), 2))  # best_of = 2
    assert fanned.batch == 6 and fanned.lengths.tolist() == [15, 15, 4, 4, 8, 8]
    short = cache.take([1, 2])  # the long row finished: its leading padding columns go
    assert short.length == 8 and short.lengths.tolist() == [4, 8]
    if isinstance(cache, KVCache):  # left padding; a SharedKVCache has none
        assert cache.take([2, 1]).mask[1, :4].tolist() == [0, 0, 0, 0]
    assert cache.take([]).batch == 0
    assert dec.step(cache.take([]), np.array([], np.int64))[0].shape == (0, 700)
    tokens = np.array([20, 21, 22, 23, 24, 25])
    fan_logits, _ = dec.step(fanned, tokens)
    short_logits, _ = dec.step(short, tokens[[3, 4]])
    for p, prompt in enumerate(prompts):
        _, alone = dec.prefill([prompt])
        _, alone = dec.step(alone, np.array([10 + p]))
        for row in (2 * p, 2 * p + 1):
            expected, _ = dec.step(alone, tokens[[row]])
            assert np.abs(fan_logits[row] - expected[0]).max() < EXACT
    _, alone = dec.prefill([prompts[1]])
    expected, _ = dec.step(dec.step(alone, np.array([11]))[1], np.array([23]))
    assert np.abs(short_logits[0] - expected[0]).max() < EXACT


def test_merge_caches_of_different_lengths(dec):
    prompts = prompts_from(5, [3, 12, 6])
    _, a = dec.prefill(prompts[:1])
    _, a = dec.step(a, np.array([9]))  # 4 tokens
    _, b = dec.prefill(prompts[1:])  # 12 and 6 tokens, the 6 left-padded
    merged = type(a).merge([a, b])
    assert merged.batch == 3 and merged.length == 12
    assert merged.lengths.tolist() == [4, 12, 6]
    steps = [[30, 31, 32], [33, 34, 35]]
    merged_logits, _ = decode(dec, merged, steps)
    for p, cache in enumerate([a, b.take([0]), b.take([1])]):
        alone, _ = decode(dec, cache, [[s[p]] for s in steps])
        for m, x in zip(merged_logits, alone):
            assert np.abs(m[p] - x[0]).max() < EXACT


def test_exact_attention_makes_padding_bit_exact(tmp_path):
    """With float64 attention sums (the default) a row's logits are bit-identical with or
    without other, longer rows, even past MLAS's K blocking (long contexts). This relies on
    ORT's CPU GEMM giving each output element the same K order whatever M is, which holds
    for MLAS; the 1e-5 tests above are the contract if some CPU ever breaks it."""
    cfg = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=48,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        max_position=1024,
    )
    w = random_weights(cfg, np.random.default_rng(12), scale=2.0)
    dec = Decoder.load(write_model(tmp_path, build_llama(w, cfg), context_length=1024))
    rng = np.random.default_rng(13)
    prompt, longer = rng.integers(0, 300, 700).tolist(), rng.integers(0, 300, 830).tolist()
    alone, alone_cache = dec.prefill([prompt], chunk_size=100)
    batched, batched_cache = dec.prefill([prompt, longer], chunk_size=100)
    np.testing.assert_array_equal(batched[0], alone[0])
    np.testing.assert_array_equal(
        dec.step(batched_cache, [7, 8])[0][0], dec.step(alone_cache, [7])[0][0]
    )


def long_context_decoders(tmp_path) -> dict[str, Decoder]:
    cfg = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=48,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        max_position=1024,
    )
    w = random_weights(cfg, np.random.default_rng(12), scale=2.0)
    return {
        a: Decoder.load(
            write_model(tmp_path / a, build_llama(w, cfg, attention=a), context_length=1024)
        )
        for a in ("exact", "gqa")
    }


def test_gqa_rows_are_bit_exact_whatever_the_batch(tmp_path):
    """With GroupQueryAttention every row's keys start at position 0 and prompts are
    prefilled one at a time, so a row's logits are bit-identical alone or beside longer
    rows, across MLAS's K blocking, step after step."""
    dec = long_context_decoders(tmp_path)["gqa"]
    rng = np.random.default_rng(13)
    prompt, longer = rng.integers(0, 300, 700).tolist(), rng.integers(0, 300, 830).tolist()
    alone, alone_cache = dec.prefill([prompt], chunk_size=100)
    batched, batched_cache = dec.prefill([prompt, longer], chunk_size=100)
    np.testing.assert_array_equal(batched[0], alone[0])
    for t in (7, 8, 9):
        a, alone_cache = dec.step(alone_cache, [t])
        b, batched_cache = dec.step(batched_cache, [t, t + 1])
        np.testing.assert_array_equal(b[0], a[0])


def test_gqa_cache_is_written_in_place_and_grows(tmp_path):
    decs = long_context_decoders(tmp_path)
    dec, exact = decs["gqa"], decs["exact"]
    prompt = np.random.default_rng(14).integers(0, 300, 250).tolist()
    _, cache = dec.prefill([prompt])
    _, ref_cache = exact.prefill([prompt])
    assert isinstance(cache, SharedKVCache) and cache.capacity == 256
    for n in range(10):  # positions 250 .. 259: the buffers fill up at 256, then double
        logits, new = dec.step(cache, [n])
        expected, ref_cache = exact.step(ref_cache, [n])
        assert np.abs(logits - expected).max() < 5e-5
        grew = new.capacity != cache.capacity
        assert grew == (n == 6) and np.shares_memory(new.keys[0], cache.keys[0]) != grew
        cache = new
    assert cache.capacity == 512 and cache.lengths.tolist() == [260]
    with pytest.raises(ValueError, match="context length"):
        dec.step(dec.prefill([[1] * 1024])[1], [1])


def test_merge_rejects_mismatched_caches():
    a = SharedKVCache.empty(1, num_layers=2, num_kv_heads=2, head_dim=8)
    with pytest.raises(ValueError, match="different models"):
        SharedKVCache.merge([a, SharedKVCache.empty(1, num_layers=2, num_kv_heads=1, head_dim=8)])
    with pytest.raises(ValueError, match="at least one"):
        SharedKVCache.merge([])

    a = KVCache.empty(1, num_layers=2, num_kv_heads=2, head_dim=8)
    with pytest.raises(ValueError, match="different models"):
        KVCache.merge([a, KVCache.empty(1, num_layers=2, num_kv_heads=1, head_dim=8)])
    with pytest.raises(ValueError, match="at least one"):
        KVCache.merge([])


# ---------------------------------------------------------------- the tiny model


def test_tiny_model_loads(tiny_model_dir):
    cfg = load_config(tiny_model_dir)
    assert (cfg.name, cfg.tokenizer, cfg.context_length) == (
        "tiny-random-cl100k",
        "cl100k_base",
        2048,
    )
    assert cfg.eos_token_ids == (100257,) and cfg.fim == FimTokens(100258, 100259, 100260)
    dec = Decoder.load(tiny_model_dir)
    assert (dec.vocab_size, dec.num_layers, dec.num_kv_heads) == (100277, 2, 2)
    assert isinstance(TINY_BUILD_VERSION, int)


def test_tiny_model_incremental_equals_full_and_is_not_flat(tiny_model_dir):
    dec = Decoder.load(tiny_model_dir)
    tokens = np.random.default_rng(0).integers(0, 100256, 12).tolist()
    full = full_logits(dec, tokens)
    last, cache = dec.prefill([tokens[:3]])
    steps, _ = decode(dec, cache, [[t] for t in tokens[3:]])
    assert np.abs(np.concatenate([last] + steps) - full[2:]).max() < EXACT
    std = full.std(axis=1)
    assert ((std > 2) & (std < 4)).all()  # a spread top_p can cut, not one-hot, not flat
    assert len(set(full.argmax(axis=1).tolist())) > 6  # greedy choices vary with the input


def test_tiny_build_is_deterministic_and_idempotent(tiny_model_dir, tmp_path):
    again = build_tiny_random(tmp_path / "again")
    assert load_config(again).digest == load_config(tiny_model_dir).digest
    assert (again / "refsampler.json").read_text() == (
        tiny_model_dir / "refsampler.json"
    ).read_text()
    mtime = (again / "model.onnx").stat().st_mtime_ns
    assert build_tiny_random(again) == again  # complete: returned as is, not rebuilt
    assert (again / "model.onnx").stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # no temp dir left


def test_importing_does_not_load_onnx():
    code = (
        "import sys, sampler.model, sampler.tiny, sampler.onnx_llama; "
        "print(sorted(m for m in ('onnx', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    assert out.stdout.strip() == "[]"
