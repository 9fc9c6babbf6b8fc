"""llama.cpp as the oracle: the tiny random GGUFs of every architecture the converter takes,
run by llama.cpp itself (llama-cpp-python, ``refsampler[validate]``), against our converted
model on the same file and tokens. Skipped without llama-cpp-python (it builds llama.cpp from
source; run these in its own venv: see bench/validate_gemma3.py's docstring).

What differs, and by how much, is llama.cpp's arithmetic, not the model: its KV cache is asked
to be float32 and its flash attention off, so for float32 weights the remaining differences
are summation order (~1e-5 on logits of std ~5) -- except Gemma 3's GELU, which llama.cpp's CPU
backend reads from a float16 table (the input rounded to fp16), worth ~1e-3 here.
"""

from __future__ import annotations

import gemma_reference as gr
import gguf_reference as ref
import numpy as np
import pytest

from sampler.convert import convert_gguf
from sampler.decoder import Decoder

llama_cpp = pytest.importorskip("llama_cpp", reason="pip install 'refsampler[validate]'")

#: max |d| of the logits allowed per architecture (float32 weights; see the docstring)
BOUND = {"llama": 1e-3, "qwen2": 1e-3, "qwen3": 1e-3, "gemma3": 2e-2}


def llama_cpp_logits(path, tokens) -> np.ndarray:
    """llama.cpp's logits [S, V] at every position of one sequence."""
    llm = llama_cpp.Llama(
        str(path),
        n_ctx=128,
        n_batch=128,
        n_threads=1,
        logits_all=True,
        type_k=0,  # GGML_TYPE_F32
        type_v=0,
        flash_attn=False,
        verbose=False,
    )
    llm.eval(list(tokens))
    out = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    llm.close()
    return out


def ours(src, out, tokens, attention: str) -> np.ndarray:
    decoder = Decoder.load(convert_gguf(src, out, attention=attention))
    rows = {}
    decoder.prefill([tokens], on_logits=lambda p, pos, lg: rows.update(zip(pos.tolist(), lg)))
    return np.stack([rows[i] for i in range(len(tokens))])


def figures(a: np.ndarray, b: np.ndarray) -> dict:
    """max and mean |a - b|, mean KL(softmax a || softmax b), top-1 agreement."""
    pa = np.exp(a - a.max(-1, keepdims=True))
    pa /= pa.sum(-1, keepdims=True)
    la = np.log(pa)
    lb = b - b.max(-1, keepdims=True)
    lb -= np.log(np.exp(lb).sum(-1, keepdims=True))
    return {
        "max": float(np.abs(a - b).max()),
        "mean": float(np.abs(a - b).mean()),
        "kl": float((pa * (la - lb)).sum(-1).mean()),
        "top1": float((a.argmax(-1) == b.argmax(-1)).mean()),
    }


def tiny(arch: str, path, qtype: str):
    if arch == "gemma3":
        return gr.write_tiny_gemma3(path, qtype, seed=1), len(gr.spm_vocab()[0])
    pre = "qwen2" if arch.startswith("qwen") else "smollm"
    return ref.write_tiny_gguf(path, qtype, arch=arch, pre=pre, seed=1), len(ref.train_vocab()[0])


@pytest.mark.parametrize("attention", ["gqa", "exact"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3"])
def test_llama_cpp_agrees_on_the_tiny_files(tmp_path, arch, attention):
    src, vocab = tiny(arch, tmp_path / "m.gguf", "F32")
    tokens = np.random.default_rng(4).integers(0, vocab, 40).tolist()
    theirs = llama_cpp_logits(src, tokens)
    mine = ours(src, tmp_path / "m", tokens, attention)
    f = figures(theirs, mine)
    print(arch, attention, {k: f"{v:.3g}" for k, v in f.items()})
    assert f["max"] < BOUND[arch] and f["top1"] == 1.0


def stress_texts(n: int, seed: int = 0) -> list[str]:
    """Random strings of the pieces pre-tokenizers split differently: digits in runs,
    contractions, whitespace runs before letters, digits and newlines, punctuation, letters
    of other scripts, emoji (no byte the tiny vocabulary lacks)."""
    import random

    rng = random.Random(seed)
    pieces = [
        "a",
        "Ab",
        " x",
        "  ",
        "   ",
        "\n",
        "\n\n",
        " \n",
        "\t",
        "1",
        "12",
        "123",
        "1234",
        "'s",
        "'S",
        "'re",
        "'LL",
        "don't",
        ".",
        ",",
        "!?",
        " -- ",
        "(",
        ")",
        "é",
        "Ωπ",
        "東京",
        "😀",
        " 😀",
        "Paris",
        " 2024",
        "x1y2",
        "\r\n",
        "__init__",
        "...",
    ]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 24))) for _ in range(n)]


@pytest.mark.parametrize("pre", ["smollm", "qwen2", "llama-bpe", "gpt-2"])
def test_llama_cpp_tokenizes_as_we_do(tmp_path, pre):
    """Each byte-level pre-tokenizer pattern against llama.cpp's own on the tiny vocabulary:
    a split that differs shows as different ids (the vocabulary has merges across the
    places the patterns disagree about: digits, spaces, contractions)."""
    from sampler.model import load_config
    from sampler.tokenizer import tokenizer_for

    src = ref.write_tiny_gguf(tmp_path / "m.gguf", pre=pre)
    tok = tokenizer_for(load_config(convert_gguf(src, tmp_path / "m")))
    llm = llama_cpp.Llama(str(src), vocab_only=True, verbose=False)
    texts = stress_texts(2000) + [ref.CORPUS]
    ours = [tok.encode(t) for t in texts]
    theirs = [llm.tokenize(t.encode(), add_bos=False, special=False) for t in texts]
    bad = [t for t, a, b in zip(texts, ours, theirs) if a != b]
    print(pre, f"{sum(map(len, ours))} tokens, {len(bad)} of {len(texts)} texts differ")
    assert not bad, bad[:3]
