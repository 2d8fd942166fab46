"""Known answers for the UID metrics and the comparison statistics, on hand-made sequences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmdelta import LmdeltaError
from lmdelta.stats import bootstrap_ci, cohens_d, holm
from lmdelta.uid import METRICS, compare, doc_metrics, first_tokens, surprisal_bits, word_surprisals

S = [1.0, 2.0, 4.0]


def test_surprisal_is_in_bits():
    np.testing.assert_allclose(surprisal_bits([-math.log(2), -math.log(8), 0.0]), [1.0, 3.0, 0.0])


def test_doc_metrics_known_answers():
    m = doc_metrics(S, corpus_mean=2.0)
    assert m["n_tokens"] == 3
    assert m["mean"] == pytest.approx(7 / 3) and m["median"] == 2 and m["max"] == 4
    assert m["uid_var_doc"] == pytest.approx(14 / 9)  # ((4/3)² + (1/3)² + (5/3)²) / 3
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
    assert c["u"] == 0 and c["p"] == pytest.approx(
        2 / 252
    )  # exact: the most extreme of C(10,5) = 252 splits, two-sided


def test_score_texts_match_a_plain_forward(tmp_path, tiny_models):
    """Completion tokens scored with and without their prompt equal one plain forward each."""
    import json

    import pandas as pd
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmdelta.completions import CompletionParams, run_completions
    from lmdelta.config import ModelSpec
    from lmdelta.models import materialise
    from lmdelta.scoring import LogprobParams
    from lmdelta.uid import score_texts

    model_dir = tmp_path / "m"
    materialise(ModelSpec(name="m", source={"local": {"path": str(tiny_models["gpt_neox"])}}), model_dir)
    ps = tmp_path / "p.jsonl"
    ps.write_text(json.dumps({"id": "a", "category": "creative", "prompt": "Write about rivers."}) + "\n")
    cpu = {"dtype": "float32", "quantization": "none", "device": "cpu", "trust_remote_code": False}
    run_completions(
        model_dir,
        ps,
        tmp_path / "c.parquet",
        params=CompletionParams(temperatures=(1.0,), samples=2, max_new_tokens=6),
        load_options=cpu,
        text_format={"chat_template": False},
    )
    comp = pd.read_parquet(tmp_path / "c.parquet")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    params = LogprobParams(max_length=64, stride=64, batch_tokens=256)
    for context in ("none", "prompt"):
        out = tmp_path / f"s.{context}.parquet"
        score_texts(model_dir, tmp_path / "c.parquet", out, params=params, load_options=cpu, context=context)
        got = pd.read_parquet(out)
        for r in comp.itertuples():
            ctx = tok("Write about rivers.\n", add_special_tokens=False).input_ids if context == "prompt" else []
            text = tok(r.text, add_special_tokens=False).input_ids
            seq = [tok.bos_token_id] + ctx + text
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([seq])).logits[0, :-1].double(), -1)
            ref = lp.gather(1, torch.tensor(seq[1:])[:, None])[:, 0].numpy()[-len(text) :]
            mine = got[got.doc_id == f"a|1|{r.sample}"]
            assert mine.position.tolist() == list(range(len(text)))
            np.testing.assert_allclose(mine.logprob.to_numpy(), ref, atol=1e-5)


def test_run_uid_on_synthetic_sources(tmp_path, tiny_tokenizer):
    import pandas as pd

    from lmdelta.uid import run_uid

    rng = np.random.default_rng(0)

    def source(name, scale, doc_ids):
        rows = [
            {"doc_id": d, "token_id": int(rng.integers(4, 500)), "logprob": -x}
            for d in doc_ids
            for x in rng.gamma(2.0, scale, rng.integers(10, 30))
        ]
        path = tmp_path / f"{name}.parquet"
        pd.DataFrame(rows).to_parquet(path)
        return path

    human = [f"d{i}" for i in range(12)]  # corpus documents: one unit each
    texts = [
        f"p{i}|{t}|{s}" for i in range(12) for t in ("0.7", "1.2") for s in range(3)
    ]  # 12 prompts x 2 temperatures x 3 samples
    outs = {k: tmp_path / f"out.{k}" for k in ("docs", "csv", "txt", "png", "contours")}
    docs, table = run_uid(
        scorer="s",
        human={"h": source("h", 2.0, human)},
        model_texts={"a@none": source("a", 1.0, texts), "b@none": source("b", 1.0, texts)},
        lengths=[None, 10],
        n_boot=200,
        seed=0,
        out_docs=outs["docs"],
        out_csv=outs["csv"],
        out_txt=outs["txt"],
        out_png=outs["png"],
        out_contours=outs["contours"],
        word_level=True,
        tokenizer_dir=tiny_tokenizer,
    )
    words = docs[docs.source.str.endswith("(words)")]
    docs = docs[~docs.source.str.endswith("(words)")]
    models = {f"model:{m}@none@T{t}" for m in "ab" for t in ("0.7", "1.2")}
    assert set(words.source) == {f"{s} (words)" for s in {"human:h", *models}}
    assert (words.groupby("doc_id").n_tokens.max() <= docs.groupby("doc_id").n_tokens.max()).all()
    table = table[~table.source_a.str.endswith("(words)")]
    assert set(docs.source) == {"human:h", *models} and set(docs.length) == {-1, 10}
    assert (docs[docs.length == 10].n_tokens == 10).all()
    want = {("human:h", m) for m in models} | {(f"model:a@none@T{t}", f"model:b@none@T{t}") for t in ("0.7", "1.2")}
    assert set(zip(table.source_a, table.source_b)) == want, "models compared at the same temperature only"
    whole = table[table.length == -1]
    assert (whole.n_a == 12).all() and (whole.n_b == 12).all(), (
        "n counts prompts (3 samples each averaged), not samples"
    )
    assert (table.unit == "prompt").all() and (table.p_holm >= table.p).all()
    # the unit's value is the mean of its samples' values
    a07 = docs[(docs.source == "model:a@none@T0.7") & (docs.length == -1)]
    m = table[(table.metric == "mean") & (table.source_b == "model:a@none@T0.7") & (table.length == -1)].iloc[0]
    assert m.mean_b == pytest.approx(a07.groupby(a07.doc_id.str.split("|").str[0])["mean"].mean().mean())
    assert m.cohens_d > 1 and m.p_holm < 0.01, "human surprisal drawn at twice the scale"
    assert "uid_var_doc" in outs["txt"].read_text() and "Unit of analysis: the prompt" in outs["txt"].read_text()
    # two models answered the same prompts: paired by prompt (Wilcoxon on the per-prompt differences);
    # the human corpus has other units: unpaired (Mann-Whitney)
    from scipy.stats import wilcoxon

    assert set(table[table.source_a == "human:h"].design) == {"unpaired"}
    ab = table[(table.source_a == "model:a@none@T0.7") & (table.length == -1) & (table.metric == "mean")].iloc[0]
    assert ab.design == "paired" and ab.test == "wilcoxon"
    unit = lambda d: d.doc_id.str.split("|").str[0]  # noqa: E731
    per_prompt = {
        m: (g := docs[(docs.source == f"model:{m}@none@T0.7") & (docs.length == -1)]).groupby(unit(g))["mean"].mean()
        for m in "ab"
    }
    d = (per_prompt["a"] - per_prompt["b"]).dropna()
    assert ab.n_a == len(d) == 12 and ab.p == pytest.approx(wilcoxon(d.to_numpy()).pvalue, rel=1e-12)
    assert ab.diff_ci_low <= d.mean() <= ab.diff_ci_high


def test_word_ids_and_prompts_from_corpus(tmp_path, tiny_tokenizer):
    import json

    import pandas as pd
    from transformers import AutoTokenizer

    from lmdelta.promptsets import prompts_from_corpus, read_promptset
    from lmdelta.tokens import word_ids

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer)
    ids = tok("assignment statements bind names", add_special_tokens=False).input_ids
    w = word_ids(tok, ids)
    assert w[0] == 0 and w[-1] == 3 and w == sorted(w)
    corpus = tmp_path / "c.parquet"
    pd.DataFrame(
        {"doc_id": ["a", "b", "c"], "text": ["First one. Then more text! End.", "No second sentence", "Q? Yes."]}
    ).to_parquet(corpus)
    n = prompts_from_corpus(corpus, tmp_path / "p.jsonl", name="news", n_prompts=None, instruction="Continue: {prompt}")
    prompts = read_promptset(tmp_path / "p.jsonl")
    assert n == 2 and [p["prompt"] for p in prompts] == ["First one.", "Q?"]
    assert prompts[0] == {
        "id": "a",
        "category": "news",
        "prompt": "First one.",
        "reference": "Then more text! End.",
        "chat_prompt": "Continue: First one.",
    }
    assert json.loads((tmp_path / "p.jsonl").read_text().splitlines()[1])["reference"] == "Yes."


def test_human_continuations_are_scored_like_model_texts(tmp_path, tiny_models):
    """The matched human source: each prompt's reference, cut to the token budget, scored after the same context."""
    import json

    import pandas as pd
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmdelta.config import ModelSpec
    from lmdelta.models import materialise
    from lmdelta.scoring import LogprobParams
    from lmdelta.uid import score_texts

    model_dir = tmp_path / "m"
    materialise(ModelSpec(name="m", source={"local": {"path": str(tiny_models["gpt_neox"])}}), model_dir)
    ps = tmp_path / "p.jsonl"
    recs = [
        {
            "id": "a",
            "category": "news",
            "prompt": "Rivers flow.",
            "reference": "They carry water to the sea every single day.",
        },
        {"id": "b", "category": "news", "prompt": "Stones sit.", "reference": "Still."},
    ]
    ps.write_text("".join(json.dumps(r) + "\n" for r in recs))
    cpu = {"dtype": "float32", "quantization": "none", "device": "cpu", "trust_remote_code": False}
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    for context in ("none", "prompt"):
        out = tmp_path / f"h.{context}.parquet"
        score_texts(
            model_dir,
            ps,
            out,
            params=LogprobParams(max_length=64, stride=64, batch_tokens=256),
            load_options=cpu,
            context=context,
            human_tokens=5,
        )
        got = pd.read_parquet(out)
        for r in recs:
            text = tok(r["reference"], add_special_tokens=False).input_ids[:5]
            ctx = tok(r["prompt"] + "\n", add_special_tokens=False).input_ids if context == "prompt" else []
            seq = [tok.bos_token_id] + ctx + text
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([seq])).logits[0, :-1].double(), -1)
            ref = lp.gather(1, torch.tensor(seq[1:])[:, None])[:, 0].numpy()[-len(text) :]
            mine = got[got.doc_id == f"{r['id']}|human|0"]
            np.testing.assert_allclose(mine.logprob.to_numpy(), ref, atol=1e-5)
    assert len(got[got.doc_id == "a|human|0"]) == 5, "cut to the budget"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "category": "c", "prompt": "Hi"}) + "\n")
    with pytest.raises(LmdeltaError, match="no human continuation"):
        score_texts(
            model_dir,
            bad,
            tmp_path / "x.parquet",
            params=LogprobParams(),
            load_options=cpu,
            context="none",
            human_tokens=5,
        )
