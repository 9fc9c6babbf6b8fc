"""Validate the converted SmolLM2-135M-Instruct against llama.cpp on the same GGUF (not CI).

Run in a venv that has llama-cpp-python (``pip install '.[validate]'``, which builds it from
source; see pyproject.toml) and this package's dependencies; the repository root is put on
``sys.path``, so the package itself need not be installed there::

    /tmp/llamavenv/bin/python bench/validate_smollm2.py             # everything, ~1.5 min
    /tmp/llamavenv/bin/python bench/validate_smollm2.py --skip-f32  # no all-F32 GGUF

What it compares (llama.cpp: ``logits_all=True``, ``n_threads=1``, no BOS, the same ids):

1. **Tokenization** of a text corpus (the CPython standard library's ``.py`` files, up to
   ``--corpus-mb``, plus this repository's README and docs): llama.cpp's
   ``tokenize(text.encode(), add_bos=False, special=False)`` against our
   ``Tokenizer.encode``. Texts holding a special-token string or a byte that no token holds
   (which we refuse and llama.cpp drops) are counted and skipped.
2. **Logits at every position** of 3 prompts, each followed by its 32-token greedy
   continuation: max and mean |difference|, KL(llama || ours) averaged over positions,
   top-1 agreement; against (a) the original Q4_1 GGUF run as llama.cpp runs it by
   default (its matrices multiply int8-quantised activations, the KV cache is float16;
   expect mean |diff| ~0.2; also with a float32 KV cache, to tell the two apart), and
   (b) an all-F32 GGUF, with a float32 KV cache,
   written here from the dequantised tensors, byte for byte as they are in the file
   (llama.cpp's own Q/K row order), with the same metadata and tokenizer: the same model
   computed in float32 by both (expect ~1e-4).
3. **Greedy continuations** (32 tokens, raw argmax, no stop): ours vs llama.cpp, the first
   position where they differ.
4. **Our int4 option** (``--weights int4``, MatMulNBits) against our float32 model: the same
   logit statistics, and incremental (KV cache) vs full-sequence logits for each of our
   variants, also with ``accuracy_level=4``. Int4 folders are converted on first use under
   ``$SAMPLER_HOME/bench/``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sampler.decoder import Decoder  # noqa: E402
from sampler.registry import resolve  # noqa: E402
from sampler.tokenizer import UnrepresentableText, tokenizer_for  # noqa: E402

MODEL = "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
N_GREEDY = 32
PROMPTS = {
    "chat": "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
    "Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?"
    "<|im_end|>\n<|im_start|>assistant\n",
    "prose": "The capital of France is",
    "code": "import numpy as np\n\n\ndef softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:\n"
    '    """Numerically stable softmax over `axis`."""\n',
}


def home() -> Path:
    return Path(os.environ.get("SAMPLER_HOME", Path.home() / ".cache" / "refsampler"))


# ---------------------------------------------------------------- llama.cpp


class LlamaRef:
    """llama.cpp on one GGUF: every position's logits for a list of ids."""

    def __init__(self, path: Path, n_ctx: int = 1024, *, f32_cache: bool = False) -> None:
        import llama_cpp

        f32 = llama_cpp.GGML_TYPE_F32
        kv = {"type_k": f32, "type_v": f32} if f32_cache else {}
        self.llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=n_ctx,
            n_ubatch=n_ctx,
            n_threads=1,
            n_threads_batch=1,
            logits_all=True,
            verbose=False,
            **kv,
        )

    def logits(self, ids: list[int]) -> np.ndarray:
        """float32 [len(ids), V]: the logits after each prefix, one full-sequence eval."""
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def greedy(self, ids: list[int], n: int) -> list[int]:
        self.llm.reset()
        self.llm.eval(ids)
        out: list[int] = []
        for _ in range(n):
            t = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            out.append(t)
            self.llm.eval([t])
        return out

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)


def f32_gguf(src: Path, dst: Path) -> Path:
    """``dst``: the GGUF ``src`` with every tensor dequantised to F32, as it is in the file
    (GGUF row order: llama.cpp's permuted Q/K rows), all metadata kept (file_type set to
    ALL_F32); written once (an existing ``dst`` is used as it is)."""
    import gguf
    from gguf.quants import dequantize

    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    print(f"writing {dst} (once) ...", file=sys.stderr, flush=True)
    reader = gguf.GGUFReader(str(src))
    tmp = dst.with_name(dst.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), reader.fields["general.architecture"].contents())
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = 0 if key == "general.file_type" else f.contents()  # 0 = LLAMA_FTYPE_ALL_F32
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, f.types[0], sub_type=sub)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.asarray(dequantize(t.data, t.tensor_type), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, dst)
    return dst


# ---------------------------------------------------------------- ours


def full_logits(dec: Decoder, ids: list[int]) -> np.ndarray:
    """float32 [S, V]: every position's logits from one full-sequence prefill."""
    rows: dict[int, np.ndarray] = {}
    dec.prefill(
        [ids], on_logits=lambda p, pos, lg: rows.update(zip(pos.tolist(), lg)), chunk_size=4096
    )
    return np.stack([rows[i] for i in range(len(ids))])


def incremental_logits(dec: Decoder, ids: list[int], n_prompt: int) -> np.ndarray:
    """float32 [S - n_prompt + 1, V]: prefill ids[:n_prompt], then one step per token."""
    last, cache = dec.prefill([ids[:n_prompt]])
    out = [last[0]]
    for t in ids[n_prompt:]:
        logits, cache = dec.step(cache, [t])
        out.append(logits[0])
    return np.stack(out)


def batched_incremental(
    dec: Decoder, seqs: list[list[int]], n_prompts: list[int]
) -> list[np.ndarray]:
    """incremental_logits of all sequences at once: one left-padded batch."""
    last, cache = dec.prefill([s[:n] for s, n in zip(seqs, n_prompts)])
    out = [[row] for row in last]
    steps = min(len(s) - n for s, n in zip(seqs, n_prompts))
    for k in range(steps):
        logits, cache = dec.step(cache, [s[n + k] for s, n in zip(seqs, n_prompts)])
        for row, lg in zip(out, logits):
            row.append(lg)
    return [np.stack(r) for r in out]


def greedy(dec: Decoder, ids: list[int], n: int) -> list[int]:
    last, cache = dec.prefill([ids])
    out: list[int] = []
    for _ in range(n):
        t = int(np.argmax(last[0]))
        out.append(t)
        last, cache = dec.step(cache, [t])
    return out


def int4_folder(accuracy_level: int) -> Path:
    from sampler.convert import convert_gguf

    out = home() / "bench" / f"smollm2-int4-acc{accuracy_level}"
    if not (out / "refsampler.json").is_file():
        print(f"converting {out} (once) ...", file=sys.stderr, flush=True)
        convert_gguf(
            home() / "downloads" / GGUF_NAME,
            out,
            name=MODEL,
            weight_dtype="int4",
            int4_accuracy_level=accuracy_level,
        )
    return out


# ---------------------------------------------------------------- statistics


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def compare(ref: np.ndarray, ours: np.ndarray) -> dict[str, float]:
    """max/mean |diff|, KL(ref || ours) mean over positions (nats), top-1 agreement."""
    diff = np.abs(ref.astype(np.float64) - ours)
    lp, lq = log_softmax(ref), log_softmax(ours)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)  # [S]
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "kl": float(kl.mean()),
        "kl_max": float(kl.max()),
        "top1": float((ref.argmax(-1) == ours.argmax(-1)).mean()),
        "n": int(len(ref)),
    }


def first_divergence(a: list[int], b: list[int]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return str(i)
    return "none" if len(a) == len(b) else str(min(len(a), len(b)))


# ---------------------------------------------------------------- corpus


def corpus(max_bytes: int) -> list[tuple[str, str]]:
    """(name, text): this repository's README and docs, then stdlib .py files, sorted."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    stdlib = Path(os.__file__).parent
    py = sorted(
        p
        for p in stdlib.rglob("*.py")
        if not {"site-packages", "test", "tests", "idlelib"} & set(p.parts)
    )
    out, total = [], 0
    for p in files + py:
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if total >= max_bytes:
            break
        out.append((str(p), text))
        total += len(text.encode("utf-8"))
    return out


def tokenization(tok, llama: LlamaRef, max_bytes: int) -> dict:
    specials = tuple(tok.special_ids.values())
    texts = corpus(max_bytes)
    n_files = n_tokens = n_llama = mism = 0
    skipped_special = skipped_bytes = 0
    examples: list[str] = []
    t_ours = t_llama = 0.0
    n_bytes = 0
    for name, text in texts:
        if any(s in text for s in specials):
            skipped_special += 1
            continue
        t0 = time.perf_counter()
        try:
            ours = tok.encode(text)
        except UnrepresentableText:
            skipped_bytes += 1
            continue
        t1 = time.perf_counter()
        theirs = llama.tokenize(text)
        t2 = time.perf_counter()
        t_ours, t_llama = t_ours + t1 - t0, t_llama + t2 - t1
        n_files += 1
        n_bytes += len(text.encode("utf-8"))
        n_tokens += len(ours)
        n_llama += len(theirs)
        if ours != theirs:
            mism += 1
            if len(examples) < 3:
                i = int(first_divergence(ours, theirs))
                examples.append(
                    f"{name}: first difference at token {i}: ours "
                    f"{ours[i : i + 4]} llama {theirs[i : i + 4]}"
                )
    return {
        "files": n_files,
        "bytes": n_bytes,
        "tokens_ours": n_tokens,
        "tokens_llama": n_llama,
        "mismatched_files": mism,
        "skipped_special": skipped_special,
        "skipped_unrepresentable": skipped_bytes,
        "examples": examples,
        "s_ours": t_ours,
        "s_llama": t_llama,
    }


# ---------------------------------------------------------------- main


def fmt_row(name: str, prompt: str, s: dict) -> str:
    return (
        f"{name:24s} {prompt:6s} {s['n']:>4d} {s['max_abs']:>10.3g} {s['mean_abs']:>10.3g} "
        f"{s['kl']:>10.3g} {s['kl_max']:>10.3g} {s['top1']:>6.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--corpus-mb",
        type=float,
        default=8.0,
        help="bytes of text to tokenize (default %(default)s MB)",
    )
    ap.add_argument("--skip-f32", action="store_true", help="skip the all-F32 GGUF comparison")
    ap.add_argument("--skip-int4", action="store_true", help="skip our int4 variants")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    load0 = os.getloadavg()
    src = home() / "downloads" / GGUF_NAME
    folder = resolve(MODEL)  # pulls and converts on first use
    if not src.is_file():
        raise SystemExit(f"{src} is missing: run `sampler pull {MODEL}` first")
    dec = Decoder.load(folder, threads=1)
    tok = tokenizer_for(dec.config)
    import llama_cpp

    print(
        f"# validate_smollm2 {datetime.date.today()}: ours {folder.name} vs llama-cpp-python "
        f"{llama_cpp.__version__}, ORT 1 thread, llama.cpp n_threads=1, no BOS"
    )

    q41 = LlamaRef(src)
    prompts = {k: tok.encode(v) for k, v in PROMPTS.items()}

    # tokenization
    r = tokenization(tok, q41, int(args.corpus_mb * 2**20))
    print(
        f"\n## tokenization: {r['files']} texts, {r['bytes'] / 2**20:.1f} MiB, "
        f"{r['tokens_ours']:,} tokens (llama.cpp {r['tokens_llama']:,}); "
        f"{r['mismatched_files']} texts differ; skipped {r['skipped_special']} holding "
        f"special-token text, {r['skipped_unrepresentable']} holding bytes no token holds; "
        f"time ours {r['s_ours']:.1f} s, llama.cpp {r['s_llama']:.1f} s"
    )
    for e in r["examples"]:
        print("  " + e)

    # greedy continuations and the full sequences to compare logits on
    seqs, conts = {}, {}
    for k, ids in prompts.items():
        ours = greedy(dec, ids, N_GREEDY)
        theirs = q41.greedy(ids, N_GREEDY)
        conts[k] = {"ours fp32": ours, "llama Q4_1": theirs}
        seqs[k] = ids + ours

    refs = {"llama.cpp Q4_1 GGUF": q41, "llama.cpp Q4_1, f32 KV": LlamaRef(src, f32_cache=True)}
    if not args.skip_f32:
        f32 = f32_gguf(src, home() / "bench" / GGUF_NAME.replace(".Q4_1.", ".F32."))
        refs["llama.cpp F32 GGUF"] = LlamaRef(f32, f32_cache=True)
        for k, ids in prompts.items():
            conts[k]["llama F32"] = refs["llama.cpp F32 GGUF"].greedy(ids, N_GREEDY)

    ours_full = {k: full_logits(dec, s) for k, s in seqs.items()}
    header = (
        f"{'reference -> ours fp32':24s} {'prompt':6s} {'pos':>4s} {'max|d|':>10s} "
        f"{'mean|d|':>10s} {'KL mean':>10s} {'KL max':>10s} {'top1':>6s}"
    )
    print(
        "\n## logits at every position (prompt + ours' 32 greedy tokens), "
        "KL(reference || ours) in nats"
    )
    print(header + "\n" + "-" * len(header))
    for rname, ref in refs.items():
        for k, s in seqs.items():
            print(fmt_row(rname[:24], k, compare(ref.logits(s), ours_full[k])))

    variants = {"ours fp32": dec}
    if not args.skip_int4:
        variants["ours int4"] = Decoder.load(int4_folder(0), threads=1)
        variants["ours int4 acc4"] = Decoder.load(int4_folder(4), threads=1)
        print("\n## our int4 (MatMulNBits) against our fp32 (reference = ours fp32)")
        print(header.replace("reference -> ours fp32", "variant") + "\n" + "-" * len(header))
        for name in ("ours int4", "ours int4 acc4"):
            for k, s in seqs.items():
                print(fmt_row(name, k, compare(ours_full[k], full_logits(variants[name], s))))
        for k, ids in prompts.items():
            conts[k]["ours int4"] = greedy(variants["ours int4"], ids, N_GREEDY)
            conts[k]["ours int4 acc4"] = greedy(variants["ours int4 acc4"], ids, N_GREEDY)

    print(
        "\n## reproducibility, max |diff| over the 33 continuation positions: incremental "
        "(prefill the prompt, then one step per token) vs full-sequence logits; and the "
        "three prompts decoded together (B = 3) vs each alone"
    )
    names = list(seqs)
    for name, d in variants.items():
        alone = {k: incremental_logits(d, s, len(prompts[k])) for k, s in seqs.items()}
        worst = {
            k: float(np.abs(alone[k] - full_logits(d, s)[len(prompts[k]) - 1 :]).max())
            for k, s in seqs.items()
        }
        together = batched_incremental(
            d, [seqs[k] for k in names], [len(prompts[k]) for k in names]
        )
        batch = max(float(np.abs(t - alone[k][: len(t)]).max()) for k, t in zip(names, together))
        print(
            f"  {name:16s} incremental vs full: "
            + "  ".join(f"{k} {v:.3g}" for k, v in worst.items())
            + f";  batched vs alone: {batch:.3g}"
        )

    print(
        f"\n## greedy continuations ({N_GREEDY} tokens, raw argmax): first differing position "
        "against ours fp32 ('none' = identical)"
    )
    for k in prompts:
        base = conts[k]["ours fp32"]
        others = "  ".join(
            f"{n}: {first_divergence(base, c)}" for n, c in conts[k].items() if n != "ours fp32"
        )
        print(f"  {k:6s} {others}")
        i = first_divergence(base, conts[k]["llama Q4_1"])
        if i not in ("none",) and int(i) < len(base):
            row = ours_full[k][len(prompts[k]) - 1 + int(i)]
            theirs = conts[k]["llama Q4_1"][int(i)]
            print(
                f"         at {i}, ours fp32 puts token {base[int(i)]} "
                f"{row[base[int(i)]] - row[theirs]:.3f} above llama Q4_1's {theirs} "
                f"({tok.decode_bytes([base[int(i)]])!r} vs {tok.decode_bytes([theirs])!r})"
            )
        print(f"         ours fp32: {tok.decode_bytes(base).decode('utf-8', 'replace')!r}")
        if first_divergence(base, conts[k]["llama Q4_1"]) != "none":
            text = tok.decode_bytes(conts[k]["llama Q4_1"]).decode("utf-8", "replace")
            print(f"         llama Q4_1: {text!r}")

    print(
        f"\nload average at start {load0[0]:.2f}, at end {os.getloadavg()[0]:.2f} "
        f"({os.cpu_count()} cpus); {time.perf_counter() - t_start:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
