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
    """One request slot: what it asked for and its generator's uniforms drawn so far."""

    def __init__(self, spec: RequestSpec) -> None:
        self.spec = spec
        p = spec.params
        self.rng = generator(p.seed if p.seed is not None else fresh_entropy(), *spec.key)
        self.uniforms: list[float] = []

    def uniform(self, k: int) -> float:
        """Uniform number ``k`` of the candidate's stream (drawn in order, kept)."""
        while len(self.uniforms) <= k:
            self.uniforms.append(float(self.rng.random()))
        return self.uniforms[k]


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
        index = torch.tensor(rows, dtype=torch.long, device=logits.device)  # [r]
        z = logits.index_select(0, index).to(device="cpu", dtype=torch.float32).numpy()  # [r, V]
        if self._mask is not None:
            z[:, self._mask] = -np.inf
        out = np.empty_like(z)  # [r, V]
        fed_at: dict[int, list[tuple[int, int]]] = {}  # slot -> its rows' (position, token)
        for r in rows:
            fed_at.setdefault(int(slot_of[r]), []).append((int(pos[r]), int(fed[r])))
        for i, r in enumerate(rows):
            s = int(slot_of[r])
            start, committed, p = int(prompt_len[s]), int(total_len[s]), int(pos[r])
            history = rs.all_token_ids.gpu[s, start : min(committed, p + 1)].cpu().tolist()  # [h]
            drafts = sorted(t for t in fed_at[s] if committed <= t[0] <= p)
            output = history + [t for _, t in drafts]
            self._row(self.slots[s], z[i : i + 1], output, p + 1 - start, out[i : i + 1])
        logits.index_copy_(0, index, torch.from_numpy(out).to(logits.device, logits.dtype))
        return logits

    def _row(self, slot: _Slot, z: np.ndarray, output: list[int], k: int, out: np.ndarray) -> None:
        """One row: the step over ``output`` (the tokens before it), drawn (one-hot) or
        processed (``draw: false``)."""
        row = Row(slot.spec.params)
        for t in output:
            if t >= 0:
                row.counts.add(int(t))
        if slot.spec.draw:
            if self._ws is None or self._ws.vocab != z.shape[1]:
                self._ws = Workspace(z.shape[1])
            token = int(sample_step(z, [row], [slot.uniform(k)], workspace=self._ws).tokens[0])
            force(out, [token])
            return
        np.copyto(out, z)
        process_in_place(out, [row.params], [row.counts])
