"""Divergences between two models' next-token distributions: the one place KL and JS are computed.

All in nats, in float32, per position, from logits. ``kl(a, b)`` is KL(P_a ‖ P_b) = Σ P_a (log P_a −
log P_b): the direction is in the argument order and in every output column name
(``kl_<a>_<b>``). Models that share a tokenizer but pad their output layer differently (e.g. Pythia's
50,304 rows for 50,277 tokens) are compared on the common leading rows, renormalised.
"""

from __future__ import annotations


def _common(a, b):
    v = min(a.shape[-1], b.shape[-1])
    return a[..., :v].float(), b[..., :v].float()


def kl(a_logits, b_logits):
    """KL(P_a ‖ P_b) per position (nats)."""
    import torch

    a, b = _common(a_logits, b_logits)
    la, lb = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    return (la.exp() * (la - lb)).sum(-1)


def js(a_logits, b_logits):
    """Jensen-Shannon divergence per position (nats, at most ln 2)."""
    import math

    import torch

    a, b = _common(a_logits, b_logits)
    la, lb = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    lm = torch.logaddexp(la, lb) - math.log(2.0)
    return 0.5 * ((la.exp() * (la - lm)).sum(-1) + (lb.exp() * (lb - lm)).sum(-1))


def divergences(a_logits, b_logits, names: tuple[str, str] = ("a", "b")) -> dict:
    """KL in both directions and JS, keyed by direction, e.g. ``kl_tuned_base``."""
    x, y = names
    return {f"kl_{x}_{y}": kl(a_logits, b_logits), f"kl_{y}_{x}": kl(b_logits, a_logits), "js": js(a_logits, b_logits)}
