"""KL and JS against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from lmdelta.divergence import divergences, js, kl


def test_known_answers():
    p = torch.log(torch.tensor([[0.5, 0.5]]))
    q = torch.log(torch.tensor([[0.9, 0.1]]))
    assert kl(p, q).item() == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1), rel=1e-6)
    assert kl(q, p).item() == pytest.approx(0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5), rel=1e-6)
    # the mixture M = (P + Q) / 2 = [0.7, 0.3]
    expected_js = 0.5 * (0.5 * math.log(0.5 / 0.7) + 0.5 * math.log(0.5 / 0.3)) + 0.5 * (
        0.9 * math.log(0.9 / 0.7) + 0.1 * math.log(0.1 / 0.3)
    )
    assert js(p, q).item() == pytest.approx(expected_js, rel=1e-6)
    disjoint = js(torch.tensor([[20.0, -20.0]]), torch.tensor([[-20.0, 20.0]])).item()
    assert disjoint == pytest.approx(math.log(2), rel=1e-4)
    assert kl(p, p).item() == pytest.approx(0.0, abs=1e-7)


def test_directions_are_named_and_padded_vocabularies_compared_on_common_rows():
    a = torch.tensor([[1.0, 2.0, 3.0, -1e9]])  # a padded output row that no token uses
    b = torch.tensor([[3.0, 1.0, 0.0]])
    d = divergences(a, b, ("tuned", "base"))
    assert set(d) == {"kl_tuned_base", "kl_base_tuned", "js"}
    assert d["kl_tuned_base"].item() == pytest.approx(kl(a[:, :3], b).item())
    assert abs(d["kl_tuned_base"].item() - d["kl_base_tuned"].item()) > 0.05, "KL is not symmetric: direction matters"
