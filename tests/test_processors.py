"""Tier 1: hand-computed values for each processor, on tiny arrays."""

import math

import numpy as np
import pytest

from sampler import processors as P
from sampler import reference as ref
from sampler._fast.draw import draw
from sampler._fast.limit import scaled_max_overflows
from sampler._fast.nucleus import kept_ids, prefix
from sampler._fast.topk import top_k, top_k_ids
from sampler.logprobs import log_normalizer, log_softmax, reported, top_logprobs
from sampler.params import SamplingParams
from sampler.select import greedy, sample
from sampler.step import Row, sample_step


def f32(*rows):
    return np.array(rows, dtype=np.float32)


# --- logit_bias -------------------------------------------------------------------------
def test_logit_bias_adds_per_row_sparse_values():
    z = f32([0, 1, 2], [3, 4, 5])
    out = P.logit_bias(z, [{0: 1.5, 2: -2}, (np.array([1]), np.array([10.0]))])
    np.testing.assert_array_equal(out, f32([1.5, 1, 0], [3, 14, 5]))


def test_logit_bias_does_not_modify_input_and_neutral_is_identity():
    z = f32([0, 1, 2])
    before = z.copy()
    out = P.logit_bias(z, [None])
    np.testing.assert_array_equal(out, before)
    assert out is not z
    P.logit_bias(z, [{1: 3.0}])
    np.testing.assert_array_equal(z, before)


def test_logit_bias_out_in_place_and_other_buffer():
    z = f32([0, 1, 2])
    res = P.logit_bias(z, [{0: 1.0}], out=z)
    assert res is z and z[0, 0] == 1.0
    buf = np.empty_like(z)
    res = P.logit_bias(z, [{0: 1.0}], out=buf)
    assert res is buf and buf[0, 0] == 2.0 and z[0, 0] == 1.0


def test_logit_bias_minus_100_effectively_bans():
    z = f32([5.0, 0.0])
    out = P.logit_bias(z, [{0: -100}])
    assert greedy(out)[0] == 1


# --- penalties ----------------------------------------------------------------------------
def test_penalties_hand_computed():
    z = f32([1, 1, 1, 1])
    # token 1 seen 3 times, token 3 once; presence 0.5, frequency 0.25
    out = P.penalties(z, [P.count_tokens([1, 3, 1, 1])], 0.5, 0.25)
    np.testing.assert_allclose(out, f32([1, 1 - 0.75 - 0.5, 1, 1 - 0.25 - 0.5]))


def test_penalties_negative_values_reward_repetition():
    z = f32([0, 0])
    out = P.penalties(z, [P.count_tokens([0, 0])], -1.0, -2.0)
    np.testing.assert_allclose(out, f32([5.0, 0.0]))


def test_penalties_per_row_parameters_and_untouched_rows():
    z = f32([0, 0, 0], [0, 0, 0], [0, 0, 0])
    counts = [P.count_tokens([2]), None, P.count_tokens([0, 0])]
    out = P.penalties(z, counts, [1.0, 1.0, 0.0], [0.0, 0.0, 1.5])
    np.testing.assert_allclose(out, f32([0, 0, -1], [0, 0, 0], [-3, 0, 0]))
    np.testing.assert_array_equal(z, np.zeros((3, 3), np.float32))


def test_token_counts_incremental_matches_count_tokens():
    seq = [5, 1, 5, 9, 1, 5] * 7
    c = P.TokenCounts()
    for t in seq:
        c.add(t)
    order = np.argsort(c.ids)
    ids, counts = P.count_tokens(seq)
    np.testing.assert_array_equal(c.ids[order], ids)
    np.testing.assert_array_equal(c.counts[order], counts)


def test_token_counts_grows_past_initial_capacity():
    c = P.TokenCounts()
    for t in range(100):
        c.add(t)
    assert len(c.ids) == 100 and c.counts.sum() == 100


# --- temperature --------------------------------------------------------------------------
def test_temperature_divides_and_zero_and_one_are_identity():
    z = f32([2, -4], [2, -4], [2, -4])
    out = P.temperature(z, [0.5, 1.0, 0.0])
    np.testing.assert_array_equal(out, f32([4, -8], [2, -4], [2, -4]))
    np.testing.assert_array_equal(z, f32([2, -4], [2, -4], [2, -4]))


def test_tiny_temperature_is_the_limit_at_the_maxima():
    """A positive T whose division overflows the row max (or rounds to 0 in float32) is
    the limit T -> 0+: 0 at the maxima, -inf elsewhere. 30 / 1e-38 = 3e39 overflows
    float32 (max 3.4e38); 30 / 1e-37 = 3e38 does not, and the row is divided as usual."""
    z = f32([30, 1, 30, -np.inf])  # [1, 4]
    for t in (1e-300, 5e-324, 1e-40, 1e-38):
        np.testing.assert_array_equal(P.temperature(z, t), f32([0, -np.inf, 0, -np.inf]))
    np.testing.assert_array_equal(P.temperature(z, 1e-37), z / np.float32(1e-37))
    assert scaled_max_overflows(-5.0, np.float32(1e-40))  # overflows towards -inf too
    assert not scaled_max_overflows(0.0, np.float32(1e-45))


def test_tiny_temperature_draw_by_hand():
    """Two tied maxima (ids 0 and 2) of weight 2**43 each: W = 2**44, u < 1/2 draws id 0,
    u >= 1/2 id 2; top_p = 0.5 keeps id 0 alone (lower id first); a single maximum is
    drawn whatever u. Bias and penalties move the maxima first."""
    z = f32(3, 1, 3, -np.inf)  # [4]
    for t in (1e-300, 1e-40):
        assert [draw(z, t, 1.0, u) for u in (0.0, 0.49, 0.5, 0.99)] == [0, 0, 2, 2]
        assert [draw(z, t, 0.5, u) for u in (0.0, 0.99)] == [0, 0]
        assert draw(f32(1, 5, 3), t, 1.0, 0.999) == 1
        bias = (np.array([1]), np.array([2.5], np.float32))  # 1 + 2.5 > 3
        assert draw(z, t, 1.0, 0.9, bias=bias) == 1
        penalty = (np.array([2]), np.array([0.5], np.float32))  # id 2 drops to 2.5
        assert draw(z, t, 1.0, 0.9, penalty=penalty) == 0
        raw_top = ([0, 2, 1], [3.0, 3.0, 1.0])  # the engine's path with the raw side known
        assert draw(z, t, 1.0, 0.7, raw_top=raw_top, raw_total=2.0) == 2


def test_tiny_temperature_step_reports_the_limit_distribution():
    """Processed logprobs at T -> 0+ are the limit's: log 1/2 on each tied maximum, the
    rest -inf; raw logprobs are untouched by temperature."""
    z = f32([3, 1, 3, -np.inf])
    out = sample_step(
        z, [Row(SamplingParams(temperature=1e-300, logprobs=2, logprobs_mode="processed"))], [0.6]
    )
    assert out.tokens[0] == 2 and out.reported[0] == pytest.approx(-math.log(2))
    assert out.top[0][0].tolist() == [0, 2]
    raw = sample_step(z, [Row(SamplingParams(temperature=1e-300, top_p=0.5, logprobs=1))], [0.6])
    assert raw.tokens[0] == 0 and raw.reported[0] == pytest.approx(ref.logprobs(z[0])[0])


# --- top_p --------------------------------------------------------------------------------
def test_top_p_keeps_minimal_nucleus():
    z = np.log(f32([0.1, 0.5, 0.15, 0.25]))
    kept = np.isfinite(P.top_p(z, 0.7))[0]
    # sorted: 0.5 (id1), 0.25 (id3) -> 0.75 >= 0.7
    assert kept.tolist() == [False, True, False, True]


def test_top_p_exact_boundary_counts_as_enough():
    z = np.log(f32([0.5, 0.25, 0.25]))
    kept = np.isfinite(P.top_p(z, 0.5))[0]
    assert kept.tolist() == [True, False, False]


def test_top_p_ties_prefer_lower_id():
    z = f32([0.0, 0.0, 0.0, 0.0])  # four equal tokens, 0.25 each
    assert np.isfinite(P.top_p(z, 0.5))[0].tolist() == [True, True, False, False]
    assert np.isfinite(P.top_p(z, 0.0))[0].tolist() == [True, False, False, False]


def test_top_p_zero_keeps_argmax_and_one_keeps_all():
    z = f32([0.0, 3.0, 1.0])
    assert np.isfinite(P.top_p(z, 0.0))[0].tolist() == [False, True, False]
    np.testing.assert_array_equal(P.top_p(z, 1.0), z)


def test_top_p_kept_logits_unchanged_and_input_untouched():
    z = f32([1.0, 2.0, 3.0])
    out = P.top_p(z, 0.6)
    assert out[0, 2] == 3.0 and np.isfinite(out).sum() <= 2
    np.testing.assert_array_equal(z, f32([1.0, 2.0, 3.0]))


def test_top_p_with_masked_ids():
    z = f32([-np.inf, 1.0, -np.inf, 1.0])
    assert np.isfinite(P.top_p(z, 0.9))[0].tolist() == [False, True, False, True]


def _kept(e, p):
    return kept_ids(e, p, np.empty(e.size, np.float32), np.empty(e.size, np.int64)).tolist()


def test_nucleus_on_flat_rows_and_long_tails():
    W = 2**43  # the top weight
    e = np.full(1000, 1.0, dtype=np.float32)  # flat: every token above the first threshold
    # need = ceil(0.999 * 1000 W) = 999 W (0.999 is a hair below 0.999): 999 ids
    assert _kept(e, 0.999) == list(range(999))
    # one head token and a long tail below the first threshold (1e-4), each tail token of
    # weight w = floor(float32(1e-5) * 2**43): the run needs W + n w >= ceil(p (W + 5000 w))
    e = np.concatenate([[1.0], np.full(5000, 1e-5)]).astype(np.float32)
    w = int(float(np.float32(1e-5)) * W)
    p = 0.9855
    num, den = p.as_integer_ratio()  # p exactly, so the need is exact
    need = -(-num * (W + 5000 * w) // den)
    n = -(-(need - W) // w)  # the tail tokens after the head, lowest ids first
    assert 3000 < n < 5000 and _kept(e, p) == list(range(1 + n))


def test_prefix_decides_only_when_both_ends_agree():
    ids, w = [3, 7], [5, 10]  # heaviest first: 7 (10), then 3 (5)
    assert prefix(ids, w, 7, 8) == [7]  # a need of 7 .. 8: id 7 alone reaches both
    assert prefix(ids, w, 12, 13) == [3, 7]
    assert prefix(ids, w, 10, 11) is None  # 10 keeps [7], 11 needs [3, 7]
    assert prefix(ids, w, 12, 16) is None  # 16: the candidates (15) fall short
    assert prefix(ids, w, 0, 0) == [7]  # never empty
    assert prefix([1, 2], [6, 6], 5, 6) == [1]  # a tie: the lower id first


def _raw_side_of(z, k):
    """What sample_step's raw side leaves: top ids/values, exps in a workspace, total."""
    from sampler._fast.draw import Workspace

    ids, vals = top_k(z, k)
    ws = Workspace(z.size)
    np.subtract(z, vals[0], out=ws.e)
    np.exp(ws.e, out=ws.e)
    return (ids, vals), ws.e, float(ws.e.sum(dtype=np.float64))


def test_nucleus_from_raw_side_hand_computed():
    from sampler._fast.draw import _nucleus_from_raw

    # probabilities 1 : 0.5 : 1e-6 : 1e-6 (total 1.500002); the top 3 ids known, so every
    # other id (id 3) is at most the last top value (id 2's), which bounds the rest
    z = np.log(f32([1.0, 0.5, 1e-6, 1e-6]))[0]
    raw_top, e, total = _raw_side_of(z, 3)
    assert raw_top[0] == [0, 1, 2]
    # T = 0.5 squares them: 1 : 0.25 : 1e-12 : 1e-12, total ~1.25
    kept, w = _nucleus_from_raw(z, 0.5, 0.7, None, raw_top, e, total)  # target 0.875
    assert kept == [0] and w == [2**43]  # the weights: floor(e * 2**43)
    kept, w = _nucleus_from_raw(z, 0.5, 0.85, None, raw_top, e, total)  # 1.0625
    assert kept == [0, 1] and w == pytest.approx([2**43, 2**41], rel=1e-6)
    # T = 1, target 1.5000019 > 1.5: the ids above the bound (0, 1) fall short, no decision;
    # the draw then takes the full pass and keeps all four
    p = 1 - 1e-7
    assert _nucleus_from_raw(z, 1.0, p, None, raw_top, e, total) is None
    u = 1 - 1e-7
    assert (
        draw(z, 1.0, p, u, raw_top=raw_top, raw_total=total)
        == 3
        == ref.step(z, temperature=1.0, top_p=p, uniform=u)
    )
    # the last top id is not itself a usable candidate: it ties the bound
    two, e2, t2 = _raw_side_of(z, 2)
    assert _nucleus_from_raw(z, 0.5, 0.85, None, two, e2, t2) is None
    # temperatures above 1 are not bounded this way; nor is a row with one top id
    assert _nucleus_from_raw(z, 1.5, 0.5, None, raw_top, e, total) is None
    one, e1, t1 = _raw_side_of(z, 1)
    assert _nucleus_from_raw(z, 0.5, 0.5, None, one, e1, t1) is None


def test_nucleus_from_raw_side_with_edits():
    from sampler._fast.draw import _nucleus_from_raw
    from sampler._fast.edits import Edits

    z = np.log(f32([1.0, 0.5, 1e-6, 1e-6, 1e-6]))[0]
    raw_top, e, total = _raw_side_of(z, 3)  # ids 0, 1, 2
    # a bias lifts id 4 (x 4e6); a penalty halves id 0 (ln 2): processed probabilities
    # 0.5 : 0.5 : 1e-6 : 1e-6 : 4, i.e. 0.125 : 0.125 : 2.5e-7 : 2.5e-7 : 1 of the max
    edits = Edits.of(
        (np.array([4]), f32([math.log(4e6)])[0]), (np.array([0]), f32([math.log(2.0)])[0])
    )
    kept, w = _nucleus_from_raw(z, 1.0, 0.6, edits, raw_top, e, total)  # target 0.75
    assert kept == [4] and w == [2**43]
    kept, _ = _nucleus_from_raw(z, 1.0, 0.85, edits, raw_top, e, total)  # 1.0625: id 4 and
    assert kept == [0, 4]  # one of the tied ids 0 and 1: the lower
    # every top id edited: nothing bounds the rest, so no decision
    every = Edits.of((np.array([0, 1, 2]), f32([0.0, 0.0, 0.0])[0]), None)
    assert _nucleus_from_raw(z, 1.0, 0.5, every, raw_top, e, total) is None


# --- select -------------------------------------------------------------------------------
def test_greedy_ties_lowest_id():
    assert greedy(f32([1, 3, 3, 0]))[0] == 1


def test_sample_inverse_cdf_hand_computed():
    z = np.log(f32([0.2, 0.3, 0.5]))
    # CDF in id order: 0.2, 0.5, 1.0
    assert sample(z, [0.0])[0] == 0
    assert sample(z, [0.19])[0] == 0
    assert sample(z, [0.21])[0] == 1
    assert sample(z, [0.49])[0] == 1
    assert sample(z, [0.51])[0] == 2
    assert sample(z, [0.999999])[0] == 2


def test_sample_never_draws_masked():
    z = f32([-np.inf, 0.0, -np.inf])
    for u in (0.0, 0.5, 0.9999999):
        assert sample(z, [u])[0] == 1


def test_draw_matches_composition_hand_case():
    z = np.log(f32([0.1, 0.5, 0.15, 0.25]))[0]
    # top_p 0.7 keeps ids 1, 3 with weights 0.5, 0.25 -> CDF 2/3, 1
    assert draw(z, 1.0, 0.7, 0.6) == 1
    assert draw(z, 1.0, 0.7, 0.7) == 3
    assert draw(z, 0.0, 0.7, 0.99) == 1  # greedy ignores u


def test_draw_does_not_modify_row():
    z = np.log(f32([0.1, 0.5, 0.15, 0.25]))[0]
    before = z.copy()
    draw(z, 0.7, 0.5, 0.3)
    np.testing.assert_array_equal(z, before)


# --- logprobs -----------------------------------------------------------------------------
def test_log_normalizer_and_log_softmax_hand_computed():
    z = f32([0.0, np.log(3.0)])
    np.testing.assert_allclose(log_normalizer(z), [np.log(4.0)])
    np.testing.assert_allclose(np.exp(log_softmax(z)), [[0.25, 0.75]], rtol=1e-6)


def test_top_logprobs_order_and_ties():
    z = f32([1.0, 5.0, 5.0, -np.inf, 2.0])
    ids, lps = top_logprobs(z, 3)
    assert ids.tolist() == [[1, 2, 4]]
    assert lps[0, 0] == lps[0, 1] > lps[0, 2]


def test_top_logprobs_input_untouched():
    z = f32([1.0, 5.0, 2.0])
    top_logprobs(z, 2)
    np.testing.assert_array_equal(z, f32([1.0, 5.0, 2.0]))


def test_top_k_ids_by_blocks_hand_computed():
    # blocks of 2: [4, 1] [4, 9] [-inf, 3] [2] -> maxima 4, 9, 3, 2
    z = f32([4.0, 1.0, 4.0, 9.0, -np.inf, 3.0, 2.0])[0]
    assert top_k_ids(z, 3, block=2).tolist() == [3, 0, 2]  # the tie 4, 4: lower id first
    assert top_k_ids(z, 7, block=2).tolist() == [3, 0, 2, 5, 6, 1, 4]
    assert top_k_ids(z, 0, block=2).tolist() == []
    np.testing.assert_array_equal(z, f32([4.0, 1.0, 4.0, 9.0, -np.inf, 3.0, 2.0])[0])


def test_processed_logprobs_are_reported_when_best_of_ranks_by_raw_ones():
    """A best_of row needs its raw logprob too; the processed ones are still reported."""
    z = np.log(f32([0.5, 0.3, 0.2]))
    common = dict(temperature=0.0, logprobs=2, logprobs_mode="processed")
    both = sample_step(z, [Row(SamplingParams(**common), raw_logprob=True)], [0.5])
    alone = sample_step(z, [Row(SamplingParams(**common))], [0.5])
    assert both.tokens[0] == alone.tokens[0] == 0
    assert both.logprob[0] == pytest.approx(np.log(0.5))  # raw, for the ranking
    assert both.reported[0] == alone.reported[0] == pytest.approx(np.log(0.5))
    assert both.top[0][0].tolist() == alone.top[0][0].tolist() == [0, 1]


def test_row_params_changed_after_construction_are_followed():
    """The incremental edits are rebuilt when a row's parameters (a frozen record,
    replaced whole) or its counts are replaced: the draw always sees the row's current
    parameters."""
    from dataclasses import replace

    z = f32([2.0, 1.9, 0.0])[0]
    row = Row(SamplingParams(temperature=0.0, presence_penalty=1.0))
    row.counts.add(0)
    assert sample_step(z[None], [row], [0.5]).tokens[0] == 1  # 0 penalised below 1
    row.params = replace(row.params, presence_penalty=0.0)
    assert sample_step(z[None], [row], [0.5]).tokens[0] == 0
    row.params, row.counts = replace(row.params, presence_penalty=1.0), P.TokenCounts()
    assert sample_step(z[None], [row], [0.5]).tokens[0] == 0  # a fresh sequence
    row.params = replace(row.params, logit_bias=(np.array([2]), np.array([5.0])))
    assert sample_step(z[None], [row], [0.5]).tokens[0] == 2
    row.counts.add(2)
    row.params = replace(row.params, frequency_penalty=np.float32(0.3))  # a NumPy scalar:
    assert row.edits().sub[-1] == np.float32(1 * 0.30000001192092896 + 1.0)  # float64 still
    assert row.edits().sub[-1] == row.penalty()[1][-1]


def test_reported_maps_minus_inf():
    assert reported(-np.inf) == -9999.0
    assert reported(-1.5) == -1.5


def test_step_order_written_once():
    assert P.STEP_ORDER == ("logit_bias", "penalties", "temperature", "top_p")


@pytest.mark.parametrize(
    "fn,args",
    [
        (P.logit_bias, ([{0: 1.0}],)),
        (P.penalties, ([P.count_tokens([0])], 1.0, 1.0)),
        (P.temperature, ([0.5],)),
        (P.top_p, ([0.5],)),
    ],
)
def test_every_processor_is_pure_by_default(fn, args):
    z = f32([1.0, 2.0, 0.5])
    before = z.copy()
    out = fn(z, *args)
    np.testing.assert_array_equal(z, before)
    assert out is not z and out.dtype == np.float32 and out.shape == z.shape
