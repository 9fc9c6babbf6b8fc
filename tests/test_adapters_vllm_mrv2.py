"""The vLLM Model Runner V2 logits processor, driven the way V2's sampler drives it.

In CI vLLM is not installed: the adapter is imported against a fake of V2's interface
module (``vllm.v1.worker.gpu.sample.logits_processor``) written from vLLM 0.33's source;
``test_the_fake_has_the_real_signatures`` (run where vLLM imports: its own venv) holds the
fake to the real classes, and the loader test runs vLLM's own loader and validator. The
persistent batch is run by hand over the tiny model: slots recycled, rows reordered every
step, and speculative decoding with draft rows (some accepted, some rejected). Every
request's tokens equal ``sampler.Engine``'s for the same OpenAI fields and seed.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # in the test extra

from test_adapters_vllm import (  # noqa: E402
    FIELDS,
    SamplingParams,
    _BatchUpdate,
    _LogitsProcessor,
    _MoveDirectionality,
)

from sampler import Engine  # noqa: E402


# --- a fake of vLLM 0.33's MRV2 interface (checked against the real one below) --------------
@dataclass(frozen=True)
class _LogitsProcRequestState:
    device: Any
    max_num_reqs: int
    vocab_size: int
    all_token_ids: Any
    prompt_len: Any
    prefill_len: Any
    total_len: Any


@dataclass(frozen=True)
class _LogitsContext:
    expanded_idx_mapping: Any
    idx_mapping: Any
    idx_mapping_np: Any
    expanded_local_pos: Any
    input_ids: Any
    pos: Any
    seq_lens_upper_bound_np: Any


class _LogitsProcessorV2(ABC):
    def __init__(self, vllm_config, req_states):  # noqa: B027
        pass

    @classmethod  # noqa: B027
    def validate_params(cls, sampling_params) -> None:
        pass

    def add_request(self, req_idx: int, sampling_params) -> bool:
        return True

    def apply_staged_writes(self) -> None:  # noqa: B027
        pass

    @abstractmethod
    def apply(self, logits, ctx): ...


V2_MODULE = "vllm.v1.worker.gpu.sample.logits_processor"


@pytest.fixture
def mrv2(monkeypatch):
    """``sampler.adapters.vllm_mrv2`` imported against the fake interfaces (restored)."""
    names = (
        "vllm",
        "vllm.v1",
        "vllm.v1.sample",
        "vllm.v1.sample.logits_processor",
        "vllm.v1.worker",
        "vllm.v1.worker.gpu",
        "vllm.v1.worker.gpu.sample",
        V2_MODULE,
    )
    mods = {name: types.ModuleType(name) for name in names}
    v1 = mods["vllm.v1.sample.logits_processor"]
    v1.LogitsProcessor, v1.BatchUpdate = _LogitsProcessor, _BatchUpdate
    v1.MoveDirectionality = _MoveDirectionality
    v2 = mods[V2_MODULE]
    v2.LogitsProcessor, v2.LogitsContext = _LogitsProcessorV2, _LogitsContext
    v2.LogitsProcRequestState = _LogitsProcRequestState
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    for name in ("sampler.adapters.vllm", "sampler.adapters.vllm_mrv2"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield importlib.import_module("sampler.adapters.vllm_mrv2"), v2
    for name in ("sampler.adapters.vllm", "sampler.adapters.vllm_mrv2"):
        sys.modules.pop(name, None)


# --- V2's loop, by hand ----------------------------------------------------------------------
class _Buffers:
    """The runner's per-slot buffers the processor reads (``.gpu`` on the device, ``.np``
    on the host), here on the CPU."""

    def __init__(self, slots: int, width: int) -> None:
        self.all_token_ids = types.SimpleNamespace(gpu=torch.zeros(slots, width, dtype=torch.int64))
        self.prompt_len = types.SimpleNamespace(np=np.zeros(slots, np.int64))
        self.prefill_len = types.SimpleNamespace(np=np.zeros(slots, np.int64))
        self.total_len = types.SimpleNamespace(gpu=torch.zeros(slots, dtype=torch.int64))


class _Req:
    def __init__(self, prompt: list[int], params: Any, max_tokens: int, drafts: int = 0) -> None:
        self.prompt, self.params, self.max_tokens, self.drafts = prompt, params, max_tokens, drafts
        self.output: list[int] = []
        self.slot = -1
        self.fed = 0  # prompt tokens prefilled so far


def _full_logits(decoder, ids: list[int]) -> np.ndarray:
    rows: dict[int, np.ndarray] = {}
    decoder.prefill([ids], on_logits=lambda p, pos, lg: rows.update(zip(pos.tolist(), lg)))
    return np.stack([rows[i] for i in range(len(ids))])


def _run(
    v2, decoder, proc_cls, reqs: list[_Req], *, slots: int, seed: int, propose=None, chunk=None
) -> dict:
    """Admit requests into free slots (recycled as they finish), and step: a prompt longer
    than ``chunk`` is prefilled ``chunk`` tokens a step, each unfinished chunk giving a row
    (at its last position) whose token is discarded and which must be left untouched;
    then this step's rows in a shuffled order, a request with ``drafts`` > 0 proposing
    that many random draft tokens (one row each, plus its last committed token's row;
    ``propose(request, d)`` gives them instead, when set); a draft is accepted while the
    processed row before it leaves exactly that token possible (what vLLM's rejection
    sampler does with a one-hot target), and the first mismatch takes the forced token."""
    rng = np.random.default_rng(seed)
    buf = _Buffers(slots, 128)
    state = _LogitsProcRequestState(
        device=torch.device("cpu"),
        max_num_reqs=slots,
        vocab_size=decoder.vocab_size,
        all_token_ids=buf.all_token_ids,
        prompt_len=buf.prompt_len,
        prefill_len=buf.prefill_len,
        total_len=buf.total_len,
    )
    proc = proc_cls(None, state)
    free, waiting, live = list(range(slots)), list(reqs), []
    stats = {"accepted": 0, "rejected": 0, "recycled": 0, "prefill_rows": 0}
    used: set[int] = set()
    while waiting or live:
        while waiting and free:
            r = waiting.pop(0)
            r.slot = free.pop(0)
            stats["recycled"] += r.slot in used
            used.add(r.slot)
            assert isinstance(proc.add_request(r.slot, r.params), bool)
            n = len(r.prompt)
            buf.all_token_ids.gpu[r.slot, :n] = torch.tensor(r.prompt)
            buf.prompt_len.np[r.slot] = buf.prefill_len.np[r.slot] = n
            buf.total_len.gpu[r.slot] = n
            r.fed = 0 if chunk else n
            live.append(r)
        rows = []  # (request, position, token fed, draft index, drafts; None: a prefill row)
        for r in live:
            seq = r.prompt + r.output
            d = min(r.drafts, r.max_tokens - len(r.output) - 1)
            if r.fed < len(r.prompt):  # chunked prefill
                r.fed = min(len(r.prompt), r.fed + chunk)
                if r.fed < len(r.prompt):
                    rows.append((r, r.fed - 1, r.prompt[r.fed - 1], 0, None))
                    continue
                d = 0  # no drafts on the step that finishes the prefill
            guess = propose(r, d) if propose else rng.integers(0, 300, d).tolist()
            for j in range(d + 1):
                rows.append((r, len(seq) - 1 + j, (seq + guess)[len(seq) - 1 + j], j, guess))
        order = rng.permutation(len(rows))
        rows = [rows[i] for i in order]
        logits = []
        for r, p, _, _, guess in rows:
            logits.append(_full_logits(decoder, (r.prompt + r.output + (guess or []))[: p + 1])[p])
        z = torch.from_numpy(np.stack(logits))  # [rows, V]
        before = z.clone()  # [rows, V]
        ctx = _LogitsContext(
            expanded_idx_mapping=torch.tensor([r.slot for r, *_ in rows]),
            idx_mapping=torch.tensor([r.slot for r in live]),
            idx_mapping_np=np.array([r.slot for r in live]),
            expanded_local_pos=torch.tensor([j for *_, j, _ in rows]),
            input_ids=torch.tensor([t for _, _, t, _, _ in rows]),
            pos=torch.tensor([p for _, p, *_ in rows]),
            seq_lens_upper_bound_np=np.array([len(r.prompt + r.output) + r.drafts for r in live]),
        )
        out = proc.apply(z, ctx)
        for i, (*_, guess) in enumerate(rows):
            if guess is None:
                assert torch.equal(out[i], before[i])  # a prefill row: untouched
                stats["prefill_rows"] += 1
        pick = {(id(r), j): int(out[i].argmax()) for i, (r, _, _, j, _) in enumerate(rows)}
        for r in list(live):
            guess = next(g for rr, *_, g in rows if rr is r)
            if guess is None:
                continue  # its token is discarded
            for j in range(len(guess) + 1):
                t = pick[id(r), j]
                r.output.append(t)
                if j < len(guess) and t == guess[j]:
                    stats["accepted"] += 1
                    continue
                stats["rejected"] += j < len(guess)
                break
            del r.output[r.max_tokens :]
            n = len(r.prompt) + len(r.output)
            buf.all_token_ids.gpu[r.slot, :n] = torch.tensor(r.prompt + r.output)
            buf.total_len.gpu[r.slot] = n
            if len(r.output) >= r.max_tokens:
                live.remove(r)
                free.append(r.slot)
    return stats


def _texts(engine, ids):
    return [engine.tokenizer.token_text(t) for t in ids]


def test_a_reordered_recycled_speculative_batch_draws_the_engines_tokens(mrv2, tiny_model_dir):
    module, v2 = mrv2
    engine = Engine.load(tiny_model_dir)

    class Proc(module.OpenAILogitsProcessorV2):
        mask_ids = engine.info.masked_ids
        vocab_size = engine.vocab_size

    assert issubclass(Proc, v2.LogitsProcessor)
    p1, p2, p3 = [9906, 11, 1917], [40, 1093, 1521, 13], [5]
    # drafts: random guesses are mostly rejected; a greedy request (temperature 0 with a
    # bias towards one token) makes some of them right, so both paths run
    reqs = [
        _Req(p1, SamplingParams(extra_args={"openai": {**FIELDS, "seed": 4}}), 5, drafts=2),
        _Req(p2, SamplingParams(extra_args={"openai": {"temperature": 0}}), 6, drafts=3),
        _Req(p3, SamplingParams(), 3),  # not ours: vLLM's plain argmax
        _Req(p2, SamplingParams(extra_args={"openai": {**FIELDS, "seed": 9}}), 4),
        _Req(p1, SamplingParams(extra_args={"openai": {**FIELDS, "seed": 4}}), 5),
    ]
    stats = _run(v2, engine.decoder, Proc, reqs, slots=3, seed=0)
    assert stats["recycled"] >= 2 and stats["rejected"] >= 1
    want0 = engine.complete(prompt=[p1], max_tokens=5, seed=4, logprobs=0, **FIELDS)
    want1 = engine.complete(prompt=[p2], max_tokens=6, temperature=0, logprobs=0)
    want3 = engine.complete(prompt=[p2], max_tokens=4, seed=9, logprobs=0, **FIELDS)
    assert _texts(engine, reqs[0].output) == want0["choices"][0]["logprobs"]["tokens"]
    assert _texts(engine, reqs[1].output) == want1["choices"][0]["logprobs"]["tokens"]
    assert _texts(engine, reqs[3].output) == want3["choices"][0]["logprobs"]["tokens"]
    # the same request again, in a recycled slot and without drafts: the same tokens
    assert reqs[4].output == reqs[0].output
    assert reqs[2].output == [
        int(np.argmax(_full_logits(engine.decoder, p3 + reqs[2].output[:k])[-1])) for k in range(3)
    ]


def test_drafts_right_or_wrong_do_not_change_the_draws(mrv2, tiny_model_dir):
    """Draft rows that are rejected consume no draw, and accepted ones see the drafts
    before them in their penalties: with drafts that are all right (the tokens of a run
    without drafts proposed) or mostly wrong (random), the seeded tokens are the same."""
    module, _ = mrv2
    engine = Engine.load(tiny_model_dir)

    class Proc(module.OpenAILogitsProcessorV2):
        mask_ids = engine.info.masked_ids
        vocab_size = engine.vocab_size

    # three tokens made likely, strong penalties: which a draft row counts decides its draw
    strong = {
        "logit_bias": {"11": 12, "13": 12, "40": 12},
        "presence_penalty": 2.0,
        "frequency_penalty": 2.0,
    }
    sp = SamplingParams(extra_args={"openai": {**strong, "seed": 21}})
    plain = [_Req([9906, 11], sp, 6)]
    _run(None, engine.decoder, Proc, plain, slots=1, seed=1)
    drafted = [_Req([9906, 11], sp, 6, drafts=4)]
    stats = _run(None, engine.decoder, Proc, drafted, slots=1, seed=2)
    assert drafted[0].output == plain[0].output and stats["rejected"] >= 1
    want = plain[0].output
    right = [_Req([9906, 11], sp, 6, drafts=3)]
    stats = _run(
        None,
        engine.decoder,
        Proc,
        right,
        slots=1,
        seed=3,
        propose=lambda r, d: want[len(r.output) : len(r.output) + d],
    )
    assert right[0].output == want and stats["accepted"] >= 3 and stats["rejected"] == 0


def test_chunked_prefill_rows_are_left_alone(mrv2, tiny_model_dir):
    """A prompt longer than the runner's chunk gives, each step before its prefill ends, a
    row whose token vLLM discards: the processor leaves it untouched and draws nothing for
    it, and the request's tokens are still the engine's."""
    module, _ = mrv2
    engine = Engine.load(tiny_model_dir)

    class Proc(module.OpenAILogitsProcessorV2):
        mask_ids = engine.info.masked_ids
        vocab_size = engine.vocab_size

    long = [int(t) for t in np.random.default_rng(5).integers(10, 5000, 40)]
    reqs = [
        _Req(long, SamplingParams(extra_args={"openai": {**FIELDS, "seed": 3}}), 5, drafts=2),
        _Req([9906, 11], SamplingParams(extra_args={"openai": {**FIELDS, "seed": 8}}), 4),
    ]
    stats = _run(None, engine.decoder, Proc, reqs, slots=2, seed=4, chunk=16)
    assert stats["prefill_rows"] == 2  # positions 15 and 31 of the 40-token prompt
    for r, seed in zip(reqs, (3, 8)):
        want = engine.complete(
            prompt=[r.prompt], max_tokens=r.max_tokens, seed=seed, logprobs=0, **FIELDS
        )
        assert _texts(engine, r.output) == want["choices"][0]["logprobs"]["tokens"]


def test_add_request_and_validation(mrv2):
    module, _ = mrv2
    V = module.OpenAILogitsProcessorV2
    V.validate_params(SamplingParams())
    with pytest.raises(ValueError, match="Expected a value <= 1"):
        V.validate_params(SamplingParams(extra_args={"openai": {"top_p": 1.5}}))
    proc = V(None, None)
    assert proc.add_request(0, SamplingParams(extra_args={"openai": {"seed": 1}})) is True
    assert proc.add_request(0, SamplingParams()) is False and 0 not in proc.slots  # recycled
    assert proc.add_request(1, SamplingParams(extra_args={"openai": {"seed": 2}})) is True
    z = torch.randn(2, 10)
    ctx = _LogitsContext(
        torch.tensor([0, 0]),
        torch.tensor([0]),
        np.array([0]),
        torch.tensor([0, 1]),
        torch.tensor([1, 2]),
        torch.tensor([3, 4]),
        np.array([5]),
    )
    assert torch.equal(proc.apply(z.clone(), ctx), z)  # slot 1 is ours, no row is its: untouched


# --- against the real vLLM (its own venv) ------------------------------------------------------
def _signature_of(cls) -> dict:
    out = {}
    for name in ("__init__", "validate_params", "add_request", "apply_staged_writes", "apply"):
        sig = inspect.signature(getattr(cls, name))
        out[name] = [(p.name, p.kind) for p in sig.parameters.values()]
    return out


def test_the_fake_has_the_real_signatures():
    pytest.importorskip("vllm")
    real = importlib.import_module(V2_MODULE)
    assert [f.name for f in fields(real.LogitsContext)] == [f.name for f in fields(_LogitsContext)]
    assert [f.name for f in fields(real.LogitsProcRequestState)] == [
        f.name for f in fields(_LogitsProcRequestState)
    ]
    assert _signature_of(real.LogitsProcessor) == _signature_of(_LogitsProcessorV2)
    assert real.LogitsProcessor.__abstractmethods__ == _LogitsProcessorV2.__abstractmethods__


def test_vllms_loader_takes_ours_and_refuses_the_v1_class():
    pytest.importorskip("vllm")
    from vllm.v1.worker.gpu.sample.logits_processor import (
        build_custom_logits_processors_params_validator as validator,
    )

    check = validator(["sampler.adapters.vllm_mrv2:OpenAILogitsProcessorV2"])
    from vllm import SamplingParams as VllmParams

    check(VllmParams(extra_args={"openai": {"temperature": 0.5, "seed": 1}}))
    with pytest.raises(Exception, match="Expected a value <= 2"):
        check(VllmParams(extra_args={"openai": {"temperature": 5}}))
    with pytest.raises(ValueError, match="not a subclass"):
        validator(["sampler.adapters.vllm:OpenAILogitsProcessor"])


def test_the_adapter_picks_the_class_of_the_installed_runner(mrv2, monkeypatch):
    module, _ = mrv2
    vllm_adapter = sys.modules["sampler.adapters.vllm"]
    cls, why = vllm_adapter.processor_class()
    assert cls is module.OpenAILogitsProcessorV2 and "Model Runner V2" in why
    assert vllm_adapter.Processor is module.OpenAILogitsProcessorV2
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "0")
    assert vllm_adapter.Processor is vllm_adapter.OpenAILogitsProcessor
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER")
    monkeypatch.delitem(sys.modules, V2_MODULE)  # a vLLM without the V2 interface
    monkeypatch.setitem(sys.modules, V2_MODULE, None)  # (None: the import fails)
    cls, why = vllm_adapter.processor_class()
    assert cls is vllm_adapter.OpenAILogitsProcessor and "no Model Runner V2" in why


def test_vllms_loader_takes_the_picked_class():
    pytest.importorskip("vllm")
    from vllm.v1.worker.gpu.sample.logits_processor import (
        build_custom_logits_processors_params_validator as validator,
    )

    check = validator(["sampler.adapters.vllm:Processor"])  # V2 on vLLM 0.33
    from vllm import SamplingParams as VllmParams

    with pytest.raises(Exception, match="Expected a value <= 1"):
        check(VllmParams(extra_args={"openai": {"top_p": 3}}))
