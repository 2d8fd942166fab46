"""The workflow on a real SLURM cluster through profiles/slurm (snakemake-executor-plugin-slurm).

Runs when LMDELTA_SLURM=1 (set by .ci/run once .ci/slurm_up.sh has started a single-node cluster
on this machine); skipped otherwise. The tiny end-to-end workflow of test_workflow.py, with logprobs
and completions split into shards, goes through sbatch job by job and sacct must report every job
COMPLETED; a job that fails is reported FAILED and leaves no artifact.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT
from lmdelta.artifacts import read_provenance

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("LMDELTA_SLURM") != "1",
        reason="no SLURM cluster (CI starts one with .ci/slurm_up.sh and sets LMDELTA_SLURM=1)",
    ),
]


def sacct_states() -> dict[str, str]:
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "JobID,JobName,State"], capture_output=True, text=True, check=True
    ).stdout
    return {row.split("|")[0]: row.split("|")[2] for row in out.splitlines() if row}


def slurm_snakemake(*args, cwd: Path):
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    # The node has 2 CPUs: --max-threads 1 lets two jobs run at once. Fast polling for short jobs.
    return subprocess.run(
        [
            str(bin_dir / "snakemake"),
            "-s",
            str(ROOT / "Snakefile"),
            "--profile",
            str(ROOT / "profiles" / "slurm"),
            "--max-threads",
            "1",
            "--slurm-init-seconds-before-status-checks",
            "2",
            "--seconds-between-status-checks",
            "2",
            *args,
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )


TABULAR = (".parquet", ".csv", ".json", ".jsonl", ".npy")
TIMING = ("seconds", "wall_time_s", "compute_time_s")  # measured durations: the only columns allowed to differ


def tabular_artifacts(project: Path) -> dict[str, Path]:
    out = {}
    for top in ("results", "resources/derive"):
        for f in (project / top).rglob("*"):
            if (
                f.is_file()
                and f.suffix in TABULAR
                and not f.name.endswith(".prov.json")
                and f.name != "provenance.json"
                and "checkpoints" not in f.parts
            ):
                out[f.relative_to(project).as_posix()] = f
    return out


def same(a: Path, b: Path) -> bool:
    if a.read_bytes() == b.read_bytes():
        return True
    if a.suffix != ".csv":
        return False
    x, y = pd.read_csv(a), pd.read_csv(b)
    timing = [c for c in x.columns if c in TIMING]
    return bool(timing) and x.drop(columns=timing).equals(y.drop(columns=timing, errors="ignore"))


@pytest.mark.timeout(2400)  # the shared local run (about 7 min) when it has not run yet, then the SLURM run
def test_tiny_workflow_through_the_slurm_profile(tmp_path, tiny_run):
    """The tiny workflow, sharded, through SLURM; every tabular artifact is byte-identical to the
    session's local unsharded run of the same config (tiny_run: same inputs, same served corpus)."""
    assert tiny_run["result"].returncode == 0, tiny_run["result"].stderr[-3000:]
    config = copy.deepcopy(tiny_run["config"])
    config["logprobs"]["shards"] = 2
    config["completions"]["shards"] = 2
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    before = set(sacct_states())
    r = slurm_snakemake("--configfile", "tiny.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", r.stdout + r.stderr)
    ours = {k: v for k, v in sacct_states().items() if k not in before}
    assert len(submitted) >= 40 and set(submitted) == set(ours), (len(submitted), len(ours))
    assert set(ours.values()) == {"COMPLETED"}, ours
    # every stage's final artifact is there, sharded stages gathered
    assert pd.read_csv(tmp_path / "results" / "scorecard" / "planted.csv").shape[0] > 0
    assert read_provenance(tmp_path / "results" / "logprobs" / "docs" / "neox.parquet")["params"]["shards"] == 2
    assert len(pd.read_parquet(tmp_path / "results" / "completions" / "default" / "neox-planted.parquet")) == 40 * 2
    assert (tmp_path / "results" / "hardprompt" / "planted" / "sp" / "prompts.parquet").exists()
    assert (tmp_path / "results" / "uid" / "default" / "neox" / "comparisons.csv").exists()
    # a finished workflow submits nothing more
    r = slurm_snakemake("--configfile", "tiny.yaml", cwd=tmp_path)
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr

    # determinism: the local unsharded run, with the same torch thread count (another count sums
    # floats in another order: last bits differ), gave the same bytes
    slurm, local = tabular_artifacts(tmp_path), tabular_artifacts(tiny_run["project"])
    assert sorted(slurm) == sorted(local) and len(slurm) > 60
    differ = sorted(k for k in slurm if not same(slurm[k], local[k]))
    assert not differ, differ


def test_failed_slurm_job_is_reported_and_leaves_no_artifact(tmp_path, tiny_models):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n')
    config = {
        "models": {"neox": {"source": {"local": {"path": str(tiny_models["gpt_neox"])}}}},
        "corpora": {"bad": {"source": {"file": {"path": str(bad)}}}},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    before = set(sacct_states())
    r = slurm_snakemake("--configfile", "c.yaml", "--", "results/corpus/bad.parquet", cwd=tmp_path)
    assert r.returncode != 0
    ours = {k: v for k, v in sacct_states().items() if k not in before}
    assert list(ours.values()) == ["FAILED"], ours
    assert not (tmp_path / "results" / "corpus" / "bad.parquet").exists()
    log = (tmp_path / "logs" / "corpus_sample" / "bad.log").read_text()
    assert "bad.jsonl line 2 is not valid JSON" in log and "fix or remove that line" in log
