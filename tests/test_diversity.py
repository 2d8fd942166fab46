"""Known answers for every diversity metric, computed by hand on small cases."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest

from lmdelta.diversity import (
    DIRECTION,
    cell_metrics,
    compression_ratio,
    cosine_matrix,
    distinct_n,
    leinster_cobbold,
    mean_offdiagonal,
    ngram_diversity,
    ngram_kernel,
    pairwise_jaccard,
    pairwise_ncd,
    self_bleu,
    truncate_words,
    vendi,
    words,
)


def test_words_and_truncation():
    assert words("Hello, World! it's") == ["hello", ",", "world", "!", "it", "'", "s"]
    assert truncate_words("one two  three\nfour five", 3) == "one two three"
    assert truncate_words("a b", None) == "a b"


def test_distinct_and_ngram_diversity():
    toks = [["a", "a", "b"], ["a", "c"]]
    assert distinct_n(toks, 1) == 3 / 5  # a a b a c -> {a, b, c}
    assert distinct_n(toks, 2) == 3 / 3  # (a a) (a b) (a c)
    assert math.isnan(distinct_n(toks, 4)), "no 4-grams: undefined, stated as NaN"
    assert distinct_n([["x", "x", "x", "x"]], 2) == 1 / 3
    assert ngram_diversity([["a", "b"], ["a", "b"]], ns=(1, 2)) == 2 / 4 + 1 / 2


def test_jaccard():
    assert pairwise_jaccard([["a", "b", "c"], ["a", "b", "d"]], 2) == pytest.approx(1 / 3)  # {ab, bc} vs {ab, bd}
    three = [["a", "b", "c"], ["a", "b", "c"], ["x", "y", "z"]]
    assert pairwise_jaccard(three, 2) == pytest.approx((1 + 0 + 0) / 3)


def test_self_bleu_extremes():
    same = ["the cat sat on the mat today"] * 4
    assert self_bleu(same) == pytest.approx(1.0)
    different = ["alpha beta gamma delta", "one two three four", "red green blue yellow"]
    assert self_bleu(different) < 0.05
    assert math.isnan(self_bleu(["only one"]))


def test_self_bleu_equals_sacrebleu_sentence_score():
    from sacrebleu.metrics import BLEU

    rng = np.random.default_rng(0)
    vocab = "the a cat dog sat ran on under mat tree , . quickly slowly".split()
    bleu = BLEU(tokenize="13a", smooth_method="exp", effective_order=True)
    for _ in range(5):
        texts = [" ".join(rng.choice(vocab, rng.integers(3, 15))) for _ in range(6)]
        ref = np.mean([bleu.sentence_score(t, texts[:i] + texts[i + 1 :]).score for i, t in enumerate(texts)]) / 100
        assert self_bleu(texts) == pytest.approx(ref, abs=1e-12)


def test_compression_ratio_and_ncd():
    texts = ["abcabcabc", "abcabcabc"]
    raw = b"abcabcabc\nabcabcabc"
    assert compression_ratio(texts) == len(raw) / len(gzip.compress(raw, 9, mtime=0))
    rng = np.random.default_rng(0)
    noise = ["".join(rng.choice(list("qwertyuiopasdfghjklzxcvbnm"), 200)) for _ in range(3)]
    same = [noise[0]] * 3
    assert compression_ratio(same) > 2 * compression_ratio(noise)
    assert pairwise_ncd(same) < 0.2 < 0.7 < pairwise_ncd(noise)


def test_cosine_vendi_and_leinster_cobbold():
    e = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    s = cosine_matrix(e)
    assert mean_offdiagonal(s) == pytest.approx((0 + 2 * math.sqrt(0.5)) / 3)
    n = 5
    assert vendi(np.eye(n)) == pytest.approx(n)  # all different
    assert vendi(np.ones((n, n))) == pytest.approx(1.0)  # all the same
    # two identical pairs + one distinct item: eigenvalues of K/n are 2/5, 2/5, 1/5
    k = np.eye(5)
    k[0, 1] = k[1, 0] = k[2, 3] = k[3, 2] = 1
    expected = math.exp(-(2 * 0.4 * math.log(0.4) + 0.2 * math.log(0.2)))
    assert vendi(k) == pytest.approx(expected)
    for q in (2, 3, 6):
        assert leinster_cobbold(np.eye(n), q) == pytest.approx(n)
        assert leinster_cobbold(np.ones((n, n)), q) == pytest.approx(1.0)
    # q = 2 is the inverse of the mean similarity: 1 / (p' Z p)
    assert leinster_cobbold(k, 2) == pytest.approx(1 / (k.sum() / 25))


def test_ngram_kernel():
    k = ngram_kernel([["a", "b"], ["a", "b"], ["c"]], ns=(1,))
    np.testing.assert_allclose(k, [[1, 1, 0], [1, 1, 0], [0, 0, 1]])


def test_cell_metrics_directions():
    rng = np.random.default_rng(1)
    same = ["The sky is blue and the sea is calm."] * 6
    varied = [
        "The sky is blue.",
        "Cats purr when happy.",
        "Rivers flow to the sea.",
        "Bread needs yeast.",
        "Chess has sixty-four squares.",
        "Snow is cold.",
    ]
    e_same = np.tile(rng.normal(size=(1, 8)), (6, 1))
    e_varied = rng.normal(size=(6, 8))
    a, b = cell_metrics(same, e_same), cell_metrics(varied, e_varied)
    assert set(a) == set(DIRECTION)
    for metric, direction in DIRECTION.items():
        if direction == "diverse":
            assert b[metric] > a[metric], metric
        else:
            assert b[metric] < a[metric], metric
