"""Validate the converted Gemma 3 270M against llama.cpp on the same GGUF (not CI).

Run in a venv that has llama-cpp-python (``pip install '.[validate]'``) and this package's
dependencies; the repository root is put on ``sys.path``::

    /work/peers/llamacpp/bin/python bench/validate_gemma3.py              # ~5 min
    /work/peers/llamacpp/bin/python bench/validate_gemma3.py --skip-f32   # no all-F32 GGUF

What it compares (llama.cpp: ``logits_all=True``, ``n_threads=1``; both read ``<bos>`` first,
as Gemma's ``add_bos_token`` asks):

1. **Tokenization** of a text corpus (this repository's README and docs, then the CPython
   standard library's ``.py`` files, up to ``--corpus-mb``): llama.cpp's
   ``tokenize(text, add_bos=False, special=False)`` against our ``Tokenizer.encode``; texts
   holding a control token's text (which we read as that token) are counted and skipped.
2. **Logits at every position** of 4 prompts (one of ~900 tokens, past the 512-token sliding
   window), each followed by our 32-token greedy continuation: max/mean |d|, KL, top-1,
   against (a) the Q4_K_M file as llama.cpp runs it by default (int8-quantised activations in
   its matrix products, float16 KV cache), (b) the same with a float32 KV cache, (c) an
   all-F32 GGUF written from the dequantised tensors (the same model in float32 in both).
3. **Greedy continuations** (32 tokens, raw argmax, no stop): the first position where ours
   and llama.cpp's differ.
4. **Incremental vs full**: ours, decoding the long prompt's continuation step by step with
   the KV cache against one full-sequence pass (the sliding window crossed while stepping).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from validate_smollm2 import (  # noqa: E402
    LlamaRef,
    f32_gguf,
    first_divergence,
    fmt_row,
    full_logits,
    greedy,
    home,
    incremental_logits,
    tokenization,
)

from sampler.decoder import Decoder  # noqa: E402
from sampler.registry import resolve  # noqa: E402
from sampler.tokenizer import tokenizer_for  # noqa: E402

MODEL = "gemma3-270m"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
N_GREEDY = 32
PROMPTS = {
    "prose": "The capital of France is",
    "paris": "The capital of France is the city of",
    "code": "import numpy as np\n\n\ndef softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:\n"
    '    """Numerically stable softmax over `axis`."""\n',
}


def compare(ref: np.ndarray, ours: np.ndarray, rows: int = 32) -> dict[str, float]:
    """validate_smollm2's statistics, computed ``rows`` positions at a time: a 262,144-wide
    float64 copy of ~1,000 positions is 2 GB, and the comparison makes several."""
    from validate_smollm2 import compare as block

    parts = [block(ref[i : i + rows], ours[i : i + rows]) for i in range(0, len(ref), rows)]
    n = sum(p["n"] for p in parts)
    mean = lambda k: sum(p[k] * p["n"] for p in parts) / n  # noqa: E731
    return {
        "max_abs": max(p["max_abs"] for p in parts),
        "mean_abs": mean("mean_abs"),
        "kl": mean("kl"),
        "kl_max": max(p["kl_max"] for p in parts),
        "top1": mean("top1"),
        "n": n,
    }


def long_prompt(tok, n: int = 900) -> str:
    """The start of docs/semantics.md, cut to about ``n`` tokens (past the window)."""
    text = (ROOT / "docs" / "semantics.md").read_text(encoding="utf-8")
    ids = tok.encode(text)[:n]
    return tok.decode_bytes(ids).decode("utf-8", "ignore")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus-mb", type=float, default=4.0, help="text to tokenize (MB)")
    ap.add_argument("--skip-f32", action="store_true", help="skip the all-F32 GGUF comparison")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    folder = resolve(MODEL)  # pulls and converts on first use
    src = home() / "downloads" / GGUF_NAME
    dec = Decoder.load(folder, threads=1)
    tok = tokenizer_for(dec.config)
    bos = dec.config.bos_token_id
    assert bos is not None
    import llama_cpp

    print(
        f"# validate_gemma3 {datetime.date.today()}: ours {folder.name} vs llama-cpp-python "
        f"{llama_cpp.__version__}, ORT 1 thread, llama.cpp n_threads=1, <bos> first"
    )
    q4 = LlamaRef(src, n_ctx=1024)  # its greedy runs below; its logits rows after ours

    r = tokenization(tok, q4, int(args.corpus_mb * 2**20))
    print(
        f"\n## tokenization: {r['files']} texts, {r['bytes'] / 2**20:.1f} MiB, "
        f"{r['tokens_ours']:,} tokens (llama.cpp {r['tokens_llama']:,}); "
        f"{r['mismatched_files']} texts differ; skipped {r['skipped_special']} holding "
        f"control-token text; time ours {r['s_ours']:.1f} s, llama.cpp {r['s_llama']:.1f} s"
    )
    for e in r["examples"]:
        print("  " + e)

    texts = {**PROMPTS, "long": long_prompt(tok)}
    prompts = {k: [bos, *tok.encode(v)] for k, v in texts.items()}
    seqs, conts = {}, {}
    for k, ids in prompts.items():
        ours = greedy(dec, ids, N_GREEDY)
        conts[k] = {"ours fp32": ours, "llama Q4_K_M": q4.greedy(ids, N_GREEDY)}
        seqs[k] = ids + ours

    ours_full = {k: full_logits(dec, s) for k, s in seqs.items()}
    header = (
        f"{'reference -> ours fp32':24s} {'prompt':6s} {'pos':>4s} {'max|d|':>10s} "
        f"{'mean|d|':>10s} {'KL mean':>10s} {'KL max':>10s} {'top1':>6s}"
    )
    print(
        f"\n## logits at every position (<bos> + prompt + ours' {N_GREEDY} greedy tokens), "
        "KL(reference || ours) in nats"
    )
    print(header + "\n" + "-" * len(header), flush=True)

    def rows(name: str, ref: LlamaRef) -> None:
        for k, s in seqs.items():
            print(fmt_row(name[:24], k, compare(ref.logits(s), ours_full[k])), flush=True)
        ref.llm.close()  # one llama.cpp context at a time: each holds ~1 GB of logits

    rows("llama.cpp Q4_K_M GGUF", q4)
    rows("llama.cpp Q4_K_M, f32 KV", LlamaRef(src, n_ctx=1024, f32_cache=True))
    if not args.skip_f32:
        f32 = f32_gguf(src, home() / "bench" / GGUF_NAME.replace("q4_k_m", "f32"))
        ref = LlamaRef(f32, n_ctx=1024, f32_cache=True)
        for k, ids in prompts.items():
            conts[k]["llama F32"] = ref.greedy(ids, N_GREEDY)
        rows("llama.cpp F32 GGUF", ref)

    print(f"\n## greedy continuations ({N_GREEDY} tokens): first differing position")
    for k, c in conts.items():
        base = c["ours fp32"]
        others = ", ".join(
            f"{n}: {first_divergence(base, v)}" for n, v in c.items() if v is not base
        )
        text = tok.decode_bytes(base).decode("utf-8", "replace")
        print(f"{k:6s} ours {text[:70]!r} | vs {others}")

    n = len(prompts["long"])
    inc = incremental_logits(dec, seqs["long"], n)
    d = float(np.abs(inc - ours_full["long"][n - 1 :]).max())
    print(
        f"\n## ours, incremental (prefill {n}, then {len(seqs['long']) - n} steps) vs one "
        f"full pass, long prompt: max |d| {d:.3g}"
    )
    print(f"\n(total {time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
