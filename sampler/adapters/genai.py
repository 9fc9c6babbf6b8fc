"""onnxruntime-genai: genai runs the model (its KV cache, its batching), refsampler samples.

onnxruntime-genai samples in C++ with greedy/top-k/top-p and a repetition penalty; it has no
``logit_bias``, no presence/frequency penalties, no logprobs, and its top-p is not the
minimal nucleus. :func:`generate` uses a genai ``Generator`` as the model only: at each step
it reads the logits (``get_logits``), runs the OpenAI step with each sequence's own generator
(spec §3, §6), and forces the drawn token — it hands genai a row that is ``-inf`` except at
that token (``set_logits``) and lets genai's greedy search append it
(``generate_next_token``). Works for a batch of any size: prompts are right-padded with
``pad_token_id``, which genai masks.

:func:`prepare` writes the ``genai_config.json`` that genai needs next to a refsampler model
folder's ``model.onnx`` (HF/Optimum KV-cache names), in a separate folder.

Imports ``onnxruntime_genai`` when a model is loaded (``pip install 'refsampler[genai]'``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .core import Generated, SamplingParams, Sequences, force, fresh_entropy, per_prompt

__all__ = ["generate", "prepare", "genai_config", "GENAI_CONFIG"]

GENAI_CONFIG = "genai_config.json"

Params = SamplingParams | Mapping[str, Any] | Sequence[SamplingParams | Mapping[str, Any]] | None


def genai_config(model_dir: str | os.PathLike, *, pad_token_id: int | None = None) -> dict:
    """The ``genai_config.json`` content for a refsampler model folder (``refsampler.json``
    + an ONNX decoder with HF/Optimum KV-cache names): ``type: "llama"``, the layer count,
    KV heads and head size read from the graph's ``past_key_values`` inputs, the folder's
    context length and end ids, ``past_present_share_buffer: false`` (the graph
    concatenates its own cache). ``pad_token_id`` defaults to the first id the tokenizer
    masks that is not an end id (cl100k_base: 100256, not a token) so that no prompt can
    contain it.

    ``num_attention_heads``/``hidden_size`` are not in the graph's inputs; genai does not
    read them for a plain decoder graph, and they are written as the KV heads' values.
    """
    import onnx

    from ..model import load_config
    from ..tokenizer import tokenizer_for

    cfg = load_config(model_dir)
    graph = onnx.load(str(cfg.onnx_path), load_external_data=False).graph
    past = [
        i for i in graph.input if i.name.startswith("past_key_values.") and i.name.endswith(".key")
    ]
    if not past:
        raise ValueError(
            f"{cfg.onnx_path}: no past_key_values.N.key inputs; not a decoder "
            "with the HF/Optimum KV-cache names"
        )
    if any(i.name == "seqlens_k" for i in graph.input):
        raise ValueError(
            f"{cfg.onnx_path}: a GroupQueryAttention graph (in-place KV cache, "
            "seqlens_k input), which onnxruntime-genai cannot feed from this "
            "config; convert the GGUF with `sampler convert ... --attention "
            "exact` for genai"
        )
    dims = past[0].type.tensor_type.shape.dim
    kv_heads, head_size = int(dims[1].dim_value), int(dims[3].dim_value)
    logits = next(o for o in graph.output if o.name == "logits")
    vocab = int(logits.type.tensor_type.shape.dim[2].dim_value)
    if pad_token_id is None:
        masked = tokenizer_for(cfg).masked_ids(vocab, cfg.eos_token_ids)
        pad_token_id = int(masked[0]) if masked.size else int(cfg.eos_token_ids[0])
    decoder = {
        "filename": cfg.onnx,
        "session_options": {
            "log_id": "onnxruntime-genai",
            "intra_op_num_threads": 1,
            "provider_options": [],
        },
        "head_size": head_size,
        "hidden_size": head_size * kv_heads,
        "num_attention_heads": kv_heads,
        "num_key_value_heads": kv_heads,
        "num_hidden_layers": len(past),
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
    }
    eos = list(cfg.eos_token_ids)
    return {
        "model": {
            "type": "llama",
            "context_length": cfg.context_length,
            "vocab_size": vocab,
            "eos_token_id": eos[0] if len(eos) == 1 else eos,
            "pad_token_id": pad_token_id,
            "decoder": decoder,
        },
        "search": {
            "do_sample": False,
            "num_beams": 1,
            "max_length": cfg.context_length,
            "past_present_share_buffer": False,
        },
    }


def prepare(model_dir: str | os.PathLike, out_dir: str | os.PathLike, **kw: Any) -> Path:
    """A folder genai can load: ``out_dir`` with :func:`genai_config` and links to the
    model's ONNX file (and its external-data file, if any). Returns ``out_dir``."""
    from ..model import load_config

    src = load_config(model_dir)
    config = genai_config(model_dir, **kw)  # refuses a graph genai cannot run, before any file
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in Path(model_dir).iterdir():
        if f.name.startswith(src.onnx) and not f.name.endswith(".sha256"):
            link = out / f.name
            if not link.exists():
                try:
                    os.link(f, link)
                except OSError:
                    link.symlink_to(f.resolve())
    (out / GENAI_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out


def _load(model: Any) -> tuple[Any, dict | None]:
    """An ``og.Model`` and, when ``model`` is a folder, its genai config."""
    import onnxruntime_genai as og

    if isinstance(model, (str, os.PathLike)):
        cfg = json.loads((Path(model) / GENAI_CONFIG).read_text(encoding="utf-8"))
        return og.Model(str(model)), cfg
    return model, None


def generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    params: Params = None,
    /,
    *,
    n: int = 1,
    max_tokens: int = 16,
    mask_ids: np.ndarray | Sequence[int] | None = None,
    end_ids: Iterable[int] | None = None,
    pad_token_id: int | None = None,
    **fields: Any,
) -> list[Generated]:
    """Generate ``n`` candidates for each token prompt with a genai ``Generator`` as the
    model and the OpenAI step as the sampler; one :class:`~sampler.adapters.core.Generated`
    per candidate, prompt-major (``index = p * n + c``, as the Completions API).

    ``model``: a folder with ``genai_config.json`` (its ``pad_token_id`` and
    ``eos_token_id`` are the defaults here) or an ``og.Model`` (then pass ``pad_token_id``
    and ``end_ids``). ``params``/``fields``: OpenAI's sampling fields (one set, or one per
    prompt), ``seed`` included. A sequence ends at an end id (``"stop"``, the end token kept
    in ``tokens``) or after ``max_tokens`` (``"length"``). ``mask_ids`` are set to ``-inf``
    before anything else (step 0; e.g. ``core.masked_ids("cl100k_base", V, end_ids)`` to
    match the engine). Raises ``ValueError`` if a prompt holds the pad id (genai would mask
    it) or if genai appends another token than the one drawn.
    """
    import onnxruntime_genai as og

    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    og_model, cfg = _load(model)
    mcfg = (cfg or {}).get("model", {})
    if pad_token_id is None:
        pad_token_id = mcfg.get("pad_token_id")
    if end_ids is None:
        eos = mcfg.get("eos_token_id")
        end_ids = [] if eos is None else (eos if isinstance(eos, list) else [eos])
    if pad_token_id is None:
        raise ValueError(
            "generate: pass pad_token_id (or a model folder whose genai_config.json sets it)"
        )
    ends = frozenset(int(e) for e in end_ids)
    for i, p in enumerate(prompts):
        if pad_token_id in p:
            raise ValueError(
                f"prompt {i} holds the pad id {pad_token_id}, which genai masks; "
                "choose a pad_token_id no prompt uses"
            )
    per = per_prompt(params, len(prompts), **fields)
    seqs = Sequences.for_prompts(per, n, mask_ids=mask_ids, entropy=fresh_entropy())
    rows = [prompts[p] for p in range(len(prompts)) for _ in range(n)]
    width = max(len(r) for r in rows)
    context = mcfg.get("context_length")
    if context is not None and width + max_tokens > context:
        raise ValueError(
            f"generate: {width} prompt tokens + max_tokens {max_tokens} exceed "
            f"the context length {context}"
        )
    batch = len(rows)
    ids = np.full((batch, width), pad_token_id, dtype=np.int32)  # right-padded: genai's way
    for b, r in enumerate(rows):
        ids[b, : len(r)] = r

    gp = og.GeneratorParams(og_model)
    gp.set_search_options(
        batch_size=batch,
        max_length=width + max_tokens,
        do_sample=False,
        num_beams=1,
        min_length=0,
        repetition_penalty=1.0,
    )
    gen = og.Generator(og_model, gp)
    gen.append_tokens(ids)
    tokens: list[list[int]] = [[] for _ in range(batch)]
    live = np.ones(batch, dtype=bool)  # [B]
    forced: np.ndarray | None = None
    for step in range(max_tokens):
        logits = gen.get_logits()  # [B, 1, V] float32
        z = np.asarray(logits).reshape(batch, -1)  # [B, V]
        if step == 0:
            seqs.check_vocab(z.shape[1])
        active = np.flatnonzero(live)
        out = seqs.step(z, active if active.size < batch else None)
        for i, b in enumerate(active.tolist()):
            t = int(out.tokens[i])
            if t == pad_token_id and t not in ends:
                raise ValueError(
                    f"row {b} drew the pad id {t}, which genai would mask: put it "
                    "in mask_ids (prepare's pad is an id the tokenizer masks)"
                )
            tokens[b].append(t)
            if t in ends:
                live[b] = False
        if step == max_tokens - 1 or not live.any():
            break
        chosen = np.full(batch, pad_token_id, dtype=np.int64)  # finished rows: genai pads
        chosen[active] = out.tokens
        if forced is None:
            forced = np.empty((batch, z.shape[1]), dtype=np.float32)
        gen.set_logits(force(forced, chosen))
        gen.generate_next_token()
        got = np.asarray(gen.get_next_tokens()).reshape(-1)  # [B]
        if not np.array_equal(got[live], chosen[live]):
            b = int(np.flatnonzero(got[live] != chosen[live])[0])
            raise ValueError(
                f"genai appended {got[live][b]} instead of the drawn token "
                f"{chosen[live][b]}: its search is not greedy over the forced row"
            )
    return [
        Generated(
            prompt=b // n,
            candidate=b % n,
            tokens=tokens[b],
            finish_reason="stop" if tokens[b] and tokens[b][-1] in ends else "length",
            logprobs=seqs.records[b],
        )
        for b in range(batch)
    ]
