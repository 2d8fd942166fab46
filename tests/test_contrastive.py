"""The contrastive stage on two tiny models: outputs, ranking, and numbers against plain forwards."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from lmdelta import LmdeltaError
from lmdelta.artifacts import read_provenance
from lmdelta.contrastive import RunParams, build_prompts, run_contrastive

CPU = {"dtype": "float32", "quantization": "none", "device": "cpu", "trust_remote_code": False}
RAW = {"chat_template": False, "fmt": None}


def run(pair, tmp_path, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    ps = tmp_path / "p.jsonl"
    ps.write_text(
        "\n".join(
            json.dumps({"id": f"p{i}", "category": "c", "prompt": t})
            for i, t in enumerate(["Hello there", "def f(x):"])
        )
        + "\n"
    )
    params = RunParams.from_dict(
        {"prompts": {"promptset": "x"}, "samples": 2, "max_new_tokens": 6, "batch_size": 3, **kw}
    )
    out = {k: tmp_path / f"cd.{k}" for k in ("parquet", "csv", "html", "png", "findings", "baseline")}
    recs = run_contrastive(
        pair="p",
        run="r",
        names=("a", "b"),
        model_dirs=(pair / "a", pair / "b"),
        params=params,
        load_options=(CPU, CPU),
        formats=(RAW, RAW),
        promptset=ps,
        corpus=None,
        out=out["parquet"],
        out_csv=out["csv"],
        out_html=out["html"],
        out_png=out["png"],
        out_findings=out["findings"],
        out_baseline=out["baseline"],
    )
    return recs, out


def test_baseline_compares_contrastive_texts_with_a_alone_prompt_by_prompt(pair, tmp_path):
    """The baseline is a's own samples (weights 1, 0, no mask) with the same seed: the same as a run
    configured that way, compared prompt by prompt (each prompt's mean over its samples)."""
    _, out = run(pair, tmp_path / "cd", baseline=True)
    _, alone = run(pair, tmp_path / "alone", weights=[1.0, 0.0], plausibility_alpha=None, baseline=False)
    table = pd.read_csv(out["baseline"]).set_index("metric")
    assert list(table.index) == ["mean_js", "mean_kl_a_b", "mean_kl_b_a"] and (table.unit == "prompt").all()
    cd, own = (pd.read_parquet(o["parquet"]).groupby("prompt_id").mean_js.mean() for o in (out, alone))
    assert table.loc["mean_js", "mean_contrastive"] == pytest.approx(cd.mean(), rel=1e-9)
    assert table.loc["mean_js", "mean_sampled_a"] == pytest.approx(own.mean(), rel=1e-9)
    assert table.loc["mean_js", "diff"] == pytest.approx((cd - own).mean(), abs=1e-9) and (table.n == 2).all()
    assert pd.read_csv(alone["baseline"]).empty, "baseline: false leaves the table empty"


def test_outputs_ranking_and_perplexity(pair, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recs, out = run(pair, tmp_path)
    df = pd.read_parquet(out["parquet"])
    assert len(df) == 4 and list(df["rank"]) == [1, 2, 3, 4]
    assert (np.diff(df.mean_js.to_numpy()) <= 0).all(), "ranked by mean divergence, highest first"
    for r in df.itertuples():
        assert len(r.tokens) == len(r.js) == len(r.kl_a_b) == len(r.top_a) == r.n_tokens
        assert all(v >= -1e-6 for v in r.kl_a_b) and all(0 <= v <= math.log(2) + 1e-6 for v in r.js)
    # perplexity of a text under each model, its prompt as context, against a plain forward
    tok = AutoTokenizer.from_pretrained(pair / "a")
    r = df.iloc[0]
    prompt_ids = [tok.bos_token_id] + tok(r.prompt, add_special_tokens=False).input_ids  # first_token: bos
    text_ids = [tok(t, add_special_tokens=False).input_ids for t in r.tokens]
    assert all(len(t) == 1 for t in text_ids), "each generated token decodes to text that re-encodes to itself"
    new_ids = [t[0] for t in text_ids]
    for side in ("a", "b"):
        m = AutoModelForCausalLM.from_pretrained(pair / side).eval()
        seq = torch.tensor([prompt_ids + new_ids])
        with torch.no_grad():
            lp = torch.log_softmax(m(seq).logits[0, :-1].double(), -1)
        lps = lp.gather(1, seq[0, 1:, None])[:, 0][len(prompt_ids) - 1 :]
        assert r[f"ppl_{side}"] == pytest.approx(math.exp(-lps.mean().item()), rel=1e-4)
    page = out["html"].read_text()
    assert page.count("<div class='x'>") == 4 and "KL(a||b)" in page
    assert read_provenance(out["parquet"])["params"]["weights"] == [1.0, -1.0]
    assert list(pd.read_csv(out["csv"])["rank"]) == [1, 2, 3, 4]
    found = pd.read_parquet(out["findings"])  # the findings table: the same texts, in rank order
    assert found.text.tolist() == [f"{r.prompt.strip()} {r.text.strip()}".strip() for r in df.itertuples()]
    assert found.score.tolist() == df.mean_js.tolist() and set(found.kind) == {"continuation"}


def test_prompt_sources_and_tokenizer_check(pair, tmp_path):
    corpus = tmp_path / "c.parquet"
    pd.DataFrame({"doc_id": ["d1", "d2"], "text": ["one two three four five", "six seven"]}).to_parquet(corpus)
    assert build_prompts({"corpus": {"name": "c", "n": 1, "words": 3}}, promptset=None, corpus=corpus) == [
        {"id": "d1", "prompt": "one two three"}
    ]
    assert build_prompts({"unconditional": 2}, promptset=None, corpus=None) == [
        {"id": "bos-0", "prompt": ""},
        {"id": "bos-1", "prompt": ""},
    ]
    recs, _ = run(pair, tmp_path, prompts={"unconditional": 2}, samples=1)
    assert len(recs) == 2 and all(r["prompt"] == "" for r in recs)
    other = tmp_path / "other"
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from conftest import build_tiny_model
    from lmdelta.config import ModelSpec
    from lmdelta.models import materialise

    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.ByteLevel()
    t.train_from_iterator(
        ["a different tokenizer entirely"] * 10,
        trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<pad>"], show_progress=False),
    )
    tok_dir = tmp_path / "tok2"
    PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", pad_token="<pad>").save_pretrained(
        tok_dir
    )
    materialise(
        ModelSpec(name="o", source={"local": {"path": str(build_tiny_model("llama", tmp_path / "o-src", tok_dir))}}),
        other,
    )
    with pytest.raises(LmdeltaError, match="different tokenizers"):
        run_contrastive(
            pair="p",
            run="r",
            names=("a", "o"),
            model_dirs=(pair / "a", other),
            params=RunParams.from_dict({"prompts": {"unconditional": 1}}),
            load_options=(CPU, CPU),
            formats=(RAW, RAW),
            promptset=None,
            corpus=None,
            out=tmp_path / "x.parquet",
            out_csv=tmp_path / "x.csv",
            out_html=tmp_path / "x.html",
            out_png=tmp_path / "x.png",
            out_findings=tmp_path / "x.findings.parquet",
        )
    assert not (tmp_path / "x.parquet").exists()


def test_prompt_divergences_when_asked(pair, tmp_path):
    """include_prompt: teacher-forced divergences on the prompt tokens equal a direct computation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recs, _ = run(pair, tmp_path, include_prompt=True, samples=1)
    tok = AutoTokenizer.from_pretrained(pair / "a")
    models = [AutoModelForCausalLM.from_pretrained(pair / s).eval() for s in ("a", "b")]
    for r in recs:
        ids = [tok.bos_token_id] + tok(r["prompt"], add_special_tokens=False).input_ids  # first_token: bos
        assert r["prompt_tokens"] == [tok.decode([i]) for i in ids]
        with torch.no_grad():
            la, lb = (torch.log_softmax(m(torch.tensor([ids])).logits[0, :-1].double(), -1) for m in models)
        ref = (la.exp() * (la - lb)).sum(-1).numpy()
        assert math.isnan(r["prompt_kl_a_b"][0]), "the first prompt token has no prediction"
        np.testing.assert_allclose(r["prompt_kl_a_b"][1:], ref, rtol=1e-4, atol=1e-6)
        assert len(r["prompt_js"]) == len(ids)
    (tmp_path / "plain").mkdir()
    plain, _ = run(pair, tmp_path / "plain", samples=1)
    assert [r["js"] for r in plain] == [r["js"] for r in recs], (
        "generated-token divergences do not depend on the option"
    )
