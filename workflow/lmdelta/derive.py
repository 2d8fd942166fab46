"""Derived models: fine-tune a materialised model (LoRA then merged, or full) into a new materialised folder.

Training set: JSONL records ``{"prompt": ..., "response": ...}``. Each prompt is encoded as the model
reads prompts everywhere else (``lmdelta.tokens.prompt_ids``: chat template or prompt_format, first
token), the response and the tokenizer's EOS follow, and the loss is on response tokens only. Deterministic on CPU for a fixed seed and thread count: LoRA dropout is 0, batches come
from seeded permutations of the data, one per epoch. A checkpoint (trainable weights as safetensors,
optimizer state, step, loss log) is written every ``checkpoint_every`` steps; a killed run resumes
from the last complete one and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, field
from pathlib import Path
from typing import Any

from lmdelta import LmdeltaError
from lmdelta.artifacts import Provenance, read_jsonl, write_csv
from lmdelta.config import ModelSpec, stage_spec
from lmdelta.models import (
    FrozenAutocast,
    input_device,
    load_model,
    pad_id,
    read_fingerprint,
    resolve_autocast,
    resolve_device,
    write_model_folder,
)
from lmdelta.tokens import TextFormat
from lmdelta.tokens import prompt_ids as encode_prompt
from lmdelta.training import batch_indices, load_checkpoint, save_checkpoint, warmup_lr

log = logging.getLogger(__name__)

ALL_LINEAR = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "query_key_value",
    "dense",
    "dense_h_to_4h",
    "dense_4h_to_h",
    "c_attn",
    "c_proj",
    "c_fc",
]


@stage_spec("model_source.derive", elsewhere=("from", "data"), internal=("text_format",))
class DeriveParams:
    method: str  # lora-sft | full-sft
    steps: int
    lr: float
    warmup_steps: int
    rank: int
    alpha: int
    batch: int
    max_tokens: int
    seed: int
    autocast: str  # auto (bf16 where native) | bf16 | none
    grad_clip: float
    checkpoint_every: int
    target_modules: list[str]
    text_format: dict[str, Any] = field(default_factory=dict)  # lmdelta.tokens.TextFormat as a dict


def encode_examples(
    tokenizer, records: list[dict], *, text_format: dict[str, Any], max_tokens: int
) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per record; labels are -100 on prompt tokens; truncated to max_tokens."""
    fmt = TextFormat.from_dict(text_format)
    eos = tokenizer.eos_token_id
    out = []
    for r in records:
        prompt_ids = encode_prompt(tokenizer, r["prompt"], fmt)
        resp_ids = tokenizer(r["response"], add_special_tokens=False).input_ids + ([eos] if eos is not None else [])
        ids = (prompt_ids + resp_ids)[:max_tokens]
        labels = ([-100] * len(prompt_ids) + resp_ids)[:max_tokens]
        if all(x == -100 for x in labels):
            raise LmdeltaError(
                f"derive: the prompt {r['prompt'][:40]!r}... fills max_tokens ({max_tokens}); raise derive.max_tokens"
            )
        out.append((ids, labels))
    return out


def _collate(examples, pad_id: int):
    import torch

    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (x, y) in enumerate(examples):
        ids[i, : len(x)] = torch.as_tensor(x)
        labels[i, : len(y)] = torch.as_tensor(y)
        mask[i, : len(x)] = 1
    return ids, labels, mask


def _trainable(model) -> dict[str, Any]:
    return {n: t for n, t in model.named_parameters() if t.requires_grad}


def _load_checkpoint(ckpt: Path, model, optimizer) -> tuple[int, list[dict]]:
    """(step, losses) of the last checkpoint, its weights copied into the model's trainable tensors."""
    import torch

    got = load_checkpoint(ckpt, optimizer, weights="weights.safetensors")
    if got is None:
        return 0, []
    weights, state = got
    params = _trainable(model)
    if set(weights) != set(params):
        raise LmdeltaError(f"derive: checkpoint {ckpt} does not fit this model; delete the folder to start over")
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t)
    log.info("resuming from step %d (%s)", state["step"], ckpt)
    return state["step"], state["losses"]


def train(
    base_dir: str | Path,
    records: list[dict],
    out: str | Path,
    *,
    params: DeriveParams,
    ckpt_dir: str | Path,
    name: str,
    source: dict[str, Any],
    loss_csv: str | Path | None = None,
    stop_after: int | None = None,
) -> list[dict]:
    """Fine-tune the model in ``base_dir`` on ``records``; write a materialised folder to ``out``.

    ``stop_after`` ends the run after that many steps without writing ``out`` (tests use it to
    interrupt a run at a known point). Returns the loss log (step, loss, lr, seconds).
    """
    import pandas as pd
    import torch
    from tqdm import tqdm

    if not records:
        raise LmdeltaError(f"derive: models.{name}: the training set is empty; check derive.data")
    ckpt_dir = Path(ckpt_dir)
    autocast = resolve_autocast(params.autocast, torch.device(resolve_device("auto")), where=f"derive: models.{name}")
    key = json.dumps([asdict(params), autocast, read_fingerprint(base_dir)["digest"], records], sort_keys=True)
    key_file = ckpt_dir / "key.json"
    if key_file.exists() and key_file.read_text() != key:
        log.info("derive settings or data changed: discarding checkpoints in %s", ckpt_dir)
        for f in ckpt_dir.iterdir():
            f.unlink()
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    key_file.write_text(key)

    model, tok = load_model(base_dir, dtype="float32", device="auto")
    device = input_device(model)
    torch.manual_seed(params.seed)
    if params.method == "lora-sft":
        from peft import LoraConfig, get_peft_model

        present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        targets = [m for m in params.target_modules if m in present]
        if not targets:
            raise LmdeltaError(
                f"derive: none of target_modules {params.target_modules} exist in {base_dir}; list the model's linear layers"
            )
        model = get_peft_model(
            model,
            LoraConfig(
                r=params.rank, lora_alpha=params.alpha, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM"
            ),
        )
    elif params.method != "full-sft":
        raise LmdeltaError(f"derive: method {params.method!r} is unknown; use lora-sft or full-sft")
    model.train()
    optimizer = torch.optim.AdamW([t for t in model.parameters() if t.requires_grad], lr=params.lr, weight_decay=0.0)
    start, losses = _load_checkpoint(ckpt_dir, model, optimizer)

    examples = encode_examples(tok, records, text_format=params.text_format, max_tokens=params.max_tokens)
    pad = pad_id(tok)
    amp = FrozenAutocast([model], enabled=autocast == "bf16", device_type=device.type)
    end = params.steps if stop_after is None else min(params.steps, stop_after)
    bar = tqdm(range(start, end), desc=f"derive {name}", unit=" step", initial=start, total=params.steps)
    for step in bar:
        t0 = time.perf_counter()
        ids, labels, mask = _collate(
            [examples[i] for i in batch_indices(len(examples), params.batch, step, params.seed)], pad
        )
        for g in optimizer.param_groups:
            g["lr"] = warmup_lr(step, params.lr, params.warmup_steps)
        with amp():
            loss = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
        if not math.isfinite(loss.item()):
            raise LmdeltaError(f"derive: loss became {loss.item()} at step {step}; lower derive.lr")
        loss.backward()
        torch.nn.utils.clip_grad_norm_([t for t in model.parameters() if t.requires_grad], params.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(
            {
                "step": step + 1,
                "loss": float(loss.item()),
                "lr": warmup_lr(step, params.lr, params.warmup_steps),
                "seconds": time.perf_counter() - t0,
            }
        )
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % params.checkpoint_every == 0 or step + 1 == params.steps:
            save_checkpoint(
                ckpt_dir,
                _trainable(model),
                optimizer,
                {"step": step + 1, "losses": losses},
                weights="weights.safetensors",
            )
    bar.close()
    if stop_after is not None and end < params.steps:
        return losses

    if params.method == "lora-sft":
        model = model.merge_and_unload()
    model.eval()
    prov = Provenance(
        stage="derive", params={"name": name, **asdict(params), "autocast_used": autocast}, seed=params.seed
    )
    prov.inputs["base"] = {"path": str(base_dir), "fingerprint": read_fingerprint(base_dir)["digest"]}
    prov.params["n_examples"] = len(records)
    prov.params["final_loss"] = losses[-1]["loss"] if losses else None
    write_model_folder(model, tok, out, ModelSpec(name=name, source=source), prov)
    if loss_csv is not None:
        write_csv(loss_csv, pd.DataFrame(losses), prov)
    log.info(
        "models.%s: derived from %s in %d steps (loss %.3f -> %.3f)",
        name,
        base_dir,
        params.steps,
        losses[0]["loss"],
        losses[-1]["loss"],
    )
    return losses


def run_derive(
    base_dir: Path,
    data_path: Path,
    out: Path,
    loss_csv: Path,
    *,
    name: str,
    source: dict[str, Any],
    text_format: dict[str, Any],
    ckpt_dir: Path,
) -> None:
    """Rule entry: train from a JSONL file of {"prompt", "response"} records."""

    records = read_jsonl(data_path, where=f"derive: models.{name}: {data_path}")
    bad = next(
        (i for i, r in enumerate(records, 1) if not isinstance(r, dict) or not {"prompt", "response"} <= set(r)), None
    )
    if bad is not None:
        raise LmdeltaError(
            f"derive: models.{name}: {data_path} record {bad} needs 'prompt' and 'response' fields; fix the data file"
        )
    params = DeriveParams.from_dict({**source["derive"], "text_format": text_format})
    train(
        base_dir,
        records,
        out,
        params=params,
        ckpt_dir=ckpt_dir,
        name=name,
        source=source,
        loss_csv=loss_csv,
    )


# ---- jobs (lmdelta.job) -------------------------------------------------------------------------------


def derive_job(job) -> None:
    """inputs: ``base``, ``data``; spec: {"source", "text_format"}; params: ``checkpoints``;
    outputs: ``model``, ``loss``."""
    run_derive(
        job.path("base"),
        job.path("data"),
        job.out("model"),
        job.out("loss"),
        name=job.wildcards["model"],
        source=job.spec["source"],
        text_format=job.spec["text_format"],
        ckpt_dir=Path(job.params["checkpoints"]),
    )
