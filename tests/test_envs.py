"""The conda environment file lists the same packages, with the same version ranges, as pyproject.toml."""

from __future__ import annotations

import re
import tomllib

import yaml

from conftest import ROOT

# conda-forge names of PyPI packages, where they differ
CONDA_NAME = {"torch": "pytorch", "snakemake": "snakemake-minimal", "matplotlib": "matplotlib-base",
              "huggingface-hub": "huggingface_hub"}


def split(req: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*(.*)$", req)
    return m.group(1).lower(), m.group(2).replace(" ", "")


def test_conda_env_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(split(r) for r in project["dependencies"] + project["optional-dependencies"]["quant"])
    env = yaml.safe_load((ROOT / "envs" / "lmdelta.yaml").read_text())
    conda = dict(split(d) for d in env["dependencies"] if isinstance(d, str) and d not in ("pip",))
    pip = dict(split(d) for d in next(d["pip"] for d in env["dependencies"] if isinstance(d, dict)) if not d.startswith("-"))
    for name, spec in wanted.items():
        got = pip.get(name, conda.get(CONDA_NAME.get(name, name)))
        assert got is not None, f"{name} is in pyproject.toml but not in envs/lmdelta.yaml"
        assert got == spec, f"{name}: pyproject {spec!r}, envs/lmdelta.yaml {got!r}"
    listed = {CONDA_NAME.get(n, n) for n in wanted} | set(wanted)
    extra = set(conda) - listed - {"python"}
    assert not extra, f"envs/lmdelta.yaml lists packages pyproject.toml does not: {sorted(extra)}"
    assert conda["python"] == project["requires-python"].replace(" ", "")
