"""PEFT adapters as models (models.<name>.source.adapter): tiny LoRA adapters saved by peft on Llama- and
GPT-2-like bases, from a local folder and from a hub stand-in on 127.0.0.1, merged into their base's
materialised folder; an adapter on the wrong base is one line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from test_paper_configs import _shrink

from conftest import ROOT, hub_stand_in, job_command, snakemake
from families import build_family, family_of_hf_id
from lmdelta.artifacts import read_provenance
from lmdelta.config import ModelSpec
from lmdelta.models import load_model, materialise

TEXT = "def f(x): return x + 1"


def save_lora(base_dir: Path, out: Path, *, targets: list[str], seed: int = 0, base_id: str | None = None) -> Path:
    """A LoRA adapter saved by peft, with both matrices random (peft's default leaves B at zero: no change)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)
    model.save_pretrained(out)
    if base_id is not None:  # what peft writes when the base was loaded from the hub
        path = out / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "base_model_name_or_path": base_id}))
    return out


def peft_logits(base_dir: Path, adapter_dir: Path) -> torch.Tensor:
    """The adapter's outputs as peft computes them (unmerged): the independent reference."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()
    with torch.no_grad():
        return model(**tok(TEXT, return_tensors="pt")).logits


def adapter_job(tmp_path: Path, base: Path, source: dict, out: Path, base_source=None, env=None):
    cmd = job_command(
        tmp_path / "jobs",
        "adapter_model",
        name=out.name,
        inputs={"base": base},
        outputs={"model": out},
        params={"spec": {"source": source, "base_source": base_source or {"local": {"path": str(base)}}}},
        wildcards={"model": out.name},
    )
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def bases(tmp_path_factory, tiny_models):
    """Materialised tiny bases: Llama (separate LM head) and GPT-2 (Conv1D layers, tied embeddings)."""
    root = tmp_path_factory.mktemp("bases")
    gpt2_src = build_family("gpt2", root / "gpt2-src")
    out = {}
    for name, src in (("llama", tiny_models["llama"]), ("gpt2", gpt2_src)):
        materialise(ModelSpec(name=name, source={"local": {"path": str(src)}}), root / name)
        out[name] = root / name
    return out


TARGETS = {"llama": ["q_proj", "v_proj", "down_proj"], "gpt2": ["c_attn", "c_fc"]}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_local_adapter_is_merged_into_its_base(tmp_path, bases, arch):
    adapter = save_lora(bases[arch], tmp_path / "lora", targets=TARGETS[arch])
    out = tmp_path / "tuned"
    source = {"adapter": {"base": "base", "path": str(adapter), "revision": "main", "check_base": True}}
    r = adapter_job(tmp_path, bases[arch], source, out)
    assert r.returncode == 0, r.stderr[-3000:]
    model, tok = load_model(out, device="cpu")
    with torch.no_grad():
        merged = model(**tok(TEXT, return_tensors="pt")).logits
    reference = peft_logits(bases[arch], adapter)
    base_model, _ = load_model(bases[arch], device="cpu")
    with torch.no_grad():
        untouched = base_model(**tok(TEXT, return_tensors="pt")).logits
    assert (reference - untouched).abs().max() > 1e-3, "the adapter changes the outputs"
    torch.testing.assert_close(merged, reference, rtol=0, atol=1e-5)
    prov = read_provenance(out)
    assert prov["inputs"]["base"]["path"] == str(bases[arch])
    assert (
        prov["inputs"]["adapter"]["path"] == str(adapter.resolve()) and len(prov["inputs"]["adapter"]["sha256"]) == 64
    )
    assert prov["params"]["peft_type"] == "LORA" and prov["params"]["r"] == 4


def test_an_adapter_on_another_base_is_one_line(tmp_path, tiny_tokenizer, bases):
    from conftest import build_tiny_model

    wider = build_tiny_model("llama", tmp_path / "wider", tiny_tokenizer, hidden_size=96)
    adapter = save_lora(wider, tmp_path / "lora", targets=["q_proj", "v_proj"])
    source = {"adapter": {"base": "base", "path": str(adapter), "revision": "main", "check_base": True}}
    r = adapter_job(tmp_path, bases["llama"], source, tmp_path / "tuned")
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("lmdelta:")]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "does not fit base 'base'" in lines[0] and "set adapter.base to the model it was trained on" in lines[0]
    assert not (tmp_path / "tuned").exists()


def test_a_hub_adapter_with_revision_and_its_recorded_base(tmp_path, bases):
    """id + revision through huggingface_hub against a hub on 127.0.0.1; the commit is recorded; an
    adapter whose adapter_config.json names another hub base than the declared one is refused."""
    adapter = save_lora(bases["llama"], tmp_path / "lora", targets=["q_proj"], base_id="tiny-org/tiny-llama")
    with hub_stand_in({"tiny-org/tiny-lora": adapter}) as url:
        env = {"HF_ENDPOINT": url, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path / "cache")}
        source = {"adapter": {"base": "base", "id": "tiny-org/tiny-lora", "revision": "v1", "check_base": True}}
        declared = {"hf": {"id": "tiny-org/tiny-llama", "revision": "main"}}
        r = adapter_job(tmp_path, bases["llama"], source, tmp_path / "tuned", base_source=declared, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        origin = read_provenance(tmp_path / "tuned")["inputs"]["adapter"]
        assert origin["id"] == "tiny-org/tiny-lora" and origin["revision"] == "v1" and origin["commit"] == "c" * 40
        model, tok = load_model(tmp_path / "tuned", device="cpu")
        with torch.no_grad():
            merged = model(**tok(TEXT, return_tensors="pt")).logits
        torch.testing.assert_close(merged, peft_logits(bases["llama"], adapter), rtol=0, atol=1e-5)

        other = {"hf": {"id": "tiny-org/other-llama", "revision": "main"}}
        r = adapter_job(tmp_path, bases["llama"], source, tmp_path / "t2", base_source=other, env=env)
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("lmdelta:")]
        assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
        assert "trained on 'tiny-org/tiny-llama' but base 'base' is 'tiny-org/other-llama'" in lines[0]
        missing = {"adapter": {**source["adapter"], "id": "tiny-org/no-such-lora"}}
        r = adapter_job(tmp_path, bases["llama"], missing, tmp_path / "t3", env=env)
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("lmdelta:")]
        assert r.returncode == 2 and len(lines) == 1 and "cannot download adapter 'tiny-org/no-such-lora'" in lines[0]


def test_the_own_pair_config_runs_end_to_end_from_a_hub(tmp_path, bases):
    """configs/own_pair.yaml as a new user runs it: a hub base and a hub LoRA on it (revision main),
    here served on 127.0.0.1 by stand-ins of the same ids (a tiny SmolLM2-like model and a LoRA saved
    by peft on it), sizes shrunk as for the paper configs; every planned job runs and the summary page
    is written."""
    cfg = yaml.safe_load((ROOT / "configs" / "own_pair.yaml").read_text())
    base_id = cfg["models"]["base"]["source"]["hf"]["id"]
    adapter_id = cfg["models"]["tuned"]["source"]["adapter"]["id"]
    family, instruct = family_of_hf_id(base_id)
    base = build_family(family, tmp_path / "hub-base", instruct=instruct)
    adapter = save_lora(base, tmp_path / "hub-lora", targets=["q_proj", "v_proj"], base_id=base_id)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_shrink(cfg)))
    with hub_stand_in({base_id: base, adapter_id: adapter}) as url:
        env = {"HF_ENDPOINT": url, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path / "hub-cache")}
        r = snakemake("--configfile", "c.yaml", cwd=tmp_path, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads((tmp_path / "results" / "summary" / "mine.json").read_text())
    assert summary["a"] == "tuned" and summary["statement"]
    origin = read_provenance(tmp_path / "resources" / "models" / "tuned")["inputs"]["adapter"]
    assert origin["id"] == adapter_id and origin["commit"] == "c" * 40
    assert read_provenance(tmp_path / "resources" / "models" / "base")["inputs"]["source"]["hf_id"] == base_id
