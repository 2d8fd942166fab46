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


@pytest.mark.parametrize(
    "sampling,expected",
    [
        (Sampling(temperature=1.0), [0.5, 0.25, 0.15, 0.1]),
        (
            Sampling(temperature=0.5),
            np.array([0.5, 0.25, 0.15, 0.1]) ** 2 / (np.array([0.5, 0.25, 0.15, 0.1]) ** 2).sum(),
        ),
        (Sampling(temperature=1.0, top_k=2), [2 / 3, 1 / 3, 0, 0]),
        (Sampling(temperature=1.0, top_p=0.7), [2 / 3, 1 / 3, 0, 0]),  # 0.5 < 0.7, 0.5 + 0.25 >= 0.7: two tokens
        (Sampling(temperature=1.0, top_p=0.75), [2 / 3, 1 / 3, 0, 0]),  # reaching top_p exactly stops there
        (Sampling(temperature=1.0, top_p=0.1), [1, 0, 0, 0]),  # the most probable token is always kept
        (Sampling(temperature=1.0, top_k=3, top_p=0.9), [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0]),
    ],
)
def test_sampling_matches_the_exact_distribution(sampling, expected):
    np.testing.assert_allclose(draw(sampling), expected, atol=0.01)


def test_greedy_and_seeding():
    assert choose(LOGITS.expand(3, 4), Sampling(), None).tolist() == [0, 0, 0]
    a, b = draw(Sampling(temperature=1.0), n=50, seed=1), draw(Sampling(temperature=1.0), n=50, seed=1)
    assert (a == b).all()


@pytest.mark.parametrize(
    "kwargs,named",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
    ],
)
def test_sampling_rejects_values_that_define_no_distribution(kwargs, named):
    """temperature 0 would divide by zero (greedy is None); top_p 0 keeps no token."""
    from lmdelta import LmdeltaError

    with pytest.raises(LmdeltaError, match=named):
        Sampling(**kwargs)


def test_filter_keeps_at_least_one_token_per_row():
    z = filter_logits(torch.tensor([[0.0, 0.0, 10.0], [1.0, 2.0, 3.0]]), Sampling(temperature=1.0, top_p=0.01, top_k=1))
    assert torch.isfinite(z).sum(-1).tolist() == [1, 1]


def test_combine_known_answers():
    import math

    from lmdelta.decoding import Combination, combine

    pa = torch.tensor([[0.6, 0.3, 0.1]])
    pb = torch.tensor([[0.2, 0.2, 0.6]])
    la, lb = pa.log(), pb.log()
    torch.testing.assert_close(combine([la, lb], Combination(weights=(1.0, -1.0))), (pa / pb).log())
    torch.testing.assert_close(
        combine([la, lb], Combination(weights=(0.5, 0.5), space="prob")), (0.5 * pa + 0.5 * pb).log()
    )
    masked = combine([la, lb], Combination(weights=(1.0, -1.0), plausibility_alpha=0.4))
    assert torch.isinf(masked[0, 2]) and torch.isfinite(masked[0, :2]).all(), "0.1 < 0.4 * 0.6: not plausible"
    assert masked[0, 0].item() == pytest.approx(math.log(3.0), rel=1e-6)


def test_contrastive_decoding_matches_a_plain_loop(tiny_models):
    """Two models, greedy on log p_a - log p_b with a plausibility mask, each with its own KV cache and
    prompt, against a loop that recomputes both models on the whole sequence at every step."""
    from transformers import AutoModelForCausalLM

    from lmdelta.decoding import Combination, decode_combined
    from lmdelta.divergence import kl

    a = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()
    torch.manual_seed(1)
    b = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.05 * torch.randn_like(p))
    comb = Combination(weights=(1.0, -1.0), plausibility_alpha=0.1)
    prompt_a, prompt_b = [5, 17, 42, 9], [7, 5, 17, 42, 9]  # each model its own prompt
    kls = []
    with torch.no_grad():
        got = decode_combined(
            [a, b],
            [
                (torch.tensor([prompt_a]), torch.ones(1, 4, dtype=torch.long)),
                (torch.tensor([prompt_b]), torch.ones(1, 5, dtype=torch.long)),
            ],
            comb=comb,
            max_new_tokens=6,
            sampling=Sampling(),
            eos_ids=(),
            pad_id=0,
            seed=0,
            on_step=lambda step, logits, chosen: kls.append(kl(logits[0], logits[1]).item()),
        )
        sa, sb, ref, ref_kl = list(prompt_a), list(prompt_b), [], []
        for _ in range(6):
            za, zb = a(torch.tensor([sa])).logits[0, -1], b(torch.tensor([sb])).logits[0, -1]
            lpa, lpb = torch.log_softmax(za.double(), -1), torch.log_softmax(zb.double(), -1)
            ref_kl.append(float((lpa.exp() * (lpa - lpb)).sum()))
            score = torch.where(lpa >= lpa.max() + np.log(0.1), lpa - lpb, torch.tensor(-np.inf, dtype=torch.float64))
            t = int(score.argmax())
            ref.append(t)
            sa.append(t)
            sb.append(t)
    assert got[0].tolist() == ref
    np.testing.assert_allclose(kls, ref_kl, rtol=1e-4, atol=1e-6)


def test_the_engine_uses_the_current_cache_argument(tiny_models):
    """transformers >= 5.24 deprecates past_key_values (removed in 5.40): the engine passes cache=."""
    import warnings

    from transformers import AutoModelForCausalLM

    from lmdelta.decoding import decode

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()
    ids = torch.tensor([[1, 5, 6, 7]])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        with torch.inference_mode():
            new = decode(
                model, ids, torch.ones_like(ids), max_new_tokens=4, sampling=Sampling(), eos_ids=(), pad_id=0, seed=0
            )
    assert new.shape == (1, 4)


def test_asking_whether_every_row_finished_less_often_changes_nothing(tiny_models):
    """On a GPU the engine reads "every row finished?" only every sync_every steps (a host sync) and
    cuts the steps decoded after that: the same ids for any sync_every, rows finishing at various steps."""
    from transformers import AutoModelForCausalLM

    from lmdelta.decoding import decode_combined

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()
    torch.manual_seed(0)
    ids = torch.randint(3, 100, (6, 5))
    stops = tuple(range(0, model.config.vocab_size, 3))  # a third of the vocabulary ends a row
    runs = {}
    with torch.inference_mode():
        for every in (1, 3, 8, 64):
            runs[every] = decode_combined(
                [model],
                [(ids, torch.ones_like(ids))],
                comb=None,
                max_new_tokens=20,
                sampling=Sampling(temperature=1.0),
                eos_ids=stops,
                pad_id=0,
                seed=5,
                sync_every=every,
            )
    ends = [next(i for i, t in enumerate(row.tolist()) if t in stops) for row in runs[1]]
    assert len(set(ends)) > 1 and runs[1].shape[1] == max(ends) + 1  # cut right after the last row's EOS
    for every in (3, 8, 64):
        assert torch.equal(runs[every], runs[1]), every
