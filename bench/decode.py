"""Benchmark: prefill and decode speed of SmolLM2-135M-Instruct (or Gemma 3 270M), ours
against peers.

    python bench/decode.py                  # every engine, 2 rounds, ~12 min on 2 cores
    python bench/decode.py --model gemma3-270m --only ours,llama   # Gemma 3's rows
    python bench/decode.py --quick          # fewer steps and repeats, no position-2000 runs
    python bench/decode.py --only ours      # just our variants
    python bench/decode.py --threads 2 --json out.json

``--model gemma3-270m`` measures Gemma 3 270M instead (its own Q4_K_M GGUF for llama.cpp; our
variants: fp32, fp32 exact, fp32 fast-attn and the engine -- the file has no Q4_0/Q4_1
matrices for the int4 variants). Run from the repository root with the project venv. Peers
run in child processes with their own interpreters (neither is a dependency of this package):

- **llama.cpp** (llama-cpp-python, ``--llama-python``, default ``/tmp/llamavenv/bin/python``)
  on the original Q4_1 GGUF, through its low-level batch API: ``n_seq_max = 8`` sequences
  in one context, one ``llama_decode`` per step for the whole batch, ``n_threads`` = ours,
  llama.cpp's default context parameters otherwise (float16 KV cache).
- **onnxruntime-genai** (``--genai-python``, default ``/tmp/genaivenv/bin/python``) on OUR
  float32 ONNX file in the HF/Optimum I/O (the ``fp32 exact`` folder: genai feeds
  ``attention_mask``, not our GQA graph's ``seqlens_k``): a ``genai_config.json`` (type
  ``llama``, the HF/Optimum I/O names,
  ``past_present_share_buffer: false``) is written in a temporary folder next to a symlink
  to ``model.onnx``; greedy search, ``batch_size`` B.

Ours, all on the same ``Decoder`` (``sampler.decoder``) with one ORT thread by default,
loaded together in this process and timed interleaved (one step of each in turn, so that a
noisy neighbour slows them alike):
``fp32`` (the default model: float32 weights, GroupQueryAttention on a KV cache updated
in place), ``fp32 exact`` (``attention="exact"``: the HF/Optimum I/O, past and new keys
concatenated every step, float64 attention sums), ``fp32 fast-attn`` (the same I/O,
float32 sums), ``int4`` (``--weights int4``: Q4_1 matrices as MatMulNBits, exact
attention) and ``int4 acc4`` (the same with ``accuracy_level=4``: int8 activations, faster
but not reproducible -- for comparison only); plus ``engine fp32``, the whole
``Engine.complete`` (sampling step included) on the default model. Extra folders are
converted once under ``$SAMPLER_HOME/bench/``.

Measured, every engine fed the same token ids (greedy = raw argmax, never stopping):

- prefill tok/s: one prompt of ``--prompt-len`` (128) tokens at B = 1; 8 different prompts
  of that length at B = 8 (best of the repeats);
- decode tok/s at B = 1 and 8: B / the median time of one step over ``--steps`` steps after
  the prompt (the engine: of one ``Batch.advance``, sampling included);
- ms per decode step (B = 1) at positions ~100 and ~2,000 (median over 16 steps after a
  100- or 2,000-token prompt), and their ratio (target <= 1.3: the KV cache, not the
  prefix, is what a step reads);
- the machine's memory read bandwidth (best of a NumPy sum, dot and max over a 1 GiB
  float32 array, one thread; a 1 GiB copy is printed too) and each model's weight bytes
  read per token (initializers of the ONNX graph except tables used only by Gather, i.e.
  the RoPE tables; for llama.cpp, the GGUF's tensors), hence the weight-bandwidth floor of
  a B = 1 decode step, floor = bytes / bandwidth, and each step as a % of it (target for
  ours fp32: >= 90%, i.e. step <= floor / 0.9);
- the other processes' CPU use during each engine's run (machine-wide busy time from
  /proc/stat minus our own and our children's), and the share of its decode steps' wall
  time each engine's thread was actually running ("oncpu"), so noisy numbers are visible.

Every engine runs ``--rounds`` times (2), in the same order, and each figure is the best
over the rounds. ``--clock cpu`` times by the running thread's CPU time instead of the wall
clock (each engine computes in its calling thread with one thread), which leaves out the
time another process held the core, though not the memory bandwidth it took.
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import argparse
import datetime
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_busy_seconds  # bench/machine.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA = "llama.cpp Q4_1"  # the peer's row: llama.cpp on the model's own GGUF
#: --model: (registry name, its GGUF in the downloads folder, llama.cpp row, folder prefix)
MODELS = {
    "smollm2-135m-instruct": (MODEL, GGUF_NAME, LLAMA, "smollm2"),
    "gemma3-270m": ("gemma3-270m", "gemma-3-270m-q4_k_m.gguf", "llama.cpp Q4_K_M", "gemma3"),
}
PREFIX = "smollm2"
B8 = 8
POSITIONS = (100, 2000)
STEPS_AT = 16  # steps timed at each position


def home() -> Path:
    return Path(os.environ.get("SAMPLER_HOME", Path.home() / ".cache" / "refsampler"))


# ---------------------------------------------------------------- load and timing helpers


def own_cpu_seconds() -> float:
    """CPU seconds of this process and its finished children."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class LoadMeter:
    """Average number of cores used by OTHER processes between start and stop."""

    def __init__(self) -> None:
        self.busy0, self.own0, self.wall0 = cpu_busy_seconds(), own_cpu_seconds(), time.time()

    def other_cores(self) -> float | None:
        busy1, own1, wall1 = cpu_busy_seconds(), own_cpu_seconds(), time.time()
        if self.busy0 is None or busy1 is None or wall1 <= self.wall0:
            return None
        return max(0.0, ((busy1 - self.busy0) - (own1 - self.own0)) / (wall1 - self.wall0))


CLOCK = "wall"  # or "cpu": this thread's CPU time (--clock), blind to time spent preempted


class Stopwatch:
    """Times repeated runs on the wall clock and on this thread's CPU clock. Every engine
    here computes in the calling thread when given one thread, so the CPU clock leaves out
    the time another process held the core (not the memory bandwidth it took)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __enter__(self) -> Stopwatch:
        self._w, self._c = time.perf_counter(), time.thread_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall.append(time.perf_counter() - self._w)
        self.cpu.append(time.thread_time() - self._c)

    @property
    def times(self) -> list[float]:
        return self.cpu if CLOCK == "cpu" else self.wall

    def median(self) -> float:
        return float(np.median(self.times))

    def best(self) -> float:
        return min(self.times)

    def on_cpu(self) -> float:
        """Share of the wall time this thread was running."""
        return sum(self.cpu) / max(sum(self.wall), 1e-12)


def timed(fn: Callable[[], Any], reps: int = 1) -> float:
    """The best of ``reps`` runs of ``fn`` on CLOCK."""
    sw = Stopwatch()
    for _ in range(reps):
        with sw:
            fn()
    return sw.best()


# ---------------------------------------------------------------- the workload


def make_workload(tok, prompt_len: int) -> dict[str, Any]:
    """Token ids every engine is fed: 8 prompts of prompt_len, and prompts of 100 and 2,000."""
    stdlib = Path(os.__file__).parent
    texts = [
        (stdlib / f).read_text(encoding="utf-8")
        for f in (
            "argparse.py",
            "collections/__init__.py",
            "textwrap.py",
            "dataclasses.py",
            "json/decoder.py",
            "random.py",
            "fractions.py",
            "shlex.py",
        )
    ]
    docs = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md"))]
    ids = [tok.encode(t) for t in texts]
    prompts = [x[:prompt_len] for x in ids]
    prose = tok.encode("\n\n".join(docs)) if docs else ids[0]
    return {"prompts": prompts, "at": {str(p): (prose * 2)[:p] for p in POSITIONS}}


# ---------------------------------------------------------------- our decoder


def bench_ours(
    folders: dict[str, Path], work: dict, steps: int, reps: int, threads: int, positions: bool
) -> dict[str, dict[str, Any]]:
    """All our decoder variants, loaded together and timed INTERLEAVED (one step of each in
    turn), so that a noisy neighbour slows them alike and their ratios stay meaningful."""
    from sampler.decoder import Decoder

    decs = {n: Decoder.load(f, threads=threads) for n, f in folders.items()}
    prompts = work["prompts"]
    out: dict[str, dict[str, Any]] = {n: {} for n in decs}
    for d in decs.values():
        d.prefill([prompts[0][:8]])  # warm-up

    def decode(batch: list[list[int]], n: int) -> dict[str, tuple[Stopwatch, list[int]]]:
        state = {}
        for name, d in decs.items():
            last, cache = d.prefill(batch)
            state[name] = [cache, last.argmax(-1), Stopwatch(), [int(last[0].argmax())]]
        for _ in range(n):
            for name, d in decs.items():
                s = state[name]
                with s[2]:
                    logits, s[0] = d.step(s[0], s[1])
                    s[1] = logits.argmax(-1)
                s[3].append(int(s[1][0]))
        return {name: (s[2], s[3]) for name, s in state.items()}

    for B in (1, B8):
        batch = prompts[:B]
        pre = {n: Stopwatch() for n in decs}
        for _ in range(reps):
            for name, d in decs.items():
                with pre[name]:
                    d.prefill(batch)
        for name, (sw, greedy) in decode(batch, steps).items():
            out[name][f"prefill_b{B}"] = B * len(batch[0]) / pre[name].best()
            out[name][f"decode_b{B}"] = B / sw.median()
            if B == 1:
                out[name]["greedy"], out[name]["on_cpu"] = greedy, sw.on_cpu()
    if positions:
        for p in POSITIONS:
            for name, (sw, _) in decode([work["at"][str(p)]], STEPS_AT).items():
                out[name][f"ms_at_{p}"] = 1e3 * sw.median()
    return out


def bench_engine(folder: Path, work: dict, steps: int, reps: int, threads: int) -> dict:
    """The whole ``Engine.complete`` (greedy, end ids banned so that every run is full
    length): each ``Batch.advance`` (the sampling step of every row, then the model step)
    is timed; prefill is a whole max_tokens = 1 request (the prompt's prefill now runs inside
    the first ``Batch.advance``, so it cannot be told from it; the request's one sampling
    step is in the figure)."""
    from sampler import engine as E

    eng = E.Engine.load(folder, threads=threads)
    no_end = {str(i): -100 for i in eng.end_ids}
    out: dict[str, Any] = {}
    advance = E.Batch.advance
    sw = Stopwatch()

    def timed_advance(self):
        with sw:
            return advance(self)

    def run(batch, n):
        return eng.complete(prompt=batch, max_tokens=n, temperature=0, logit_bias=no_end)

    E.Batch.advance = timed_advance  # type: ignore[method-assign]
    try:
        run([work["prompts"][0][:8]], 1)  # warm-up
        for B in (1, B8):
            batch = work["prompts"][:B]
            pre = []
            for _ in range(reps):
                sw.wall.clear(), sw.cpu.clear()
                pre.append(timed(lambda: run(batch, 1)))
            out[f"prefill_b{B}"] = B * len(batch[0]) / min(pre)
            sw.wall.clear(), sw.cpu.clear()
            run(batch, 1 + steps)
            sw.wall.pop(), sw.cpu.pop()  # the last advance samples only: no model step
            out[f"decode_b{B}"] = B / sw.median()
            if B == 1:
                out["on_cpu"] = sw.on_cpu()
    finally:
        E.Batch.advance = advance  # type: ignore[method-assign]
    return out


# ---------------------------------------------------------------- llama.cpp (child process)


def llama_worker(
    gguf: str, work: dict, steps: int, reps: int, threads: int, positions: bool
) -> dict[str, Any]:
    import ctypes

    import llama_cpp as lc

    @lc.llama_log_callback
    def _quiet(level, text, user_data):  # noqa: ARG001
        pass

    lc.llama_log_set(_quiet, ctypes.c_void_p())
    lc.llama_backend_init()
    model = lc.llama_model_load_from_file(gguf.encode(), lc.llama_model_default_params())
    n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))

    def context(n_seq: int, n_ctx: int, n_batch: int):
        cp = lc.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, n_batch, n_batch, n_seq
        cp.n_threads = cp.n_threads_batch = threads
        return lc.llama_init_from_model(model, cp)

    def run(ctx, batch, entries) -> None:
        """entries: (token, pos, seq, want_logits); one llama_decode."""
        batch.n_tokens = len(entries)
        for i, (t, p, s, lg) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = t, p, 1
            batch.seq_id[i][0], batch.logits[i] = s, lg
        if lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def argmax(ctx, i: int) -> int:
        row = np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, i), shape=(n_vocab,))
        return int(row.argmax())

    def prefill(ctx, batch, prompts) -> list[int]:
        lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
        entries = [
            (t, p, s, p == len(ids) - 1) for s, ids in enumerate(prompts) for p, t in enumerate(ids)
        ]
        run(ctx, batch, entries)
        last = np.cumsum([len(ids) for ids in prompts]) - 1  # batch index of each last token
        return [argmax(ctx, int(i)) for i in last]

    def decode(ctx, batch, prompts, n) -> tuple[Stopwatch, list[int]]:
        tokens = prefill(ctx, batch, prompts)
        first = [tokens[0]]
        sw = Stopwatch()
        for k in range(n):
            entries = [(t, len(prompts[s]) + k, s, True) for s, t in enumerate(tokens)]
            with sw:
                run(ctx, batch, entries)
                tokens = [argmax(ctx, i) for i in range(len(prompts))]
            first.append(tokens[0])
        return sw, first

    prompts = work["prompts"]
    L = len(prompts[0])
    out: dict[str, Any] = {"n_seq_max": B8}
    ctx = context(B8, B8 * 512, B8 * L)
    batch = lc.llama_batch_init(B8 * L, 0, 1)
    prefill(ctx, batch, [prompts[0][:8]])  # warm-up
    for B in (1, B8):
        sub = prompts[:B]
        out[f"prefill_b{B}"] = B * L / timed(lambda: prefill(ctx, batch, sub), reps)
        sw, greedy = decode(ctx, batch, sub, steps)
        out[f"decode_b{B}"] = B / sw.median()
        if B == 1:
            out["greedy"], out["on_cpu"] = greedy, sw.on_cpu()
    lc.llama_free(ctx)
    lc.llama_batch_free(batch)
    if positions:
        n = max(POSITIONS) + STEPS_AT + 64
        ctx = context(1, n, n)
        batch = lc.llama_batch_init(n, 0, 1)
        for p in POSITIONS:
            out[f"ms_at_{p}"] = 1e3 * decode(ctx, batch, [work["at"][str(p)]], STEPS_AT)[0].median()
        lc.llama_free(ctx)
        lc.llama_batch_free(batch)
    lc.llama_model_free(model)
    return out


# ---------------------------------------------------------------- onnxruntime-genai (child)


def genai_config(folder: Path, threads: int) -> dict:
    cfg = json.loads((folder / "refsampler.json").read_text())
    import onnx

    m = onnx.load(str(folder / cfg["onnx"]), load_external_data=False)
    past = next(i for i in m.graph.input if i.name == "past_key_values.0.key")
    kv_heads, head = (d.dim_value for d in past.type.tensor_type.shape.dim[1::2])
    layers = sum(1 for i in m.graph.input if i.name.endswith(".key"))
    vocab = m.graph.output[0].type.tensor_type.shape.dim[2].dim_value
    q_cols = next(t for t in m.graph.initializer if t.name == "layers.0.o_proj.T").dims[0]
    hidden = next(t for t in m.graph.initializer if t.name == "norm").dims[0]
    return {
        "model": {
            "type": "llama",
            "bos_token_id": 1,
            "eos_token_id": cfg["eos_token_ids"],
            "pad_token_id": cfg["eos_token_ids"][-1],
            "context_length": cfg["context_length"],
            "vocab_size": vocab,
            "decoder": {
                "filename": "model.onnx",
                "head_size": head,
                "hidden_size": hidden,
                "num_attention_heads": q_cols // head,
                "num_hidden_layers": layers,
                "num_key_value_heads": kv_heads,
                "session_options": {
                    "intra_op_num_threads": threads,
                    "inter_op_num_threads": 1,
                    "log_id": "genai",
                    "provider_options": [],
                },
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        "search": {
            "max_length": 4096,
            "min_length": 0,
            "do_sample": False,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": False,
            "top_k": 1,
            "top_p": 1.0,
            "temperature": 1.0,
            "repetition_penalty": 1.0,
            "early_stopping": True,
            "length_penalty": 1.0,
            "diversity_penalty": 0.0,
            "no_repeat_ngram_size": 0,
        },
    }


def genai_worker(
    folder: str, work: dict, steps: int, reps: int, threads: int, positions: bool
) -> dict[str, Any]:
    import onnxruntime_genai as og

    config = json.loads(work.pop("genai_config"))
    tmp = Path(tempfile.mkdtemp(prefix="genai-"))
    try:
        os.symlink(Path(folder) / "model.onnx", tmp / "model.onnx")
        (tmp / "genai_config.json").write_text(json.dumps(config, indent=1))
        cfg = og.Config(str(tmp))
        cfg.clear_providers()
        model = og.Model(cfg)
    finally:
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()

    def generator(prompts: list[list[int]], n: int):
        params = og.GeneratorParams(model)
        params.set_search_options(
            max_length=len(prompts[0]) + n + 2, do_sample=False, batch_size=len(prompts)
        )
        return og.Generator(model, params)

    def decode(prompts, n) -> tuple[Stopwatch, list[int]]:
        g = generator(prompts, n)
        g.append_tokens(np.array(prompts, dtype=np.int32))
        g.generate_next_token()  # the first token, from the prompt's logits
        sw = Stopwatch()
        for _ in range(n):
            with sw:
                g.generate_next_token()  # runs the model on the last token, then picks
        seq = [int(t) for t in g.get_sequence(0)[len(prompts[0]) :]]
        return sw, seq

    prompts = work["prompts"]
    out: dict[str, Any] = {}
    g = generator([prompts[0][:8]], 1)
    g.append_tokens(np.array([prompts[0][:8]], dtype=np.int32))  # warm-up
    for B in (1, B8):
        sub = prompts[:B]

        def prefill():
            generator(sub, 1).append_tokens(np.array(sub, dtype=np.int32))

        out[f"prefill_b{B}"] = B * len(sub[0]) / timed(prefill, reps)
        sw, greedy = decode(sub, steps)
        out[f"decode_b{B}"] = B / sw.median()
        if B == 1:
            out["greedy"], out["on_cpu"] = greedy, sw.on_cpu()
    if positions:
        for p in POSITIONS:
            out[f"ms_at_{p}"] = 1e3 * decode([work["at"][str(p)]], STEPS_AT)[0].median()
    return out


def child(python: str, kind: str, target: str, work: dict, args) -> dict[str, Any]:
    """Run a worker in another interpreter; returns its result dict or {"error": ...}."""
    if not Path(python).exists():
        return {"error": f"{python} not found"}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(work, f)
    try:
        cmd = [
            python,
            str(Path(__file__).resolve()),
            "--worker",
            kind,
            "--target",
            target,
            "--work",
            f.name,
            "--steps",
            str(args.steps),
            "--reps",
            str(args.reps),
            "--threads",
            str(args.threads),
            "--clock",
            args.clock,
        ] + (["--quick"] if args.quick else [])
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    finally:
        os.unlink(f.name)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- bandwidth and bytes


def bandwidth() -> dict[str, float]:
    """GB/s (1e9 bytes) over a 1 GiB float32 array, one thread: best of 5 each."""
    a = np.ones(2**28, dtype=np.float32)
    a.sum()
    ones = np.ones_like(a)
    best = lambda fn: timed(fn, 5)  # noqa: E731
    read = {
        "sum": best(lambda: a.sum()),
        "dot": best(lambda: np.dot(a, ones) / 2),
        "max": best(lambda: a.max()),
    }
    # dot reads two arrays: count both
    gbs = {k: (2 if k == "dot" else 1) * a.nbytes / t / 1e9 for k, t in read.items()}
    b = np.empty_like(a)
    gbs["copy (read+write)"] = 2 * a.nbytes / best(lambda: np.copyto(b, a)) / 1e9
    gbs["read"] = max(gbs["sum"], gbs["dot"], gbs["max"])
    return gbs


def onnx_weight_bytes(onnx_path: Path) -> int:
    """Bytes of initializers a decode step reads: all but tables used only by Gather."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    uses: dict[str, set[str]] = {}
    for node in m.graph.node:
        for k, name in enumerate(node.input):
            uses.setdefault(name, set()).add(
                node.op_type if not (node.op_type == "Gather" and k == 0) else "gather-table"
            )
    total = 0
    for t in m.graph.initializer:
        if uses.get(t.name, set()) == {"gather-table"}:
            continue
        n = int(np.prod(t.dims)) if t.dims else 1
        total += n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return total


def gguf_weight_bytes(path: Path) -> int:
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(str(path)).tensors)


# ---------------------------------------------------------------- main


def our_folders(names: list[str]) -> dict[str, Path]:
    from sampler.convert import convert_gguf
    from sampler.registry import resolve

    base = resolve(MODEL)
    variants = {
        "fp32 exact": {"attention": "exact"},
        "fp32 fast-attn": {"attention": "fast"},
        "int4": {"weight_dtype": "int4", "attention": "exact"},
        "int4 acc4": {"weight_dtype": "int4", "int4_accuracy_level": 4, "attention": "exact"},
    }
    out = {}
    for n in names:
        if n in ("fp32", "engine fp32"):
            out[n] = base
            continue
        folder = (
            home()
            / "bench"
            / {
                "fp32 exact": f"{PREFIX}-fp32-exact",
                "fp32 fast-attn": f"{PREFIX}-fp32-fastattn",
                "int4": f"{PREFIX}-int4-acc0",
                "int4 acc4": f"{PREFIX}-int4-acc4",
            }[n]
        )
        if not (folder / "refsampler.json").is_file():
            print(f"converting {folder} (once) ...", file=sys.stderr, flush=True)
            convert_gguf(home() / "downloads" / GGUF_NAME, folder, name=MODEL, **variants[n])
        out[n] = folder
    return out


OURS = ["fp32", "fp32 exact", "fp32 fast-attn", "int4", "int4 acc4", "engine fp32"]


def main(argv: list[str] | None = None) -> int:
    global CLOCK, MODEL, GGUF_NAME, LLAMA, PREFIX
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="ORT / llama.cpp threads (1)")
    ap.add_argument("--steps", type=int, default=32, help="decode steps timed (32)")
    ap.add_argument("--reps", type=int, default=3, help="prefill repeats, best taken (3)")
    ap.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="times every engine is run; the best figures are kept (2)",
    )
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument(
        "--quick", action="store_true", help="12 steps, 2 repeats, 1 round, no positions"
    )
    ap.add_argument(
        "--only",
        default="ours,llama,genai",
        help="comma list of: ours, llama, genai, or our variant names",
    )
    ap.add_argument("--llama-python", default="/tmp/llamavenv/bin/python")
    ap.add_argument("--genai-python", default="/tmp/genaivenv/bin/python")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="time steps by the wall clock (default) or by the running thread's "
        "CPU time, which leaves out time lost to other processes",
    )
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--model", choices=sorted(MODELS), default=MODEL, help="(%(default)s)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.reps, args.rounds = min(args.steps, 12), min(args.reps, 2), 1
    CLOCK = args.clock
    MODEL, GGUF_NAME, LLAMA, PREFIX = MODELS[args.model]

    if args.worker:  # a child: one engine, JSON on the last stdout line
        work = json.loads(Path(args.work).read_text())
        fn = {"llama": llama_worker, "genai": genai_worker}[args.worker]
        print(
            json.dumps(fn(args.target, work, args.steps, args.reps, args.threads, not args.quick))
        )
        return 0

    sys.path.insert(0, str(ROOT))
    from sampler.model import load_config
    from sampler.registry import resolve
    from sampler.tokenizer import tokenizer_for

    t_start = time.perf_counter()
    load_start = os.getloadavg()
    whole = LoadMeter()
    only = [s.strip() for s in args.only.split(",")]
    ours = [n for n in OURS if "ours" in only or n in only]
    if PREFIX == "gemma3":  # no Q4_0/Q4_1 matrices: nothing for the int4 variants
        ours = [n for n in ours if not n.startswith("int4")]
    folders = our_folders(ours)
    tok = tokenizer_for(load_config(resolve(MODEL)))
    work = make_workload(tok, args.prompt_len)
    gguf = home() / "downloads" / GGUF_NAME

    print(
        f"# bench/decode.py {datetime.date.today()}: {MODEL}, {args.threads} "
        f"thread(s), prompt {args.prompt_len} tokens, {args.steps} decode steps, "
        f"{os.cpu_count()} cpus",
        flush=True,
    )
    bw = bandwidth()
    print(
        "memory bandwidth, 1 GiB float32, one thread (GB/s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in bw.items()),
        flush=True,
    )

    runs: dict[str, Callable[[], dict[str, dict[str, Any]]]] = {}
    decoders = {n: folders[n] for n in ours if n != "engine fp32"}
    sizes = {n: onnx_weight_bytes(f / "model.onnx") for n, f in decoders.items()}
    if decoders:
        runs["ours"] = lambda: {
            "ours " + n: dict(r, weight_bytes=sizes[n])
            for n, r in bench_ours(
                decoders, work, args.steps, args.reps, args.threads, not args.quick
            ).items()
        }
    if "engine fp32" in ours:
        runs["ours engine fp32"] = lambda: {
            "ours engine fp32": bench_engine(
                folders["engine fp32"], work, args.steps, args.reps, args.threads
            )
        }
    if "llama" in only:
        runs[LLAMA] = lambda: {
            LLAMA: dict(
                child(args.llama_python, "llama", str(gguf), work, args),
                weight_bytes=gguf_weight_bytes(gguf),
            )
        }
    if "genai" in only:
        folder = our_folders(["fp32 exact"])["fp32 exact"]  # genai feeds the HF/Optimum I/O
        gw = dict(work, genai_config=json.dumps(genai_config(folder, args.threads)))
        runs["genai fp32"] = lambda: {
            "genai fp32": dict(
                child(args.genai_python, "genai", str(folder), gw, args),
                weight_bytes=onnx_weight_bytes(folder / "model.onnx"),
            )
        }

    # Rounds: every engine once per round, in the same order; each figure is the best over
    # the rounds (a shared machine only ever makes a run slower).
    results: dict[str, dict[str, Any]] = {}
    for k in range(args.rounds):
        for fn in runs.values():
            meter = LoadMeter()
            rs = fn()
            load = meter.other_cores()
            for name, r in rs.items():
                r["other_cores"] = load
                print(
                    f"  round {k + 1}: {name} (other processes: {f2(load)} cores) "
                    + ", ".join(
                        f"{m} {v:.2f}"
                        for m, v in r.items()
                        if m.startswith(("decode", "ms_at", "on_cpu"))
                    ),
                    file=sys.stderr,
                    flush=True,
                )
                results[name] = best_of(results.get(name), r)

    report = {
        "date": str(datetime.date.today()),
        "threads": args.threads,
        "clock": CLOCK,
        "bandwidth_gbs": bw,
        "results": results,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "other_cores_whole_run": whole.other_cores(),
        "wall_s": time.perf_counter() - t_start,
    }
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def f2(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def best_of(a: dict | None, b: dict) -> dict:
    """Per figure, the better of two runs (higher tok/s, lower ms); other_cores averaged."""
    if a is None or "error" in a:
        return dict(b, rounds=1)
    if "error" in b:
        return a
    out = dict(a, rounds=a["rounds"] + 1)
    for k, v in b.items():
        if k.startswith(("prefill", "decode", "on_cpu")):
            out[k] = max(a[k], v)
        elif k.startswith("ms_at"):
            out[k] = min(a[k], v)
        elif k == "other_cores" and v is not None and a[k] is not None:
            out[k] = (a[k] * a["rounds"] + v) / (a["rounds"] + 1)
    return out


def print_report(rep: dict) -> None:
    res, bw = rep["results"], rep["bandwidth_gbs"]["read"]
    llama = res.get(LLAMA, {})
    base = res.get("ours fp32", {})

    def f(v, spec=".1f"):
        return format(v, spec) if isinstance(v, (int, float)) else "-"

    head = (
        f"{'engine':20s} {'pre B1':>7s} {'pre B8':>7s} {'dec B1':>7s} {'dec B8':>7s} "
        f"{'ms@100':>7s} {'ms@2000':>8s} {'2000/100':>8s} {'MB/tok':>7s} {'floor ms':>8s} "
        f"{'%floor':>6s} {'/llama':>6s} {'greedy':>6s} {'oncpu':>5s} {'other':>5s}"
    )
    print(
        "\ntokens/s (prefill 'pre', decode 'dec'); ms per B=1 step at a position; MB of "
        "weights read per token; floor = MB / read bandwidth; %floor = floor / B=1 step; "
        "/llama = dec B1 / llama.cpp dec B1; greedy = first token where the B=1 greedy "
        "continuation leaves ours fp32's ('=' same); oncpu = share of the B=1 decode steps' "
        "wall time the thread was running; other = cores used by other processes; "
        f"times on the {rep['clock']} clock"
    )
    print(head + "\n" + "-" * len(head))
    for name, r in res.items():
        if "error" in r:
            print(f"{name:20s} unavailable: {r['error']}")
            continue
        mb = r.get("weight_bytes")
        floor = mb / (bw * 1e9) * 1e3 if mb else None
        step = 1e3 / r["decode_b1"] if r.get("decode_b1") else None
        ratio = (r["ms_at_2000"] / r["ms_at_100"]) if "ms_at_2000" in r else None
        pct = 100 * floor / step if floor and step else None
        vs = r["decode_b1"] / llama["decode_b1"] if llama.get("decode_b1") else None
        g = "-"
        if "greedy" in r and "greedy" in base:
            diff = [i for i, (a, b) in enumerate(zip(r["greedy"], base["greedy"])) if a != b]
            g = str(diff[0]) if diff else "="
        print(
            f"{name:20s} {f(r.get('prefill_b1'), '.0f'):>7s} {f(r.get('prefill_b8'), '.0f'):>7s} "
            f"{f(r.get('decode_b1')):>7s} {f(r.get('decode_b8')):>7s} "
            f"{f(r.get('ms_at_100')):>7s} {f(r.get('ms_at_2000')):>8s} {f(ratio, '.2f'):>8s} "
            f"{f(mb / 1e6 if mb else None, '.0f'):>7s} {f(floor):>8s} {f(pct, '.0f'):>6s} "
            f"{f(vs, '.2f'):>6s} {g:>6s} {f(r.get('on_cpu'), '.2f'):>5s} "
            f"{f(r.get('other_cores'), '.2f'):>5s}"
        )

    print("\ntargets (ours fp32, the default model):")
    if "ms_at_2000" in base:
        ratio = base["ms_at_2000"] / base["ms_at_100"]
        print(
            f"  KV cache: step at 2000 / step at 100 = {ratio:.2f} (target <= 1.3): "
            f"{'MET' if ratio <= 1.3 else 'NOT MET'}"
        )
    if base.get("decode_b1") and base.get("weight_bytes"):
        floor = base["weight_bytes"] / (bw * 1e9)
        step = 1 / base["decode_b1"]
        print(
            f"  bandwidth: B=1 step {1e3 * step:.1f} ms vs floor {1e3 * floor:.1f} ms "
            f"({base['weight_bytes'] / 1e6:.0f} MB at {bw:.1f} GB/s) = {100 * floor / step:.0f}% "
            f"of the floor (target >= 90%): {'MET' if step <= floor / 0.9 else 'NOT MET'}"
        )
    if base.get("decode_b1") and llama.get("decode_b1"):
        print(
            f"  vs {LLAMA} at B=1: {base['decode_b1'] / llama['decode_b1']:.2f}x its "
            f"speed (it reads {llama['weight_bytes'] / 1e6:.0f} MB per token, "
            f"{base['weight_bytes'] / llama['weight_bytes']:.1f}x less)"
        )
    oc = rep["other_cores_whole_run"]
    print(
        f"\nload: other processes used {f(oc, '.2f')} cores on average over the "
        f"{rep['wall_s']:.0f} s run; load average start {rep['loadavg_start'][0]:.2f}, "
        f"end {rep['loadavg_end'][0]:.2f}"
    )


if __name__ == "__main__":
    sys.exit(main())
