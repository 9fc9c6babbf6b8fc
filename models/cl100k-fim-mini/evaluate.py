"""Evaluate ``cl100k-fim-mini`` (the exported ONNX, through the engine). Not run in CI.

Needs the corpus built by ``build_corpus.py`` (``--corpus``, default /tmp/corpus/build) and
runs in the project venv (NumPy + ONNX Runtime, no torch)::

    .venv/bin/python models/cl100k-fim-mini/evaluate.py --json /tmp/fimmini/eval.json

1. Held-out loss and perplexity per source, over the full 100,277-id row (and the same on
   the train split, ``--train-windows`` per source, for the final training loss): the test
   documents of each source, each after ``<|endoftext|>``, back to back, cut into
   non-overlapping windows of the context length (at most ``--windows`` of them, evenly
   spaced); every position but a window's first is scored. Baselines on exactly the same
   (previous, next) pairs, estimated on the *train* documents of the same source: unigram
   (add-one over all ids) and bigram (Witten-Bell interpolated with that unigram).
2. Fill-in-the-middle on ``--infills`` single-line infills from the held-out stdlib files:
   a function (``def`` line to its end, at most 400 tokens) is cut around one of its body
   lines (any line after the ``def`` line(s) that is not blank, not a comment, not inside
   the docstring and at least 4 characters without its indentation): prefix = the
   lines before it, middle = the line (with its indentation, without its newline), suffix =
   the newline and the rest. Candidates are drawn with a seeded generator, at most 2 per
   function and 6 per file. Greedy (temperature 0), ``max_tokens`` 48:
   - with the suffix (``suffix=``): exact match if ``text.rstrip() == middle.rstrip()``;
     also counted: whether it stopped by itself (``<|endoftext|>``, finish_reason "stop"),
     and whether its first line matches;
   - without it, the same prompt with ``stop="\\n"``: exact match on that line;
   - teacher-forced, on the same cases (what greedy decoding hides): the true middle's mean
     log-likelihood per token after ``<|fim_prefix|> prefix <|fim_suffix|> suffix
     <|fim_middle|>`` and after ``<|endoftext|> prefix`` (does the suffix help?), and
     log p(``<|endoftext|>``) right after the true middle (can it end a middle?).
3. Five sample completions and five sample insertions (printed as Markdown for the card).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

N_VOCAB = 100_277
EOT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = 100257, 100258, 100259, 100260
SOURCES = ("stdlib", "pydocs", "shakespeare", "milton", "kjv", "devil", "wordnet")
SEED = 5


# ------------------------------------------------------------------ held-out loss


def load_corpus(folder: Path):
    z = np.load(folder / "tokens.npz")
    return z["tokens"], z["offsets"], z["source"], z["test"]


def stream(tokens, offsets, docs) -> np.ndarray:
    """The documents back to back, each after <|endoftext|>."""
    parts = []
    for i in docs:
        parts.append([EOT])
        parts.append(tokens[offsets[i] : offsets[i + 1]])
    return np.concatenate(parts).astype(np.int64)


class Baselines:
    """Unigram (add-one) and Witten-Bell bigram over all ids, from one token stream."""

    def __init__(self, train: np.ndarray) -> None:
        counts = np.bincount(train, minlength=N_VOCAB).astype(np.float64)
        self.uni = (counts + 1.0) / (counts.sum() + N_VOCAB)  # [N]
        pairs = train[:-1] * N_VOCAB + train[1:]
        self.keys, self.pair_counts = np.unique(pairs, return_counts=True)
        prev = self.keys // N_VOCAB
        self.prev_total = np.bincount(train[:-1], minlength=N_VOCAB).astype(np.float64)
        self.prev_types = np.bincount(prev, minlength=N_VOCAB).astype(np.float64)

    def nll(self, prev: np.ndarray, nxt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        uni = self.uni[nxt]
        k = prev * N_VOCAB + nxt
        j = np.minimum(np.searchsorted(self.keys, k), len(self.keys) - 1)
        c = np.where(self.keys[j] == k, self.pair_counts[j], 0).astype(np.float64)
        n, t = self.prev_total[prev], self.prev_types[prev]
        bi = np.where(n > 0, (c + t * uni) / np.maximum(n + t, 1), uni)
        return -np.log(uni), -np.log(bi)


def model_nll(session, ids: np.ndarray) -> np.ndarray:
    """-log p(ids[t+1] | ids[:t+1]) for t < S-1, from the graph's full-width logits."""
    feeds = {
        "input_ids": ids[None],
        "attention_mask": np.ones((1, ids.size), np.int64),
        "position_ids": np.arange(ids.size, dtype=np.int64)[None],
    }
    for i in session.get_inputs():
        if i.name.startswith("past_key_values"):
            feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
    z = session.run(["logits"], feeds)[0][0, :-1]  # [S-1, N]
    m = z.max(axis=-1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=-1, dtype=np.float64))
    return lse - z[np.arange(len(z)), ids[1:]]


def _session(model_dir: Path):
    """An ONNX Runtime session on the model, one thread."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(
        str(model_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"]
    )


def held_out(model_dir: Path, corpus: Path, n_windows: int, ctx: int, *, test: bool = True) -> dict:
    """Per-source and overall NLL of the model and the baselines on ``test`` (or train)
    documents. On the train split the baselines are scored in-sample (optimistic)."""
    sess = _session(model_dir)
    tokens, offsets, source, test_flags = load_corpus(corpus)
    results = {}
    totals = np.zeros(3)
    count = 0
    for s, name in enumerate(SOURCES):
        base = Baselines(stream(tokens, offsets, np.flatnonzero((source == s) & ~test_flags)))
        held = stream(tokens, offsets, np.flatnonzero((source == s) & (test_flags == test)))
        n = max(1, len(held) // ctx)
        starts = np.unique(np.linspace(0, (n - 1) * ctx, min(n, n_windows)).astype(int))
        sums = np.zeros(3)
        k = 0
        for a in starts:
            w = held[a : a + ctx]
            if len(w) < 2:
                continue
            u, b = base.nll(w[:-1], w[1:])
            sums += [model_nll(sess, w).sum(), u.sum(), b.sum()]
            k += len(w) - 1
        mean = sums / k
        results[name] = {
            "tokens": int(k),
            "model_nll": mean[0],
            "unigram_nll": mean[1],
            "bigram_nll": mean[2],
            "model_ppl": float(np.exp(mean[0])),
            "unigram_ppl": float(np.exp(mean[1])),
            "bigram_ppl": float(np.exp(mean[2])),
        }
        totals += sums
        count += k
        print(
            f"  {name:12s} {k:7d} tokens  model {mean[0]:.3f}  unigram {mean[1]:.3f}  "
            f"bigram {mean[2]:.3f} nats/token",
            flush=True,
        )
    mean = totals / count
    results["all"] = {
        "tokens": int(count),
        "model_nll": mean[0],
        "unigram_nll": mean[1],
        "bigram_nll": mean[2],
        "model_ppl": float(np.exp(mean[0])),
        "unigram_ppl": float(np.exp(mean[1])),
        "bigram_ppl": float(np.exp(mean[2])),
    }
    return results


# ------------------------------------------------------------------ fill in the middle


def infill_cases(corpus: Path, tok, n: int, rng: np.random.Generator) -> list[dict]:
    """Single-line infills from the held-out stdlib files (see the module docstring)."""
    files = []
    with open(corpus / "docs.jsonl", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            if d["source"] == "stdlib" and d["split"] == "test":
                files.append((d["name"], d["text"]))
    per_file: dict[str, list[dict]] = {}
    for name, text in files:
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        lines = text.splitlines(keepends=True)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            lo, hi = node.lineno - 1, node.end_lineno  # def line .. last line, 0-based
            fn = lines[lo:hi]
            if len(tok.encode("".join(fn))) > 400:
                continue
            doc = set()
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(
                getattr(first, "value", None), ast.Constant
            ):
                doc = set(range(first.lineno - 1, first.end_lineno))
            body_start = node.body[0].lineno - 1
            picks = []
            for i in range(max(body_start, lo + 1), hi):
                s = lines[i].strip()
                if not s or s.startswith("#") or i in doc or len(s) < 4:
                    continue
                picks.append(i)
            rng.shuffle(picks)
            for i in picks[:2]:
                per_file.setdefault(name, []).append(
                    {
                        "file": name,
                        "function": node.name,
                        "line": i + 1,
                        "prefix": "".join(lines[lo:i]),
                        "middle": lines[i].rstrip("\n"),
                        "suffix": "\n" + "".join(lines[i + 1 : hi]),
                    }
                )
    cases = []
    for name in sorted(per_file):
        got = per_file[name]
        order = rng.permutation(len(got))[:6]
        cases.extend(got[j] for j in order)
    order = rng.permutation(len(cases))[:n]
    return [cases[j] for j in sorted(order)]


def fim_eval(engine, cases: list[dict]) -> dict:
    em = em_first = stopped = em_plain = 0
    rows = []
    for c in cases:
        r = engine.complete(prompt=c["prefix"], suffix=c["suffix"], max_tokens=48, temperature=0)[
            "choices"
        ][0]
        text = r["text"]
        hit = text.rstrip() == c["middle"].rstrip()
        hit_first = text.split("\n", 1)[0].rstrip() == c["middle"].rstrip()
        p = engine.complete(prompt=c["prefix"], max_tokens=48, temperature=0, stop="\n")["choices"][
            0
        ]["text"]
        plain = p.rstrip() == c["middle"].rstrip()
        em += hit
        em_first += hit_first
        stopped += r["finish_reason"] == "stop"
        em_plain += plain
        rows.append(
            {
                **{k: c[k] for k in ("file", "function", "line", "middle")},
                "fim": text,
                "fim_finish": r["finish_reason"],
                "plain": p,
                "fim_exact": hit,
                "plain_exact": plain,
            }
        )
    n = len(cases)
    return {
        "cases": n,
        "fim_exact_match": em / n,
        "fim_first_line_match": em_first / n,
        "fim_stopped_by_eot": stopped / n,
        "no_suffix_exact_match": em_plain / n,
        "rows": rows,
    }


def fim_teacher_forced(model_dir: Path, cases: list[dict], tok) -> dict:
    """Mean over cases: the true middle's log-likelihood per token with and without the
    suffix, and log p(<|endoftext|>) after it (full-sequence passes, no decoding)."""
    sess = _session(model_dir)
    with_s, without, end = [], [], []
    for c in cases:
        pre, suf, mid = (tok.encode(c[k]) for k in ("prefix", "suffix", "middle"))
        head = [FIM_PREFIX, *pre, FIM_SUFFIX, *suf, FIM_MIDDLE]
        nll = model_nll(sess, np.asarray(head + mid + [EOT], np.int64))  # [S-1]
        with_s.append(-nll[len(head) - 1 : len(head) - 1 + len(mid)].mean())
        end.append(-nll[-1])
        nll = model_nll(sess, np.asarray([EOT, *pre, *mid], np.int64))
        without.append(-nll[len(pre) :].mean())
    return {
        "middle_loglik_with_suffix": float(np.mean(with_s)),
        "middle_loglik_without_suffix": float(np.mean(without)),
        "eot_after_middle_logp_mean": float(np.mean(end)),
        "eot_after_middle_logp_median": float(np.median(end)),
    }


# ------------------------------------------------------------------ samples

COMPLETIONS = [
    "import os\n\n\ndef list_python_files(top):\n",
    'class Stack:\n    """A last-in, first-out stack."""\n\n    def __init__(self):\n',
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "HAMLET.\nTo be, or not to be,",
    "In the beginning",
]
INSERTIONS = [
    ("def add(a, b):\n", "\n    return result\n"),
    ("def is_even(n):\n    return ", "\n"),
    ("for i in range(10):\n", "\nprint('done')\n"),
    ("import sys\n\n\ndef main(argv):\n    if len(argv) < 2:\n", "\n    return 0\n"),
    ("class Point:\n    def __init__(self, x, y):\n        self.x = x\n", "\n"),
]


def samples(engine) -> dict:
    comp = []
    for k, prompt in enumerate(COMPLETIONS):
        r = engine.complete(prompt=prompt, max_tokens=40, temperature=0.7, seed=100 + k)
        comp.append(
            {
                "prompt": prompt,
                "text": r["choices"][0]["text"],
                "params": {"max_tokens": 40, "temperature": 0.7, "seed": 100 + k},
            }
        )
    ins = []
    for prompt, suffix in INSERTIONS:
        r = engine.complete(prompt=prompt, suffix=suffix, max_tokens=32, temperature=0)
        ins.append(
            {
                "prompt": prompt,
                "suffix": suffix,
                "text": r["choices"][0]["text"],
                "finish_reason": r["choices"][0]["finish_reason"],
                "params": {"max_tokens": 32, "temperature": 0},
            }
        )
    return {"completions": comp, "insertions": ins}


def markdown(res: dict) -> str:
    out = [
        "| source | tokens | model nats (ppl) | unigram nats (ppl) | bigram nats (ppl) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r in res["held_out"].items():
        out.append(
            f"| {name} | {r['tokens']:,} | {r['model_nll']:.3f} ({r['model_ppl']:.1f}) | "
            f"{r['unigram_nll']:.3f} ({r['unigram_ppl']:.1f}) | "
            f"{r['bigram_nll']:.3f} ({r['bigram_ppl']:.1f}) |"
        )
    t = res["train"]["all"]
    out += [
        "",
        f"Train split, same procedure ({t['tokens']:,} tokens): model "
        f"{t['model_nll']:.3f} nats/token (ppl {t['model_ppl']:.1f}).",
    ]
    f = res["fim"]
    out += [
        "",
        f"FIM on {f['cases']} held-out single-line stdlib infills (greedy): exact match "
        f"with suffix {f['fim_exact_match']:.1%} (first line {f['fim_first_line_match']:.1%},"
        f" stopped by <|endoftext|> {f['fim_stopped_by_eot']:.1%}); without suffix "
        f"{f['no_suffix_exact_match']:.1%}.",
    ]
    if "teacher_forced" in f:
        t = f["teacher_forced"]
        out += [
            "",
            f"Teacher-forced on the same cases: the true middle's log-likelihood "
            f"{t['middle_loglik_with_suffix']:.3f} nats/token with the suffix, "
            f"{t['middle_loglik_without_suffix']:.3f} without it; log p(<|endoftext|>) "
            f"after the true middle: mean {t['eot_after_middle_logp_mean']:.2f}, median "
            f"{t['eot_after_middle_logp_median']:.2f}.",
        ]
    out += [""]
    for s in res["samples"]["completions"]:
        out += [
            f"Completion, {json.dumps(s['params'])}:",
            "```text",
            s["prompt"] + "⟦" + s["text"] + "⟧",
            "```",
        ]
    for s in res["samples"]["insertions"]:
        out += [
            f"Insertion, {json.dumps(s['params'])}, finish_reason {s['finish_reason']}:",
            "```text",
            s["prompt"] + "⟦" + s["text"] + "⟧" + s["suffix"],
            "```",
        ]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description="evaluate cl100k-fim-mini")
    ap.add_argument("--model", type=Path, default=HERE)
    ap.add_argument("--corpus", type=Path, default=Path("/tmp/corpus/build"))
    ap.add_argument("--windows", type=int, default=32, help="max windows per source")
    ap.add_argument(
        "--train-windows",
        type=int,
        default=8,
        help="max windows per source for the train-split loss",
    )
    ap.add_argument("--infills", type=int, default=200)
    ap.add_argument("--json", type=Path, help="write all results here")
    args = ap.parse_args()

    from sampler import Engine
    from sampler.tokenizer import get_tokenizer

    engine = Engine.load(args.model)
    ctx = engine.info.context_length
    t0 = time.time()
    print("held-out loss (nats/token, full 100,277-id rows):", flush=True)
    res = {"held_out": held_out(args.model, args.corpus, args.windows, ctx)}
    print("train split, same procedure (the model's final training loss over full rows):")
    res["train"] = held_out(args.model, args.corpus, args.train_windows, ctx, test=False)
    tok = get_tokenizer("cl100k_base")
    cases = infill_cases(args.corpus, tok, args.infills, np.random.default_rng(SEED))
    res["fim"] = fim_eval(engine, cases)
    res["fim"]["teacher_forced"] = fim_teacher_forced(args.model, cases, tok)
    res["samples"] = samples(engine)
    res["seconds"] = round(time.time() - t0, 1)
    md = markdown(res)
    print(md)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
