"""The workflow on a real SLURM cluster through profiles/slurm (snakemake-executor-plugin-slurm).

Runs when LMDELTA_SLURM=1 (set by .ci/run once .ci/slurm_up.sh has started a single-node cluster
on this machine); skipped otherwise. A four-rule chain (corpus sample, model materialisation,
logprobs, entropy/perplexity) on a tiny model goes through sbatch, and sacct must report every job
COMPLETED.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT

pytestmark = pytest.mark.skipif(os.environ.get("LMDELTA_SLURM") != "1",
                                reason="no SLURM cluster (CI starts one with .ci/slurm_up.sh and sets LMDELTA_SLURM=1)")


def test_tiny_chain_through_the_slurm_profile(tmp_path, tiny_models):
    config = {
        "models": {"neox": {"source": {"local": {"path": str(tiny_models["gpt_neox"])}}, "device": "cpu"}},
        "corpora": {"docs": {"source": {"builtin": {"name": "python_docs"}}, "sample": {"n_docs": 4, "min_chars": 100}}},
        "logprobs": {"max_length": 64, "stride": 32, "batch_tokens": 512},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    before = set(subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID"], capture_output=True, text=True).stdout.split())
    r = subprocess.run([str(bin_dir / "snakemake"), "-s", str(ROOT / "Snakefile"), "--profile", str(ROOT / "profiles" / "slurm"),
                        "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2",
                        "--configfile", "tiny.yaml", "--", "results/entropy_perplexity/docs/neox.json"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert pd.read_parquet(tmp_path / "results" / "corpus" / "docs.parquet").shape[0] == 4
    assert (tmp_path / "results" / "entropy_perplexity" / "docs" / "neox.json").exists()
    rows = [ln.split("|") for ln in subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State"],
                                                   capture_output=True, text=True).stdout.splitlines()]
    ours = [row for row in rows if row[0] not in before]
    assert len(ours) == 4 and all(row[1] == "COMPLETED" for row in ours), ours  # one SLURM job per rule
