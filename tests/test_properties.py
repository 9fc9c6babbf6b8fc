"""Tier 2: hypothesis properties of the processors and text handling against the slow
reference in tests/reference.py."""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sampler import processors as P
from sampler import reference as ref
from sampler._fast.draw import draw
from sampler._fast.limit import scaled_max_overflows
from sampler._fast.topk import top_k_ids
from sampler.logprobs import log_normalizer, log_softmax, top_logprobs
from sampler.select import greedy, sample
from sampler.stopping import TextTracker, held_prefix

# Rows with ties (values drawn from a small set), very negative values and -inf.
_values = st.one_of(
    st.sampled_from([0.0, 1.0, -1.0, 2.5, -30.0, -np.inf]),
    st.floats(-20, 20, allow_nan=False, width=32),
)
# ... and for the choice of a token, now and then values near float32's limits, whose
# quotient by a small temperature overflows (their logprobs lose digits in float64).
_wide_values = st.one_of(_values, st.sampled_from([1e30, -1e30, 3e38, -3e38, 1e-40]))


@st.composite
def rows(draw_, min_size=1, max_size=40, wide=False):
    vals = draw_(st.lists(_wide_values if wide else _values, min_size=min_size, max_size=max_size))
    z = np.array(vals, dtype=np.float32)
    assume(np.isfinite(z).any())
    return z


probs = st.one_of(st.sampled_from([0.0, 0.5, 0.9, 1.0]), st.floats(0, 1))
# Temperatures in [0, 2], with positive ones so small that z / T overflows float32 (or
# float32(T) is subnormal, or 0): the limit T -> 0+ (docs/semantics.md).
tiny_temps = st.one_of(
    st.sampled_from([5e-324, 1e-300, 1e-46, 1e-45, 1e-40, 2.0**-126, 1e-38, 1e-37, 1e-30]),
    st.floats(5e-324, 1e-30),
)
temps = st.one_of(st.sampled_from([0.0, 1.0, 0.5, 2.0]), st.floats(0.05, 2), tiny_temps)
uniforms = st.one_of(st.sampled_from([0.0, 0.5, 1 - 2**-53]), st.floats(0, 1, exclude_max=True))


@given(rows(), probs)
def test_top_p_kept_set_equals_reference(z, p):
    kept = np.flatnonzero(np.isfinite(P.top_p(z[None], p)[0])).tolist()
    expected = ref.nucleus(z, p)
    if p >= 1.0:  # neutral: the row is untouched (masked ids stay masked)
        expected = np.flatnonzero(np.isfinite(z)).tolist()
    assert kept == expected


@given(rows(wide=True), temps, probs, uniforms)
def test_draw_equals_reference_for_the_same_uniform(z, t, p, u):
    assert draw(z, t, p, u) == ref.step(z, temperature=t, top_p=p, uniform=u)


@given(rows(wide=True), temps, probs, uniforms)
def test_fused_draw_equals_composed_processors(z, t, p, u):
    if t == 0.0:
        expected = int(greedy(z[None])[0])
    else:
        expected = int(sample(P.top_p(P.temperature(z[None], t), p), [u])[0])
    assert draw(z, t, p, u) == expected


@given(rows(wide=True), st.data())
def test_sampled_token_is_always_in_the_nucleus(z, data):
    p = data.draw(probs)
    u = data.draw(uniforms)
    assert draw(z, 1.0, p, u) in ref.nucleus(z, p)


@given(rows(), st.lists(st.integers(0, 39), max_size=60), st.floats(-2, 2), st.floats(-2, 2))
def test_penalties_formula(z, generated, presence, frequency):
    generated = [g % z.size for g in generated]
    counts = P.count_tokens(generated) if generated else None
    out = P.penalties(z[None], [counts], presence, frequency)[0]
    np.testing.assert_array_equal(out, ref.penalties(z, generated, presence, frequency))


@given(rows(), st.dictionaries(st.integers(0, 39), st.floats(-100, 100), max_size=8))
def test_logit_bias_formula(z, bias):
    bias = {k % z.size: v for k, v in bias.items()}
    out = P.logit_bias(z[None], [bias])[0]
    np.testing.assert_array_equal(out, ref.logit_bias(z, bias))


@given(rows())
def test_greedy_is_first_maximum(z):
    assert greedy(z[None])[0] == ref.step(z, temperature=0.0, top_p=1.0, uniform=0.5)


@given(rows())
def test_log_softmax_is_normalised(z):
    lp = log_softmax(z[None])[0]
    finite = lp[np.isfinite(lp)]
    assert abs(math.log(np.exp(finite).sum())) < 1e-6  # float32 exps, float64 sum
    np.testing.assert_allclose(
        lp[np.isfinite(z)], ref.logprobs(z)[np.isfinite(z)], rtol=1e-6, atol=1e-6
    )


@given(rows(min_size=5), st.integers(1, 5))
def test_top_k_contents_equal_full_sort(z, k):
    ids, lps = top_logprobs(z[None], k)
    assert ids[0].tolist() == ref.top_ids(z, k)
    full = ref.logprobs(z)
    np.testing.assert_allclose(lps[0], full[ids[0]], rtol=1e-6, atol=1e-6)


@given(rows(), st.integers(0, 6), st.integers(1, 8))
def test_top_k_by_block_maxima_equals_full_sort(z, k, block):
    """Small blocks put ties, -inf and the short last block across block boundaries."""
    assert top_k_ids(z, k, block=block).tolist() == ref.top_ids(z, k)


@given(st.lists(rows(min_size=8, max_size=8, wide=True), min_size=1, max_size=6), st.data())
def test_processors_are_row_independent(batch, data):
    """Each row's result depends only on that row and its own parameters."""
    z = np.stack(batch)  # [B, 8]
    ps = [data.draw(probs) for _ in batch]
    ts = [data.draw(temps) for _ in batch]
    whole = P.top_p(P.temperature(z, ts), ps)
    for b in range(len(batch)):
        alone = P.top_p(P.temperature(z[b : b + 1], ts[b]), ps[b])
        np.testing.assert_array_equal(whole[b], alone[0])
    np.testing.assert_array_equal(log_normalizer(z), [log_normalizer(r[None])[0] for r in z])


# --- text: stops, UTF-8, offsets --------------------------------------------------------------
_pieces = st.lists(
    st.one_of(
        st.text(alphabet="ab \n", min_size=1, max_size=3),
        st.sampled_from(["é", "😊", "\n\n", "ab", "END"]),
    ),
    max_size=25,
)
_stops = st.lists(
    st.sampled_from(["a", "b b", "\n\n", "END", "ba", "😊", "aaa"]), min_size=1, max_size=4
)


@given(_pieces, _stops)
def test_stop_trimming(pieces, stops):
    t = TextTracker(stops)
    texts = []
    for piece in pieces:
        t.add(piece.encode())
        texts.append(t.text)
        if t.stopped:
            break
    t.finish()
    final = t.text[: t.final_end()]
    untrimmed = "".join(pieces)
    assert not any(s in final for s in stops)
    assert untrimmed.startswith(final)
    consumed, cut = len(pieces), None  # the definition: the first text with a stop in it
    for i in range(1, len(pieces) + 1):
        cut = ref.stop_cut("".join(pieces[:i]), stops)
        if cut is not None:
            consumed = i
            break
    assert len(texts) == consumed
    assert t.cut == cut


@given(_pieces, _stops)
def test_stream_never_shows_what_a_stop_removes(pieces, stops):
    t = TextTracker(stops)
    shown = ""
    for piece in pieces:
        t.add(piece.encode())
        visible = t.text[: t.visible_end()]
        assert visible.startswith(shown)  # never retracted
        shown = visible
        if t.stopped:
            break
    t.finish()
    assert t.text[: t.final_end()].startswith(shown)


@given(st.lists(st.binary(min_size=1, max_size=4), max_size=20))
def test_utf8_hold_back_and_replacement(chunks):
    """Shown text never retracts or splits a character; the end equals bytes.decode."""
    t = TextTracker()
    shown = ""
    for c in chunks:
        t.add(c)
        visible = t.text[: t.visible_end()]
        assert visible.startswith(shown)
        shown = visible
    t.finish()
    assert t.text == b"".join(chunks).decode("utf-8", "replace")


@given(st.lists(st.binary(min_size=1, max_size=4), min_size=1, max_size=12))
def test_token_offsets(chunks):
    """A token's offset is its start character (or the character it starts inside)."""
    t = TextTracker()
    data = b"".join(chunks)  # the reference needs what comes after each token
    pos = 0
    for c in chunks:
        assert t.add(c) == ref.offset(data, pos)
        pos += len(c)
        assert t.text == ref.final_text(data[:pos])  # the settled characters so far


@given(st.text(max_size=12), st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=4))
def test_held_prefix_definition(text, stops):
    assert held_prefix(text, stops) == ref.held_back(text, stops)


@pytest.mark.parametrize("row", [np.array([0.0, 0.0], np.float32)])
@settings(max_examples=1)
@given(u=st.just(0.5))
def test_uniform_half_on_two_equal_tokens_picks_the_second(row, u):
    # CDF [1, 2], target 1.0: the first id whose CDF exceeds 1.0 is id 1
    assert draw(row, 1.0, 1.0, u) == 1


# --- the whole batch step against the reference -----------------------------------------------
@st.composite
def step_rows(draw_):
    z = draw_(rows(min_size=6, max_size=30, wide=True))
    v = z.size
    bias = draw_(st.dictionaries(st.integers(0, v - 1), st.floats(-100, 100, width=32), max_size=5))
    generated = draw_(st.lists(st.integers(0, v - 1), max_size=12))
    params = dict(
        temperature=draw_(temps),
        top_p=draw_(probs),
        presence_penalty=draw_(st.floats(-2, 2)),
        frequency_penalty=draw_(st.floats(-2, 2)),
        logprobs=draw_(st.sampled_from([None, 0, 1, 3, 5])),
        logprobs_mode=draw_(st.sampled_from(["raw", "processed"])),
    )
    return z, bias, generated, params, draw_(uniforms)


@settings(max_examples=300)
@given(step_rows(), st.integers(1, 5))
def test_draw_given_the_raw_top_equals_reference(case, k):
    """The processed max and the nucleus candidates taken from the raw top ids (skipping
    their passes) change nothing, whether or not a bias or penalty hits those ids."""
    z, bias, generated, params, u = case
    counts = P.TokenCounts()
    for t in generated:
        counts.add(t)
    b = (np.array(list(bias), np.int64), np.array(list(bias.values()), np.float32))
    penalty = counts.amounts(params["presence_penalty"], params["frequency_penalty"])
    top = top_k_ids(z, k)
    got = draw(
        z,
        params["temperature"],
        params["top_p"],
        u,
        bias=b if bias else None,
        penalty=penalty,
        raw_top=(top, z[top]),
    )
    proc = ref.penalties(
        ref.logit_bias(z, bias), generated, params["presence_penalty"], params["frequency_penalty"]
    )
    assert got == ref.step(
        proc, temperature=params["temperature"], top_p=params["top_p"], uniform=u
    )


@st.composite
def lifted_rows(draw_):
    """Rows where a few ids stand far above the rest (the raw side then often decides the
    nucleus), some with a tail of values all equal to the last top value, where the tail
    bound is tight."""
    z = draw_(rows(min_size=3, max_size=40))
    if draw_(st.booleans()):  # a flat tail: every other id at one value
        z = np.full(z.size, draw_(st.floats(-20, 20, width=32)), dtype=np.float32)
    lifted = draw_(st.lists(st.integers(0, z.size - 1), min_size=1, max_size=3, unique=True))
    for i in lifted:
        z[i] = np.float32(z[i] if np.isfinite(z[i]) else 0.0) + np.float32(
            draw_(st.floats(0, 40, width=32))
        )
    return z


@settings(max_examples=400)
@given(lifted_rows(), st.data())
def test_nucleus_from_the_raw_side_equals_reference_when_it_decides(z, data):
    """Whenever the raw side alone settles steps 1-4, its kept set and weights are the
    ones a full processed pass gives; and the draw taking that path equals the reference."""
    from sampler._fast.draw import Workspace, _nucleus_from_raw
    from sampler._fast.edits import Edits

    v = z.size
    bias = data.draw(st.dictionaries(st.integers(0, v - 1), st.floats(-5, 5, width=32), max_size=3))
    generated = data.draw(st.lists(st.integers(0, v - 1), max_size=6))
    presence, frequency = data.draw(st.floats(-2, 2)), data.draw(st.floats(-2, 2))
    t = data.draw(st.one_of(st.sampled_from([1.0, 0.5, 0.8]), st.floats(0.05, 1.0), tiny_temps))
    p, u, k = (
        data.draw(probs.filter(lambda x: x < 1.0)),
        data.draw(uniforms),
        data.draw(st.integers(2, 6)),
    )
    counts = P.TokenCounts()
    for g in generated:
        counts.add(g)
    b = (np.array(list(bias), np.int64), np.array(list(bias.values()), np.float32))
    edits = Edits.of(b if bias else None, counts.amounts(presence, frequency))
    top = top_k_ids(z, k)
    ws = Workspace(v)
    np.exp(z - z[top[0]], out=ws.e)  # the raw side's exps, as sample_step leaves them
    total = float(ws.e.sum(dtype=np.float64))
    raw_top = (top.tolist(), z[top].tolist())
    proc = ref.penalties(ref.logit_bias(z, bias), generated, presence, frequency)
    zt = ref.temperature(proc, t)
    limit = scaled_max_overflows(float(proc.max()), np.float32(t))  # (draw decides it first)
    with np.errstate(over="ignore"):  # (as sample_step calls it)
        got = None if limit else _nucleus_from_raw(z, t, p, edits, raw_top, ws.e, total)
    if got is not None:
        kept = ref.nucleus(zt, p)
        assert got[0] == kept
        assert got[1] == ref.weights(zt)[kept].tolist()
    token = draw(z, t, p, u, edits=edits, workspace=ws, raw_top=raw_top, raw_total=total)
    assert token == ref.step(proc, temperature=t, top_p=p, uniform=u)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(65, 3000),
    st.integers(0, 2**32 - 1),
    st.sampled_from([0.02, 0.3, 2.0]),
    temps.filter(lambda t: t > 0),
    probs,
    uniforms,
)
def test_large_nucleus_draw_equals_reference(size, seed, scale, t, p, u):
    """Rows with more than 64 candidates: the nucleus by the bucket histogram of the
    weights, the crossing bucket sorted alone, the rest of the row zeroed in place and the
    row drawn whole; ties from a coarse grid, and the key buffer reused."""
    from sampler._fast.draw import Workspace

    rng = np.random.default_rng(seed)
    z = (np.round(rng.standard_normal(size) * scale * 8) / 8).astype(np.float32)  # [V] ties
    if seed % 2:  # masked ids: not every id is a candidate
        z[rng.integers(0, size, size=size // 10)] = -np.inf
    ws = Workspace(size)
    assert draw(z, t, p, u, workspace=ws) == ref.step(z, temperature=t, top_p=p, uniform=u)
    assert draw(z, t, p, u, workspace=ws) == draw(z, t, p, u)  # buffers reused: same answer
    if p < 1.0:  # (at 1, top_p leaves the row alone)
        kept = np.isfinite(P.top_p(ref.temperature(z, t)[None], p))[0]
        assert np.flatnonzero(kept).tolist() == ref.nucleus(ref.temperature(z, t), p)


@given(st.integers(1, 200_000), st.integers(0, 2**32 - 1))
def test_exp_of_gathered_values_equals_the_full_pass(size, seed):
    """The raw-side nucleus computes a few candidates' exps on their own; NumPy must give
    each value the same float32 exp as in a full-row pass (the same kernel for any length
    and position, so no last-bit differences)."""
    rng = np.random.default_rng(seed)
    x = -np.abs(rng.standard_normal(size) * 30).astype(np.float32)  # [V] <= 0, to underflow
    idx = rng.integers(0, size, size=min(size, 300))  # [k]
    np.testing.assert_array_equal(np.exp(x[idx]), np.exp(x)[idx])


@settings(max_examples=300)
@given(
    st.lists(step_rows(), min_size=1, max_size=4).filter(
        lambda rs: len({r[0].size for r in rs}) == 1
    )
)
def test_sample_step_equals_reference(batch):
    from sampler.params import SamplingParams
    from sampler.step import Row, sample_step

    z = np.stack([b[0] for b in batch])  # [B, V]
    rows_, us = [], []
    for _, bias, generated, params, u in batch:
        counts = P.TokenCounts()
        for t in generated:
            counts.add(t)
        ids = np.array(list(bias), dtype=np.int64)
        vals = np.array(list(bias.values()), dtype=np.float64)
        rows_.append(
            Row(SamplingParams(logit_bias=(ids, vals) if bias else None, **params), counts=counts)
        )
        us.append(u)
    out = sample_step(z, rows_, us)
    for b, (row, bias, generated, params, u) in enumerate(batch):
        proc = ref.penalties(
            ref.logit_bias(row, bias),
            generated,
            params["presence_penalty"],
            params["frequency_penalty"],
        )
        token = ref.step(proc, temperature=params["temperature"], top_p=params["top_p"], uniform=u)
        assert out.tokens[b] == token
        k = params["logprobs"]
        if k is None:
            continue
        if params["logprobs_mode"] == "raw":
            full = ref.logprobs(row)
            assert abs(out.logprob[b] - full[token]) < 1e-5
            assert out.top[b][0].tolist() == ref.top_ids(row, k)
        else:  # the distribution sampled from: greedy rows at temperature 1
            t = params["temperature"] or 1.0
            zt = ref.temperature(proc, t)
            kept = ref.nucleus(zt, params["top_p"]) if params["top_p"] < 1 else None
            if kept is not None:
                zt = np.where(np.isin(np.arange(zt.size), kept), zt, -np.inf).astype(np.float32)
            full = ref.logprobs(zt)
            assert abs(out.reported[b] - full[token]) < 1e-5
            assert out.top[b][0].tolist() == ref.top_ids(zt, k)
