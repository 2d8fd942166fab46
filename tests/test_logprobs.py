"""The logprobs stage and the entropy/perplexity summaries, checked against independent computations."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from lmdelta import LmdeltaError
from lmdelta.artifacts import read_provenance
from lmdelta.config import ModelSpec
from lmdelta.logprobs import LogprobParams, run_logprobs
from lmdelta.models import materialise
from lmdelta.perplexity import run_compare, run_summary, vocab_fraction

DOCS = {
    "a": "The quick brown fox jumps over the lazy dog. " * 6,
    "empty": "",
    "b": "def f(x):\n    return x * 2  # double it\n",
    "one": "x",
    "ws": " \n\t  \n",
    "c": "Naïve café — unicode text: αβγ, 東京.",
    "d": "The assignment statement binds names to objects. " * 3,
}
CPU = {"dtype": "float32", "quantization": "none", "device": "cpu", "trust_remote_code": False}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("lp")
    model_dir = root / "model"
    materialise(ModelSpec(name="m", source={"local": {"path": str(tiny_models["llama"])}}), model_dir)
    corpus = root / "corpus.parquet"
    pd.DataFrame({"doc_id": list(DOCS), "text": list(DOCS.values())}).to_parquet(corpus)
    return root, model_dir, corpus


def run(setup, name, n_shards=1, **params):
    root, model_dir, corpus = setup
    out = root / name / "m.parquet"
    p = LogprobParams(**{"max_length": 16, "stride": 6, "batch_tokens": 64, "part_docs": 2, **params})
    run_logprobs(
        model_dir, corpus, out, out.with_suffix(".meanprob.npy"), params=p, load_options=CPU, n_shards=n_shards
    )
    return out


def test_tokens_match_a_plain_forward_per_document(setup):
    """With windows longer than any document, each document is one plain forward."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, model_dir, _ = setup
    out = run(setup, "full", max_length=256, stride=256, batch_tokens=4096)
    df = pd.read_parquet(out)
    assert list(df.columns) == ["doc_id", "position", "token_id", "logprob", "entropy", "top1_prob", "rank"]
    assert str(df.logprob.dtype) == "float32" and str(df["rank"].dtype) == "int32"
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    for doc_id, text in DOCS.items():
        ids = tok(text, add_special_tokens=False).input_ids
        got = df[df.doc_id == doc_id]
        if not ids:
            assert got.empty, "an empty document has nothing to score"
            continue
        seq = [tok.bos_token_id] + ids
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([seq])).logits[0, :-1].double(), -1)
        ref = lp.gather(1, torch.tensor(ids)[:, None])[:, 0].numpy()
        assert got.position.tolist() == list(range(len(ids))) and got.token_id.tolist() == ids
        np.testing.assert_allclose(got.logprob.to_numpy(), ref, atol=1e-5)
        np.testing.assert_allclose(got.entropy.to_numpy(), -(lp.exp() * lp).sum(-1).numpy(), atol=1e-5)
    assert not df.isna().any().any()
    rec = read_provenance(out)
    assert rec["params"]["prefix_token_id"] == tok.bos_token_id and rec["params"]["units"] == "nats"
    assert rec["params"]["counts"]["n_docs_skipped"] == 1 and rec["params"]["skipped_doc_ids"] == ["empty"]
    assert rec["params"]["max_length"] == 256 and rec["inputs"]["model"]["fingerprint"]
    mean_prob = np.load(out.with_suffix(".meanprob.npy"))
    assert mean_prob.shape == (model.config.vocab_size,) and abs(mean_prob.sum() - 1) < 1e-6  # float32 probabilities


def test_first_token_none_and_tokenizer_without_bos(setup, tmp_path):
    out = run(setup, "none", first_token="none")
    df = pd.read_parquet(out)
    assert df.groupby("doc_id").position.min().eq(1).all(), "without a prefix the first token is not scored"
    assert "one" not in set(df.doc_id), "a one-token document has nothing to score without a prefix"
    # a tokenizer with neither BOS nor EOS: bos/eos policies fail clearly; none works
    root, model_dir, corpus = setup
    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare)
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    for key in ("bos_token", "eos_token", "pad_token"):
        cfg.pop(key, None)
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg))
    p = LogprobParams(max_length=16, stride=8, batch_tokens=64)
    with pytest.raises(LmdeltaError, match="tokenizer has no BOS or EOS token; set the model's first_token: none"):
        run_logprobs(bare, corpus, tmp_path / "x.parquet", tmp_path / "x.npy", params=p, load_options=CPU)
    run_logprobs(
        bare,
        corpus,
        tmp_path / "y.parquet",
        tmp_path / "y.npy",
        params=LogprobParams(max_length=16, stride=6, batch_tokens=64, part_docs=2, first_token="none"),
        load_options=CPU,
    )
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "y.parquet"), df)


def test_windowing_and_batching_do_not_change_results(setup):
    a = pd.read_parquet(run(setup, "w1", max_length=16, stride=16, batch_tokens=16))
    b = pd.read_parquet(run(setup, "w2", max_length=16, stride=16, batch_tokens=4096, part_docs=100))
    pd.testing.assert_frame_equal(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("n_shards", [2, 3, 6])
def test_sharded_run_is_byte_identical_to_one_job(setup, n_shards):
    """4 parts of 2 documents dealt out to 2, 3 or 6 jobs (6: two shards are empty)."""
    whole = run(setup, "one-job")
    sharded = run(setup, f"sharded-{n_shards}", n_shards=n_shards)
    assert sharded.read_bytes() == whole.read_bytes()
    assert sharded.with_suffix(".meanprob.npy").read_bytes() == whole.with_suffix(".meanprob.npy").read_bytes()
    rec = read_provenance(sharded)
    assert rec["params"]["shards"] == n_shards and rec["params"]["counts"] == read_provenance(whole)["params"]["counts"]
    assert rec["compute_time_s"] >= rec["wall_time_s"]


def test_gather_refuses_missing_or_mismatched_shards(setup):
    from lmdelta.logprobs import gather_logprobs, score_logprobs_shard

    root, model_dir, corpus = setup
    p = LogprobParams(max_length=16, stride=6, batch_tokens=64, part_docs=2)
    d = root / "gather" / "shards" / "m"
    score_logprobs_shard(model_dir, corpus, d / "0-of-2", params=p, load_options=CPU, shard=0, n_shards=2)
    with pytest.raises(LmdeltaError, match="not shards 0..1 of 2"):
        gather_logprobs([d / "0-of-2"], root / "gather" / "m.parquet", root / "gather" / "m.npy")
    score_logprobs_shard(
        model_dir,
        corpus,
        d / "1-of-2",
        params=LogprobParams(max_length=16, stride=8, batch_tokens=64, part_docs=2),
        load_options=CPU,
        shard=1,
        n_shards=2,
    )
    with pytest.raises(LmdeltaError, match="other settings or inputs"):
        gather_logprobs([d / "0-of-2", d / "1-of-2"], root / "gather" / "m.parquet", root / "gather" / "m.npy")
    assert not (root / "gather" / "m.parquet").exists()


def test_killed_run_resumes_from_finished_shards_and_equals_uninterrupted(setup, monkeypatch):
    import lmdelta.logprobs as lp

    whole = run(setup, "whole")
    calls = []
    real = lp.score_part

    def dies_on_third_part(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(lp, "score_part", dies_on_third_part)
    with pytest.raises(KeyboardInterrupt):
        run(setup, "resumed")
    out = setup[0] / "resumed" / "m.parquet"
    assert not out.exists(), "no final artifact after a kill"
    parts = list(out.parent.glob("shards/m/.0-of-1.parts-*/part-*.parquet"))
    assert len(parts) == 2
    calls.clear()
    run(setup, "resumed")
    n_shards = -(-len(DOCS) // 2)
    assert len(calls) == n_shards - 2, "only the unfinished shards are scored again"
    assert out.read_bytes() == whole.read_bytes()
    assert not list(out.parent.glob(".m.parts-*")), "parts are removed once gathered"


def test_max_length_beyond_model_context(setup):
    with pytest.raises(LmdeltaError, match=r"max_length 4096 exceeds the model's context \(1024 positions\)"):
        run(setup, "long", max_length=4096, stride=4096, batch_tokens=4096)


def test_summary_and_comparison_match_independent_arithmetic(setup, monkeypatch):
    import hashlib

    import lmdelta.perplexity

    monkeypatch.setattr(lmdelta.perplexity, "SUMMARY_BATCH_ROWS", 7)  # documents span batches
    root, _, corpus = setup
    out = run(setup, "summ")
    df = pd.read_parquet(out)
    summary = run_summary(
        out,
        out.with_suffix(".meanprob.npy"),
        corpus,
        root / "s.json",
        root / "s.docs.parquet",
        model="m",
        corpus_name="c",
    )
    nll = -df.logprob.astype(np.float64)
    assert summary["n_tokens"] == len(df) and summary["n_docs"] == df.doc_id.nunique() == 6
    assert math.isclose(summary["perplexity_tokens"], math.exp(nll.mean()), rel_tol=1e-9)
    per_doc_ppl = nll.groupby(df.doc_id).mean().map(math.exp)
    assert math.isclose(summary["perplexity_docs_mean"], per_doc_ppl.mean(), rel_tol=1e-9)
    assert math.isclose(
        summary["mean_entropy_nats_docs"], df.entropy.astype(float).groupby(df.doc_id).mean().mean(), rel_tol=1e-6
    )
    n_bytes = sum(len(DOCS[d].encode()) for d in df.doc_id.unique())
    assert math.isclose(summary["bits_per_byte"], nll.sum() / math.log(2) / n_bytes, rel_tol=1e-9)
    assert sum(summary["entropy_histogram"]["counts"]) == len(df)
    docs = pd.read_parquet(root / "s.docs.parquet")
    assert math.isclose(docs.set_index("doc_id").perplexity["a"], per_doc_ppl["a"], rel_tol=1e-9)
    whole = {
        d: hashlib.blake2b(g.token_id.to_numpy(np.int64).tobytes(), digest_size=8).hexdigest()
        for d, g in df.groupby("doc_id")
    }
    assert docs.set_index("doc_id").tokens_digest.to_dict() == whole and len(set(whole.values())) == 6
    table = run_compare(
        "c",
        ["m", "m2"],
        [root / "s.json"] * 2,
        [root / "s.docs.parquet"] * 2,
        root / "cmp.csv",
        root / "e.png",
        root / "d.png",
    )
    assert list(pd.read_csv(root / "cmp.csv").model) == ["m", "m2"] and len(table) == 2
    assert (root / "e.png").read_bytes()[:4] == b"\x89PNG" and read_provenance(root / "d.png")[
        "stage"
    ] == "compare_entropy_perplexity"


def test_bits_per_byte_counts_the_bytes_of_the_scored_tokens(setup):
    """Under first_token: none each document's first token is not scored: its bytes leave the
    denominator with its logprob (before, they stayed in, which favoured such a model against others)."""
    from transformers import AutoTokenizer

    root, model_dir, corpus = setup
    out = run(setup, "nofirst", first_token="none")
    df = pd.read_parquet(out)
    summary = run_summary(
        out,
        out.with_suffix(".meanprob.npy"),
        corpus,
        root / "n.json",
        root / "n.docs.parquet",
        model="m",
        corpus_name="c",
        first_token="none",
        model_dir=model_dir,
    )
    tok = AutoTokenizer.from_pretrained(model_dir)
    scored = 0
    for d in df.doc_id.unique():  # by hand: the bytes of every token but the first, decoded alone
        ids = tok(DOCS[d], add_special_tokens=False).input_ids
        first = tok.decode(ids[:1])
        assert DOCS[d].startswith(first)
        scored += len(DOCS[d].encode()) - len(first.encode())
    nll = -df.logprob.astype(np.float64)
    assert math.isclose(summary["bits_per_byte"], nll.sum() / math.log(2) / scored, rel_tol=1e-9)
    assert scored < sum(len(DOCS[d].encode()) for d in df.doc_id.unique())


def test_vocab_fraction_brute_force():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(1000, 0.05))
    for mass in (0.7, 0.9):
        order = np.sort(p)[::-1]
        k = next(i + 1 for i in range(len(p)) if order[: i + 1].sum() >= mass)
        assert vocab_fraction(p, mass) == k / 1000
    assert vocab_fraction(np.full(10, 0.1), 0.9) == 0.9


def test_paired_table_compares_the_same_documents():
    """Per-document values of two models: the mean difference, bits per byte and the exact sign-flip p
    (6 documents: all 64 sign patterns) written out; a document only one model scored is left out;
    identical models differ by 0 with p = 1."""
    import itertools

    from lmdelta.perplexity import paired_table
    from lmdelta.stats import PairedParams

    rng = np.random.default_rng(0)
    ids = list("abcdef")

    def docs(nll_shift, extra=()):
        n_tokens = np.array([40, 10, 25, 60, 5, 30] + [7] * len(extra))
        nll = np.array([2.0, 3.5, 2.2, 1.8, 4.0, 2.9] + [1.0] * len(extra)) + nll_shift
        return pd.DataFrame(
            {
                "doc_id": ids + list(extra),
                "n_tokens": n_tokens,
                "n_bytes": n_tokens * 4,
                "nll_sum": nll * n_tokens,
                "mean_nll": nll,
                "mean_entropy": nll + 0.5,
                "tokens_digest": [f"t{i}" for i in range(len(n_tokens))],
            }
        )

    shift = rng.normal(-0.2, 0.1, size=6)
    tables = {"tuned": docs(np.append(shift, 0.0), extra=("z",)), "base": docs(0.0)}
    params = PairedParams.from_dict({})
    t = paired_table("c", tables, [{"pair": "p", "a": "tuned", "b": "base"}], params).set_index("metric")
    assert list(t.index) == ["mean_nll", "mean_entropy", "bits_per_byte"] and (t.n == 6).all()
    assert t.loc["mean_nll", "diff"] == pytest.approx(shift.mean(), abs=1e-12)
    bpb = lambda d: (d.nll_sum / math.log(2) / d.n_bytes).to_numpy()[:6]  # noqa: E731
    assert t.loc["bits_per_byte", "diff"] == pytest.approx((bpb(tables["tuned"]) - bpb(tables["base"])).mean())
    null = [np.mean(shift * s) for s in itertools.product([1, -1], repeat=6)]
    exact = min(
        1.0, 2 * min(np.mean(np.array(null) <= shift.mean() + 1e-12), np.mean(np.array(null) >= shift.mean() - 1e-12))
    )
    assert t.loc["mean_nll", "p"] == pytest.approx(exact, abs=1e-9)
    assert (t.p_holm >= t.p).all() and (t.unit == "document").all()
    same = paired_table("c", {"m": tables["base"]}, [{"pair": "same", "a": "m", "b": "m"}], params)
    assert (same["diff"] == 0).all() and (same.p == 1).all() and (same.diff_low == 0).all()
    # another tokenizer (one document cut into other tokens): nats per token are not comparable, bits per
    # byte are; the per-byte row is the same as before, and the Holm correction runs over it alone
    other = tables["tuned"].assign(tokens_digest=lambda d: d.tokens_digest.where(d.doc_id != "c", "other"))
    cross = paired_table(
        "c", {"tuned": other, "base": tables["base"]}, [{"pair": "x", "a": "tuned", "b": "base"}], params
    )
    assert list(cross.metric) == ["bits_per_byte"] and (cross.p_holm == cross.p).all()
    row = cross.iloc[0]
    assert row["diff"] == t.loc["bits_per_byte", "diff"] and row["p"] == t.loc["bits_per_byte", "p"]
