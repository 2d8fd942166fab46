"""Completions: prompt sets, formats, explicit sampling settings, determinism; the diversity stage end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lmdelta import LmdeltaError
from lmdelta.artifacts import read_provenance
from lmdelta.completions import CompletionParams, run_completions
from lmdelta.config import ModelSpec
from lmdelta.diversity import DIRECTION, run_compare, run_diversity
from lmdelta.generation import Sampling, TextFormat, format_prompt, generate_texts, prompt_ids
from lmdelta.models import load_model, materialise
from lmdelta.promptsets import builtin_promptset_path, read_promptset

CPU = {"dtype": "float32", "quantization": "none", "device": "cpu", "trust_remote_code": False}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_models):
    out = tmp_path_factory.mktemp("gen") / "m"
    materialise(ModelSpec(name="m", source={"local": {"path": str(tiny_models["llama"])}}), out)
    return out


@pytest.fixture
def promptset(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"id": "c1", "category": "creative", "prompt": "Write about the sea."},
                {"id": "c2", "category": "creative", "prompt": "A story:", "guide": " Once"},
                {"id": "f1", "category": "factual", "prompt": "What is two plus two?", "reference": "4"},
            ]
        )
        + "\n"
    )
    return p


def test_builtin_promptset_has_20_creative_and_20_factual():
    prompts = read_promptset(builtin_promptset_path("default"))
    cats = pd.Series([p["category"] for p in prompts]).value_counts()
    assert cats["creative"] == 20 and cats["factual"] == 20
    assert all(p.get("reference") for p in prompts if p["category"] == "factual")


def test_broken_promptsets(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": "a", "category": "c", "prompt": "x"}\n{"id": "b", "category": \n')
    with pytest.raises(LmdeltaError, match="bad.jsonl line 2 is not valid JSON"):
        read_promptset(p)
    p.write_text('{"id": "a", "category": "c"}\n')
    with pytest.raises(LmdeltaError, match="line 1 lacks text field\\(s\\) prompt"):
        read_promptset(p)
    p.write_text('{"id": "a", "category": "c", "prompt": "x"}\n' * 2)
    with pytest.raises(LmdeltaError, match="id 'a' is used twice"):
        read_promptset(p)


def test_prompt_formats(model_dir):
    _, tok = load_model(model_dir, device="cpu")
    assert format_prompt(tok, "Hi", chat_template=True, guide=" Sure") == "Hi Sure", (
        "no chat template: raw prompt + guide"
    )
    assert format_prompt(tok, "Hi", chat_template=False, guide="!", fmt="Q: {prompt}\nA:{guide}") == "Q: Hi\nA:!"


def test_greedy_matches_an_argmax_loop(model_dir):
    """Independent check of generate_texts: greedy decoding equals a plain argmax loop, batched or not."""
    model, tok = load_model(model_dir, device="cpu")
    prompts = ["def f(x):", "The quick brown fox jumps over"]
    got = generate_texts(
        model,
        tok,
        [prompt_ids(tok, p, TextFormat(chat_template=False)) for p in prompts],
        max_new_tokens=6,
        batch_size=2,
    )
    for p, g in zip(prompts, got):
        ids = torch.tensor([[tok.bos_token_id] + tok(p, add_special_tokens=False).input_ids])
        new = []
        with torch.no_grad():
            for _ in range(6):
                nxt = int(model(ids).logits[0, -1].argmax())
                new.append(nxt)
                if nxt == tok.eos_token_id:
                    break
                ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
        assert g["n_tokens"] == len(new) and g["text"] == tok.decode(new, skip_special_tokens=True)


def test_top_k_one_is_greedy(model_dir):
    model, tok = load_model(model_dir, device="cpu")
    seqs = [tok("Hello world").input_ids]
    greedy = generate_texts(model, tok, seqs, max_new_tokens=5)
    sampled = generate_texts(model, tok, seqs, max_new_tokens=5, sampling=Sampling(temperature=1.5, top_k=1), seed=3)
    assert greedy[0]["text"] == sampled[0]["text"]


def test_completions_grid_and_determinism(tmp_path, model_dir, promptset):
    params = CompletionParams(temperatures=(0.5, 1.5), samples=3, max_new_tokens=5, seed=7, batch_size=4)
    kw = dict(params=params, load_options=CPU, text_format={})
    run_completions(model_dir, promptset, tmp_path / "a.parquet", **kw)
    run_completions(model_dir, promptset, tmp_path / "b.parquet", **kw)
    a = pd.read_parquet(tmp_path / "a.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes(), "same seed, same bytes"
    assert list(a.columns) == [
        "prompt_id",
        "category",
        "temperature",
        "sample",
        "text",
        "n_tokens",
        "finish_reason",
        "seed",
    ]
    assert len(a) == 3 * 3 * 2 and set(a.temperature) == {0.5, 1.5}
    assert a.groupby(["prompt_id", "temperature"]).size().eq(3).all()
    assert set(a.finish_reason) <= {"eos", "length"} and (a.n_tokens <= 5).all()
    assert a[a.temperature == 1.5].text.nunique() > 1, "sampling at a high temperature varies"
    rec = read_provenance(tmp_path / "a.parquet")
    assert rec["params"]["top_p"] == 1.0 and rec["params"]["top_k"] == 0 and rec["params"]["temperatures"] == [0.5, 1.5]
    run_completions(
        model_dir,
        promptset,
        tmp_path / "c.parquet",
        **{
            **kw,
            "params": CompletionParams(temperatures=(0.5, 1.5), samples=3, max_new_tokens=5, seed=8, batch_size=4),
        },
    )
    assert not pd.read_parquet(tmp_path / "c.parquet").text.equals(a.text), "another seed, other samples"
    with pytest.raises(LmdeltaError, match="temperatures must be > 0"):
        run_completions(
            model_dir, promptset, tmp_path / "d.parquet", **{**kw, "params": CompletionParams(temperatures=(0.0,))}
        )


@pytest.mark.parametrize("n_shards", [4, 8])
def test_sharded_completions_are_byte_identical_to_one_job(tmp_path, model_dir, promptset, n_shards):
    """2 temperatures x 3 batches of 4 sequences dealt out to 4 or 8 jobs (8: two shards are empty)."""
    kw = dict(
        params=CompletionParams(temperatures=(0.5, 1.5), samples=3, max_new_tokens=5, seed=7, batch_size=4),
        load_options=CPU,
        text_format={},
    )
    run_completions(model_dir, promptset, tmp_path / "one.parquet", **kw)
    run_completions(model_dir, promptset, tmp_path / "sharded.parquet", n_shards=n_shards, **kw)
    assert (tmp_path / "sharded.parquet").read_bytes() == (tmp_path / "one.parquet").read_bytes()
    rec = read_provenance(tmp_path / "sharded.parquet")
    assert rec["params"]["shards"] == n_shards and rec["stage"] == "completions" and "shard" not in rec["params"]
    assert not list((tmp_path / "shards").rglob("*.parquet")), "shard files are removed after the gather"


def test_diversity_stage_and_comparison(tmp_path, model_dir, promptset):
    params = CompletionParams(temperatures=(0.7, 1.4), samples=4, max_new_tokens=8, seed=0, batch_size=8)
    run_completions(model_dir, promptset, tmp_path / "c.parquet", params=params, load_options=CPU, text_format={})
    df = run_diversity(tmp_path / "c.parquet", tmp_path / "d.parquet", truncations=[None, 3], embedder=None)
    assert len(df) == 3 * 2 * 2 and set(df.truncate_words) == {-1, 3}
    assert set(DIRECTION) <= set(df.columns) and (df.n_texts == 4).all()
    # independent recomputation of one cell's distinct-2 from the completions
    comp = pd.read_parquet(tmp_path / "c.parquet")
    cell = comp[(comp.prompt_id == "c1") & (comp.temperature == np.float32(0.7))].text.tolist()
    import re

    toks = [re.findall(r"\w+|[^\w\s]", t.lower()) for t in cell]
    grams = [tuple(t[i : i + 2]) for t in toks for i in range(len(t) - 1)]
    row = df[(df.prompt_id == "c1") & (df.temperature == np.float32(0.7)) & (df.truncate_words == -1)].iloc[0]
    assert row.distinct_2 == pytest.approx(len(set(grams)) / len(grams))
    table = run_compare("p", ["m", "m2"], [tmp_path / "d.parquet"] * 2, tmp_path / "t.csv", tmp_path / "f.png")
    assert len(table) == 2 * 2 * 2 * 2  # models x categories x temperatures x truncations
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_diversity_paired_table_matches_prompts_across_models():
    """Prompt by prompt at the same temperature: a model's cells shuffled and one prompt missing from b
    still compare the right cells (the differences recomputed through a merge); a NaN cell drops its
    prompt from that metric only; Wilcoxon's p on the merged differences."""
    from scipy.stats import wilcoxon

    from lmdelta.diversity import paired_table
    from lmdelta.stats import PairedParams

    rng = np.random.default_rng(0)
    rows = [
        {"prompt_id": f"p{i}", "category": "c", "temperature": t, "truncate_words": -1, "n_texts": 4}
        | {m: rng.uniform() for m in DIRECTION}
        for i in range(12)
        for t in (0.7, 1.0)
    ]
    a = pd.DataFrame(rows)
    b = a.copy()
    b["distinct_2"] = a.distinct_2 - rng.uniform(0.05, 0.2, size=len(a))  # b less diverse everywhere
    b.loc[(b.prompt_id == "p3") & (b.temperature == 1.0), "self_bleu"] = np.nan
    b = b[b.prompt_id != "p11"].sample(frac=1.0, random_state=0)  # shuffled, one prompt missing
    t = paired_table("ps", {"x": a, "y": b}, [{"pair": "xy", "a": "x", "b": "y"}], PairedParams.from_dict({}))
    assert len(t) == 2 * len(DIRECTION) and (t.unit == "prompt").all() and (t.p_holm >= t.p).all()
    merged = a.merge(b, on=["prompt_id", "temperature"], suffixes=("_a", "_b"))
    for temp in (0.7, 1.0):
        m = merged[merged.temperature == temp]
        d = (m.distinct_2_a - m.distinct_2_b).to_numpy()
        row = t[(t.temperature == temp) & (t.metric == "distinct_2")].iloc[0]
        assert row.n == 11 and row["diff"] == pytest.approx(d.mean(), abs=1e-12) and row["diff"] > 0
        assert row.p == pytest.approx(wilcoxon(d).pvalue, rel=1e-12)
    bleu = t[t.metric == "self_bleu"].set_index("temperature").n
    assert bleu[0.7] == 11 and bleu[1.0] == 10
    same = t[(t.metric == "vendi_cosine")]
    assert (same.p == 1.0).all() and (same["diff"] == 0).all()  # equal cells: no difference
