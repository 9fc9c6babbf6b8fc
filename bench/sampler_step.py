"""Benchmark: one OpenAI Completions sampling step per row, against a floor and a peer.

Run from the repository root, in ONE process (only ratios measured together mean much):

    python bench/sampler_step.py            # full run, a few minutes
    python bench/sampler_step.py --quick    # B = 1, 8 only, shorter timing (<= ~30 s)
    python bench/sampler_step.py --json out.json
    python bench/sampler_step.py --no-hf    # ours and the floor only, caches warm
    python bench/sampler_step.py --cold     # every method after a 16 MB cache sweep
    python bench/sampler_step.py --vocab 262144   # Gemma 3's row width (default cl100k's)

The HF column needs ``torch`` and ``transformers``, which are not dependencies of the
library; use a separate venv (e.g. ``/tmp/benchvenv`` with ``torch``, ``transformers``,
``numpy`` and ``pip install -e .``). Without them the column is skipped, with the reason.

What is timed, in microseconds per row-step (median over repeats, single thread):

ours-full
    ``sampler.step.sample_step`` where every row has presence_penalty 0.5,
    frequency_penalty 0.5 over ~200 generated ids already counted (a ``TokenCounts``
    filled with 200 uniform draws from the vocabulary), a logit_bias on 50 ids (the same
    ids for every row, values in [-5, 5]), temperature 0.8, top_p 0.9 and logprobs 5 in
    "raw" mode (top-5 raw logprobs and the chosen token's raw logprob).
ours-neutral
    The same call with every parameter neutral: temperature 1, top_p 1, no bias, no
    penalties, logprobs None.
floor
    One max + exp + float64 sum pass over each row (the log-normaliser), with a reused
    buffer: the least work any exact softmax sampler must do.
HF
    transformers ``LogitsProcessorList`` of ``SequenceBiasLogitsProcessor`` (the same 50
    ids as single-token sequences), ``RepetitionPenaltyLogitsProcessor(1.2)`` over the same
    200 ids (HF has no presence/frequency penalty; this stands in for it),
    ``TemperatureLogitsWarper(0.8)`` and ``TopPLogitsWarper(0.9)``, then ``torch.softmax``
    + ``torch.multinomial``, plus raw top-5 logprobs by ``torch.log_softmax`` + ``topk``
    and the chosen token's logprob; torch CPU, ``torch.set_num_threads(1)``, the same rows
    as float32 tensors (shared memory, no copy).

Rows: V = 100,277 (cl100k_base) float32 logits, B = 1, 8, 64 (the first B of 64 rows),
generated from ``numpy.random.SeedSequence(SEED)``, one child stream per kind:

peaked
    ``2 * N(0, 1)`` logits plus ``+15`` on 3 random ids per row: a few tokens hold almost
    all the mass (the common case for a real LM's next token).
broad
    ``2 * N(0, 1)`` logits: mass spread over thousands of tokens, like a small LM.
flat
    ``0.1 * N(0, 1)`` logits: nearly uniform, the worst case for top_p.

The nucleus size at top_p 0.9 of each kind (after bias, penalties and T = 0.8, exactly as
the full step sees it) is printed with the table. Repeats of the methods are interleaved,
in a fresh seeded shuffle each round, so that a noisy neighbour hits them alike and each
follows each other method equally often (with a fixed order, ours-full always came right
after the HF pipeline, whose sweeps leave the caches cold, and the floor always after
ours-neutral, warm: ~1.3x on ours-full at B = 1); the share of the machine used by
other processes during the run is printed. "full pf/row" is the minor page faults per
row-step of ours-full: V-sized temporaries that the heap returns to the OS and takes back
fault ~100 pages per row each, which on a VM can cost more than the exp; whether it happens
depends on the heap's state (importing torch changes it), so a non-zero value flags a
number inflated by it.

Targets (from shared/design/performance.md): the full step costs at most 2.5x the floor on
peaked rows, and is at least 20x faster than the HF pipeline.
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # single thread, before NumPy or torch load a thread pool
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[_var] = "1"

import argparse
import gc
import json
import math
import platform
import sys
import time
from pathlib import Path

try:
    import resource
except ImportError:  # not on Unix: no page-fault counts
    resource = None
from collections.abc import Callable

import numpy as np
from machine import cpu_busy_seconds  # bench/machine.py, beside this script

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # benchmark the working tree, installed or not
    sys.path.insert(0, str(_ROOT))

from sampler import processors  # noqa: E402
from sampler._fast.draw import Workspace  # noqa: E402
from sampler.params import SamplingParams  # noqa: E402
from sampler.step import Row, sample_step  # noqa: E402

VOCAB = 100_277
MAX_BATCH = 64
SEED = 20240601
KINDS = ("peaked", "broad", "flat")
TEMPERATURE, TOP_P, TOP_LOGPROBS = 0.8, 0.9, 5
PRESENCE, FREQUENCY, HF_REPETITION = 0.5, 0.5, 1.2
N_GENERATED, N_BIAS = 200, 50
TARGET_FLOOR_RATIO, TARGET_HF_SPEEDUP = 2.5, 20.0

Timed = Callable[[np.ndarray], object]  # takes the uniforms [B]


# --- inputs ----------------------------------------------------------------------------------
def make_rows(kind: str, seed: np.random.SeedSequence) -> np.ndarray:
    """``MAX_BATCH`` float32 logit rows of one kind: ``[64, V]`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    if kind == "flat":
        return rng.standard_normal((MAX_BATCH, VOCAB), dtype=np.float32) * np.float32(0.1)
    z = rng.standard_normal((MAX_BATCH, VOCAB), dtype=np.float32) * np.float32(2.0)
    if kind == "peaked":
        for row in z:
            row[rng.choice(VOCAB, size=3, replace=False)] += np.float32(15.0)
    return z


def make_request_state(seed: np.random.SeedSequence):
    """The shared logit_bias ``(ids, values)`` and each row's generated ids ``[64, 200]``."""
    rng = np.random.default_rng(seed)
    bias_ids = rng.choice(VOCAB, size=N_BIAS, replace=False).astype(np.int64)  # [50]
    bias_values = rng.uniform(-5.0, 5.0, size=N_BIAS).astype(np.float32)  # [50]
    generated = rng.integers(0, VOCAB, size=(MAX_BATCH, N_GENERATED), dtype=np.int64)
    return (bias_ids, bias_values), generated


def full_params(bias, generated: np.ndarray) -> list[Row]:
    """One ``Row`` per row with every parameter of the full step set."""
    rows = []
    for ids in generated:
        counts = processors.TokenCounts()
        for token in ids.tolist():
            counts.add(token)
        rows.append(
            Row(
                SamplingParams(
                    temperature=TEMPERATURE,
                    top_p=TOP_P,
                    presence_penalty=PRESENCE,
                    frequency_penalty=FREQUENCY,
                    logit_bias=bias,
                    logprobs=TOP_LOGPROBS,
                    logprobs_mode="raw",
                ),
                counts=counts,
            )
        )
    return rows


def nucleus_sizes(logits: np.ndarray, rows: list[Row]) -> list[int]:
    """Nucleus size at top_p of each row after bias, penalties and temperature: steps
    1-4 in order (processors.apply), counting what top_p left finite."""
    z = processors.apply(logits[: len(rows)], [r.params for r in rows], [r.counts for r in rows])
    sizes = [int(np.isfinite(row).sum()) for row in z]
    return sizes


# --- the timed work ----------------------------------------------------------------------------
def ours(logits: np.ndarray, rows: list[Row], workspace: Workspace) -> Timed:
    return lambda u: sample_step(logits, rows, u, workspace=workspace)


def floor(logits: np.ndarray, buf: np.ndarray) -> Timed:
    """max + exp + float64 sum per row, into a reused buffer (the log-normaliser)."""

    def run(_u: np.ndarray) -> list[float]:
        out = []
        for row in logits:
            np.subtract(row, row.max(), out=buf)
            np.exp(buf, out=buf)
            out.append(float(buf.sum(dtype=np.float64)))
        return out

    return run


def import_hf():
    """``(torch, transformers)`` or ``(None, reason)``."""
    try:
        import torch
        import transformers
    except Exception as exc:  # ImportError, or a broken install
        return None, f"{type(exc).__name__}: {exc}"
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set in this process
    return (torch, transformers), None


def hf_pipeline(hf, logits: np.ndarray, bias, generated: np.ndarray) -> Timed:
    """HF processors + softmax + multinomial + raw top-5 logprobs, on torch CPU."""
    torch, transformers = hf
    gp = transformers.generation.logits_process
    ids, values = bias
    seq_bias = [[[int(i)], float(v)] for i, v in zip(ids, values)]
    procs = transformers.LogitsProcessorList(
        [
            gp.SequenceBiasLogitsProcessor(sequence_bias=seq_bias),
            gp.RepetitionPenaltyLogitsProcessor(penalty=HF_REPETITION),
            gp.TemperatureLogitsWarper(TEMPERATURE),
            gp.TopPLogitsWarper(TOP_P),
        ]
    )
    scores = torch.from_numpy(logits)  # [B, V] float32, shares memory
    input_ids = torch.from_numpy(generated)  # [B, 200]
    gen = torch.Generator().manual_seed(SEED)

    def run(_u: np.ndarray):
        with torch.no_grad():
            processed = procs(input_ids, scores)
            tokens = torch.multinomial(torch.softmax(processed, dim=-1), 1, generator=gen)
            raw = torch.log_softmax(scores, dim=-1)
            top = raw.topk(TOP_LOGPROBS, dim=-1)
            chosen = raw.gather(1, tokens)
        return tokens, top, chosen

    return run


# --- timing ------------------------------------------------------------------------------------
def minor_faults() -> int:
    """Minor page faults of this process so far (0 where unknown).

    A V-sized temporary that the allocator hands back to the OS and takes again costs
    ~100 faults per 400 KB row; on a VM that can cost more than the exp itself, and it
    depends on the heap's state (importing torch changes it), so it is reported.
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def time_cell(
    methods: dict[str, Timed],
    logits: np.ndarray,
    budget: float,
    min_reps: int,
    seed,
    sweep: np.ndarray | None = None,
):
    """Median µs per row-step of each method, repeats interleaved in shuffled rounds.

    Before each timed call the rows are read once (untimed), as an engine's freshly
    computed logits would be: otherwise whichever method follows the HF pipeline (which
    sweeps megabytes) starts with a cold cache, which skews B = 1 where a row fits in L2.
    ``sweep``: a buffer read before that, every call, so that every method starts with
    the rest of its working set cold, as after a model's forward pass.
    """
    batch = logits.shape[0]
    rng = np.random.default_rng(seed)
    warm = {}
    for name, fn in methods.items():  # warm-up; its time sizes the repeat count
        fn(rng.random(batch))
        t0 = time.perf_counter()
        fn(rng.random(batch))
        warm[name] = time.perf_counter() - t0
    reps = max(min_reps, min(200, math.ceil(budget / sum(warm.values()))))
    samples: dict[str, list[float]] = {name: [] for name in methods}
    faults = dict.fromkeys(methods, 0)
    gc.disable()
    try:
        items = list(methods.items())
        for _ in range(reps):
            for i in rng.permutation(len(items)):  # a new order every round
                name, fn = items[i]
                u = rng.random(batch)  # [B] float64 uniforms, outside the timed region
                if sweep is not None:
                    sweep.sum()
                logits.sum()  # the rows in cache, as fresh model output would be
                f0, t0 = minor_faults(), time.perf_counter()
                fn(u)
                samples[name].append(time.perf_counter() - t0)
                faults[name] += minor_faults() - f0
    finally:
        gc.enable()
    us = {name: 1e6 * float(np.median(s)) / batch for name, s in samples.items()}
    pf = {f"{name}_faults": faults[name] / (reps * batch) for name in methods}
    return {**us, **pf}, reps


def run(batches, budget: float, min_reps: int, with_hf: bool = True, cold: bool = False) -> dict:
    hf, hf_reason = import_hf() if with_hf else (None, "--no-hf")
    seeds = np.random.SeedSequence(SEED).spawn(len(KINDS) + 2)
    bias, generated = make_request_state(seeds[-1])
    workspace = Workspace(VOCAB)  # reused row buffers, as the engine does
    buf = np.empty(VOCAB, dtype=np.float32)  # [V]
    sweep = np.ones(4 << 20, dtype=np.float32) if cold else None  # 16 MB: 32x L2
    full_rows, neutral_rows = (
        full_params(bias, generated),
        [Row(SamplingParams()) for _ in range(MAX_BATCH)],
    )
    results, nuclei = [], {}
    for k, kind in enumerate(KINDS):
        rows = make_rows(kind, seeds[k])
        sizes = nucleus_sizes(rows, full_rows)
        nuclei[kind] = {"median": float(np.median(sizes)), "min": min(sizes), "max": max(sizes)}
        for batch in batches:
            logits = rows[:batch]  # [B, V], C-contiguous
            methods = {
                "ours_full": ours(logits, full_rows[:batch], workspace),
                "ours_neutral": ours(logits, neutral_rows[:batch], workspace),
                "floor": floor(logits, buf),
            }
            if hf is not None:
                methods["hf"] = hf_pipeline(hf, logits, bias, generated[:batch])
            us, reps = time_cell(methods, logits, budget, min_reps, seeds[-2], sweep)
            results.append({"kind": kind, "batch": batch, "reps": reps, **us})
            print(f"  timed {kind:6s} B={batch:<2d} ({reps} repeats)", file=sys.stderr)
    return {
        "machine": machine_note(hf),
        "config": {
            "vocab": VOCAB,
            "temperature": TEMPERATURE,
            "top_p": TOP_P,
            "presence_penalty": PRESENCE,
            "frequency_penalty": FREQUENCY,
            "logit_bias_ids": N_BIAS,
            "generated_ids": N_GENERATED,
            "top_logprobs": TOP_LOGPROBS,
            "hf_repetition_penalty": HF_REPETITION,
            "seed": SEED,
            "budget_s_per_cell": budget,
        },
        "hf_skipped": hf_reason,
        "cold": cold,
        "nucleus_at_top_p": nuclei,
        "results": results,
    }


def other_load(start: tuple) -> float | None:
    """Average number of cores used by OTHER processes since ``start``."""
    busy0, own0, wall0 = start
    busy1 = cpu_busy_seconds()
    if busy0 is None or busy1 is None:
        return None
    own = sum(os.times()[:2]) - own0
    return max(0.0, (busy1 - busy0 - own) / (time.perf_counter() - wall0))


def machine_note(hf) -> dict:
    note = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
        "threads_env": {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
    }
    if hf is not None:
        note["torch"], note["transformers"] = hf[0].__version__, hf[1].__version__
        note["torch_threads"] = hf[0].get_num_threads()
    return note


# --- report ------------------------------------------------------------------------------------
def ratios(cell: dict) -> tuple[float, float]:
    full_floor = cell["ours_full"] / cell["floor"]
    hf_full = cell["hf"] / cell["ours_full"] if "hf" in cell else float("nan")
    return full_floor, hf_full


def verdict(report: dict) -> list[str]:
    cells = report["results"]
    peaked = [c for c in cells if c["kind"] == "peaked"]
    worst = max(ratios(c)[0] for c in peaked)
    lines = [
        f"target 1, full step <= {TARGET_FLOOR_RATIO}x floor on peaked rows: "
        f"{'PASS' if worst <= TARGET_FLOOR_RATIO else 'FAIL'} (worst {worst:.2f}x; "
        + ", ".join(f"B={c['batch']} {ratios(c)[0]:.2f}x" for c in peaked)
        + ")"
    ]
    if report["hf_skipped"]:
        lines.append(
            f"target 2, >= {TARGET_HF_SPEEDUP:.0f}x faster than HF: not measured "
            f"(HF skipped: {report['hf_skipped']})"
        )
        return lines
    per_kind = []
    for kind in KINDS:
        low = min(ratios(c)[1] for c in cells if c["kind"] == kind)
        per_kind.append(f"{kind} {'PASS' if low >= TARGET_HF_SPEEDUP else 'FAIL'} (min {low:.1f}x)")
    lines.append(f"target 2, >= {TARGET_HF_SPEEDUP:.0f}x faster than HF: " + "; ".join(per_kind))
    return lines


def print_report(report: dict) -> None:
    m = report["machine"]
    print(
        f"sampler step benchmark: V={VOCAB}, float32 rows, median µs per row-step, 1 thread"
        + (", every call after a 16 MB cache sweep (--cold)" if report.get("cold") else "")
    )
    print(
        f"python {m['python']}, numpy {m['numpy']}"
        + (
            f", torch {m['torch']} ({m['torch_threads']} thread), transformers {m['transformers']}"
            if "torch" in m
            else ""
        )
        + f"; {m['cpus']} cpus, load avg start {m['loadavg_start']} end {m['loadavg_end']}"
    )
    if m["other_cores_busy"] is not None:
        print(
            f"other processes used {m['other_cores_busy']:.2f} cores on average during the "
            f"{m['wall_s']:.0f} s run (1.0 = the other core fully busy: expect noisier, "
            "slower numbers)"
        )
    print(
        "nucleus size at top_p 0.9 (after bias, penalties, T=0.8), median [min-max] over 64 rows:"
    )
    for kind, n in report["nucleus_at_top_p"].items():
        print(f"  {kind:6s} {n['median']:>9,.0f}  [{n['min']:,}-{n['max']:,}]")
    header = (
        f"{'kind':6s} {'B':>3s} {'ours-full':>10s} {'ours-neutral':>12s} {'floor':>8s} "
        f"{'HF':>10s} {'full/floor':>10s} {'HF/full':>8s} {'full pf/row':>11s}"
    )
    print(header)
    print("-" * len(header))
    for c in report["results"]:
        full_floor, hf_full = ratios(c)
        hf = f"{c['hf']:10,.0f}" if "hf" in c else f"{'skipped':>10s}"
        speedup = f"{hf_full:7.1f}x" if "hf" in c else f"{'-':>8s}"
        print(
            f"{c['kind']:6s} {c['batch']:3d} {c['ours_full']:10,.0f} {c['ours_neutral']:12,.0f} "
            f"{c['floor']:8,.0f} {hf} {full_floor:9.2f}x {speedup} "
            f"{c['ours_full_faults']:11.0f}"
        )
    print(
        "full pf/row: minor page faults per row-step in ours-full (0 is right; ~100 per "
        "V-sized temporary the heap gives back and retakes)"
    )
    if report["hf_skipped"]:
        print(f"HF skipped: {report['hf_skipped']}")
    else:
        print(
            "HF note: HF has no presence/frequency penalty; RepetitionPenaltyLogitsProcessor"
            f"({HF_REPETITION}) over the same 200 ids stands in for them."
        )
    for line in verdict(report):
        print(line)


def main(argv: list[str] | None = None) -> None:
    global VOCAB
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="B = 1, 8 and short timing (<= ~30 s)")
    ap.add_argument("--json", metavar="PATH", help="also write the numbers to PATH")
    ap.add_argument(
        "--no-hf",
        action="store_true",
        help="leave the HF pipeline out: its multi-megabyte sweeps between "
        "repeats make every timed call start with cold caches, which costs "
        "a step of ~50 small NumPy calls more than the 4-call floor",
    )
    ap.add_argument(
        "--cold",
        action="store_true",
        help="read a 16 MB buffer before every timed call of every method, so "
        "that each starts cold, as a sampler does after a forward pass",
    )
    ap.add_argument(
        "--vocab",
        type=int,
        default=VOCAB,
        help="row width V (default %(default)s, cl100k_base; 262144 is Gemma 3's)",
    )
    args = ap.parse_args(argv)
    VOCAB = args.vocab
    start = (cpu_busy_seconds(), sum(os.times()[:2]), time.perf_counter())
    load_start = [round(x, 2) for x in os.getloadavg()]
    batches, budget, min_reps = ((1, 8), 0.8, 5) if args.quick else ((1, 8, 64), 6.0, 7)
    report = run(
        batches=batches, budget=budget, min_reps=min_reps, with_hf=not args.no_hf, cold=args.cold
    )
    report["machine"]["loadavg_start"] = load_start
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    load = other_load(start)
    report["machine"]["other_cores_busy"] = None if load is None else round(load, 2)
    report["machine"]["wall_s"] = round(time.perf_counter() - start[2], 1)
    report["quick"] = args.quick
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
