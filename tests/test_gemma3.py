"""Gemma 3 GGUFs: the converted logits against an independent NumPy forward pass of the file,
the sliding window past its width, the seed contract, the SentencePiece-style tokenizer."""

from __future__ import annotations

import json

import gemma_reference as gr
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_gguf import all_logits, assert_incremental_is_full

from sampler.convert import convert_gguf
from sampler.decoder import Decoder
from sampler.engine import Engine
from sampler.gguf_llama import read_gguf
from sampler.model import load_config
from sampler.spm import spm_tokenizer
from sampler.tokenizer import UnrepresentableText, tokenizer_for

TOKENS, SCORES, TYPES = gr.spm_vocab()
V = len(TOKENS)


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """A tiny F32 Gemma 3, converted with the default (GQA) attention."""
    tmp = tmp_path_factory.mktemp("gemma3")
    src = gr.write_tiny_gemma3(tmp / "g.gguf", "F32")
    return src, convert_gguf(src, tmp / "g")


def check_against_reference(src, decoder: Decoder, attention: str, seed: int) -> np.ndarray:
    """40 random tokens, 5 times the window: the converted logits equal the reference's read
    of the file (1e-4), the window matters (> 1), and incremental decoding equals the full
    pass (the cache past the window, both layer kinds)."""
    tokens = np.random.default_rng(seed).integers(0, V, 40).tolist()
    full = all_logits(decoder, tokens)  # [S, V]
    expected = gr.forward(src, tokens)
    assert full.std() > 1.0
    assert np.abs(full - expected).max() < 1e-4
    # the local layers' window is seen: without it the logits past the window differ
    unbounded = np.abs(expected - gr.forward(src, tokens, window=1 << 20))  # [S, V]
    assert unbounded[8:].max() > 1.0 and unbounded[:8].max() < 1e-9
    assert_incremental_is_full(decoder, tokens, full, attention)
    return full


@pytest.mark.parametrize("attention", ["gqa", "exact"])
@pytest.mark.parametrize("qtype", ["F32", "F16", "Q8_0", "Q5_0", "Q4_K", "Q6_K"])
def test_logits_match_reference_reading_the_gguf(tmp_path, qtype, attention):
    src = gr.write_tiny_gemma3(tmp_path / "g.gguf", qtype, seed=len(qtype))
    out = convert_gguf(src, tmp_path / "g", attention=attention)
    manifest = json.loads((out / "refsampler.json").read_text())
    assert manifest["source"]["tensor_types"] == sorted({"F32", qtype})
    assert manifest["attention"] == attention
    check_against_reference(src, Decoder.load(out), attention, seed=5)


def test_hyper_parameters_as_llama_cpp_reads_them(gemma):
    src, _ = gemma
    c = read_gguf(src).config
    assert c.local_layers == (0, 1, 2, 3, 4)  # every 6th layer is global
    assert (c.sliding_window, c.rope_theta, c.rope_theta_local) == (8, 1e6, 1e4)
    assert c.embedding_scale == pytest.approx(16.0) and c.query_scale == pytest.approx(128**-0.5)
    assert (c.head_dim, c.num_heads, c.num_kv_heads, c.tie_word_embeddings) == (128, 4, 1, True)
    assert (c.post_norms, c.qk_norm, c.activation) == (True, True, "gelu_tanh")


def test_pattern_and_local_base_from_the_file(tmp_path):
    """gemma3.attention.sliding_window_pattern and gemma3.rope.freq_base_swa, when present,
    decide as in llama.cpp; the reference follows the same keys."""
    src = gr.write_tiny_gemma3(
        tmp_path / "g.gguf",
        extra_meta={
            "gemma3.attention.sliding_window_pattern": 3,
            "gemma3.rope.freq_base_swa": 500.0,
        },
    )
    c = read_gguf(src).config
    assert c.local_layers == (0, 1, 3, 4) and c.rope_theta_local == 500.0
    out = convert_gguf(src, tmp_path / "g", attention="exact")
    check_against_reference(src, Decoder.load(out), "exact", seed=2)


def test_a_rows_logits_do_not_depend_on_its_batch(gemma):
    """The seed contract with sliding-window layers: a row's logits are the same alone, in
    a batch with longer and shorter rows, and in either order (GQA: bit-identical)."""
    _, out = gemma
    decoder = Decoder.load(out)
    rng = np.random.default_rng(11)
    a = rng.integers(0, V, 30).tolist()
    others = [rng.integers(0, V, n).tolist() for n in (3, 17, 45)]
    alone, _ = decoder.prefill([a])
    together, _ = decoder.prefill([others[0], a, others[1], others[2]])
    assert np.array_equal(alone[0], together[1])
    # and stepping past the window in a mixed batch: the same as stepping alone
    _, cache = decoder.prefill([a[:20]])
    _, mixed = decoder.prefill([others[2][:20], a[:20]])
    for t, u in zip(a[20:], others[2][20:]):
        one, cache = decoder.step(cache, [t])
        two, mixed = decoder.step(mixed, [u, t])
        assert np.array_equal(one[0], two[1])


def test_engine_reads_bos_first_and_reports_the_prompt_alone(gemma):
    """Gemma reads <bos> before a text prompt (add_bos_token); it is not echoed, scored or
    counted. Token-id prompts are read as given."""
    src, out = gemma
    cfg = load_config(out)
    assert cfg.bos_token_id == 2 and cfg.tokenizer["kind"] == "sentencepiece"
    engine = Engine.load(out)
    tok = engine.tokenizer
    ids = tok.encode("the capital")
    r = engine.complete(prompt="the capital", max_tokens=0, echo=True, logprobs=2)
    lp = r["choices"][0]["logprobs"]
    assert r["usage"]["prompt_tokens"] == len(ids) == len(lp["tokens"])
    assert lp["token_logprobs"][0] is None and r["choices"][0]["text"] == "the capital"
    # the second token's logprob is conditioned on <bos> and the first token
    decoder = Decoder.load(out)
    rows = all_logits(decoder, [2, *ids])
    z = rows[1].astype(np.float64)
    z[engine.info.masked_ids] = -np.inf
    expected = z[ids[1]] - np.log(np.exp(z - z.max()).sum()) - z.max()
    assert lp["token_logprobs"][1] == pytest.approx(expected, abs=1e-5)
    # generation after <bos> + prompt equals a token prompt that spells the <bos> out
    a = engine.complete(prompt="the capital", max_tokens=6, seed=3, temperature=1.0)
    b = engine.complete(prompt=[2, *ids], max_tokens=6, seed=3, temperature=1.0)
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    assert b["usage"]["prompt_tokens"] == len(ids) + 1
    # an empty prompt reads <bos> (not the end-of-text token) and counts nothing
    e = engine.complete(prompt="", max_tokens=6, seed=1, temperature=1.0)
    assert e["usage"]["prompt_tokens"] == 0
    on_bos = engine.complete(prompt=[2], max_tokens=6, seed=1, temperature=1.0)
    on_eos = engine.complete(prompt=[1], max_tokens=6, seed=1, temperature=1.0)
    assert e["choices"][0]["text"] == on_bos["choices"][0]["text"]
    assert on_eos["choices"][0]["text"] != on_bos["choices"][0]["text"]  # the check can fail
    assert engine.info.end_ids == (1, 5)  # <eos> and <end_of_turn>, as llama.cpp ends
    assert src.exists()


def test_control_tokens_masked_user_defined_sampled(gemma):
    """Control tokens other than the end ids are never sampled; user-defined ones (Gemma's
    newline and space runs) and byte tokens are ordinary tokens."""
    _, out = gemma
    engine = Engine.load(out)
    masked = set(engine.info.masked_ids.tolist())
    ids = {t: i for i, t in enumerate(TOKENS)}
    assert {ids["<pad>"], ids["<bos>"], ids["<unk>"], ids["<start_of_turn>"]} <= masked
    assert not {ids["<eos>"], ids["<end_of_turn>"], ids["\n"], ids["  "], ids["<0x41>"]} & masked


# ---------------------------------------------------------------- the tokenizer

TOK = spm_tokenizer("tiny-gemma", TOKENS, SCORES, TYPES)


def test_hand_checked_encodings():
    ids = {t: i for i, t in enumerate(TOKENS)}
    # a space run is a user-defined token, cut out before the pieces are merged
    assert TOK.encode("a  b") == [ids["a"], ids["  "], ids["b"]]
    # specials inside text: control tokens too (prompts allow every special)
    assert TOK.encode("<bos>x\n\n") == [ids["<bos>"], ids["x"], ids["\n\n"]]
    # a character the vocabulary lacks: its UTF-8 bytes as <0xXX> tokens
    assert TOK.encode("\u00a7") == [ids["<0xC2>"], ids["<0xA7>"]]
    # the longest special first: "   " (3 spaces) then what is left
    assert TOK.encode("    ") == [ids["   "], ids["\u2581"]]
    assert TOK.decode_bytes(TOK.encode("The capital, 東京 😀")) == "The capital, 東京 😀".encode()


def test_pieces_merge_by_score_leftmost_first():
    """A three-token toy: "aaa" can merge either pair; equal scores take the left one."""
    toy = spm_tokenizer(
        "toy", ["<eos>", "a", "aa", "b", "ab"], [0, -1, -2, -1, -2], [3, 1, 1, 1, 1]
    )
    assert toy.encode("aaa") == [2, 1]  # (aa)(a), not (a)(aa)
    assert toy.encode("aab") == [2, 3]  # aa and ab score alike: the left pair wins
    better = spm_tokenizer(
        "toy", ["<eos>", "a", "aa", "b", "ab"], [0, -1, -2, -1, -1.5], [3, 1, 1, 1, 1]
    )
    assert better.encode("aab") == [1, 4]  # ab scores higher


_ALPHABET = st.sampled_from(
    [
        "a",
        "b",
        "e",
        " ",
        "  ",
        "\n",
        "\t",
        "T",
        "he",
        "<",
        ">",
        "<eos>",
        "<bos>",
        "é",
        "東",
        "😀",
        "\u2581",
        "<0x41>",
        "<start_of_turn>",
        "x",
        "q",
        ",",
        "the",
        " capital",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ALPHABET, max_size=30).map("".join))
def test_encode_equals_the_slow_reference(text):
    assert TOK.encode(text) == gr.reference_encode(text, TOKENS, SCORES, TYPES)
    # lossless but for U+2581, which reads as a space (as in llama.cpp and SentencePiece)
    assert TOK.decode_bytes(TOK.encode(text)) == text.replace("\u2581", " ").encode()


def test_a_byte_without_a_token_is_refused():
    toy = spm_tokenizer("toy", ["<eos>", "a", "<0x62>"], [0, -1, 0], [3, 1, 6])
    assert toy.encode("ab") == [1, 2]
    with pytest.raises(UnrepresentableText, match="'c'.*index 1"):
        toy.encode("ac")
    assert 0x63 in toy.missing_bytes and 0x62 not in toy.missing_bytes
    # the space add_space_prefix puts in front has no token either: refused the same way
    spaced = spm_tokenizer(
        "toy", ["<eos>", "a", "b"], [0, -1, -1], [3, 1, 1], add_space_prefix=True
    )
    with pytest.raises(UnrepresentableText, match="index 0"):
        spaced.encode("ab")


def test_folder_tokenizer_is_checked(gemma, tmp_path):
    _, out = gemma
    cfg = load_config(out)
    assert tokenizer_for(cfg).encode("the capital") == TOK.encode("the capital")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.spm.json").write_text("{}")
    from sampler.tokenizer import load_folder_tokenizer

    spec = dict(cfg.tokenizer)
    with pytest.raises(ValueError, match="sha256"):
        load_folder_tokenizer(bad, spec)
    with pytest.raises(ValueError, match="'kind' must be"):
        load_folder_tokenizer(out, {**spec, "kind": "wordpiece"})
    with pytest.raises(ValueError, match="vocab_size"):
        load_folder_tokenizer(out, {**spec, "vocab_size": 3})


def test_what_does_not_convert_is_named_before_any_work(tmp_path):
    src = gr.write_tiny_gemma3(
        tmp_path / "c.gguf", extra_meta={"gemma3.final_logit_softcapping": 30.0}
    )
    with pytest.raises(ValueError, match="final_logit_softcapping is 30.0; logit soft-capping"):
        convert_gguf(src, tmp_path / "c")
    assert not (tmp_path / "c").exists()
