"""vLLM Model Runner V2: OpenAI's sampling step as an MRV2 ``LogitsProcessor``, per request.

vLLM's Model Runner V2 (the default runner since vLLM 0.33; its interface is
``vllm.v1.worker.gpu.sample.logits_processor``) loads only processors of its own ABC and
rejects V1-interface ones at load time. :class:`OpenAILogitsProcessorV2` implements it with
the semantics of :class:`sampler.adapters.vllm.OpenAILogitsProcessor` (the same
``extra_args["openai"]`` fields and checks, :func:`sampler.adapters.vllm.request_spec`):

- ``add_request(slot, params)`` sets the slot's whole state (slots are recycled) and says
  whether the request is ours; ``apply(logits, ctx)`` finds our rows through
  ``ctx.expanded_idx_mapping`` -- a row is not a request: V2 reorders rows every step, and
  with speculative decoding a request owns one row per draft position.
- Penalties count the request's **output** tokens before the row's position: the committed
  ones (``req_states.all_token_ids`` from ``prompt_len`` to ``total_len``) and, for a draft
  row, the draft tokens fed before it in this step (``ctx.input_ids`` of the same request's
  earlier rows).
- The draw for output token ``k`` (``k = pos + 1 - prompt_len``) uses uniform number ``k``
  of the candidate's generator, ``SeedSequence(seed, spawn_key=(prompt_index,
  candidate))``, kept per slot. A rejected draft therefore never shifts later draws: each
  accepted token is the one our engine draws at that output position (spec §6 holds under
  speculative decoding, given the same logits).

``apply`` runs after vLLM's built-in bias and penalties and before its temperature and
top-k/top-p, which is why vLLM's own fields must stay neutral for these requests (checked in
``validate_params``, which V2 runs at admission in the frontend). Imports vllm and torch.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from vllm.v1.worker.gpu.sample.logits_processor import (
    LogitsContext,
    LogitsProcessor,
    LogitsProcRequestState,
)

from .._fast.draw import Workspace
from ..seeds import generator
from ..step import Row, sample_step
from .core import force, fresh_entropy, process_in_place
from .vllm import RequestSpec, request_spec

__all__ = ["OpenAILogitsProcessorV2"]


class _Slot:
    """One request slot: what it asked for, its committed output tokens' counts (a
    :class:`~sampler.step.Row`, caught up token by token) and its generator's uniforms."""

    def __init__(self, spec: RequestSpec) -> None:
        self.spec = spec
        p = spec.params
        self.rng = generator(p.seed if p.seed is not None else fresh_entropy(), *spec.key)
        self.uniforms: list[float] = []
        self.row = Row(p)  # over the committed output tokens counted so far
        self.seen = 0  # the position up to which ``all_token_ids`` was counted

    def uniform(self, k: int) -> float:
        """Uniform number ``k`` of the candidate's stream (drawn in order, kept)."""
        while len(self.uniforms) <= k:
            self.uniforms.append(float(self.rng.random()))
        return self.uniforms[k]

    def catch_up(self, tokens: Any, start: int, committed: int) -> None:
        """Count the output tokens committed since the last step: ``tokens`` is the slot's
        row of ``all_token_ids``, whose output runs from ``start`` to ``committed``."""
        if committed < self.seen:  # (not while a slot keeps its request: recount from scratch)
            self.row, self.seen = Row(self.spec.params), 0
        self.seen = max(self.seen, start)
        if committed > self.seen:
            for t in tokens[self.seen : committed].cpu().tolist():
                if t >= 0:
                    self.row.counts.add(int(t))
            self.seen = committed

    def row_after(self, drafts: list[int]) -> Row:
        """The row for a position after this step's ``drafts``: the slot's own when none."""
        if not drafts:
            return self.row
        row = Row(self.spec.params)
        for t in [*self.row.counts.added, *drafts]:
            row.counts.add(t)
        return row


class OpenAILogitsProcessorV2(LogitsProcessor):
    """OpenAI's sampling step under Model Runner V2, for requests whose ``extra_args`` hold
    ``"openai"``. Load it with ``LLM(model, logits_processors=[OpenAILogitsProcessorV2])``
    or ``vllm serve ... --logits-processors sampler.adapters.vllm_mrv2:OpenAILogitsProcessorV2``.
    """

    #: Ids set to ``-inf`` before the step (spec §3, step 0); None: no mask.
    mask_ids: ClassVar[Any] = None
    #: The logits' width, to refuse out-of-range ``logit_bias`` ids at admission.
    vocab_size: ClassVar[int | None] = None

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """Refuse a request whose ``extra_args["openai"]`` is invalid (``ValueError`` with
        the Completions API's message); vLLM runs this at admission, in the frontend."""
        request_spec(sampling_params, cls.vocab_size)

    def __init__(self, vllm_config: Any, req_states: LogitsProcRequestState) -> None:
        """Built once per engine; ``req_states`` are the runner's live per-slot buffers."""
        self.req_states = req_states
        self.slots: dict[int, _Slot] = {}
        self._mask = None if self.mask_ids is None else np.asarray(self.mask_ids, np.int64)
        self._ws: Workspace | None = None

    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        """Slot ``req_idx`` now holds this request (the slot's whole state is replaced);
        True when it is ours (``extra_args`` hold ``"openai"``)."""
        spec = request_spec(sampling_params, self.vocab_size)
        if spec is None:
            self.slots.pop(req_idx, None)  # a recycled slot: forget its last occupant
            return False
        self.slots[req_idx] = _Slot(spec)
        return True

    def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        """Rewrite our rows of ``logits`` [rows, V] in place."""
        if not self.slots:
            return logits
        slot_of = ctx.expanded_idx_mapping.cpu().numpy()  # [rows] row -> request slot
        ours = [r for r, s in enumerate(slot_of.tolist()) if s in self.slots]
        if not ours:
            return logits
        rs = self.req_states
        pos = ctx.pos.cpu().numpy()  # [rows] the position each row's logits are at
        prompt_len = np.asarray(rs.prompt_len.np)  # [slots]
        # a row before the end of its slot's (re)fill is a chunked-prefill row, whose token
        # vLLM discards: left alone (it has no output position)
        filled = np.maximum(prompt_len, np.asarray(rs.prefill_len.np))  # [slots]
        rows = [r for r in ours if pos[r] + 1 >= filled[slot_of[r]]]
        if not rows:
            return logits
        fed = ctx.input_ids.cpu().numpy()  # [rows] the token at each row's position
        total_len = rs.total_len.gpu.cpu().numpy()  # [slots]
        for s in {int(slot_of[r]) for r in rows}:
            self.slots[s].catch_up(rs.all_token_ids.gpu[s], int(prompt_len[s]), int(total_len[s]))
        index = torch.tensor(rows, dtype=torch.long, device=logits.device)  # [r]
        z = logits.index_select(0, index).to(device="cpu", dtype=torch.float32).numpy()  # [r, V]
        if self._mask is not None:
            z[:, self._mask] = -np.inf
        fed_at: dict[int, list[tuple[int, int]]] = {}  # slot -> its rows' (position, token)
        for r in sorted(rows, key=lambda r: pos[r]):
            fed_at.setdefault(int(slot_of[r]), []).append((int(pos[r]), int(fed[r])))
        steps: list[tuple[_Slot, Row, int]] = []  # per row: its slot, its row, its output index
        for r in rows:
            s, p = int(slot_of[r]), int(pos[r])
            committed = int(total_len[s])
            # this step's draft tokens before the row (at positions committed..p), in order
            drafts = [t for q, t in fed_at[s] if committed <= q <= p and t >= 0]
            slot = self.slots[s]
            steps.append((slot, slot.row_after(drafts), p + 1 - int(prompt_len[s])))
        out = self._step(z, steps)  # [r, V]
        logits.index_copy_(0, index, torch.from_numpy(out).to(logits.device, logits.dtype))
        return logits

    def _step(self, z: np.ndarray, steps: list[tuple[_Slot, Row, int]]) -> np.ndarray:
        """Our rows drawn (left one-hot; all in one batched step) or, with ``draw: false``,
        processed."""
        out = np.empty_like(z)  # [r, V]
        drawn = [i for i, (slot, _, _) in enumerate(steps) if slot.spec.draw]
        kept = [i for i, (slot, _, _) in enumerate(steps) if not slot.spec.draw]
        if drawn:
            if self._ws is None or self._ws.vocab != z.shape[1]:
                self._ws = Workspace(z.shape[1])
            rows = [steps[i][1] for i in drawn]
            uniforms = [steps[i][0].uniform(steps[i][2]) for i in drawn]
            tokens = sample_step(z[drawn], rows, uniforms, workspace=self._ws).tokens  # [d]
            out[drawn] = force(np.empty((len(drawn), z.shape[1]), z.dtype), tokens)  # [d, V]
        if kept:
            rows = [steps[i][1] for i in kept]
            processed = process_in_place(
                z[kept], [r.params for r in rows], [r.counts for r in rows]
            )
            out[kept] = processed  # [k, V]
        return out
