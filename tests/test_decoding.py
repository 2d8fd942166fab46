"""The sampling rules of the decoding engine against exact distributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmdelta.decoding import Sampling, choose, filter_logits

LOGITS = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))


def draw(sampling, n=40_000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = choose(LOGITS.expand(n, 4), sampling, gen)
    return np.bincount(ids.numpy(), minlength=4) / n


@pytest.mark.parametrize("sampling,expected", [
    (Sampling(temperature=1.0), [0.5, 0.25, 0.15, 0.1]),
    (Sampling(temperature=0.5), np.array([0.5, 0.25, 0.15, 0.1]) ** 2 / (np.array([0.5, 0.25, 0.15, 0.1]) ** 2).sum()),
    (Sampling(temperature=1.0, top_k=2), [2 / 3, 1 / 3, 0, 0]),
    (Sampling(temperature=1.0, top_p=0.7), [2 / 3, 1 / 3, 0, 0]),    # 0.5 < 0.7, 0.5 + 0.25 >= 0.7: two tokens
    (Sampling(temperature=1.0, top_p=0.75), [2 / 3, 1 / 3, 0, 0]),   # reaching top_p exactly stops there
    (Sampling(temperature=1.0, top_p=0.1), [1, 0, 0, 0]),            # the most probable token is always kept
    (Sampling(temperature=1.0, top_k=3, top_p=0.9), [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0]),
])
def test_sampling_matches_the_exact_distribution(sampling, expected):
    np.testing.assert_allclose(draw(sampling), expected, atol=0.01)


def test_greedy_and_seeding():
    assert choose(LOGITS.expand(3, 4), Sampling(), None).tolist() == [0, 0, 0]
    a, b = draw(Sampling(temperature=1.0), n=50, seed=1), draw(Sampling(temperature=1.0), n=50, seed=1)
    assert (a == b).all()


def test_filter_keeps_at_least_one_token_per_row():
    z = filter_logits(torch.tensor([[0.0, 0.0, 10.0], [1.0, 2.0, 3.0]]), Sampling(temperature=1.0, top_p=0.01, top_k=1))
    assert torch.isfinite(z).sum(-1).tolist() == [1, 1]
