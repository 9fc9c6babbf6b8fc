"""The vLLM V1 logits processor, driven the way vLLM's V1 model runner drives it.

vLLM is not in the project's venv (a CUDA wheel of several GB), so most tests load the adapter
against a minimal fake of vLLM's documented V1 interface (``vllm.v1.sample.logits_processor``:
``LogitsProcessor``, ``BatchUpdate``, ``MoveDirectionality``) and run a persistent batch
by hand over the tiny model: requests added, finished, removed and moved, vLLM's greedy
choice after ``apply``. The requests' tokens equal ``sampler.Engine``'s. The last two use
the real vLLM when it is importable (its own venv: ``vllm==0.33.0``): the class against the
real interface, and the fake's signatures, fields and members against the real ones."""

from __future__ import annotations

import enum
import importlib
import sys
import types
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # in the test extra

from sampler import Engine  # noqa: E402


# --- a minimal fake of vLLM's V1 logits-processor interface ---------------------------------
class _MoveDirectionality(enum.Enum):
    UNIDIRECTIONAL = enum.auto()
    SWAP = enum.auto()


@dataclass(frozen=True)
class _BatchUpdate:
    batch_size: int
    removed: list
    added: list
    moved: list


class _LogitsProcessor(ABC):
    @classmethod
    def validate_params(cls, sampling_params) -> None:
        return None

    @abstractmethod
    def __init__(self, vllm_config, device, is_pin_memory) -> None: ...

    @abstractmethod
    def apply(self, logits): ...

    @abstractmethod
    def is_argmax_invariant(self) -> bool: ...

    @abstractmethod
    def update_state(self, batch_update) -> None: ...


@dataclass
class SamplingParams:  # the fields of vLLM's that the adapter reads
    n: int = 1
    seed: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict | None = None
    extra_args: dict[str, Any] | None = None


@pytest.fixture
def vllm_adapter(monkeypatch):
    """``sampler.adapters.vllm`` imported against the fake interface (restored after)."""
    mods = {
        name: types.ModuleType(name)
        for name in ("vllm", "vllm.v1", "vllm.v1.sample", "vllm.v1.sample.logits_processor")
    }
    lp = mods["vllm.v1.sample.logits_processor"]
    lp.LogitsProcessor, lp.BatchUpdate = _LogitsProcessor, _BatchUpdate
    lp.MoveDirectionality = _MoveDirectionality
    mods["vllm"].SamplingParams = SamplingParams
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.delitem(sys.modules, "sampler.adapters.vllm", raising=False)
    module = importlib.import_module("sampler.adapters.vllm")
    yield module
    sys.modules.pop("sampler.adapters.vllm", None)


# --- a persistent batch run by hand over the tiny model --------------------------------------
class _Request:
    def __init__(self, prompt: list[int], params: SamplingParams, max_tokens: int) -> None:
        self.prompt, self.params, self.max_tokens = prompt, params, max_tokens
        self.output: list[int] = []  # the live list vLLM hands the processor
        self.cache = None
        self.logits: np.ndarray | None = None  # [V] for the next token


def _run(decoder, proc, requests: list[_Request], *, admit_late: int) -> None:
    """vLLM's loop, by hand: requests[:admit_late] start together, the rest join after a
    step; finished requests are removed and the batch condensed (Remove + Move); every
    step ends with update_state, then apply, then the (greedy) choice."""
    batch: list[_Request | None] = []
    waiting = list(requests)

    def admit(reqs, removed=(), moved=()):
        added = []
        for r in reqs:
            logits, r.cache = decoder.prefill([r.prompt])
            r.logits = logits[0]
            slot = next((i for i, x in enumerate(batch) if x is None), len(batch))
            if slot == len(batch):
                batch.append(r)
            else:
                batch[slot] = r
            added.append((slot, r.params, r.prompt, r.output))
        proc.update_state(_BatchUpdate(len(batch), list(removed), added, list(moved)))

    admit(waiting[:admit_late])
    waiting = waiting[admit_late:]
    while any(batch):
        live = [i for i, r in enumerate(batch) if r is not None]
        logits = torch.from_numpy(np.stack([batch[i].logits for i in live]))  # [B, V]
        assert live == list(range(len(live)))  # the batch is kept contiguous
        out = proc.apply(logits)
        tokens = out.argmax(dim=-1).tolist()  # vLLM's greedy choice
        removed, moved = [], []
        for i, t in zip(live, tokens):
            r = batch[i]
            r.output.append(int(t))
            if len(r.output) >= r.max_tokens:
                batch[i] = None
                removed.append(i)
            else:
                logits_, r.cache = decoder.step(r.cache, [int(t)])
                r.logits = logits_[0]
        # condense: move the highest live request into each hole (vLLM's rule)
        for hole in sorted(removed):
            while batch and batch[-1] is None:
                batch.pop()
            if hole < len(batch) and batch[hole] is None:
                batch[hole] = batch.pop()
                moved.append((len(batch), hole, _MoveDirectionality.UNIDIRECTIONAL))
        while batch and batch[-1] is None:
            batch.pop()
        if waiting:
            admit(waiting, removed, moved)
            waiting = []
        elif removed or moved:
            proc.update_state(_BatchUpdate(len(batch), removed, [], moved))
        else:
            proc.update_state(None)


FIELDS = dict(
    temperature=0.8, top_p=0.9, presence_penalty=0.7, frequency_penalty=0.6, logit_bias={"11": 2.5}
)


def test_a_persistent_batch_draws_the_engines_tokens(vllm_adapter, tiny_model_dir):
    engine = Engine.load(tiny_model_dir)

    class Proc(vllm_adapter.OpenAILogitsProcessor):
        mask_ids = engine.info.masked_ids  # step 0, as the engine
        vocab_size = engine.vocab_size

    proc = Proc(None, torch.device("cpu"), False)
    assert proc.is_argmax_invariant() is False
    p1, p2, p3 = [9906, 11, 1917], [40, 1093, 1521, 13], [5]
    seeded = {**FIELDS, "seed": 77}
    reqs = [
        _Request(p1, SamplingParams(extra_args={"openai": {**FIELDS, "seed": 4}}), 3),
        _Request(
            p2,
            SamplingParams(extra_args={"openai": {"temperature": 0, "logit_bias": {"13": 3}}}),
            6,
        ),
        _Request(p3, SamplingParams(), 4),  # not ours: vLLM's plain greedy
        # n = 2 with a seed: vLLM's children carry seeds 77 and 78
        _Request(p2, SamplingParams(n=2, seed=77, extra_args={"openai": seeded}), 5),
        _Request(p2, SamplingParams(n=2, seed=78, extra_args={"openai": seeded}), 5),
    ]
    _run(engine.decoder, proc, reqs, admit_late=3)

    want0 = engine.complete(prompt=[p1], max_tokens=3, seed=4, logprobs=0, **FIELDS)
    want1 = engine.complete(
        prompt=[p2], max_tokens=6, temperature=0, logit_bias={"13": 3}, logprobs=0
    )
    want3 = engine.complete(prompt=[p2], n=2, max_tokens=5, seed=77, logprobs=0, **FIELDS)
    for req, choice in [
        (reqs[0], want0["choices"][0]),
        (reqs[1], want1["choices"][0]),
        (reqs[3], want3["choices"][0]),
        (reqs[4], want3["choices"][1]),
    ]:
        assert [engine.tokenizer.token_text(t) for t in req.output] == choice["logprobs"]["tokens"]
    assert reqs[3].output != reqs[4].output  # the two children drew as two candidates
    # the request without extra_args got vLLM's own greedy tokens on the raw logits
    logits, cache = engine.decoder.prefill([p3])
    plain = []
    for _ in range(4):
        plain.append(int(np.argmax(logits[0])))
        logits, cache = engine.decoder.step(cache, [plain[-1]])
    assert reqs[2].output == plain


def test_validate_params(vllm_adapter):
    V = vllm_adapter.OpenAILogitsProcessor
    V.validate_params(SamplingParams())  # not ours: nothing to check
    V.validate_params(SamplingParams(extra_args={"openai": {"top_p": 0.5, "seed": 1}}))
    spec = vllm_adapter.request_spec(SamplingParams(extra_args={"openai": '{"top_p": 0.5}'}))
    assert spec.params.top_p == 0.5 and spec.draw  # vllm_xargs over HTTP: a JSON string
    bad = [
        ({"openai": {"top_p": 1.5}}, {}, "Expected a value <= 1"),
        ({"openai": {"top_k": 5}}, {}, "Unrecognized request argument supplied: top_k"),
        ({"openai": {"logprobs": 2}}, {}, "use vLLM's own `logprobs`"),
        ({"openai": {"seed": 1}}, {"presence_penalty": 0.5}, "SamplingParams.presence_penalty"),
        ({"openai": {"draw": False}}, {"temperature": 0.7}, "SamplingParams.temperature"),
        ({"openai": {"seed": 5}}, {"n": 3}, "also set SamplingParams.seed"),
        ({"openai": {"seed": 5}}, {"seed": 2}, "is not the OpenAI seed"),
        ({"openai": 3}, {}, "must be an object"),
        ({"openai": "{top_p"}, {}, "not JSON"),
    ]
    for extra, kw, message in bad:
        with pytest.raises(ValueError, match=message):
            V.validate_params(SamplingParams(extra_args=extra, **kw))


def test_process_mode_returns_the_distribution(vllm_adapter):
    from sampler import processors as P

    proc = vllm_adapter.OpenAILogitsProcessor(None, torch.device("cpu"), False)
    out: list[int] = [3, 3]
    sp = SamplingParams(
        extra_args={"openai": {"draw": False, "temperature": 0.5, "frequency_penalty": 1.0}}
    )
    proc.update_state(_BatchUpdate(2, [], [(1, sp, [3, 3, 3], out)], []))
    z = torch.randn(2, 10)
    before = z.clone()
    got = proc.apply(z)
    want = P.temperature(P.penalties(before[1:].numpy(), [P.count_tokens(out)], 0, 1.0), 0.5)
    np.testing.assert_array_equal(got[1:].numpy(), want)  # the prompt's 3s are not counted
    assert torch.equal(got[0], before[0])  # a row that is not ours is untouched


def test_the_real_vllm_interface():
    pytest.importorskip("vllm")
    from vllm.v1.sample.logits_processor import LogitsProcessor

    sys.modules.pop("sampler.adapters.vllm", None)
    from sampler.adapters.vllm import OpenAILogitsProcessor

    assert issubclass(OpenAILogitsProcessor, LogitsProcessor)
    proc = OpenAILogitsProcessor(None, torch.device("cpu"), False)
    assert proc.is_argmax_invariant() is False


def test_the_v1_fake_has_the_real_signatures():
    """The CI fake of the V1 interface, held to vLLM's own classes (in vLLM's venv)."""
    pytest.importorskip("vllm")
    import dataclasses
    import inspect

    real = importlib.import_module("vllm.v1.sample.logits_processor")

    def sig(cls) -> dict:
        names = ("__init__", "validate_params", "apply", "is_argmax_invariant", "update_state")
        return {
            n: [(p.name, p.kind) for p in inspect.signature(getattr(cls, n)).parameters.values()]
            for n in names
        }

    assert sig(real.LogitsProcessor) == sig(_LogitsProcessor)
    assert real.LogitsProcessor.__abstractmethods__ == _LogitsProcessor.__abstractmethods__
    assert [f.name for f in dataclasses.fields(real.BatchUpdate)] == [
        f.name for f in dataclasses.fields(_BatchUpdate)
    ]
    assert {m.name for m in real.MoveDirectionality} == {m.name for m in _MoveDirectionality}
