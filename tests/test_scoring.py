"""The scorer against an independent computation: one plain forward per window, log_softmax in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmdelta import LmdeltaError
from lmdelta.scoring import rolling_windows, score_sequences


def lm_eval_rolling_windows(token_list, prefix_token, max_seq_len, context_len):
    """lm-evaluation-harness's get_rolling_token_windows, restated from its published code, as the reference."""
    assert 1 <= context_len <= max_seq_len
    if not token_list:
        return
    pred_len = max_seq_len - context_len + 1
    predicted = 0
    first_seq_len = min(max_seq_len, len(token_list))
    yield [prefix_token] + token_list[: first_seq_len - 1], token_list[:first_seq_len]
    predicted += first_seq_len
    while predicted < len(token_list):
        window_pred_len = min(len(token_list) - predicted, pred_len)
        window_end = predicted + window_pred_len
        yield (
            token_list[window_end - max_seq_len - 1 : window_end - 1],
            token_list[window_end - window_pred_len : window_end],
        )
        predicted += window_pred_len


@pytest.fixture(scope="module")
def models(tiny_models):
    from transformers import AutoModelForCausalLM

    return {arch: AutoModelForCausalLM.from_pretrained(path).eval() for arch, path in tiny_models.items()}


def reference(model, seq, max_length, stride):
    """Per scored token (logprob, entropy, top1, rank) from lm-eval's windows, one forward each."""
    prefix, tokens = seq[0], list(seq[1:])
    out = []
    for context, pred in lm_eval_rolling_windows(tokens, prefix, max_length, max_length - stride + 1):
        # The window feeds its context; its last len(pred) positions predict pred.
        with torch.no_grad():
            logits = model(torch.tensor([context])).logits[0].double()
        lp = torch.log_softmax(logits, -1)[-len(pred) :]
        p = lp.exp()
        tgt = torch.tensor(pred)
        lp_t = lp.gather(1, tgt[:, None])[:, 0]
        order = torch.argsort(lp, dim=-1, descending=True, stable=True)
        rank = torch.tensor([int((order[i] == tgt[i]).nonzero()[0, 0]) + 1 for i in range(len(pred))])
        out.append(np.stack([lp_t.numpy(), -(p * lp).sum(-1).numpy(), p.max(-1).values.numpy(), rank.numpy()], 1))
    return np.concatenate(out) if out else np.zeros((0, 4))


@pytest.mark.parametrize(
    "seq_len,max_length,stride", [(1, 8, 8), (2, 8, 8), (9, 8, 8), (50, 8, 8), (50, 8, 3), (50, 16, 1), (17, 16, 16)]
)
def test_windows_score_every_token_once_with_the_promised_context(seq_len, max_length, stride):
    wins = rolling_windows(seq_len, max_length, stride)
    scored = [s for start, stop, f in wins for s in range(f, stop + 1)]
    assert scored == list(range(1, seq_len))
    for start, stop, f in wins:
        assert stop - start <= max_length and start < f <= stop + 1
        if stop > max_length:
            assert f - start >= max_length - stride + 1, "context of the first scored id of a later window"
    # same windows as lm-eval's scheme with context_len = max_length - stride + 1
    ref = list(lm_eval_rolling_windows(list(range(1, seq_len)), 0, max_length, max_length - stride + 1))
    assert [list(range(f, stop + 1)) for _, stop, f in wins] == [pred for _, pred in ref]
    assert [list(range(start, stop)) for start, stop, _ in wins] == [ctx for ctx, _ in ref]


def test_bad_window_settings():
    with pytest.raises(LmdeltaError, match="stride"):
        rolling_windows(10, 8, 9)
    with pytest.raises(LmdeltaError, match="stride"):
        rolling_windows(10, 0, 0)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
@pytest.mark.parametrize(
    "max_length,stride,batch_tokens,padding",
    [
        (64, 64, 64, "right"),  # every document fits one window; batch of one window
        (64, 64, 10_000, "right"),  # many windows per batch
        (16, 16, 16, "right"),  # disjoint windows, batch size 1
        (16, 5, 80, "right"),  # overlapping windows, several per batch
        (16, 5, 80, "left"),
        (64, 64, 10_000, "left"),
    ],
)
def test_scores_equal_independent_computation(models, arch, max_length, stride, batch_tokens, padding):
    model = models[arch]
    g = torch.Generator().manual_seed(1)
    seqs = [[1] + torch.randint(4, 500, (n,), generator=g).tolist() for n in (0, 1, 3, 15, 16, 17, 40, 63)]
    vocab = model.config.vocab_size
    prob_sum = torch.zeros(vocab, dtype=torch.float64)
    got = score_sequences(
        model,
        seqs,
        max_length=max_length,
        stride=stride,
        batch_tokens=batch_tokens,
        pad_token_id=3,
        padding_side=padding,
        prob_sum=prob_sum,
    )
    ref_sum = torch.zeros(vocab, dtype=torch.float64)
    for seq, g_ in zip(seqs, got):
        ref = reference(model, seq, max_length, stride)
        assert len(g_.logprob) == len(seq) - 1 == len(ref)
        np.testing.assert_array_equal(g_.token_ids, seq[1:])
        if len(ref) == 0:
            continue
        np.testing.assert_allclose(g_.logprob, ref[:, 0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(g_.entropy, ref[:, 1], atol=1e-5, rtol=0)
        np.testing.assert_allclose(g_.top1_prob, ref[:, 2], atol=1e-5, rtol=0)
        np.testing.assert_array_equal(g_.rank, ref[:, 3])
        for context, pred in lm_eval_rolling_windows(seq[1:], seq[0], max_length, max_length - stride + 1):
            with torch.no_grad():
                ref_sum += torch.softmax(model(torch.tensor([context])).logits[0, -len(pred) :].double(), -1).sum(0)
    torch.testing.assert_close(prob_sum, ref_sum, atol=1e-5, rtol=1e-5)
    assert abs(prob_sum.sum().item() - sum(len(s) - 1 for s in seqs)) < 1e-3


def test_rank_counts_ties_in_the_tokens_favour():
    from lmdelta.scoring import reduce_logits

    z = torch.tensor([[1.0, 3.0, 3.0, 0.0], [5.0, 5.0, 5.0, 5.0]])
    lp, ent, top1, rank = reduce_logits(z, torch.tensor([2, 3]))
    assert rank.tolist() == [1, 1]
    torch.testing.assert_close(ent[1], torch.tensor(np.log(4.0), dtype=torch.float32))
    torch.testing.assert_close(top1[1], torch.tensor(0.25))


def test_chunk_size_changes_speed_not_numbers(models):
    """auto is 32 on a CPU and a memory budget on a GPU; any chunk size gives the same numbers."""
    from lmdelta.scoring import GPU_CHUNK_BYTES, resolve_chunk

    assert resolve_chunk("auto", torch.device("cpu"), 49152) == 32
    assert resolve_chunk("auto", torch.device("cuda", 0), 49152) == GPU_CHUNK_BYTES // (4 * 49152) == 1365
    assert resolve_chunk("auto", torch.device("cuda", 0), 10**7) == 32  # never fewer than on a CPU
    assert resolve_chunk(7, torch.device("cuda", 0), 49152) == 7
    model = models["llama"]
    g = torch.Generator().manual_seed(2)
    seqs = [[1] + torch.randint(4, 500, (n,), generator=g).tolist() for n in (5, 40, 63)]
    runs = [
        score_sequences(model, seqs, max_length=32, stride=16, batch_tokens=256, pad_token_id=3, chunk_positions=c)
        for c in ("auto", 1, 7, 10_000)
    ]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            for field in ("logprob", "entropy", "top1_prob", "rank"):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_chunks_are_the_scored_positions_in_order_without_copying_inside_a_run():
    """The reducer gets views of the logits where a chunk lies in one window's run, and the same rows as
    indexing every scored position would give, chunk by chunk, for any chunk size."""
    from lmdelta.scoring import _chunks

    logits = torch.randn(3, 10, 6)
    runs = [(0, 2, 7), (2, 0, 1), (1, 4, 6)]  # (row, first position, count)
    rows = torch.tensor([r for r, _, n in runs for _ in range(n)])
    cols = torch.tensor([c + i for _, c, n in runs for i in range(n)])
    for size in (1, 3, 7, 8, 14, 100):
        got = list(_chunks(logits, runs, size))
        assert [len(z) for z in got[:-1]] == [size] * (len(got) - 1)
        assert torch.equal(torch.cat(got), logits[rows, cols])
    inside = next(_chunks(logits, runs, 3))
    assert inside.data_ptr() == logits[0, 2].data_ptr()  # a view, not a copy


def _reference(z, targets):
    """The reductions in float64, written out."""
    zd = z.double()
    lse = torch.logsumexp(zd, -1)
    p = torch.exp(zd - lse[:, None])
    z_t = zd.gather(1, targets[:, None])[:, 0]
    return z_t - lse, lse - (p * zd).sum(-1), p.max(-1).values, (zd > z_t[:, None]).sum(-1) + 1, p.sum(0)


def test_reductions_equal_a_float64_computation():
    from lmdelta.scoring import reduce_logits

    torch.manual_seed(0)
    z = torch.randn(40, 5000) * 4
    z[3] = 0.0  # a flat row: entropy log V, every token tied at rank 1
    targets = torch.randint(0, 5000, (40,))
    prob_sum = torch.zeros(5000, dtype=torch.float64)
    got = reduce_logits(z, targets, prob_sum)
    want = _reference(z, targets)
    for g, w in zip(got[:3], want[:3]):
        torch.testing.assert_close(g.double(), w, rtol=2e-6, atol=2e-5)
    assert torch.equal(got[3], want[3]) and got[3][3] == 1
    torch.testing.assert_close(prob_sum, want[4], rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(
        reduce_logits(z.bfloat16(), targets)[1].double(), _reference(z.bfloat16(), targets)[1], rtol=1e-5, atol=5e-5
    )


@pytest.mark.slow
def test_the_compiled_reduction_used_on_a_gpu_equals_the_eager_one():
    """reducer(cuda) compiles reduce_logits; compiled here for the CPU, it must give the same numbers to
    float32 rounding (inductor fuses the exp into its sums), for chunks of several sizes (dynamic)."""
    from lmdelta.scoring import reduce_logits

    compiled = torch.compile(reduce_logits, dynamic=True)
    torch.manual_seed(1)
    for rows in (32, 7):
        z = torch.randn(rows, 3000) * 4
        targets = torch.randint(0, 3000, (rows,))
        ps_e, ps_c = torch.zeros(3000, dtype=torch.float64), torch.zeros(3000, dtype=torch.float64)
        try:
            got = compiled(z, targets, ps_c)
        except Exception as e:  # noqa: BLE001 (no C++ compiler for inductor on this machine)
            pytest.skip(f"torch.compile does not run here: {type(e).__name__}")
        eager = reduce_logits(z, targets, ps_e)
        for g, e in zip(got[:3], eager[:3]):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=2e-4)
        assert torch.equal(got[3], eager[3])
        torch.testing.assert_close(ps_c, ps_e, rtol=1e-5, atol=1e-9)
