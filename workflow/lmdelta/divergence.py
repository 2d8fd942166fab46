"""Divergences between two models' next-token distributions: the one place KL and JS are computed.

All in nats, in float32, per position, from logits. ``kl(a, b)`` is KL(P_a ‖ P_b) = Σ P_a (log P_a −
log P_b): the direction is in the argument order and in every output column name
(``kl_<a>_<b>``). Models that share a tokenizer but pad their output layer differently (e.g. Pythia's
50,304 rows for 50,277 tokens) are compared on the common leading rows, renormalised.
"""

from __future__ import annotations

from lmdelta.models import input_device, right_pad


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


def text_divergences(
    models, seqs: list[tuple[list[int], list[int]]], starts: list[tuple[int, int]], *, pad: int, batch_size: int = 8
) -> list[dict]:
    """Teacher-forced divergences of two models on shared text tokens, each model reading its own prefix.

    ``seqs[i]`` holds model a's and model b's token ids (own prompt format, then the same text tokens);
    ``starts[i]`` the index in each of the first text token. Returns, per text, the mean over its
    tokens of ``kl_a_b``, ``kl_b_a`` and ``js`` between the distributions that predict each text token
    (NaN for an empty text) and ``n_tokens``.
    """
    import math

    import torch

    out = []
    for b in range(0, len(seqs), batch_size):
        chunk, where = seqs[b : b + batch_size], starts[b : b + batch_size]
        logits = []
        for side, model in enumerate(models):
            ids, mask = right_pad([s[side] for s in chunk], pad)
            device = input_device(model)
            with torch.inference_mode():
                logits.append(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu())
        for i, (s, (sa, sb)) in enumerate(zip(chunk, where)):
            n = len(s[0]) - sa
            if n <= 0 or sa == 0 or sb == 0:
                out.append({"kl_a_b": math.nan, "kl_b_a": math.nan, "js": math.nan, "n_tokens": max(n, 0)})
                continue
            za, zb = logits[0][i, sa - 1 : sa - 1 + n], logits[1][i, sb - 1 : sb - 1 + n]
            d = divergences(za, zb, ("a", "b"))
            out.append({k: float(v.mean()) for k, v in d.items()} | {"n_tokens": n})
    return out
