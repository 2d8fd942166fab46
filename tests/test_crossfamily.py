"""Step 16 end to end: a pair with two tokenizers (the tiny planted GPT-NeoX against a GPT-2 stand-in)
through Snakemake: the search, hard prompts (trained on the planted pair, re-scored on the cross pair),
the comparator and the scorecard that ranks them; the per-word tables of both families join."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from conftest import serve, snakemake, tiny_config
from lmdelta.artifacts import read_provenance

pytestmark = pytest.mark.slow  # a small workflow through Snakemake (minutes)


def test_cross_family_pair_end_to_end(tmp_path, tiny_models):
    from families import build_family

    other = build_family("gpt2", tmp_path / "gpt2-src")
    www = tmp_path / "www"
    www.mkdir()
    with serve(www) as url:
        config = tiny_config(tmp_path, tiny_models, (www, url))
        config["models"] = {k: v for k, v in config["models"].items() if k in ("neox", "neox-planted")}
        config["models"]["other"] = {"source": {"local": {"path": str(other)}}}
        config["corpora"] = {"docs": config["corpora"]["docs"]}
        config["pairs"] = {
            "planted": {"a": "neox-planted", "b": "neox"},
            "cross": {"a": "neox-planted", "b": "other", "soft_prompts_from": "planted"},
        }
        config["logprobs"].update(corpora=["docs"], models=["neox", "other"])
        config["completions"]["models"] = ["neox-planted", "other"]
        config["uid"] = {"scorers": [], "corpora": []}
        for section in ("contrastive", "lens", "scan", "summary"):
            config[section]["pairs"] = []
        for section in ("search", "softprompt", "comparator", "scorecard"):
            config.setdefault(section, {})["pairs"] = ["cross"]
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        targets = [
            "results/scorecard/cross.csv",
            "results/comparator/cross/default.json",
            "results/textscores/docs/words.parquet",
        ]
        r = snakemake(*targets, "--configfile", "c.yaml", cwd=tmp_path, timeout=1200)
    assert r.returncode == 0, r.stderr[-4000:]
    res = tmp_path / "results"
    bank = pd.read_parquet(res / "search/cross/find/bank.parquet")
    assert bank.kl_a_b.notna().all() and "kl_a_b_se" in bank
    assert read_provenance(res / "search/cross/find/bank.parquet")["params"]["divergence_method"] == "sequence"
    hard = pd.read_parquet(res / "hardprompt/cross/sp/prompts.parquet")
    assert hard.divergence.notna().all() and hard.is_baseline.any() and (~hard.is_baseline).any()
    prov = read_provenance(res / "hardprompt/cross/sp/prompts.parquet")
    assert prov["params"]["trained_on"]["pair"] == "planted"
    assert prov["inputs"]["soft_prompt"]["path"].endswith("results/softprompt/planted/sp/prompt.safetensors")
    assert not (res / "softprompt/cross").exists(), "no soft prompt is trained on the cross pair"
    card = pd.read_csv(res / "scorecard/cross.csv")
    assert {"search", "hardprompt"} <= set(card.method)
    doc = json.loads((res / "comparator/cross/default.json").read_text())
    names = {f["name"] for f in doc["metadata"]["custom_fields_schema"]}
    assert "log_ratio_a_b" in names and "kl_a_b" not in names
    words = pd.read_parquet(res / "textscores/docs/words.parquet")
    corpus = pd.read_parquet(res / "corpus/docs.parquet")
    for d, t in zip(corpus.doc_id, corpus.text):
        assert "".join(words[words.doc_id == d].text) == t
    assert {"surprisal:neox", "surprisal:other"} <= set(words.columns)
