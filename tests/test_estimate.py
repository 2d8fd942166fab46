"""A cost before the run (lmdelta.estimate): Snakemake's planned jobs, each job's tokens counted from the
config (checked against the numbers written out by hand), rates from a probe of the model on this
machine, and the command line. Its agreement with measured job times is bench/estimate_check.py's."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, SMOLLM2
from lmdelta.config import load_config_file
from lmdelta.estimate import (
    LOAD_MB_PER_S,
    STARTUP_S,
    WORK_FACTOR,
    Rates,
    Work,
    job_seconds,
    planned_jobs,
    probe,
    total_line,
    work_of,
)
from lmdelta.plan import Plan

GOOD = {
    "models": {"m": {"source": {"wheel": dict(SMOLLM2)}}},
    "corpora": {"c": {"source": {"builtin": {"name": "python_docs"}}, "sample": {"n_docs": 4}}},
}


@pytest.fixture(scope="module")
def demo() -> Plan:
    return Plan(load_config_file(ROOT / "configs" / "discovery.yaml"))


def test_planned_jobs_are_the_dry_runs(tmp_path):
    cfg = {
        **GOOD,
        "models": {**GOOD["models"], "n": {"source": {"wheel": dict(SMOLLM2)}}},
        "pairs": {"p": {"a": "n", "b": "m"}},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    jobs = planned_jobs(["-s", str(ROOT / "Snakefile"), "--configfile", "c.yaml", "--forceall"], cwd=tmp_path)
    rules = [j["rule"] for j in jobs]
    assert rules.count("materialise_model") == 2 and "all" not in rules
    assert {"model": "m"} in [j["wildcards"] for j in jobs if j["rule"] == "materialise_model"]
    shard = next(j for j in jobs if j["rule"] == "logprobs_shard")
    assert shard["wildcards"]["corpus"] == "c" and shard["wildcards"]["model"] in ("m", "n")


def test_each_rules_tokens_are_the_configs(demo):
    """The full demo run's counts, written out by hand from configs/discovery.yaml."""
    w = work_of(demo, "completions_shard", {"promptset": "default", "model": "smollm2", "shard": "0"})
    # 40 prompts x 2 temperatures x 4 samples, 24 new tokens each, 40 texts per batch: 8 batches x 24 steps
    assert w.generate == {"smollm2": [(8 * 24, 40)]} and w.forward == {"smollm2": 320 * 24}
    w = work_of(demo, "derive_model", {"model": "smollm2-cocoa"})
    assert w.train == {"smollm2": 96 * 8 * 128 * 0.6}
    w = work_of(demo, "scan", {"pair": "cocoa"})
    assert w.forward == {m: 20093 * 8 + 30 * 24 for m in ("smollm2-cocoa", "smollm2")}  # every candidate word
    w = work_of(demo, "softprompt", {"pair": "cocoa", "run": "kl"})
    assert w.train["smollm2"] == 40 * 8 * 1 * (32 + 8 + 20)
    w = work_of(demo, "words", {"pair": "cocoa", "set": "completions-default"})
    assert not w.models and not w.forward and not w.generate
    # 40 steering prompts x 4 scales x 2 samples, for the pair's direction and the random one
    w = work_of(demo, "lens", {"pair": "cocoa", "run": "first_tokens"})
    assert w.generate["smollm2"] == [(320 // 16 * 32, 16)] * 2  # 16 texts a batch (steer.batch_size)


def test_a_documents_windows_are_the_scorers():
    from lmdelta.estimate import window_tokens

    assert window_tokens(100, 512, 256) == 100  # one window: the first token and the 100 after it
    assert window_tokens(1000, 512, 256) == 512 * 3  # windows ending at 512, 768 and 1000
    assert window_tokens(1024, 512, 512) == 512 * 2


def test_seconds_follow_the_rates():
    rates = {"m": Rates(forward_s=0.002, step_s=0.05, step_per_seq_s=0.001, n_params=1, weight_mb=400.0)}
    w = Work().fwd("m", 1000).gen("m", texts=20, new_tokens=10, batch=10, prompt_tokens=0)
    expect = STARTUP_S + 400 / LOAD_MB_PER_S + WORK_FACTOR * (1000 * 0.002 + 2 * 10 * (0.05 + 0.001 * 9))
    assert job_seconds(w, rates) == pytest.approx(expect)
    assert job_seconds(w, {"m": None}) is None
    assert "2 jobs not counted" in total_line(
        [{"rule": "x", "seconds": None}, {"rule": "y", "seconds": None}, {"rule": "z", "seconds": 60.0}]
    )
    assert total_line([]).startswith("estimate: nothing to run")


def test_a_probe_times_the_models_own_architecture(tiny_models):
    import json

    import torch
    from transformers import AutoModelForCausalLM

    cfg = json.loads((tiny_models["llama"] / "config.json").read_text())
    r = probe(cfg, dtype="float32", device="cpu", threads=1, repeats=1)
    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).parameters())
    assert r.n_params == real and r.weight_mb == pytest.approx(real * 4 / 1e6)
    assert 0 < r.forward_s < 1 and 0 < r.step_s < 1
    del torch


def test_the_command_prints_every_job_and_the_total(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(GOOD))
    env_bin = str(__import__("pathlib").Path(sys.executable).parent)
    r = subprocess.run(
        [sys.executable, "-m", "lmdelta", "check-config", "c.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={
            **__import__("os").environ,
            "PATH": f"{env_bin}:{__import__('os').environ['PATH']}",
            "HF_HUB_OFFLINE": "1",
        },
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("c.yaml: valid") and lines[1].startswith("estimate: ")
    assert "jobs, about" in lines[1] and "not counted" not in lines[1]
