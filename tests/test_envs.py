"""The conda environment files (CPU and CUDA builds of PyTorch) list the same packages, with the same
version ranges, as pyproject.toml; the workflow's rules point at the one config.conda_env names."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml

from conftest import ROOT, SMOLLM2

# conda-forge names of PyPI packages, where they differ
CONDA_NAME = {
    "torch": "pytorch",
    "snakemake": "snakemake-minimal",
    "matplotlib": "matplotlib-base",
    "huggingface-hub": "huggingface_hub",
}


def split(req: str) -> tuple[str, str]:
    """(name, version range) of a pip requirement or a conda match spec (``name >=1,<2`` or
    ``name[version='>=1,<2', build='cpu*']``)."""
    m = re.match(r"^\s*([A-Za-z0-9_.-]+)\[version='([^']*)'.*\]$", req)
    if m:
        return m.group(1).lower(), m.group(2).replace(" ", "")
    m = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*(.*)$", req)
    return m.group(1).lower(), m.group(2).replace(" ", "")


@pytest.mark.parametrize("variant,build", [("cpu", "cpu*"), ("cuda", "cuda*")])
def test_conda_env_matches_pyproject(variant, build):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(split(r) for r in project["dependencies"] + project["optional-dependencies"]["quant"])
    text = (ROOT / "envs" / f"lmdelta-{variant}.yaml").read_text()
    assert f"pytorch[version='>=2.4,<2.15', build='{build}']" in text, (
        f"envs/lmdelta-{variant}.yaml must ask for a {variant} build of pytorch"
    )
    env = yaml.safe_load(text)
    conda = dict(split(d) for d in env["dependencies"] if isinstance(d, str) and d not in ("pip",))
    pip = dict(
        split(d) for d in next(d["pip"] for d in env["dependencies"] if isinstance(d, dict)) if not d.startswith("-")
    )
    for name, spec in wanted.items():
        got = pip.get(name, conda.get(CONDA_NAME.get(name, name)))
        assert got is not None, f"{name} is in pyproject.toml but not in envs/lmdelta-{variant}.yaml"
        assert got == spec, f"{name}: pyproject {spec!r}, envs/lmdelta-{variant}.yaml {got!r}"
    listed = {CONDA_NAME.get(n, n) for n in wanted} | set(wanted)
    extra = set(conda) - listed - {"python"}
    assert not extra, f"envs/lmdelta-{variant}.yaml lists packages pyproject.toml does not: {sorted(extra)}"
    assert conda["python"] == project["requires-python"].replace(" ", "")


def test_every_conda_env_choice_has_its_file():
    from lmdelta.config import load_schema, validate_config

    choices = load_schema()["properties"]["conda_env"]["enum"]
    assert choices == ["cpu", "cuda"] and all((ROOT / "envs" / f"lmdelta-{c}.yaml").exists() for c in choices)
    assert (
        validate_config(
            {
                "models": {"m": {"source": {"wheel": dict(SMOLLM2)}}},
                "corpora": {"c": {"source": {"builtin": {"name": "python_docs"}}}},
            }
        )["conda_env"]
        == "cpu"
    )
    common = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    assert "CONDA_ENV = f\"../../envs/lmdelta-{config['conda_env']}.yaml\"" in common
