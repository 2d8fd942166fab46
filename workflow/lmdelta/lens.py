"""Activation-difference lens: what a fine-tune writes into the residual stream, read without a prompt.

After the "narrow fine-tuning leaves clearly readable traces in activation differences" work (2025):
both models of a pair read the same random corpus texts; at each decoder layer l and each of the first
``positions`` text positions p (counted after the model's first token), the mean difference of their
residual streams d[l, p] = mean over texts of (h_a − h_b) is taken (a is the tuned model, b the base).

- **Logit lens**: the unit difference, scaled to b's mean activation norm at (l, p), goes through b's
  final norm and unembedding; the tokens it promotes most (and suppresses most) are kept with their
  probability under that readout.
- **Steering**: b, with the unit mean difference of one layer (averaged over the positions) times
  ``scale`` times b's mean activation norm there added to that layer's output at every position,
  answers neutral prompts; each answer is scored by the unsteered pair, mean log p_a − log p_b per
  token (nats), so that an answer a would give and b would not ranks first.
- **Controls**, run the same way: ``identical`` (b against itself: every difference is exactly 0, so
  nothing may be read) and ``random_lora`` (b against b plus, for every matrix that differs between a
  and b, a random rank-``control_rank`` change of the same Frobenius norm; vectors get a random change
  of the same norm): what a difference of that size reads like when it carries no behaviour.

Findings (``lmdelta.findings``): tokens (method ``lens``), ranked by the share of (layer, position)
cells whose top-k promote them minus that share under the random-LoRA control, then by their mean
probability; steered answers (``lens steering``), ranked by their log-ratio. Tokens without a letter
or digit, or promoted by the control at least as often, are left out of the findings (they stay in
the tokens table).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, field
from pathlib import Path
from typing import Any

import numpy as np

from lmdelta import LmdeltaError
from lmdelta.artifacts import Provenance, write_csv, write_json, write_parquet
from lmdelta.config import known_fields, stage_spec
from lmdelta.decoding import Sampling
from lmdelta.findings import finding, write_findings
from lmdelta.generation import generate_texts
from lmdelta.models import ForwardCounter, check_embeddings_in_memory, input_device, pad_id, random_lora_like
from lmdelta.pairs import check_same_tokenizer, load_pair, record_pair
from lmdelta.plots import lens_figure, save_figure
from lmdelta.promptsets import read_promptset
from lmdelta.scoring import score_sequences
from lmdelta.softprefix import template_ids
from lmdelta.tokens import TextFormat, first_token_id, prompt_ids

log = logging.getLogger(__name__)


@stage_spec("lens_run.steer")
class SteerParams:
    layer: int | None
    scales: tuple[float, ...]
    samples: int
    max_new_tokens: int
    temperature: float
    batch_size: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SteerParams:
        kw = known_fields(cls, d)
        if "scales" in kw:
            kw["scales"] = tuple(float(s) for s in kw["scales"])
        return cls(**kw)


@stage_spec("lens_run", elsewhere=("corpus", "prompts"))
class LensParams:
    n_texts: int
    positions: int
    template: str  # none | chat
    layers: tuple[int, ...] | None
    top_k: int
    batch_size: int
    seed: int
    controls: tuple[str, ...]
    control_rank: int
    steer: SteerParams = field(default_factory=lambda: SteerParams())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LensParams:
        kw = known_fields(cls, d)
        for key in ("layers", "controls"):
            if kw.get(key) is not None:
                kw[key] = tuple(kw[key])
        if "steer" in kw:
            kw["steer"] = SteerParams.from_dict(kw["steer"])
        return cls(**kw)


# ---- the residual stream ---------------------------------------------------------------------------


def decoder_layers(model):
    """The model's decoder layers (the ModuleList as long as ``config.num_hidden_layers``)."""
    import torch

    n = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise LmdeltaError(f"lens: no list of {n} decoder layers found in {type(model).__name__}")


def final_norm(model):
    """The norm applied to the last residual stream before the unembedding."""
    base = model.base_model
    for name in ("norm", "final_layer_norm", "ln_f", "final_norm"):
        if hasattr(base, name):
            return getattr(base, name)
    raise LmdeltaError(f"lens: no final norm found in {type(model).__name__}; the logit lens needs one")


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def layer_outputs(model, ids, positions: slice):
    """Every decoder layer's output at ``positions``: float64 [layers, batch, positions, hidden]."""
    import torch

    got = []
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out: got.append(_hidden(out)[:, positions].double().cpu()))
        for layer in decoder_layers(model)
    ]
    try:
        with torch.inference_mode():
            model(input_ids=ids.to(input_device(model)), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(got)


def text_windows(
    tok, texts: list[str], *, positions: int, first_token: str, n: int, seed: int, template: str = "none"
) -> tuple[list[list[int]], int]:
    """The first ``positions`` tokens of up to ``n`` texts (random order, ``seed``) that have that many,
    and how many ids lead them: the model's first token (``template: none``), or the chat template up
    to the user's message (``chat``: the text read as a message); shorter texts are skipped."""
    if template == "chat":
        before, _ = template_ids(tok, "chat")
    else:
        tid = first_token_id(tok, first_token)
        before = [] if tid is None else [tid]
    order = np.random.default_rng(seed).permutation(len(texts))
    out = []
    for i in order:
        ids = tok(texts[i], add_special_tokens=False).input_ids[:positions]
        if len(ids) == positions:
            out.append(before + ids)
        if len(out) == n:
            break
    if not out:
        raise LmdeltaError(
            f"lens: no corpus text has {positions} tokens; lower positions or use a corpus of longer texts"
        )
    return out, len(before)


def mean_differences(others: dict, model_b, windows: list[list[int]], *, lead: int, batch_size: int):
    """For each named model x of ``others``: d [layers, positions, hidden] = mean over texts of
    (h_x − h_b); and b's mean activation norm [layers, positions]; all float64. b's residual stream is
    computed once per batch for every comparison (a model that is b itself differs by exactly 0)."""
    import torch

    diffs, norm, count = dict.fromkeys(others, 0.0), 0.0, 0
    for s in range(0, len(windows), batch_size):
        ids = torch.tensor(windows[s : s + batch_size])
        hb = layer_outputs(model_b, ids, slice(lead, None))
        for name, other in others.items():
            ha = hb if other is model_b else layer_outputs(other, ids, slice(lead, None))
            diffs[name] = diffs[name] + (ha - hb).sum(1)
        norm = norm + hb.norm(dim=-1).sum(1)
        count += ids.shape[0]
    return {name: d / count for name, d in diffs.items()}, norm / count


def logit_lens(model, tok, diff, norm, *, layers: list[int], top_k: int) -> list[dict]:
    """The tokens each unit difference (scaled to b's activation norm) promotes and suppresses through
    ``model``'s final norm and unembedding: one row per (layer, position, direction, rank)."""
    import torch

    unembed, norm_out = model.get_output_embeddings(), final_norm(model)
    device, dtype = unembed.weight.device, unembed.weight.dtype
    rows = []
    for layer in layers:
        for p in range(diff.shape[1]):
            d = diff[layer, p]
            size = float(d.norm())
            if size == 0.0:
                continue  # no difference: nothing to read
            u = (d / size * norm[layer, p]).to(device=device, dtype=dtype)
            with torch.inference_mode():
                z = unembed(norm_out(u[None, None]))[0, 0].float()
            prob = torch.softmax(z, -1).cpu()
            for direction, order in (("promoted", prob.argsort(descending=True)), ("suppressed", prob.argsort())):
                for rank, tid in enumerate(order[:top_k].tolist(), start=1):
                    rows.append(
                        {
                            "layer": layer,
                            "position": p,
                            "diff_norm": size,
                            "direction": direction,
                            "rank": rank,
                            "token_id": tid,
                            "token": tok.decode([tid]),
                            "prob": float(prob[tid]),
                        }
                    )
    return rows


# ---- steering --------------------------------------------------------------------------------------


class Steer:
    """A context that adds ``vector`` to one decoder layer's output at every position."""

    def __init__(self, model, layer: int, vector):
        self.layer = decoder_layers(model)[layer]
        self.vector = vector.to(dtype=next(model.parameters()).dtype)

    def _hook(self, _module, _inputs, output):
        h = output[0] if isinstance(output, tuple) else output
        v = self.vector.to(h.device)  # the layer's own device (a spread model's layers differ)
        return (h + v, *output[1:]) if isinstance(output, tuple) else h + v

    def __enter__(self):
        self.handle = self.layer.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def log_ratios(models, tok, prompts: list[list[int]], texts: list[str], *, batch_size: int) -> list[float]:
    """Mean per-token log p_a − log p_b (nats) of each text after its prompt under the unsteered pair,
    scored by ``lmdelta.scoring.score_sequences``, ``batch_size`` texts at a time (nan for an empty text)."""
    conts = [tok(t, add_special_tokens=False).input_ids for t in texts]
    seqs = [p + c for p, c in zip(prompts, conts)]
    width = max(len(s) for s in seqs)
    a, b = (
        score_sequences(
            m, seqs, max_length=width, stride=width, batch_tokens=batch_size * width, pad_token_id=pad_id(tok)
        )
        for m in models
    )
    return [
        float((sa.logprob[len(p) - 1 :].astype(np.float64) - sb.logprob[len(p) - 1 :]).mean()) if c else math.nan
        for p, c, sa, sb in zip(prompts, conts, a, b)
    ]


def steered_texts(
    models, steered, tok, fmt: TextFormat, prompts: list[dict], vector, *, layer: int, p: SteerParams, seed: int
) -> list[dict]:
    """``steered`` (b, or a control) answering each prompt at every scale, each answer scored by the pair."""
    from tqdm import tqdm

    seqs = [prompt_ids(tok, q["prompt"], fmt) for q in prompts for _ in range(p.samples)]
    rows = []
    bar = tqdm(total=len(p.scales) * len(seqs), desc=f"steer layer {layer}", unit=" text", mininterval=2.0)
    for scale in p.scales:
        with Steer(steered, layer, vector * scale):
            texts = generate_texts(
                steered,
                tok,
                seqs,
                max_new_tokens=p.max_new_tokens,
                sampling=Sampling(temperature=p.temperature),
                seed=seed,
                batch_size=p.batch_size,
            )
        ratios = log_ratios(models, tok, seqs, [t["text"] for t in texts], batch_size=p.batch_size)
        for i, t in enumerate(texts):
            q = prompts[i // p.samples]
            rows.append(
                {
                    "scale": scale,
                    "prompt_id": q["id"],
                    "sample": i % p.samples,
                    "prompt": q["prompt"],
                    "text": t["text"],
                    "n_tokens": t["n_tokens"],
                    "log_ratio": ratios[i],
                }
            )
        bar.update(len(seqs))
    bar.close()
    return rows


# ---- findings ----------------------------------------------------------------------------------------


def token_findings(tokens, run: str) -> list[dict]:
    """Promoted tokens of the pair, by the share of (layer, position) cells whose top-k promote them minus
    the same share under the random-LoRA control (when it ran): a token any difference of that size
    promotes does not count. Ties by mean probability; tokens without a letter or digit, and tokens
    the control promotes at least as often, are left out."""
    promoted = tokens[tokens.direction == "promoted"]

    def shares(comparison):
        rows = promoted[promoted.comparison == comparison]
        if rows.empty:
            return None
        cells = rows.groupby(["layer", "position"]).ngroups
        by = rows.groupby("token_id").agg(token=("token", "first"), n=("prob", "size"), prob=("prob", "mean"))
        by["share"] = by.n / cells
        return by

    pair, control = shares("pair"), shares("random_lora")
    if pair is None:
        return []
    pair["score"] = pair.share - (0.0 if control is None else control.share.reindex(pair.index).fillna(0.0))
    keep = pair[(pair.score > 0) & pair.token.str.contains(r"\w", regex=True)]
    keep = keep.sort_values(["score", "prob"], ascending=False, kind="stable")
    return [finding("lens", run, "token", r.score, text=r.token.strip()) for r in keep.itertuples()]


def steering_findings(steered, run: str) -> list[dict]:
    """The pair's steered answers (scale > 0), by their log-ratio a − b."""
    s = steered[(steered.comparison == "pair") & (steered.scale > 0)].dropna(subset=["log_ratio"])
    s = s.sort_values("log_ratio", ascending=False, kind="stable")
    return [
        finding("lens steering", run, "continuation", r.log_ratio, prompt=r.prompt, example=r.text)
        for r in s.itertuples()
    ]


# ---- the stage -----------------------------------------------------------------------------------------


def run_lens(
    *,
    pair: str,
    run: str,
    names: tuple[str, str],
    model_dirs: tuple[Path, Path],
    params: LensParams,
    load_options: tuple[dict, dict],
    formats: tuple[dict, dict],
    corpus: Path,
    promptset: Path,
    out_tokens: Path,
    out_steered: Path,
    out_summary: Path,
    out_csv: Path,
    out_png: Path,
    out_findings: Path,
) -> dict[str, Any]:
    import pandas as pd

    prov = Provenance(
        stage="lens",
        params={
            "pair": pair,
            "run": run,
            "a": names[0],
            "b": names[1],
            **asdict(params),
            "difference": "a - b (mean over texts, per layer and position)",
            "steered_model": names[1],
            "formats": list(formats),
            "load_options": list(load_options),
            "units": "nats",
        },
        seed=params.seed,
    )
    record_pair(prov, model_dirs)
    prov.add_input("corpus", corpus)
    prov.add_input("promptset", promptset)
    models, toks = load_pair(model_dirs, load_options)
    check_same_tokenizer(toks[0], toks[1], pair, "the activation-difference lens")
    for m in models:
        check_embeddings_in_memory(m, "the activation-difference lens")
    tok, fmt_b = toks[1], TextFormat.from_dict(formats[1])
    n_layers = models[1].config.num_hidden_layers
    layers = list(range(n_layers)) if params.layers is None else list(params.layers)
    bad = [layer for layer in layers if layer >= n_layers]
    steer_layer = n_layers // 2 if params.steer.layer is None else params.steer.layer
    if bad or steer_layer >= n_layers:
        raise LmdeltaError(f"lens: the models have {n_layers} layers (0-{n_layers - 1}); fix layers / steer.layer")
    texts = pd.read_parquet(corpus, columns=["text"]).text.tolist()
    windows, lead = text_windows(
        tok,
        texts,
        positions=params.positions,
        first_token=fmt_b.first_token,
        n=params.n_texts,
        seed=params.seed,
        template=params.template,
    )
    prompts = read_promptset(promptset)
    calls = ForwardCounter(*models)
    comparisons = {"pair": models[0]}
    if "identical" in params.controls:
        comparisons["identical"] = models[1]
    if "random_lora" in params.controls:
        comparisons["random_lora"] = random_lora_like(models[0], models[1], rank=params.control_rank, seed=params.seed)
    token_rows, steer_rows, norms = [], [], {}
    diffs, norm = mean_differences(comparisons, models[1], windows, lead=lead, batch_size=params.batch_size)
    for name, diff in diffs.items():
        norms[name] = diff.norm(dim=-1).mean(1).tolist()  # per layer, mean over positions
        token_rows += [
            {"comparison": name, **r} for r in logit_lens(models[1], tok, diff, norm, layers=layers, top_k=params.top_k)
        ]
        direction = diff[steer_layer].mean(0)
        size = float(direction.norm())
        if size == 0.0:
            log.info("lens %s/%s: %s: no difference, nothing to steer", pair, run, name)
            continue
        vector = (direction / size * norm[steer_layer].mean()).float()
        steer_rows += [
            {"comparison": name, **r}
            for r in steered_texts(
                models, models[1], tok, fmt_b, prompts, vector, layer=steer_layer, p=params.steer, seed=params.seed
            )
        ]
    prov.params["model_calls"] = calls.n
    tokens = pd.DataFrame(
        token_rows,
        columns=["comparison", "layer", "position", "diff_norm", "direction", "rank", "token_id", "token", "prob"],
    )
    steered = pd.DataFrame(
        steer_rows,
        columns=["comparison", "scale", "prompt_id", "sample", "prompt", "text", "n_tokens", "log_ratio"],
    )
    found = token_findings(tokens, run) + steering_findings(steered, run)
    summary = {
        "pair": pair,
        "run": run,
        "n_texts": len(windows),
        "layers": n_layers,
        "steer_layer": steer_layer,
        "diff_norm_by_layer": {k: [round(v, 6) for v in vs] for k, vs in norms.items()},
        "top_tokens": [f["text"] for f in found if f["method"] == "lens"][:20],
        "model_calls": calls.n,
    }
    write_parquet(out_tokens, tokens, prov)
    write_parquet(out_steered, steered, prov)
    write_findings(out_findings, found, prov)
    top = tokens[(tokens.direction == "promoted") & (tokens["rank"] <= 5)]
    write_csv(out_csv, top, prov)
    write_json(out_summary, summary, prov)
    save_figure(lens_figure(norms, f"{pair} / {run}: |mean difference| by layer"), out_png, prov)
    log.info("lens %s/%s: top tokens %s", pair, run, ", ".join(summary["top_tokens"][:10]))
    return summary


# ---- jobs (lmdelta.job) -------------------------------------------------------------------------------


def lens_job(job) -> None:
    """inputs: ``a``, ``b``, ``corpus``, ``promptset``; spec: the pair (names, run, load_options, formats);
    outputs: ``tokens``, ``steered``, ``summary``, ``csv``, ``png``, ``findings``."""
    s = job.spec
    run_lens(
        pair=job.wildcards["pair"],
        run=job.wildcards["run"],
        names=tuple(s["names"]),
        model_dirs=(job.path("a"), job.path("b")),
        params=LensParams.from_dict(s["run"]),
        load_options=tuple(s["load_options"]),
        formats=tuple(s["formats"]),
        corpus=job.path("corpus"),
        promptset=job.path("promptset"),
        out_tokens=job.out("tokens"),
        out_steered=job.out("steered"),
        out_summary=job.out("summary"),
        out_csv=job.out("csv"),
        out_png=job.out("png"),
        out_findings=job.out("findings"),
    )
