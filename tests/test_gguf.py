"""GGUF -> model folder: logits against an independent reader of the GGUF, the tokenizer
against llama.cpp's rules, the CLI end to end. Tiny files written here; nothing downloaded."""

from __future__ import annotations

import json

import chat_templates
import gguf_reference as ref
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sampler import cli
from sampler.chat_template import render
from sampler.convert import convert_gguf
from sampler.decoder import Decoder
from sampler.engine import Engine
from sampler.errors import RequestError
from sampler.gguf_llama import read_gguf
from sampler.gguf_vocab import byte_decoder, gguf_vocab
from sampler.model import load_config
from sampler.tokenizer import tokenizer_for

QTYPES = ["F32", "F16", "Q8_0", "Q4_0", "Q4_1"]
TOKENS, TYPES, MERGES = ref.train_vocab()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """One converted tiny model (Q4_1 matrices, untied head)."""
    d = tmp_path_factory.mktemp("gguf")
    src = ref.write_tiny_gguf(d / "tiny.gguf", "Q4_1")
    return convert_gguf(src, d / "tiny", name="tiny-gguf")


@pytest.fixture(scope="module")
def tok(folder):
    return tokenizer_for(load_config(folder))


def all_logits(decoder: Decoder, tokens) -> np.ndarray:
    """Logits [S, V] at every position of one full-sequence prefill."""
    rows = {}
    decoder.prefill([tokens], on_logits=lambda p, pos, lg: rows.update(zip(pos.tolist(), lg)))
    return np.stack([rows[i] for i in range(len(tokens))])


# ---------------------------------------------------------------- the model


#: incremental vs one-call prefill: the exact graph computes both alike (to 1e-5 on logits
#: of ~10); GroupQueryAttention computes one query row differently from many (~2e-6
#: relative, measured up to 2.3e-5 here)
INCREMENTAL = {"exact": 1e-5, "gqa": 5e-5}


@pytest.mark.parametrize("attention", ["gqa", "exact"])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("qtype", QTYPES)
def test_logits_match_reference_reading_the_gguf(tmp_path, qtype, tied, attention):
    src = ref.write_tiny_gguf(tmp_path / "m.gguf", qtype, tied=tied, seed=QTYPES.index(qtype))
    out = convert_gguf(src, tmp_path / "m", attention=attention)
    manifest = json.loads((out / "refsampler.json").read_text())
    assert manifest["source"]["tensor_types"] == sorted({"F32", qtype})
    decoder = Decoder.load(out)
    assert decoder.vocab_size == len(TOKENS) and decoder.config.context_length == 96
    matches_reference(src, decoder, attention, seed=7)
    assert manifest["attention"] == attention


def matches_reference(src, decoder: Decoder, attention: str, seed: int) -> np.ndarray:
    """The converted logits of 40 random tokens equal the reference's read of the file
    (1e-4), and incremental decoding (KV cache) gives the full-sequence logits."""
    tokens = np.random.default_rng(seed).integers(0, len(TOKENS), 40).tolist()
    full = all_logits(decoder, tokens)  # [S, V]
    expected = ref.forward(src, tokens)
    assert full.std() > 1.0  # logits that say something
    assert np.abs(full - expected).max() < 1e-4
    assert_incremental_is_full(decoder, tokens, full, attention)
    return full


def assert_incremental_is_full(decoder: Decoder, tokens, full, attention: str, at: int = 25):
    """Prefill ``tokens[:at]``, then one step per token: the logits of the full pass."""
    last, cache = decoder.prefill([tokens[:at]])
    steps = [last[0]]
    for t in tokens[at:]:
        logits, cache = decoder.step(cache, [t])
        steps.append(logits[0])
    assert np.abs(np.stack(steps) - full[at - 1 :]).max() < INCREMENTAL[attention]


@pytest.mark.parametrize("attention", ["gqa", "exact"])
@pytest.mark.parametrize(
    "arch, qtype, tied",
    [
        ("qwen2", "Q8_0", True),
        ("qwen2", "F32", False),
        ("qwen3", "Q4_1", True),
        ("qwen3", "F16", False),
    ],
)
def test_qwen_logits_match_reference_reading_the_gguf(tmp_path, arch, qtype, tied, attention):
    """Qwen2 (q/k/v biases) and Qwen3 (per-head q/k RMSNorm), RoPE on halves as llama.cpp
    runs them: the Q/K rows are used as the file holds them (no un-permutation)."""
    src = ref.write_tiny_gguf(tmp_path / "m.gguf", qtype, tied=tied, arch=arch, pre="qwen2")
    out = convert_gguf(src, tmp_path / "m", attention=attention)
    full = matches_reference(src, Decoder.load(out), attention, seed=3)
    tokens = np.random.default_rng(3).integers(0, len(TOKENS), 40).tolist()
    # the reference can tell the layouts apart: llama's RoPE pairs give other logits
    assert np.abs(full - ref.forward(src, tokens, rope=ref._rope_adjacent)).max() > 1e-2
    engine = Engine.load(out)  # a tokenizer by Qwen2's pattern, and a completion
    r = engine.complete(prompt="The year 2024 ends.", max_tokens=3, seed=1)
    assert r["usage"]["prompt_tokens"] > 0


def test_float16_weights(tmp_path):
    src = ref.write_tiny_gguf(tmp_path / "m.gguf", "F16")
    a = Decoder.load(convert_gguf(src, tmp_path / "a"))
    b = Decoder.load(convert_gguf(src, tmp_path / "b", weight_dtype="float16"))
    tokens = list(range(5, 30))
    # F16 values survive float16 storage exactly
    assert np.abs(all_logits(a, tokens) - all_logits(b, tokens)).max() < 1e-5
    assert (tmp_path / "b" / "model.onnx").stat().st_size < (
        0.6 * (tmp_path / "a" / "model.onnx").stat().st_size
    )


def test_unpermutation_is_needed(tmp_path, monkeypatch):
    """Without un-permuting Q/K the logits differ: the test above can see the RoPE layout."""
    import sampler.convert as conv

    src = ref.write_tiny_gguf(tmp_path / "m.gguf", "F32")
    import sampler.gguf_llama as gl

    monkeypatch.setattr(gl, "unpermute_rope_rows", lambda w, num_heads: w)  # where it is used
    decoder = Decoder.load(conv.convert_gguf(src, tmp_path / "m"))
    tokens = list(range(3, 30))
    assert np.abs(all_logits(decoder, tokens) - ref.forward(src, tokens)).max() > 1e-2


def test_unsupported_files_say_what_they_found(tmp_path):
    src = ref.write_tiny_gguf(tmp_path / "q.gguf", arch="phi3")
    with pytest.raises(ValueError, match="general.architecture is 'phi3'; the GGUF files"):
        convert_gguf(src, tmp_path / "q")
    src = ref.write_tiny_gguf(tmp_path / "p.gguf", pre="deepseek-llm")
    with pytest.raises(ValueError, match="tokenizer.ggml.pre is 'deepseek-llm'"):
        convert_gguf(src, tmp_path / "p")
    src = ref.write_tiny_gguf(
        tmp_path / "r.gguf", extra_tensors={"rope_freqs.weight": np.ones(8, np.float32)}
    )
    with pytest.raises(ValueError, match="rope_freqs.weight.*RoPE frequency scaling"):
        convert_gguf(src, tmp_path / "r")
    src = ref.write_tiny_gguf(
        tmp_path / "i.gguf", extra_tensors={"blk.0.attn_q.bias": np.ones(64, np.float32)}
    )
    with pytest.raises(ValueError, match="unexpected tensor 'blk.0.attn_q.bias'"):
        convert_gguf(src, tmp_path / "i")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ValueError, match="not a readable GGUF"):
        convert_gguf(tmp_path / "junk.gguf", tmp_path / "j")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == []  # nothing written


def test_unsupported_tensor_type(tmp_path):
    src = ref.write_tiny_gguf(
        tmp_path / "t.gguf", replace={"output_norm.weight": np.ones(64, np.int32)}
    )
    with pytest.raises(ValueError, match="'output_norm.weight' has type I32, which gguf.quants"):
        convert_gguf(src, tmp_path / "t")


def test_vocab_checks():
    with pytest.raises(ValueError, match="only 'gpt2'"):
        gguf_vocab(["a"], [1], [], model="llama")
    with pytest.raises(ValueError, match="not in merge order"):
        gguf_vocab(
            ["<|endoftext|>", "a", "b", "c", "bc", "ab"],
            [3, 1, 1, 1, 1, 1],
            ["a b", "b c"],
            pre="smollm",
        )
    with pytest.raises(ValueError, match="no merge's result"):
        gguf_vocab(["<|endoftext|>", "a", "b", "ab"], [3, 1, 1, 1], [], pre="smollm")
    with pytest.raises(ValueError, match="no end-of-text token"):
        gguf_vocab(["a", "b"], [1, 1], [], pre="smollm")
    v = gguf_vocab(TOKENS, TYPES, MERGES, pre="smollm", eos_ids=[2])
    assert v.eos_token_ids == (0, 2) and set(v.special_tokens) == set(ref.SPECIALS)
    assert v.ranks[b"\n"] == TOKENS.index("Ċ")


def test_read_gguf_hyper_parameters(tmp_path):
    model = read_gguf(ref.write_tiny_gguf(tmp_path / "m.gguf", tied=True))
    c = model.config
    assert (
        c.num_layers,
        c.hidden_size,
        c.intermediate_size,
        c.num_heads,
        c.num_kv_heads,
        c.head_dim,
        c.rope_theta,
        c.max_position,
    ) == (2, 64, 96, 4, 2, 16, 1e5, 96)
    assert c.tie_word_embeddings and abs(c.rms_norm_eps - 1e-5) < 1e-12


# ---------------------------------------------------------------- the tokenizer


def strings(tok, ids):
    return [TOKENS[i] for i in ids]


def test_hand_checked_encodings(tok):
    # every digit is its own piece, although "Ġ12", "02" and "Ġ2024" are tokens
    assert {"Ġ12", "02", "Ġ2024"} <= set(TOKENS)
    assert strings(tok, tok.encode(" 12")) == ["Ġ", "1", "2"]
    assert strings(tok, tok.encode(" 2024")) == ["Ġ", "2", "0", "2", "4"]
    # a whitespace run before a digit stays whole (the regex's lookahead) ...
    assert strings(tok, tok.encode("a  1")) == ["a", "ĠĠ", "1"]
    assert strings(tok, tok.encode("x  \n1")) == ["x", "ĠĠ", "Ċ", "1"]
    # ... while before a letter its last space goes with the word, as in GPT-2
    assert strings(tok, tok.encode("a  b")) == ["a", "Ġ", "Ġ", "b"]
    assert strings(tok, tok.encode("it's")) == ["it", "'s"]
    assert strings(tok, tok.encode("The capital")) == ["The", "Ġcapital"]
    assert tok.encode("<|im_end|><|endoftext|>") == [2, 0]
    assert tok.decode_bytes(tok.encode("x\n\ty")) == b"x\n\ty"


def test_ids_are_ranks_and_placeholders_are_not_tokens(tok):
    decode = byte_decoder()
    for i in (10, 100, len(TOKENS) - 1):
        assert tok.token_bytes(i) == bytes(decode[c] for c in TOKENS[i])
    assert tok.max_id == len(TOKENS) - 1 and tok.n_vocab == len(TOKENS)
    assert tok.missing_bytes == ref.MISSING_BYTES
    assert not tok.is_token(len(TOKENS)) and tok.special_ids == {
        0: "<|endoftext|>",
        1: "<|im_start|>",
        2: "<|im_end|>",
    }


_TEXT = st.lists(
    st.one_of(
        st.sampled_from(list("ab xyz 0123456789'sdtl\n\t.,!?-  ÄéπΩ😀東")),
        st.sampled_from(["<|im_end|>", "<|endoftext|>", "'s", "'re", "  1", " \n ", "Paris"]),
        # assigned code points only: tiktoken's and regex's Unicode tables (like llama.cpp's)
        # are of different Unicode versions, and may class a newer character differently
        st.characters(
            max_codepoint=0x3FFFF, exclude_characters="\x04\x06", exclude_categories=("Cs", "Cn")
        ),
    ),
    max_size=30,
).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_TEXT)
def test_encode_equals_llama_cpp_style_reference(tok, text):
    assert tok.encode(text) == ref.reference_encode(text, TOKENS, MERGES)


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(
        alphabet=st.characters(
            max_codepoint=0x3FFFF, exclude_characters="\x04\x06", exclude_categories=("Cs",)
        ),
        max_size=60,
    )
)
def test_round_trip(tok, text):
    assert tok.decode_bytes(tok.encode(text)).decode("utf-8") == text


def test_unrepresentable_bytes_refused(tok):
    from sampler.tokenizer import UnrepresentableText

    with pytest.raises(UnrepresentableText, match=r"U\+0004.*index 2"):
        tok.encode("ab\x04c")
    with pytest.raises(UnrepresentableText, match="0xf1"):
        tok.encode("\U00040000")


# ---------------------------------------------------------------- the folder and the CLI


def test_cli_convert_end_to_end(tmp_path, capsys):
    src = ref.write_tiny_gguf(
        tmp_path / "tiny.Q8_0.gguf", "Q8_0", tied=True, chat_template=chat_templates.SMOLLM2
    )
    assert cli.main(["convert", str(src)]) == 0
    out = tmp_path / "tiny.Q8_0"
    assert capsys.readouterr().out.strip() == str(out)
    manifest = json.loads((out / "refsampler.json").read_text())
    assert manifest["eos_token_ids"] == [0, 2] and manifest["fim"] is None
    assert manifest["chat"] == {
        "template": chat_templates.SMOLLM2,
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "unk_token": None,  # (the file names none)
        "pad_token": "<|im_end|>",
        "source": "gguf tokenizer.chat_template",
    }
    assert manifest["tokenizer"]["file"] == "tokenizer.tiktoken"
    assert {"model.onnx", "refsampler.json", "tokenizer.tiktoken"} <= {
        p.name for p in out.iterdir()
    }

    engine = Engine.load(out)
    assert engine.name == "tiny.Q8_0"
    hi = [{"role": "user", "content": "Hi"}]
    chat = engine.chat(messages=hi, max_tokens=4, seed=1, logit_bias={"2": 100})
    assert chat["choices"][0]["finish_reason"] == "stop"  # <|im_end|> ends the reply
    assert chat["usage"]["prompt_tokens"] == len(
        engine.tokenizer.encode(render(engine.info.chat, hi))
    )
    assert engine.tokenizer.encode(render(engine.info.chat, hi))[:1] == [1]  # <|im_start|>
    r = engine.complete(prompt="The capital of France is", max_tokens=6, seed=1, logprobs=2)
    assert r["usage"]["prompt_tokens"] == 5 and len(r["choices"][0]["logprobs"]["tokens"]) <= 6

    # both end ids end a choice; the other control token is never sampled
    for end in (0, 2):
        r = engine.complete(prompt="Hi", max_tokens=5, logit_bias={str(end): 100})
        assert r["choices"][0]["finish_reason"] == "stop" and r["choices"][0]["text"] == ""
        assert r["usage"]["completion_tokens"] == 1
    with pytest.raises(RequestError) as e:
        engine.complete(prompt="Hi", logit_bias={"1": 5})
    assert e.value.param == "logit_bias"
    with pytest.raises(RequestError) as e:
        engine.complete(prompt="Hi", logit_bias={str(len(TOKENS)): 5})
    assert e.value.param == "logit_bias"
    assert f"Maximum value is {len(TOKENS) - 1}" in e.value.message

    # no FIM tokens: suffix is refused; so is a byte no token holds, and a placeholder id
    with pytest.raises(RequestError) as e:
        engine.complete(prompt="def f(", suffix="return 1")
    assert e.value.param == "suffix"
    with pytest.raises(RequestError) as e:
        engine.complete(prompt="bell \x04 here")
    assert e.value.param == "prompt" and "U+0004" in e.value.message and e.value.status == 400
    with pytest.raises(RequestError) as e:
        engine.complete(prompt=[5, len(TOKENS) + 1])
    assert e.value.param == "prompt"

    # converting onto an existing folder fails and leaves it alone
    assert cli.main(["convert", str(src), "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err

    # --attention picks the graph; the default is GroupQueryAttention's in-place cache
    assert manifest["attention"] == "gqa" and Engine.load(out).decoder.shared_cache
    exact = tmp_path / "exact"
    assert cli.main(["convert", str(src), "--out", str(exact), "--attention", "exact"]) == 0
    assert json.loads((exact / "refsampler.json").read_text())["attention"] == "exact"
    assert not Engine.load(exact).decoder.shared_cache
    with pytest.raises(SystemExit) as e:
        cli.main(["convert", str(src), "--out", str(tmp_path / "x"), "--attention", "flash"])
    assert e.value.code == 2 and "--attention" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_folder_tokenizer_is_checked(folder, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / "tokenizer.tiktoken").write_bytes(
        (copy / "tokenizer.tiktoken").read_bytes().replace(b" 300\n", b" 301\n")
    )
    with pytest.raises(ValueError, match="tokenizer.tiktoken: sha256 is .* changed after"):
        Engine.load(copy)
    manifest = json.loads((copy / "refsampler.json").read_text())
    del manifest["tokenizer"]["pattern"]
    (copy / "refsampler.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="field 'tokenizer': 'pattern' must be"):
        Engine.load(copy)


def test_convert_rejects_an_unknown_attention(tmp_path):
    src = ref.write_tiny_gguf(tmp_path / "m.gguf", "F32")
    with pytest.raises(ValueError, match="attention must be 'gqa', 'exact' or 'fast'"):
        convert_gguf(src, tmp_path / "m", attention="flash")
    assert not (tmp_path / "m").exists()


def test_head_size_gqa_cannot_run_falls_back_to_exact(tmp_path, monkeypatch):
    monkeypatch.setitem(ref.TINY_DIMS, "heads", 16)  # width 64: head size 4
    monkeypatch.setitem(ref.TINY_DIMS, "kv_heads", 8)
    src = ref.write_tiny_gguf(tmp_path / "m.gguf", "F32")
    said = []
    out = convert_gguf(src, tmp_path / "m", log=said.append)
    assert json.loads((out / "refsampler.json").read_text())["attention"] == "exact"
    assert any("not a multiple of 8" in line for line in said)
    tokens = np.random.default_rng(3).integers(0, len(TOKENS), 12).tolist()
    assert np.abs(all_logits(Decoder.load(out), tokens) - ref.forward(src, tokens)).max() < 1e-4
    with pytest.raises(ValueError, match="multiple of 8"):
        convert_gguf(src, tmp_path / "g", attention="gqa")
    assert not (tmp_path / "g").exists()


def test_cli_convert_errors(tmp_path, capsys):
    assert cli.main(["convert", str(tmp_path / "nope.gguf")]) == 1
    assert "no such file" in capsys.readouterr().err
    src = ref.write_tiny_gguf(tmp_path / "q.gguf", arch="phi3")
    assert cli.main(["convert", str(src), "--out", str(tmp_path / "o")]) == 1
    assert "phi3" in capsys.readouterr().err and not (tmp_path / "o").exists()
