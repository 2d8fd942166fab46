"""Soft prompts trained to maximise the divergence between the two models of a pair.

``n_tokens`` trainable vectors P are placed before the text through ``inputs_embeds`` in both frozen
models: ``placement: prefix`` reads [P; text]; ``placement: chat`` puts P where the user's message goes
in the tokenizer's chat template and the text where the assistant's reply goes. The text tokens are
embedded by each model's own input embedding; P is shared, so both models must have the same hidden
size and tokenizer. The loss is minus the mean divergence between the two next-token distributions
(``divergence``: kl_a_b = KL(P_a ‖ P_b), kl_b_a or js; nats) over the text positions only: the
soft-prompt, template and padding positions are masked. The training texts are windows of
``seq_len`` tokens of a corpus (``data: corpus``) or continuations sampled from model a without
the prompt (``data: generations``); documents are split into train and held-out sets.

The models' weights are frozen (``requires_grad`` off) but the forward pass is not under
``no_grad``: gradients reach P. AdamW on P only, linear warm-up, gradient clipping, gradient
accumulation, optional bf16 autocast. Every ``eval_every`` steps the held-out divergence is measured
WITH the current P; the best P is kept and training stops after ``patience`` evaluations without
improvement. A checkpoint (P, the best P, optimizer state, metrics) every ``checkpoint_every`` steps
lets a killed run resume to the same result (batches are a function of the seed and step).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from lmdelta import LmdeltaError
from lmdelta.artifacts import Provenance, atomic_path, write_csv, write_json
from lmdelta.models import ForwardCounter, FrozenAutocast, pad_id, resolve_autocast
from lmdelta.models import right_pad as collate  # the batches of training windows
from lmdelta.pairs import check_compatible, load_pair, record_pair
from lmdelta.plots import save_figure, softprompt_figure
from lmdelta.softprefix import (
    SoftPromptParams,
    heldout_test_windows,
    nearest_tokens,
    pair_divergence,
    pair_templates,
    split_windows,
    training_docs,
)
from lmdelta.stats import PairedParams, paired
from lmdelta.training import batch_indices, load_checkpoint, save_checkpoint, warmup_lr

log = logging.getLogger(__name__)


# ---- building blocks ----------------------------------------------------------------------------------


def init_prompt(embedding, tok, p: SoftPromptParams):
    """The initial P [n_tokens, hidden] (float32): embeddings of sampled vocabulary tokens, of a text, or random."""
    import torch

    w = embedding.weight.detach().float()
    g = torch.Generator().manual_seed(p.seed)
    if p.init == "vocab":
        special = set(tok.all_special_ids)
        pool = torch.tensor([i for i in range(min(len(tok), w.shape[0])) if i not in special])
        ids = pool[torch.randint(len(pool), (p.n_tokens,), generator=g)]
        return w[ids].clone()
    if p.init == "text":
        if not p.init_text:
            raise LmdeltaError("softprompt: init: text needs init_text; give a text or use init: vocab")
        ids = tok(p.init_text, add_special_tokens=False).input_ids
        ids = (ids * math.ceil(p.n_tokens / max(1, len(ids))))[: p.n_tokens]
        return w[torch.tensor(ids)].clone()
    if p.init == "random":
        return torch.randn((p.n_tokens, w.shape[1]), generator=g) * w.std()
    raise LmdeltaError(f"softprompt: init {p.init!r} is unknown; use vocab, text or random")


def window_divergences(
    models, prompt, templates, windows, pad: int, p: SoftPromptParams
) -> tuple[np.ndarray, np.ndarray]:
    """Per window: the summed divergence over its text positions and their number, with ``prompt``
    (None = without)."""
    import torch

    sums, counts = [], []
    with torch.no_grad():
        for i in range(0, len(windows), p.batch):
            ids, mask = collate(windows[i : i + p.batch], pad)
            _, d = pair_divergence(models, prompt, templates, ids, mask, p.divergence)
            m = mask.to(d.device).float()
            sums += (d.float() * m).sum(-1).tolist()
            counts += m.sum(-1).tolist()
    return np.asarray(sums, np.float64), np.asarray(counts, np.float64)


def evaluate(models, prompt, templates, windows, pad: int, p: SoftPromptParams) -> float:
    """Mean divergence over held-out windows (token-weighted), with ``prompt`` (None = without)."""
    sums, counts = window_divergences(models, prompt, templates, windows, pad, p)
    return float(sums.sum() / counts.sum())


def heldout_test(models, toks, prompt, test, p: SoftPromptParams, stats: PairedParams, first_tokens) -> dict | None:
    """The chosen soft prompt against no prompt on held-out documents that never chose the step
    (``test``: (document, window) pairs): per document the token-weighted mean divergence with and
    without, compared by a sign-flip test over documents with a bootstrap interval of the mean
    difference. None when fewer than two documents have test windows."""
    docs, doc_of = np.unique([d for d, _ in test], return_inverse=True)
    if len(docs) < 2:
        return None
    templates = pair_templates(toks, p.placement, first_tokens)
    pad = pad_id(toks[0])
    windows = [w for _, w in test]
    per_doc = {}
    for name, pr in (("with", prompt), ("without", None)):
        sums, counts = window_divergences(models, pr, templates, windows, pad, p)
        per_doc[name] = np.bincount(doc_of, sums, len(docs)) / np.bincount(doc_of, counts, len(docs))
    res = paired(per_doc["with"], per_doc["without"], test="sign-flip", params=stats)
    return {
        "unit": "held-out document that gave no window to the choice of the step",
        "n_docs": len(docs),
        "n_windows": len(windows),
        "with_prompt": res["mean_a"],
        "without_prompt": res["mean_b"],
        "diff": res["diff"],
        "diff_low": res["diff_low"],
        "diff_high": res["diff_high"],
        "test": res["test"],
        "p": res["p"],
    }


# ---- training -----------------------------------------------------------------------------------------


def train_prompt(
    models,
    toks,
    windows: tuple[list[list[int]], list[list[int]]],
    p: SoftPromptParams,
    *,
    ckpt_dir: Path,
    stop_after: int | None = None,
    tensorboard_dir: Path | None = None,
    progress: bool = True,
    identity: str = "",
    first_tokens: tuple[str, str] = ("bos", "bos"),
) -> dict:
    """Train P (checkpoints in ``ckpt_dir`` are reused only for the same settings, data and ``identity``:
    the models' fingerprints, so a changed model starts afresh); return {"prompt" (best P), "metrics" (rows), "best_step", "best_heldout", "baseline_heldout", "stopped_early"}."""
    import torch
    from tqdm import tqdm

    train, held = windows
    pad = pad_id(toks[0])
    templates = pair_templates(toks, p.placement, first_tokens)
    for m in models:
        m.eval()
        m.requires_grad_(False)
    prompt = torch.nn.Parameter(init_prompt(models[0].get_input_embeddings(), toks[0], p))
    optimizer = torch.optim.AdamW([prompt], lr=p.lr, weight_decay=0.0)
    device = models[0].get_input_embeddings().weight.device

    autocast = resolve_autocast(p.autocast, device, where="softprompt")
    amp = FrozenAutocast(models, enabled=autocast == "bf16", device_type=device.type)

    ckpt_dir = Path(ckpt_dir)
    key = json.dumps(
        [asdict(p), autocast, len(train), len(held), train[:2], identity, list(first_tokens)], sort_keys=True
    )
    if (ckpt_dir / "key.json").exists() and (ckpt_dir / "key.json").read_text() != key:
        log.info("soft-prompt settings, data or models changed: discarding checkpoints in %s", ckpt_dir)
        for f in ckpt_dir.iterdir():
            f.unlink()
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (ckpt_dir / "key.json").write_text(key)

    calls = ForwardCounter(*models)  # forward calls, added up over resumed runs in the checkpoint state
    state = {
        "step": 0,
        "metrics": [],
        "best_step": 0,
        "best_heldout": -math.inf,
        "bad_evals": 0,
        "stopped_early": False,
        "model_calls": 0,
    }
    got = load_checkpoint(ckpt_dir, optimizer, weights="prompt.safetensors")
    if got is not None:
        tensors, state = got
        with torch.no_grad():
            prompt.copy_(tensors["prompt"])
        best = tensors["best"]
        log.info("resuming soft-prompt training from step %d (%s)", state["step"], ckpt_dir)
    else:
        best = prompt.detach().clone()
    calls_before = state.get("model_calls", 0)
    baseline = evaluate(models, None, templates, held, pad, p)
    writer = _tensorboard(tensorboard_dir)

    def checkpoint():
        state["model_calls"] = calls_before + calls.n
        save_checkpoint(ckpt_dir, {"prompt": prompt, "best": best}, optimizer, state, weights="prompt.safetensors")

    end = p.steps if stop_after is None else min(p.steps, stop_after)
    bar = tqdm(
        range(state["step"], end),
        desc="soft prompt",
        unit=" step",
        initial=state["step"],
        total=p.steps,
        disable=not progress,
        mininterval=1.0,
    )
    for step in bar:
        if state["stopped_early"]:
            break
        t0 = time.perf_counter()
        for g in optimizer.param_groups:
            g["lr"] = warmup_lr(step, p.lr, p.warmup_steps)
        kl_sum = 0.0
        for micro in range(p.accumulation):
            idx = batch_indices(len(train), p.batch, step * p.accumulation + micro, p.seed)
            ids, mask = collate([train[i] for i in idx], pad)
            with amp():
                kl_mean, _ = pair_divergence(models, prompt, templates, ids, mask, p.divergence)
            loss = -kl_mean.float() / p.accumulation
            loss.backward()
            kl_sum += float(kl_mean.detach()) / p.accumulation
        if not math.isfinite(kl_sum):
            raise LmdeltaError(f"softprompt: the divergence became {kl_sum} at step {step}; lower lr")
        grad_norm = float(torch.nn.utils.clip_grad_norm_([prompt], p.grad_clip))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        row = {
            "step": step + 1,
            "train_divergence": kl_sum,
            "lr": warmup_lr(step, p.lr, p.warmup_steps),
            "grad_norm": grad_norm,
            "heldout_divergence": math.nan,
            "seconds": time.perf_counter() - t0,
        }
        if (step + 1) % p.eval_every == 0 or step + 1 == p.steps:
            row["heldout_divergence"] = evaluate(models, prompt.detach(), templates, held, pad, p)
            if row["heldout_divergence"] > state["best_heldout"]:
                state.update(best_heldout=row["heldout_divergence"], best_step=step + 1, bad_evals=0)
                best = prompt.detach().clone()
            else:
                state["bad_evals"] += 1
                state["stopped_early"] = state["bad_evals"] >= p.patience
        state["metrics"].append(row)
        state["step"] = step + 1
        if writer is not None:
            for k in ("train_divergence", "heldout_divergence", "grad_norm", "lr"):
                if not math.isnan(row[k]):
                    writer.add_scalar(k, row[k], step + 1)
        bar.set_postfix(kl=f"{kl_sum:.3f}", best=f"{state['best_heldout']:.3f}")
        if state["step"] % p.checkpoint_every == 0 or state["step"] == p.steps or state["stopped_early"]:
            checkpoint()
    bar.close()
    if writer is not None:
        writer.close()
    if state["stopped_early"]:
        log.info("soft prompt: stopped at step %d after %d evaluations without improvement", state["step"], p.patience)
    return {
        "prompt": best.detach().cpu(),
        "metrics": state["metrics"],
        "best_step": state["best_step"],
        "best_heldout": state["best_heldout"],
        "baseline_heldout": baseline,
        "stopped_early": state["stopped_early"],
        "autocast_used": autocast,
        "steps_run": state["step"],
        "model_calls": calls_before + calls.n,
    }


def _tensorboard(folder: Path | None):
    if folder is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(folder))


# ---- data ---------------------------------------------------------------------------------------------


# ---- files at the edge --------------------------------------------------------------------------------


def run_softprompt(
    *,
    pair: str,
    run: str,
    names: tuple[str, str],
    model_dirs: tuple[Path, Path],
    params: SoftPromptParams,
    load_options: tuple[dict, dict],
    formats: tuple[dict, dict] = ({}, {}),
    corpus: Path | None,
    out_prompt: Path,
    out_metrics: Path,
    out_png: Path,
    out_summary: Path,
    ckpt_dir: Path,
    tensorboard_dir: Path | None = None,
    stop_after: int | None = None,
    statistics: PairedParams | None = None,
) -> dict | None:
    """``statistics`` (the config's ``statistics:``; default: its schema defaults) for the held-out test."""
    import pandas as pd
    import torch
    from safetensors.torch import save_file

    prov = Provenance(
        stage="softprompt",
        params={
            "pair": pair,
            "run": run,
            "a": names[0],
            "b": names[1],
            **asdict(params),
            "load_options": list(load_options),
            "formats": list(formats),
            "units": "nats",
        },
        seed=params.seed,
    )
    first_tokens = tuple(f.get("first_token", "bos") for f in formats)
    record_pair(prov, model_dirs)
    if corpus is not None:
        prov.add_input("corpus", corpus)
    models, toks = load_pair(model_dirs, load_options)
    check_compatible(models, toks, pair)
    torch.manual_seed(params.seed)
    docs = training_docs(models, toks, params, corpus)
    windows = split_windows(docs, params)
    identity = " ".join(prov.inputs[f"model_{side}"]["fingerprint"] for side in ("a", "b"))
    res = train_prompt(
        models,
        toks,
        windows,
        params,
        ckpt_dir=ckpt_dir,
        stop_after=stop_after,
        tensorboard_dir=tensorboard_dir,
        identity=identity,
        first_tokens=first_tokens,
    )
    if stop_after is not None and res["steps_run"] < params.steps and not res["stopped_early"]:
        return None
    emb = models[0].get_input_embeddings()
    summary = {
        "pair": pair,
        "run": run,
        "divergence": params.divergence,
        "placement": params.placement,
        "heldout_without_prompt": res["baseline_heldout"],
        "heldout_with_prompt": res["best_heldout"],
        "ratio": res["best_heldout"] / res["baseline_heldout"] if res["baseline_heldout"] > 0 else math.inf,
        "best_step": res["best_step"],
        "steps_run": res["steps_run"],
        "stopped_early": res["stopped_early"],
        "n_train_windows": len(windows[0]),
        "n_heldout_windows": len(windows[1]),
        "heldout_test": heldout_test(
            models,
            toks,
            res["prompt"],
            heldout_test_windows(docs, params),
            params,
            statistics or PairedParams.from_dict({}),
            first_tokens,
        ),
        "nearest_tokens_cosine": [[t for t, _, _ in c] for c in nearest_tokens(res["prompt"], emb, toks[0], k=3)],
    }
    prov.params["summary"] = {k: summary[k] for k in ("heldout_without_prompt", "heldout_with_prompt", "best_step")}
    prov.params["model_calls"] = res["model_calls"]  # training's forward calls, over every resumed run
    prov.params["autocast_used"] = res["autocast_used"]
    with atomic_path(out_prompt, prov) as tmp:
        # no safetensors metadata: its key order is not stable, and the provenance record holds it all
        save_file({"soft_prompt": res["prompt"].contiguous()}, str(tmp))
    write_csv(out_metrics, pd.DataFrame(res["metrics"]), prov)
    write_json(out_summary, summary, prov)
    save_figure(
        softprompt_figure(pd.DataFrame(res["metrics"]), res["baseline_heldout"], f"{pair} / {run}", params.divergence),
        out_png,
        prov,
    )
    log.info(
        "soft prompt %s/%s: held-out %s %.4f without, %.4f with the prompt (step %d)",
        pair,
        run,
        params.divergence,
        res["baseline_heldout"],
        res["best_heldout"],
        res["best_step"],
    )
    return summary


# ---- jobs (lmdelta.job) -------------------------------------------------------------------------------


def softprompt_job(job) -> None:
    """inputs: ``a``, ``b``, ``corpus``; spec: the pair with its run; params: ``checkpoints``,
    ``tensorboard``; outputs: ``prompt``, ``metrics``, ``png``, ``summary``."""
    s = job.spec
    tb = job.params.get("tensorboard")
    run_softprompt(
        pair=job.wildcards["pair"],
        run=job.wildcards["run"],
        names=tuple(s["names"]),
        model_dirs=(job.path("a"), job.path("b")),
        params=SoftPromptParams.from_dict(s["run"]),
        load_options=tuple(s["load_options"]),
        formats=tuple(s["formats"]),
        corpus=job.path("corpus"),
        out_prompt=job.out("prompt"),
        out_metrics=job.out("metrics"),
        out_png=job.out("png"),
        out_summary=job.out("summary"),
        ckpt_dir=Path(job.params["checkpoints"]),
        tensorboard_dir=Path(tb) if tb else None,
        statistics=PairedParams.from_dict(s.get("statistics", {})),
    )
