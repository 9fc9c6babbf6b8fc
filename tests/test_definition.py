"""The fast path equals the definition, ``sampler.reference``: token for token, logprob for
logprob (to float64 rounding), on adversarial rows of every width from 2 to 262,144 ids,
and for whole requests on the tiny model. And the definition stands alone.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sampler import reference as ref
from sampler.params import SamplingParams
from sampler.processors import TokenCounts
from sampler.step import Row, sample_step

REFERENCE = Path(ref.__file__)


# --- the definition stands alone ------------------------------------------------------------
def test_the_definition_imports_numpy_and_the_standard_library_only():
    tree = ast.parse(REFERENCE.read_text())
    names = {
        a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    names |= {
        n.module.split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module and not n.level
    }
    relative = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
    assert not relative, "the definition imports nothing from sampler"
    assert names - {"numpy", "__future__"} <= set(sys.stdlib_module_names), names
    # and it runs on its own, loaded from its file, without the package
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('definition', {str(REFERENCE)!r})\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['definition'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "import numpy as np\n"
        "print(mod.step(np.zeros(3, np.float32), uniform=0.5), "
        "any(m == 'sampler' or m.startswith('sampler.') for m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "False"]


def test_the_definition_is_short_enough_to_read_in_one_sitting():
    assert len(REFERENCE.read_text().splitlines()) <= 380  # (the issue aimed at 300)


# --- one step, on rows of every width -------------------------------------------------------
WIDTHS = st.one_of(
    st.integers(2, 64), st.sampled_from([2, 3, 1000, 4096, 65_537, 100_277, 262_144])
)
TEMPS = st.one_of(st.sampled_from([0.0, 1.0, 0.8, 2.0, 1e-300, 1e-40, 5e-324]), st.floats(0, 2))
TOPS = st.one_of(st.sampled_from([0.0, 1e-9, 0.5, 0.9, 0.999999, 1 - 2**-53, 1.0]), st.floats(0, 1))


def _row(v: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Adversarial rows: peaked, broad, flat, ties on a coarse grid, huge ranges; some ids
    masked to -inf (never all)."""
    if kind == "peaked":
        z = rng.standard_normal(v) * 2
        z[rng.integers(0, v, size=3)] += 15
    elif kind == "broad":
        z = rng.standard_normal(v) * 2
    elif kind == "flat":
        z = rng.standard_normal(v) * 0.1
    elif kind == "ties":
        z = np.round(rng.standard_normal(v) * 2) / 2
    else:  # huge: values near float32's limits, whose quotient by a small T overflows
        z = rng.choice(np.array([3e38, -3e38, 1e30, 0.0, -1.0, 1e-40]), size=v)
    z = z.astype(np.float32)  # [V]
    if rng.random() < 0.5:
        z[rng.integers(0, v, size=max(1, v // 10))] = -np.inf
    if not np.isfinite(z).any():
        z[rng.integers(0, v)] = 0.0
    return z


@st.composite
def wide_cases(draw):
    v = draw(WIDTHS)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    z = _row(v, draw(st.sampled_from(["peaked", "broad", "flat", "ties", "huge"])), rng)
    bias = draw(
        st.dictionaries(
            st.integers(0, v - 1),
            st.one_of(st.sampled_from([100.0, -100.0]), st.floats(-100, 100, width=32)),
            max_size=8,
        )
    )
    generated = draw(st.lists(st.integers(0, v - 1), max_size=30))
    params = dict(
        temperature=draw(TEMPS),
        top_p=draw(TOPS),
        presence_penalty=draw(st.floats(-2, 2)),
        frequency_penalty=draw(st.floats(-2, 2)),
    )
    k = draw(st.sampled_from([None, 0, 1, 5]))
    mode = draw(st.sampled_from(["raw", "processed"]))
    uniform = draw(
        st.one_of(st.sampled_from([0.0, 0.5, 1 - 2**-53]), st.floats(0, 1, exclude_max=True))
    )
    return z, bias, generated, params, k, mode, uniform


def check_row(z, bias, generated, params, k, mode, uniform, out, b=0):
    """Row ``b`` of ``out`` against the definition: the token; the raw logprob; the
    reported one and the top ids (raw, or of the processed row)."""
    token = ref.step(z, uniform=uniform, logit_bias=bias, generated=generated, **params)
    assert int(out.tokens[b]) == token
    raw = ref.logprobs(z)
    if not np.isnan(out.logprob[b]):
        assert out.logprob[b] == pytest.approx(raw[token], abs=1e-6)
    if k is None:
        return
    row = (
        z
        if mode == "raw"
        else ref.processed(  # the row sampled from; greedy at T = 1
            z,
            logit_bias=bias,
            generated=generated,
            **{**params, "temperature": params["temperature"] or 1.0},
        )
    )
    lp = ref.logprobs(row)
    assert out.reported[b] == pytest.approx(lp[token], abs=1e-6) or lp[token] == -np.inf
    assert out.top[b][0].tolist() == ref.top_ids(row, k)


def _row_params(bias, generated, params, k, mode):
    counts = TokenCounts()
    for t in generated:
        counts.add(t)
    pair = (np.array(list(bias), np.int64), np.array(list(bias.values()), np.float64))
    return Row(
        SamplingParams(logit_bias=pair if bias else None, logprobs=k, logprobs_mode=mode, **params),
        counts=counts,
        raw_logprob=True,
    )


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(wide_cases())
def test_sample_step_equals_the_definition(case):
    z, bias, generated, params, k, mode, uniform = case
    out = sample_step(z[None], [_row_params(bias, generated, params, k, mode)], [uniform])
    check_row(z, bias, generated, params, k, mode, uniform, out)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(wide_cases(), min_size=2, max_size=4), st.integers(2, 3000))
def test_a_batch_of_rows_equals_the_definition_row_by_row(cases, v):
    """Rows of one batch, each with its own parameters (one width per batch)."""
    rng = np.random.default_rng(v)
    rows = []
    for z, bias, generated, params, k, mode, u in cases:
        z = _row(v, "ties", rng) if z.size != v else z
        bias = {i % v: x for i, x in bias.items()}
        generated = [g % v for g in generated]
        rows.append((z, bias, generated, params, k, mode, u))
    out = sample_step(
        np.stack([r[0] for r in rows]), [_row_params(*r[1:6]) for r in rows], [r[6] for r in rows]
    )
    for b, r in enumerate(rows):
        check_row(*r, out, b=b)


# --- whole requests: the engine's choices are the definition's, for the same logits --------
MODEL_PROMPTS = ["Hello", "", "😊 and ", "a b c d e f", [563, 554, 100257], [0, 1, 2]]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from sampler import Engine

    return Engine.load(tiny_model_dir)


class SeenLogits:
    """The masked logits rows the engine sampled from (and scored echoed prompts with), by
    the token sequence they follow: the definition's ``logits(tokens)``. A row does not
    depend on its batch (docs/semantics.md), so one sequence has one row."""

    def __init__(self, engine, monkeypatch) -> None:
        from sampler.engine import Batch, Completion

        self.rows: dict[tuple[int, ...], np.ndarray] = {}
        advance, score = Batch.advance, Completion._score

        def seen_advance(batch):
            batch._prefill_queued()  # the rows admitted since the last step are prefilled
            batch._join()  # and join batch.logits
            for b, s in enumerate(batch.seqs):
                reads = s.owner.req.prompts[s.prompt].tokens
                self.rows[tuple(reads) + tuple(s.row.counts.added)] = batch.logits[b].copy()
            return advance(batch)

        def seen_score(comp, p, positions, logits):
            shown = comp.req.prompts[p].shown
            rows = engine.mask(np.array(logits))
            for j, i in enumerate(positions.tolist()):
                self.rows[tuple(shown[: i + 1])] = rows[j]
            return score(comp, p, positions, logits)

        monkeypatch.setattr(Batch, "advance", seen_advance)
        monkeypatch.setattr(Completion, "_score", seen_score)

    def __call__(self, tokens) -> np.ndarray:
        return self.rows[tuple(tokens)]  # (a KeyError: the definition took another path)


def same(got, want, path="") -> None:
    """Equal JSON values, floats to 1e-6 (the engine's float32 exps vs the definition's
    float64 ones), dict keys in the same order."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), (path, got, want)
        for key in want:
            same(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (path, got, want)
        for i, (g, w) in enumerate(zip(got, want)):
            same(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-6), (path, got, want)
    else:
        assert got == want, (path, got, want)


@st.composite
def requests(draw):
    texts = [p for p in MODEL_PROMPTS if isinstance(p, str)]
    ids = [p for p in MODEL_PROMPTS if not isinstance(p, str)]
    prompts = draw(
        st.one_of(
            st.lists(st.sampled_from(texts), min_size=1, max_size=2),
            st.lists(st.sampled_from(ids), min_size=1, max_size=2),
        )
    )
    n = draw(st.integers(1, 2))
    stream = draw(st.booleans())
    body = {
        "prompt": prompts if len(prompts) > 1 else prompts[0],
        "max_tokens": draw(st.integers(0, 6)),
        "n": n,
        "seed": draw(st.integers(-(2**40), 2**40)),
        "best_of": n if stream else draw(st.integers(n, 3)),
        "stream": stream,
        "temperature": draw(st.sampled_from([0.0, 1.0, 0.7, 1.6, 1e-300])),
        "top_p": draw(st.sampled_from([1.0, 0.9, 0.3, 0.0])),
        "presence_penalty": draw(st.sampled_from([0.0, 1.5, -2.0])),
        "frequency_penalty": draw(st.sampled_from([0.0, 0.5])),
        "logit_bias": draw(
            st.sampled_from([None, {"100257": 100}, {"220": 5, "13": -100}, {"100257": -100}])
        ),
        "logprobs": draw(st.sampled_from([None, 0, 2, 5])),
        "logprobs_mode": draw(st.sampled_from(["raw", "processed"])),
        "echo": draw(st.booleans()),
        "stop": draw(st.sampled_from([None, "e", [" ", "a"], ["\n", "th", "😊"]])),
    }
    return body


def collect(chunks) -> dict[int, dict]:
    """A stream's choices, joined as a client joins them (logprobs null until some come)."""
    out: dict[int, dict] = {}
    for ch in chunks:
        for c in ch["choices"]:
            got = out.setdefault(
                c["index"],
                {"text": "", "index": c["index"], "logprobs": None, "finish_reason": None},
            )
            got["text"] += c["text"]
            if c["logprobs"] is not None:
                got["logprobs"] = got["logprobs"] or {k: [] for k in c["logprobs"]}
                for k, v in c["logprobs"].items():
                    got["logprobs"][k] += v
            got["finish_reason"] = c["finish_reason"]
    return out


@settings(
    max_examples=int(__import__("os").environ.get("DEF_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(requests())
def test_the_engine_answers_what_the_definition_answers(engine, monkeypatch, body):
    """Every parameter, n, best_of, stop, echo, stream: the engine's choices and usage are
    ``reference.complete``'s for the logits the engine saw."""
    from sampler.tokenizer import get_tokenizer

    tok = get_tokenizer("cl100k_base")
    with monkeypatch.context() as m:
        seen = SeenLogits(engine, m)
        out = engine.complete(body)
        if body["stream"]:
            chunks = list(out)
            usage = None
            choices = [c for _, c in sorted(collect(chunks).items())]
        else:
            choices, usage = out["choices"], out["usage"]
    one = isinstance(body["prompt"], str) or isinstance(body["prompt"][0], int)
    prompts = [body["prompt"]] if one else body["prompt"]
    ids = [tok.encode(p) if isinstance(p, str) else list(p) for p in prompts]
    sampling = {
        k: body[k] for k in ("temperature", "top_p", "presence_penalty", "frequency_penalty")
    }
    bias = {int(k): v for k, v in (body["logit_bias"] or {}).items()}
    stop = [body["stop"]] if isinstance(body["stop"], str) else body["stop"] or []
    want = ref.complete(
        seen,
        ids,
        token_bytes=tok.token_bytes,
        end_ids=[100257],
        seed=body["seed"],
        max_tokens=body["max_tokens"],
        n=body["n"],
        best_of=body["best_of"],
        stop=stop,
        echo=body["echo"],
        logprobs=body["logprobs"],
        logprobs_mode=body["logprobs_mode"],
        logit_bias=bias,
        **sampling,
    )
    same(choices, want["choices"], "choices")
    if usage is not None:
        assert usage == want["usage"]
