"""Known answers for the UID metrics and the comparison statistics, on hand-made sequences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmdelta.uid import (
    METRICS,
    bootstrap_ci,
    cohens_d,
    compare,
    doc_metrics,
    first_tokens,
    holm,
    surprisal_bits,
    word_surprisals,
)

S = [1.0, 2.0, 4.0]


def test_surprisal_is_in_bits():
    np.testing.assert_allclose(surprisal_bits([-math.log(2), -math.log(8), 0.0]), [1.0, 3.0, 0.0])


def test_doc_metrics_known_answers():
    m = doc_metrics(S, corpus_mean=2.0)
    assert m["n_tokens"] == 3
    assert m["mean"] == pytest.approx(7 / 3) and m["median"] == 2 and m["max"] == 4
    assert m["uid_var_doc"] == pytest.approx(14 / 9)          # ((4/3)² + (1/3)² + (5/3)²) / 3
    assert m["uid_var_corpus"] == pytest.approx((1 + 0 + 4) / 3)
    assert m["uid_pairwise_sq"] == pytest.approx((1 + 4) / 2)  # normaliser N - 1
    assert m["uid_pairwise_abs"] == pytest.approx((1 + 2) / 2)
    assert m["power_1"] == pytest.approx(7 / 3)
    assert m["power_2"] == pytest.approx(math.sqrt(7))
    assert m["power_0.5"] == pytest.approx(((1 + math.sqrt(2) + 2) / 3) ** 2)
    assert m["power_3"] == pytest.approx((73 / 3) ** (1 / 3))
    assert set(METRICS) <= set(m)
    flat = doc_metrics([3.0] * 5, corpus_mean=3.0)
    assert flat["uid_var_doc"] == flat["uid_pairwise_sq"] == flat["uid_var_corpus"] == 0
    assert math.isnan(doc_metrics([2.0], 2.0)["uid_pairwise_sq"])


def test_length_control_is_unchanged_by_text_beyond_l():
    rng = np.random.default_rng(0)
    s = rng.gamma(2.0, 2.0, 40)
    longer = np.concatenate([s, rng.gamma(5.0, 3.0, 200)])  # very different text appended
    a = doc_metrics(first_tokens(s, 30), corpus_mean=4.0)
    b = doc_metrics(first_tokens(longer, 30), corpus_mean=4.0)
    assert a == b
    assert doc_metrics(s, 4.0) != doc_metrics(longer, 4.0), "without length control the appended text matters"
    assert first_tokens(s[:10], 30) is None, "shorter documents are left out of the length-controlled table"


def test_word_level_sums_tokens_into_words():
    np.testing.assert_allclose(word_surprisals([1, 2, 3, 4, 5], [0, 0, 1, 2, 2]), [3, 3, 9])


def test_statistics_known_answers():
    assert cohens_d([1, 2, 3], [2, 3, 4]) == pytest.approx(-1.0)  # pooled SD 1
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])
    lo, hi = bootstrap_ci([5.0] * 10, [2.0] * 10)
    assert lo == hi == 3.0
    lo, hi = bootstrap_ci(np.arange(100.0), np.arange(100.0) + 10, seed=1)
    assert lo < -10 < hi and bootstrap_ci(np.arange(100.0), np.arange(100.0) + 10, seed=1) == (lo, hi)
    c = compare([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert c["u"] == 0 and c["p"] == pytest.approx(2 / 252)  # exact: the most extreme of C(10,5) = 252 splits, two-sided
