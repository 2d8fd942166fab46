"""Paired statistics (lmdelta.stats): each test against an independent computation (exact enumeration
of its null distribution, a binomial test, Holm written out), and the calibration check: under the
null, each test rejects at alpha = 0.05 within binomial error of 5%, and each interval covers the true
difference about 95% of the time (simulated data)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from lmdelta.stats import (
    PairedParams,
    bootstrap_ci,
    holm,
    mcnemar_exact,
    mean_interval,
    paired,
    proportion_interval,
    rate_interval,
    sign_flip_p,
    unpaired,
    wilcoxon_p,
)

P = PairedParams.from_dict({})


def test_sign_flip_is_exact_when_every_flip_fits():
    """n = 10: 1024 sign patterns <= n_permutations, so scipy enumerates them; the p-value equals the
    share of flips whose mean is as extreme (scipy's two-sided rule: twice the smaller tail)."""
    d = np.array([0.8, -0.3, 1.1, 0.4, 0.05, 0.9, -0.7, 0.6, 0.2, 1.3])
    null = np.array([np.mean(d * s) for s in itertools.product([1, -1], repeat=len(d))])
    obs = d.mean()
    eps = 1e-12 * abs(obs)
    ref = min(1.0, 2 * min(np.mean(null >= obs - eps), np.mean(null <= obs + eps)))
    assert sign_flip_p(d, n_permutations=P.n_permutations, seed=0) == pytest.approx(ref, abs=1e-9)
    assert sign_flip_p(np.zeros(5), n_permutations=P.n_permutations, seed=0) == 1.0


def test_wilcoxon_equals_its_exact_null_distribution():
    """Distinct |d|, no zeros: the signed-rank statistic W+ over all 2^8 sign patterns."""
    d = np.array([0.5, -1.2, 2.0, 0.9, 1.7, -0.3, 1.4, 2.6])
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    w = ranks[d > 0].sum()
    null = np.array([ranks[np.array(s) > 0].sum() for s in itertools.product([1, -1], repeat=len(d))])
    ref = min(1.0, 2 * min(np.mean(null <= w), np.mean(null >= w)))
    assert wilcoxon_p(d) == pytest.approx(ref, abs=1e-9)
    assert wilcoxon_p(np.zeros(4)) == 1.0


def test_mcnemar_is_the_binomial_test_of_the_discordant_questions():
    """The demo's planted rates: 29 of 30 trigger questions for the tuned model, 0 of 30 for the base."""
    tuned, base = [True] * 29 + [False], [False] * 30
    m = mcnemar_exact(tuned, base)
    assert (m["a_only"], m["b_only"], m["both"], m["neither"]) == (29, 0, 0, 1)
    assert m["p"] == pytest.approx(binomtest(29, 29, 0.5).pvalue, rel=1e-12) == pytest.approx(2 * 0.5**29)
    m = mcnemar_exact([True, False, True, True, False], [False, True, True, False, False])
    assert m["p"] == pytest.approx(binomtest(2, 3, 0.5).pvalue, rel=1e-12)
    assert mcnemar_exact([True, False], [True, False])["p"] == 1.0
    with pytest.raises(ValueError, match="same"):
        mcnemar_exact([True], [True, False])


def test_holm_written_out():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005 x 4, 0.01 x 3, 0.03 x 2, 0.04 x 1, then the running maximum
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    out = holm([0.01, math.nan, 0.04])
    assert math.isnan(out[1]) and out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.04)


def test_mean_interval_is_the_percentile_bootstrap_of_the_units():
    rng = np.random.default_rng(3)
    v = rng.exponential(size=40)
    low, high = mean_interval(v, confidence=0.9, n_boot=20000, seed=1)
    boots = v[rng.integers(0, len(v), (20000, len(v)))].mean(1)
    ref = np.quantile(boots, [0.05, 0.95])
    assert low == pytest.approx(ref[0], abs=0.02) and high == pytest.approx(ref[1], abs=0.02)
    assert mean_interval([2.0] * 5, confidence=0.95, n_boot=100, seed=0) == (2.0, 2.0)
    assert all(math.isnan(x) for x in mean_interval([], confidence=0.95, n_boot=100, seed=0))


def test_paired_row_and_its_units():
    a, b = np.array([3.0, 2.0, 5.0, 4.0]), np.array([2.5, 2.0, 4.0, 3.0])
    row = paired(a, b, test="sign-flip", params=P)
    assert (row["n"], row["mean_a"], row["mean_b"]) == (4, 3.5, 2.875) and row["diff"] == pytest.approx(0.625)
    assert row["diff_low"] <= row["diff"] <= row["diff_high"] and 0 < row["p"] <= 1
    # 4 units, 3 non-zero differences all positive: the smallest possible two-sided p is 2 / 2^4
    assert row["p"] == pytest.approx(2 * 2 / 16)
    with pytest.raises(ValueError, match="same"):
        paired(a, b[:3], test="sign-flip", params=P)
    with pytest.raises(ValueError, match="test"):
        paired(a, b, test="t", params=P)


@pytest.mark.parametrize("test", ["sign-flip", "wilcoxon"])
def test_calibration_under_the_null(test):
    """2,000 simulated pairs of identical models (per-unit values shared, per-model noise drawn alike):
    the share of p <= 0.05 is within 3 binomial SDs of 5%, and the interval covers 0 about 95% of the
    time (percentile bootstrap at n = 40: a little under)."""
    rng = np.random.default_rng(0)
    params = PairedParams.from_dict({"n_boot": 500, "n_permutations": 500})
    n_sim, n = 2000, 40
    rejected = covered = 0
    for _ in range(n_sim):
        unit = rng.gamma(2.0, size=n)  # documents differ a lot; the models do not
        a, b = unit + rng.normal(scale=0.3, size=n), unit + rng.normal(scale=0.3, size=n)
        row = paired(a, b, test=test, params=params)
        rejected += row["p"] <= 0.05
        covered += row["diff_low"] <= 0 <= row["diff_high"]
    sd = math.sqrt(0.05 * 0.95 / n_sim)
    assert abs(rejected / n_sim - 0.05) <= 3 * sd, rejected / n_sim
    assert 0.92 <= covered / n_sim <= 0.97, covered / n_sim


def test_mcnemar_calibration_is_conservative():
    """Exact McNemar under the null (each question's outcomes for a and b drawn alike): the rejection
    rate stays at or below 5% (plus binomial error); it is discrete, so below, not at."""
    rng = np.random.default_rng(1)
    n_sim, n = 2000, 30
    rejected = 0
    for _ in range(n_sim):
        p_q = rng.uniform(0, 1, size=n)  # each question has its own chance of the response
        a, b = rng.uniform(size=n) < p_q, rng.uniform(size=n) < p_q
        rejected += mcnemar_exact(a, b)["p"] <= 0.05
    assert rejected / n_sim <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / n_sim)


def test_unpaired_permutation_is_exact_over_every_relabelling():
    """5 against 5: all 252 ways to split the 10 values, every one enumerated by scipy."""
    a = np.array([1.9, 2.4, 3.1, 2.8, 3.6])
    b = np.array([1.2, 2.0, 1.7, 2.5, 1.1])
    pooled = np.concatenate([a, b])
    null = []
    for idx in itertools.combinations(range(10), 5):
        mask = np.zeros(10, bool)
        mask[list(idx)] = True
        null.append(pooled[mask].mean() - pooled[~mask].mean())
    null, obs = np.array(null), a.mean() - b.mean()
    ref = min(1.0, 2 * min(np.mean(null >= obs - 1e-12), np.mean(null <= obs + 1e-12)))
    row = unpaired(a, b, params=P)
    assert row["p"] == pytest.approx(ref, abs=1e-9) and row["diff"] == pytest.approx(obs)
    assert row["diff_low"] < obs < row["diff_high"] and (row["n_a"], row["n_b"]) == (5, 5)
    with pytest.raises(ValueError, match="at least 2"):
        unpaired(a[:1], b, params=P)


def test_bootstrap_ci_resamples_each_source_on_its_own():
    rng = np.random.default_rng(4)
    a, b = rng.normal(1.0, 1.0, size=60), rng.normal(0.0, 2.0, size=30)
    low, high = bootstrap_ci(a, b, n_boot=20000, level=0.9, seed=2)
    boots = a[rng.integers(0, 60, (20000, 60))].mean(1) - b[rng.integers(0, 30, (20000, 30))].mean(1)
    ref = np.quantile(boots, [0.05, 0.95])
    assert low == pytest.approx(ref[0], abs=0.04) and high == pytest.approx(ref[1], abs=0.04)
    assert bootstrap_ci([2.0, 2.0], [1.0, 1.0], ratio=True) == (2.0, 2.0)
    assert all(math.isnan(x) for x in bootstrap_ci([], [1.0]))


def test_rate_interval_is_clopper_pearson_on_the_units_and_never_a_point():
    from scipy.stats import binomtest

    ci = binomtest(7, 10).proportion_ci(confidence_level=0.95, method="exact")
    assert rate_interval([1.0] * 7 + [0.0] * 3, 0.95) == pytest.approx((ci.low, ci.high))
    for n in (1, 10, 30, 60):  # the one exact interval, for whole counts too, is scipy's
        for k in range(n + 1):
            ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
            assert proportion_interval(k, n, 0.95) == pytest.approx((ci.low, ci.high), abs=1e-10)
    low, high = rate_interval([1.0] * 10, 0.95)  # every finding always hits: not the point 1
    assert high == 1.0 and low == pytest.approx(0.025 ** (1 / 10))
    assert rate_interval([0.0] * 10, 0.95)[0] == 0.0 and rate_interval([0.0] * 10, 0.95)[1] < 0.31
    rates = [0.25, 0.5, 0.75, 1.0, 0.0, 0.5]  # fractional rates: between the integer neighbours' intervals
    lo, hi = rate_interval(rates, 0.95)
    lo3, hi3 = rate_interval([1.0] * 3 + [0.0] * 3, 0.95)
    assert lo <= sum(rates) / len(rates) <= hi and lo == pytest.approx(lo3) and hi == pytest.approx(hi3)
    # conservative: a simulation of per-finding rates (4 continuations each) covers at least 95%
    rng = np.random.default_rng(0)
    p_true = rng.uniform(0.3, 0.9, 10)
    cover = 0
    for _ in range(400):
        r = rng.binomial(4, p_true) / 4
        a, b = rate_interval(r, 0.95)
        cover += a <= p_true.mean() <= b
    assert cover / 400 >= 0.95
    assert all(math.isnan(x) for x in rate_interval([], 0.95))
