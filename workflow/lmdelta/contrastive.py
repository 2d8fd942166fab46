"""Contrastive decoding between the two models of a pair, and token-level divergence views.

Texts are generated with ``lmdelta.decoding.decode_combined`` (a = model of interest, b = reference).
For every generated token t the divergences between the two distributions that predict t are
recorded (``kl_a_b`` = KL(P_a ‖ P_b), ``kl_b_a``, ``js``; nats), with each model's logprob of the
chosen token (hence the perplexity of the text under each model, its prompt as context) and each
model's three most probable tokens. Tokens after EOS are padding and dropped. With
``include_prompt`` the prompt's own tokens get divergences too (teacher-forced; columns
``prompt_tokens``, ``prompt_kl_a_b``, ``prompt_kl_b_a``, ``prompt_js``), which needs both models to
read the same prompt ids; the generated-token columns and means never include the prompt.
"""

from __future__ import annotations

import html
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmdelta import LmdeltaError
from lmdelta.config import known_fields
from lmdelta.models import pad_id

log = logging.getLogger(__name__)
DIVERGENCES = ("kl_a_b", "kl_b_a", "js")


@dataclass(frozen=True)
class RunParams:
    prompts: dict[str, Any]
    weights: tuple[float, float] = (1.0, -1.0)
    space: str = "logit"
    plausibility_alpha: float | None = 0.1
    samples: int = 2
    max_new_tokens: int = 40
    temperature: float | None = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    batch_size: int = 16
    colour_by: str = "js"
    include_prompt: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunParams:
        kw = known_fields(cls, d)
        if "weights" in kw:
            kw["weights"] = tuple(kw["weights"])
        return cls(**kw)


def build_prompts(spec: dict[str, Any], *, promptset: Path | None, corpus: Path | None) -> list[dict[str, str]]:
    """[{"id", "prompt"}] from a prompt set, the first words of corpus documents, or nothing (BOS only)."""
    if "promptset" in spec:
        from lmdelta.completions import read_promptset

        return [{"id": p["id"], "prompt": p["prompt"]} for p in read_promptset(promptset)]
    if "corpus" in spec:
        import pandas as pd

        c = spec["corpus"]
        df = pd.read_parquet(corpus, columns=["doc_id", "text"]).head(c.get("n", 16))
        return [{"id": d, "prompt": " ".join(t.split()[: c.get("words", 12)])} for d, t in zip(df.doc_id, df.text)]
    return [{"id": f"bos-{i}", "prompt": ""} for i in range(spec["unconditional"])]


def check_same_tokenizer(tok_a, tok_b, pair: str) -> None:
    if tok_a.get_vocab() != tok_b.get_vocab():
        raise LmdeltaError(f"pairs.{pair}: the two models have different tokenizers; contrastive decoding and token-level "
                           "divergence need one vocabulary: pair models that share a tokenizer")


def encode_prompt(tok, prompt: str, fmt) -> list[int]:
    """A prompt's ids as the model reads it (``lmdelta.tokens``); an empty prompt (unconditional) is the
    model's first token alone (its BOS, else EOS, when its first_token is none)."""
    from lmdelta.tokens import first_token_id, prompt_ids

    if prompt:
        return prompt_ids(tok, prompt, fmt)
    start = first_token_id(tok, fmt.first_token if fmt.first_token != "none" else "bos")
    if start is None:
        raise LmdeltaError("contrastive: an empty prompt needs a BOS or EOS token, and the tokenizer has neither; give prompts")
    return [start]


def generate_pair(models, toks, prompts: list[dict], p: RunParams, *, formats: list[dict]) -> list[dict]:
    """Contrastive texts with per-token divergences, logprobs and top tokens; one dict per text."""
    import torch

    from lmdelta.decoding import Combination, Sampling, decode_combined
    from lmdelta.divergence import divergences
    from lmdelta.generation import check_context
    from lmdelta.models import left_pad
    from lmdelta.tokens import TextFormat, cut_at_eos, eos_ids

    # each prompt encoded once per model; every one checked against the context before decoding anything
    fmts = [f if isinstance(f, TextFormat) else TextFormat.from_dict(f) for f in formats]
    encoded = [[encode_prompt(tok, q["prompt"], fmt) for q in prompts] for tok, fmt in zip(toks, fmts)]
    for model, tok, seqs in zip(models, toks, encoded):
        check_context(model, seqs, p.max_new_tokens, tok)
    device = next(models[0].parameters()).device
    eos = eos_ids(*zip(models, toks))  # a text ends at an EOS id either model declares
    pad = pad_id(toks[0])
    comb = Combination(weights=tuple(p.weights), space=p.space, plausibility_alpha=p.plausibility_alpha, expert=0)
    sampling = Sampling(temperature=p.temperature, top_p=p.top_p, top_k=p.top_k)
    jobs = [(i, s) for i in range(len(prompts)) for s in range(p.samples)]
    results = []
    for b in range(0, len(jobs), p.batch_size):
        chunk = jobs[b:b + p.batch_size]
        inputs = []
        for seqs in encoded:
            ids, mask = left_pad([seqs[i] for i, _ in chunk], pad)
            inputs.append((ids.to(device), mask.to(device)))
        prompt_div = _prompt_divergences(models, inputs) if p.include_prompt else None
        steps: list[dict] = []

        def record(step, logits, chosen):
            d = divergences(logits[0], logits[1], ("a", "b"))
            lp = [torch.log_softmax(z.float(), -1) for z in logits]
            top = [torch.topk(x, 3, dim=-1) for x in lp]
            steps.append({**{k: v.cpu().numpy() for k, v in d.items()},
                          "lp_a": lp[0].gather(1, chosen[:, None])[:, 0].cpu().numpy(),
                          # chosen tokens come from the rows both models share, so they index either model
                          "lp_b": lp[1].gather(1, chosen[:, None])[:, 0].cpu().numpy(),
                          "top_a": (top[0].indices.cpu().numpy(), top[0].values.exp().cpu().numpy()),
                          "top_b": (top[1].indices.cpu().numpy(), top[1].values.exp().cpu().numpy())})

        seed = p.seed + b
        with torch.inference_mode():
            new = decode_combined(models, inputs, comb=comb, max_new_tokens=p.max_new_tokens, sampling=sampling,
                                  eos_ids=eos, pad_id=pad, seed=seed, on_step=record).cpu().tolist()
        for r, ((i, s), row) in enumerate(zip(chunk, new)):
            q = prompts[i]
            n, _ = cut_at_eos(row, eos)
            tokens = [toks[0].decode([t]) for t in row[:n]]
            rec = {"prompt_id": q["id"], "sample": s, "prompt": q["prompt"], "seed": seed, "n_tokens": n,
                   "text": toks[0].decode(row[:n], skip_special_tokens=True), "tokens": tokens}
            for k in DIVERGENCES:
                rec[k] = [float(steps[t][k][r]) for t in range(n)]
                rec[f"mean_{k}"] = float(np.mean(rec[k])) if n else math.nan
            if prompt_div is not None:
                ids, mask = inputs[0][0][r].cpu(), inputs[0][1][r].cpu()
                real = [int(i) for i, k in zip(ids.tolist(), mask.tolist()) if k]
                rec["prompt_tokens"] = [toks[0].decode([t]) for t in real]
                for k in DIVERGENCES:
                    rec[f"prompt_{k}"] = [float("nan")] + prompt_div[k][r][-(len(real) - 1):].tolist() if len(real) > 1 else [float("nan")]
            for m in ("a", "b"):
                lps = [float(steps[t][f"lp_{m}"][r]) for t in range(n)]
                rec[f"ppl_{m}"] = float(math.exp(-np.mean(lps))) if n else math.nan
                rec[f"top_{m}"] = ["  ".join(f"{toks[0].decode([int(i)])!r} {v:.2f}" for i, v in zip(steps[t][f"top_{m}"][0][r], steps[t][f"top_{m}"][1][r]))
                                   for t in range(n)]
            results.append(rec)
    return results


def _prompt_divergences(models, inputs) -> dict:
    """Teacher-forced divergences on the prompt: entry j of a row predicts prompt token j + 1."""
    import torch

    from lmdelta.divergence import divergences

    (ids_a, mask_a), (ids_b, mask_b) = inputs
    if not (torch.equal(ids_a, ids_b) and torch.equal(mask_a, mask_b)):
        raise LmdeltaError("contrastive: include_prompt needs both models to read the same prompt ids; "
                           "give both models the same prompt format (chat_template / prompt_format)")
    pos = (mask_a.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        logits = [m(input_ids=ids_a, attention_mask=mask_a, position_ids=pos).logits[:, :-1] for m in models]
    return {k: v.float().cpu().numpy() for k, v in divergences(logits[0], logits[1], ("a", "b")).items()}


def html_page(records: list[dict], *, pair: str, run: str, names: tuple[str, str], colour_by: str) -> str:
    """Texts ranked by mean divergence, each token coloured by its divergence; hover: values and top tokens."""
    top = max((v for r in records for v in r[colour_by]), default=1.0) or 1.0
    parts = [f"<!doctype html><meta charset='utf-8'><title>lmdelta {html.escape(pair)} {html.escape(run)}</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:auto}span.t{white-space:pre-wrap}"
             "div.x{border-top:1px solid #ccc;padding:.5em 0}</style>",
             f"<h1>Contrastive decoding: {html.escape(names[0])} (a) vs {html.escape(names[1])} (b), run {html.escape(run)}</h1>",
             f"<p>Tokens coloured by {colour_by} (nats; darkest = {top:.3g}). Hover a token for KL(a‖b), KL(b‖a), JS "
             "and each model's three most probable next tokens at that position.</p>"]
    for rank, r in enumerate(records, start=1):
        spans = []
        for i, tok in enumerate(r["tokens"]):
            alpha = min(1.0, r[colour_by][i] / top)
            tip = (f"KL(a||b) {r['kl_a_b'][i]:.3f}  KL(b||a) {r['kl_b_a'][i]:.3f}  JS {r['js'][i]:.3f}\n"
                   f"a: {r['top_a'][i]}\nb: {r['top_b'][i]}")
            spans.append(f"<span class='t' style='background:rgba(220,40,40,{alpha:.3f})' title='{html.escape(tip, quote=True)}'>{html.escape(tok)}</span>")
        parts.append(f"<div class='x'><b>#{rank}</b> mean {colour_by} {r['mean_' + colour_by]:.3f} · perplexity a {r['ppl_a']:.1f}, "
                     f"b {r['ppl_b']:.1f} · prompt <i>{html.escape(r['prompt']) or '(BOS only)'}</i><br>{''.join(spans)}</div>")
    return "\n".join(parts) + "\n"


def run_contrastive(*, pair: str, run: str, names: tuple[str, str], model_dirs: tuple[Path, Path], params: RunParams,
                    load_options: tuple[dict, dict], formats: tuple[dict, dict], promptset: Path | None, corpus: Path | None,
                    out: Path, out_csv: Path, out_html: Path, out_png: Path, threads: int | None = None) -> list[dict]:
    import pandas as pd
    import torch

    from lmdelta.artifacts import Provenance, atomic_path, write_csv, write_parquet
    from lmdelta.models import ForwardCounter, load_model, read_fingerprint
    from lmdelta.plots import divergence_figure, save_figure

    if threads:
        torch.set_num_threads(threads)
    prov = Provenance(stage="contrastive", params={"pair": pair, "run": run, "a": names[0], "b": names[1],
                                                  **asdict(params), "formats": list(formats),
                                                  "load_options": list(load_options), "units": "nats"}, seed=params.seed)
    for side, d in zip(("a", "b"), model_dirs):
        prov.inputs[f"model_{side}"] = {"path": str(d), "fingerprint": read_fingerprint(d)["digest"]}
    for name, path in (("promptset", promptset), ("corpus", corpus)):
        if path is not None:
            prov.add_input(name, path)
    loaded = [load_model(d, **o) for d, o in zip(model_dirs, load_options)]
    models, toks = [m for m, _ in loaded], [t for _, t in loaded]
    check_same_tokenizer(toks[0], toks[1], pair)
    prompts = build_prompts(params.prompts, promptset=promptset, corpus=corpus)
    calls = ForwardCounter(*models)
    records = generate_pair(models, toks, prompts, params, formats=list(formats))
    prov.params["model_calls"] = calls.n
    records.sort(key=lambda r: -r[f"mean_{params.colour_by}"] if not math.isnan(r[f"mean_{params.colour_by}"]) else math.inf)
    df = pd.DataFrame(records)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    write_parquet(out, df, prov)
    cols = ["rank", "prompt_id", "sample", "mean_js", "mean_kl_a_b", "mean_kl_b_a", "ppl_a", "ppl_b", "n_tokens", "prompt", "text"]
    write_csv(out_csv, df[cols], prov)
    with atomic_path(out_html, prov) as tmp:
        tmp.write_text(html_page(records, pair=pair, run=run, names=names, colour_by=params.colour_by), encoding="utf-8")
    save_figure(divergence_figure(records, names, f"{pair} / {run}"), out_png, prov)
    log.info("contrastive %s/%s: %d texts -> %s", pair, run, len(records), out)
    return records
