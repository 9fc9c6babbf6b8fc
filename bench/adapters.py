"""Benchmark: what an adapter adds per decode step over the runtime's own sampler.

Run from the repository root, in ONE process per runtime (only numbers measured together
mean much):

    python bench/adapters.py                 # HF and onnxruntime-genai (whichever import)
    python bench/adapters.py --steps 8       # shorter
    /tmp/llamavenv/bin/python bench/adapters.py --only llama   # llama-cpp-python's venv

For each runtime and batch size B (1 and 8), two decode loops produce ``--steps`` tokens
per row from the same prompts on the same model, one thread:

native
    the runtime samples itself: temperature 0.8, top_p 0.9 (HF: ``do_sample=True,
    top_k=0``; genai: ``do_sample=True, top_k=0``; llama.cpp: ``temp=0.8, top_p=0.9,
    top_k=0, min_p=0``). No logprobs, no penalties, no bias: what the runtime offers.
adapter
    the runtime as the model, the OpenAI step as the sampler (``draw`` mode): temperature
    0.8, top_p 0.9, presence and frequency penalty 0.5 over the generated tokens, a
    ``logit_bias`` on 50 ids, a seed per request and ``logprobs: 5`` (raw).

greedy
    the runtime's argmax: the model's cost plus the cheapest possible choice.

Printed: milliseconds per decode step (the whole batch), median of ``--repeats`` runs
interleaved; ``adapter - native`` per step and per row-step (a negative value: the
adapter's step is cheaper than the runtime's own top_p sampler, which sorts the row), and
``adapter - greedy``, the whole price of the OpenAI step over an argmax.

Models: HF, a random 2-layer GPT-2 (width 32) over V = 100,277 built from a config; genai,
``tiny-random-cl100k`` (2 layers, width 64, V = 100,277) through ``genai.prepare``;
llama.cpp, ``SmolLM2-135M-Instruct.Q4_1.gguf`` when present in the refsampler cache (V =
49,152), else a tiny random GGUF (V = 403). The models are tiny so that the sampler, not the
forward pass, is what differs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SEED = 2026
V = 100_277
PROMPT = [9906, 11, 1917, 374, 264, 1296]  # six cl100k ids
FIELDS = dict(temperature=0.8, top_p=0.9, presence_penalty=0.5, frequency_penalty=0.5, logprobs=5)


def _bias(vocab: int) -> dict[str, float]:
    rng = np.random.default_rng(SEED)
    ids = rng.choice(vocab - 300, 50, replace=False)
    return {str(int(i)): float(v) for i, v in zip(ids, rng.uniform(-5, 5, 50))}


def _time(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, repeats interleaved round-robin."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


# --- HF ------------------------------------------------------------------------------------
def bench_hf(batches: list[int], steps: int, repeats: int) -> list[tuple]:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from sampler.adapters import hf

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=V,
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=100257,
        eos_token_id=100257,
        tie_word_embeddings=False,
    )
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.4)
    bias = _bias(V)
    rows = []
    for B in batches:
        ids = torch.tensor([PROMPT] * B)
        mask = torch.ones_like(ids)

        def native() -> None:
            with torch.no_grad():
                model.generate(
                    ids,
                    attention_mask=mask,
                    do_sample=True,
                    temperature=0.8,
                    top_p=0.9,
                    top_k=0,
                    max_new_tokens=steps,
                    min_new_tokens=steps,
                    pad_token_id=100257,
                )

        def greedy() -> None:
            with torch.no_grad():
                model.generate(
                    ids,
                    attention_mask=mask,
                    do_sample=False,
                    max_new_tokens=steps,
                    min_new_tokens=steps,
                    pad_token_id=100257,
                )

        def adapter() -> None:
            hf.generate(model, ids, max_new_tokens=steps, seed=SEED, logit_bias=bias, **FIELDS)

        t = _time({"greedy": greedy, "native": native, "adapter": adapter}, repeats)
        rows.append(("HF transformers", B, *(t[k] / steps for k in _KEYS)))
    return rows


# --- onnxruntime-genai ---------------------------------------------------------------------
def bench_genai(batches: list[int], steps: int, repeats: int) -> list[tuple]:
    import onnxruntime_genai as og

    from sampler.adapters import genai
    from sampler.registry import resolve

    folder = genai.prepare(
        resolve("tiny-random-cl100k"), Path(tempfile.mkdtemp(prefix="bench-genai-")) / "tiny"
    )
    model = og.Model(str(folder))
    bias = _bias(V)
    rows = []
    for B in batches:
        prompts = np.array([PROMPT] * B, dtype=np.int32)

        def run(**search) -> None:
            gp = og.GeneratorParams(model)
            gp.set_search_options(batch_size=B, max_length=len(PROMPT) + steps, **search)
            gen = og.Generator(model, gp)
            gen.append_tokens(prompts)
            for _ in range(steps - 1):
                gen.generate_next_token()
            gen.get_logits()

        def greedy() -> None:
            run(do_sample=False)

        def native() -> None:
            run(do_sample=True, temperature=0.8, top_p=0.9, top_k=0, random_seed=SEED)

        def adapter() -> None:
            genai.generate(
                model,
                [PROMPT] * B,
                max_tokens=steps,
                pad_token_id=100256,
                end_ids=[],
                seed=SEED,
                logit_bias=bias,
                **FIELDS,
            )

        t = _time({"greedy": greedy, "native": native, "adapter": adapter}, repeats)
        rows.append(("onnxruntime-genai", B, *(t[k] / steps for k in _KEYS)))
    return rows


# --- llama-cpp-python ----------------------------------------------------------------------
def bench_llama(batches: list[int], steps: int, repeats: int) -> list[tuple]:
    import llama_cpp

    from sampler.adapters import llama_cpp as A

    home = Path(os.environ.get("SAMPLER_HOME", Path.home() / ".cache" / "refsampler"))
    gguf = home / "downloads" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.is_file():
        sys.path.insert(0, str(ROOT / "tests"))
        from gguf_reference import write_tiny_gguf

        gguf = write_tiny_gguf(Path(tempfile.mkdtemp(prefix="bench-llama-")) / "tiny.gguf")
    llm = llama_cpp.Llama(str(gguf), n_ctx=256, n_threads=1, verbose=False)
    vocab = int(llm.n_vocab())
    bias = _bias(vocab)
    prompt = [t % vocab for t in PROMPT]
    rows = []
    for B in batches:  # llama-cpp-python decodes one sequence: B candidates in turn

        def run(**sampling) -> None:
            for _ in range(B):
                llm.reset()
                for i, _t in enumerate(llm.generate(prompt, **sampling)):
                    if i + 1 >= steps:
                        break

        def greedy() -> None:
            run(temp=0.0, repeat_penalty=1.0)

        def native() -> None:
            run(temp=0.8, top_p=0.9, top_k=0, min_p=0.0, repeat_penalty=1.0)

        def adapter() -> None:
            A.generate(
                llm, prompt, n=B, max_tokens=steps, end_ids=[], seed=SEED, logit_bias=bias, **FIELDS
            )

        t = _time({"greedy": greedy, "native": native, "adapter": adapter}, repeats)
        rows.append((f"llama-cpp-python (V={vocab})", B, *(t[k] / steps for k in _KEYS)))
    return rows


_KEYS = ("greedy", "native", "adapter")
RUNTIMES = {"hf": bench_hf, "genai": bench_genai, "llama": bench_llama}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=16, help="tokens per row (default 16)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per loop (default 3)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--only", choices=sorted(RUNTIMES), nargs="+")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows, skipped = [], []
    for name in args.only or RUNTIMES:
        try:
            rows += RUNTIMES[name](args.batches, args.steps, args.repeats)
        except ImportError as e:
            skipped.append(f"{name}: {e}")
    cpu = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\n{args.steps} tokens per row, median of {args.repeats}; {cpu} cores, "
        f"load average {load:.2f}\n"
    )
    print(
        "| runtime | B | greedy | native | adapter | adapter - native | per row | "
        "adapter - greedy | per row |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, B, gr, nat, ada in rows:
        d, g = (ada - nat) * 1e3, (ada - gr) * 1e3
        print(
            f"| {name} | {B} | {gr * 1e3:,.2f} | {nat * 1e3:,.2f} | {ada * 1e3:,.2f} | "
            f"{d:+,.2f} | {d / B:+,.2f} | {g:+,.2f} | {g / B:+,.2f} |"
        )
    print("\n(ms per decode step of the whole batch)")
    for s in skipped:
        print(f"skipped {s}")


if __name__ == "__main__":
    main()
