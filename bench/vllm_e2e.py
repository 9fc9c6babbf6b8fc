"""End to end on a GPU machine: ``vllm serve`` with our processor, seeded choices through the
OpenAI SDK, checked against our engine's step on the very logits vLLM computed (not CI).

    pip install 'vllm==0.33.0' openai            # a CUDA machine; this repository on disk
    PYTHONPATH=.:bench python bench/vllm_e2e.py --model HuggingFaceTB/SmolLM2-135M-Instruct

What it does:

1. Starts ``vllm serve MODEL --logits-processors vllm_e2e:LogitsRecorder,
   sampler.adapters.vllm:Processor`` (Model Runner V2, vLLM's default). vLLM applies custom
   processors in the order given, so :class:`LogitsRecorder` sees each of our requests' rows
   just before our processor does, and writes them (with the tokens before each row) to
   ``--record-dir``, one ``.npz`` per step.
2. Sends Completions requests through the official ``openai`` client: several prompts, ``n``
   = 2 with an OpenAI ``seed`` (vLLM's ``seed`` the same, so its children draw as
   candidates 0 and 1), the OpenAI fields in ``vllm_xargs``, token ids returned
   (``return_tokens_as_token_ids``).
3. Replays every generated token: the recorded row for (prompt + the tokens before it)
   through ``sampler.adapters.core.Sequences`` with the same fields, seed and candidate
   must give the token vLLM returned. Prints the count of tokens checked and of mismatches;
   exit status 1 on any mismatch or missing row.

Not run by the project: there is no GPU on its machines (2026-12-03). Unverified there, so
check first on a GPU: that ``--logits-processors`` takes several classes after one flag, and
that the choices' ``index`` is vLLM's child index (``seed + index``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

try:  # the recorder is imported by vLLM's engine process; the client part needs neither
    import torch
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor
except ImportError:  # pragma: no cover - (the script's client side, or no vLLM)
    LogitsProcessor = object  # type: ignore[assignment,misc]

FIELDS = {"temperature": 0.8, "top_p": 0.9, "presence_penalty": 0.5, "frequency_penalty": 0.5}
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]


class LogitsRecorder(LogitsProcessor):  # type: ignore[misc,valid-type]
    """Writes the rows of requests carrying ``extra_args["openai"]`` as they reach it:
    ``{"history": [tokens before the row's prediction], "logits": float32 row}`` per row,
    to ``$VLLM_E2E_RECORD_DIR``. Changes nothing."""

    def __init__(self, vllm_config: Any, req_states: Any) -> None:
        self.req_states = req_states
        self.ours: set[int] = set()
        self.dir = Path(os.environ["VLLM_E2E_RECORD_DIR"])
        self.step = 0

    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        if (getattr(sampling_params, "extra_args", None) or {}).get("openai") is None:
            self.ours.discard(req_idx)
            return False
        self.ours.add(req_idx)
        return True

    def apply(self, logits: Any, ctx: Any) -> Any:
        slots = ctx.expanded_idx_mapping.cpu().tolist()
        pos = ctx.pos.cpu().tolist()
        fed = ctx.input_ids.cpu().tolist()
        total = self.req_states.total_len.gpu.cpu().tolist()
        tokens = self.req_states.all_token_ids.gpu
        hist, rows = [], []
        for r, s in enumerate(slots):
            if s not in self.ours:
                continue
            committed = tokens[s, : min(total[s], pos[r] + 1)].cpu().tolist()
            drafts = [
                t for q, t in enumerate(fed) if slots[q] == s and total[s] <= pos[q] <= pos[r]
            ]
            hist.append(json.dumps(committed + drafts))
            rows.append(r)
        if rows:
            z = logits[torch.tensor(rows, device=logits.device)].float().cpu().numpy()
            np.savez(self.dir / f"{os.getpid()}-{self.step}.npz", history=np.array(hist), logits=z)
        self.step += 1
        return logits


def serve(model: str, port: int, record: Path) -> subprocess.Popen:
    env = dict(os.environ, VLLM_E2E_RECORD_DIR=str(record))
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "bench"), env.get("PYTHONPATH", "")])
    cmd = [
        "vllm",
        "serve",
        model,
        "--port",
        str(port),
        "--max-model-len",
        "2048",
        "--logits-processors",
        "vllm_e2e:LogitsRecorder",
        "sampler.adapters.vllm:Processor",
    ]
    return subprocess.Popen(cmd, env=env)


def tokenize(port: int, model: str, prompt: str) -> list[int]:
    """The prompt's ids as vLLM reads them (its ``/tokenize``, special tokens as for
    Completions)."""
    import urllib.request

    body = json.dumps({"model": model, "prompt": prompt}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/tokenize", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return [int(t) for t in json.loads(r.read())["tokens"]]


def wait_ready(client: Any, proc: subprocess.Popen, timeout: float = 600.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"vllm serve exited with {proc.returncode}")
        try:
            client.models.list()
            return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(2)
    raise SystemExit("vllm serve did not come up")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--record-dir", default=None)
    args = ap.parse_args(argv)

    import openai

    from sampler.adapters.core import Sequences, sampling_params

    record = Path(args.record_dir or tempfile.mkdtemp(prefix="vllm-e2e-"))
    record.mkdir(parents=True, exist_ok=True)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{args.port}/v1", api_key="none")
    proc = serve(args.model, args.port, record)
    try:
        wait_ready(client, proc)
        fields = {**FIELDS, "seed": args.seed}
        results = []
        for prompt in PROMPTS:
            r = client.completions.create(
                model=args.model,
                prompt=prompt,
                max_tokens=args.max_tokens,
                n=2,
                seed=args.seed,
                logprobs=0,
                extra_body={
                    "vllm_xargs": {"openai": json.dumps(fields)},
                    "return_tokens_as_token_ids": True,
                    "ignore_eos": True,
                },
            )
            ids = tokenize(args.port, args.model, prompt)
            for c in r.choices:
                out = [int(t.split(":")[1]) for t in c.logprobs.tokens]
                results.append((ids, c.index, out))
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    rows: dict[str, np.ndarray] = {}
    for f in sorted(glob.glob(str(record / "*.npz"))):
        with np.load(f) as d:
            rows.update(zip(d["history"].tolist(), d["logits"]))
    checked = bad = missing = 0
    for ids, candidate, out in results:
        seqs = Sequences([sampling_params(fields)], seed_keys=[(0, candidate)])
        for k, token in enumerate(out):
            z = rows.get(json.dumps(ids + out[:k]))
            if z is None:
                missing += 1
                break
            ours = int(seqs.step(z[None, :]).tokens[0])
            checked += 1
            bad += ours != token
    print(
        f"{checked} tokens checked against our step on vLLM's logits: {bad} differ, "
        f"{missing} choices with a missing row (records in {record})"
    )
    return 1 if bad or missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
