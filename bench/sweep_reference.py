"""Sweep: the fast path against the definition on many seeded rows (not part of CI).

    python bench/sweep_reference.py [--rows 100000] [--workers 2] [--seed 0]

Each row ``i`` comes from ``SeedSequence(seed, spawn_key=(i,))``: a width (mostly 2 to 4,096
ids, one row in 50 from 10,000 to 262,144), a kind (peaked, broad, flat, ties on a coarse
grid, or values near float32's limits), ``-inf`` masks, a logit_bias of up to 8 ids (±100
among the values), up to 40 generated ids for the penalties, a temperature (0, tiny ones
down to 5e-324, or in (0, 2]), a top_p (its edges or uniform), logprobs None/0/1/5 in raw or
processed mode, and a uniform. ``sampler.sample_step`` and ``sampler.reference`` must give
the same token, the same raw and reported logprobs (to 1e-6) and the same top ids. Prints
the counts by kind and every mismatch (with the row's index, to replay it).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from multiprocessing import Pool

import numpy as np

from sampler import Row, SamplingParams, reference, sample_step
from sampler.processors import TokenCounts

KINDS = ("peaked", "broad", "flat", "ties", "huge")
TEMPS = (0.0, 1.0, 0.7, 2.0, 1e-300, 1e-40, 5e-324, 1e-38)
TOPS = (0.0, 1e-9, 0.5, 0.9, 0.999999, 1 - 2**-53, 1.0)


def make_case(seed: int, i: int) -> tuple:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
    v = int(rng.integers(10_000, 262_145)) if rng.random() < 0.02 else int(rng.integers(2, 4097))
    kind = KINDS[int(rng.integers(len(KINDS)))]
    if kind == "peaked":
        z = rng.standard_normal(v) * 2
        z[rng.integers(0, v, size=3)] += 15
    elif kind == "broad":
        z = rng.standard_normal(v) * 2
    elif kind == "flat":
        z = rng.standard_normal(v) * 0.1
    elif kind == "ties":
        z = np.round(rng.standard_normal(v) * 2) / 2
    else:
        z = rng.choice(np.array([3e38, -3e38, 1e30, 0.0, -1.0, 1e-40]), size=v)
    z = z.astype(np.float32)  # [V]
    if rng.random() < 0.5:
        z[rng.integers(0, v, size=max(1, v // 10))] = -np.inf
    if not np.isfinite(z).any():
        z[0] = 0.0
    nb = int(rng.integers(0, 9))
    ids = rng.choice(v, size=min(nb, v), replace=False)
    vals = np.where(
        rng.random(ids.size) < 0.3,
        rng.choice([-100.0, 100.0], ids.size),
        rng.uniform(-100, 100, ids.size),
    ).astype(np.float32)
    bias = {int(j): float(x) for j, x in zip(ids, vals)}
    generated = rng.integers(0, v, size=int(rng.integers(0, 41))).tolist()
    t = TEMPS[int(rng.integers(len(TEMPS)))] if rng.random() < 0.5 else float(rng.uniform(0, 2))
    p = TOPS[int(rng.integers(len(TOPS)))] if rng.random() < 0.5 else float(rng.random())
    params = dict(
        temperature=t,
        top_p=p,
        presence_penalty=float(rng.uniform(-2, 2)),
        frequency_penalty=float(rng.uniform(-2, 2)),
    )
    k = (None, 0, 1, 5)[int(rng.integers(4))]
    mode = ("raw", "processed")[int(rng.integers(2))]
    return kind, v, z, bias, generated, params, k, mode, float(rng.random())


def check(args: tuple[int, int]) -> tuple[str, int, str | None]:
    seed, i = args
    kind, v, z, bias, generated, params, k, mode, u = make_case(seed, i)
    counts = TokenCounts()
    for g in generated:
        counts.add(g)
    pair = (np.array(list(bias), np.int64), np.array(list(bias.values()), np.float64))
    sp = SamplingParams(logit_bias=pair if bias else None, logprobs=k, logprobs_mode=mode, **params)
    out = sample_step(z[None], [Row(sp, counts=counts, raw_logprob=True)], [u])
    token = reference.step(z, uniform=u, logit_bias=bias, generated=generated, **params)
    if int(out.tokens[0]) != token:
        return kind, v, f"token {int(out.tokens[0])} != {token}"
    raw = reference.logprobs(z)
    if abs(out.logprob[0] - raw[token]) > 1e-6:
        return kind, v, f"raw logprob {out.logprob[0]} != {raw[token]}"
    if k is not None:
        row = (
            z
            if mode == "raw"
            else reference.processed(
                z,
                logit_bias=bias,
                generated=generated,
                **{**params, "temperature": params["temperature"] or 1.0},
            )
        )
        lp = reference.logprobs(row)
        if lp[token] != -np.inf and abs(out.reported[0] - lp[token]) > 1e-6:
            return kind, v, f"reported {out.reported[0]} != {lp[token]}"
        if out.top[0][0].tolist() != reference.top_ids(row, k):
            return kind, v, f"top ids {out.top[0][0].tolist()} != {reference.top_ids(row, k)}"
    return kind, v, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    start = time.perf_counter()
    kinds: Counter = Counter()
    wide, bad = 0, []
    with Pool(args.workers) as pool:
        jobs = ((args.seed, i) for i in range(args.rows))
        for i, (kind, v, err) in enumerate(pool.imap(check, jobs, chunksize=64)):
            kinds[kind] += 1
            wide += v >= 10_000
            if err is not None:
                bad.append((i, kind, v, err))
                print(f"MISMATCH row {i} ({kind}, V={v}): {err}", flush=True)
    took = time.perf_counter() - start
    print(
        f"{args.rows:,} rows (seed {args.seed}) in {took:.0f} s: "
        + ", ".join(f"{k} {n:,}" for k, n in sorted(kinds.items()))
        + f"; {wide:,} rows of 10,000 ids or more; {len(bad)} mismatches"
    )


if __name__ == "__main__":
    main()
