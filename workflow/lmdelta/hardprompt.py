"""Hard (natural-language) prompts extracted from a trained soft prompt, re-scored without it.

Candidates, by ``method``:

- ``nearest-cosine`` / ``nearest-l2``: each soft vector replaced by its nearest vocabulary token
  (model a's input embeddings); the top-k candidates per position go to ``projection.csv``.
- ``pez``: PEZ (Wen et al., 2023): optimise continuous vectors whose forward pass uses their
  nearest-token projection (straight-through gradient), starting from the soft prompt; the
  ``pez_keep`` distinct projected prompts of the trajectory with the highest divergence on a
  held-out batch are kept.
- ``generated``: texts of ``generate_tokens`` tokens sampled from model a conditioned on the soft
  prompt (special tokens such as EOS are never sampled, so no text ends before it starts): with the
  chat placement, a's reply to it (``generate_in: reply``) or a continuation of the user message
  itself (``prompt``).

Every candidate is then scored WITHOUT the soft prompt, as a plain prompt in the soft prompt's
placement (raw text for ``prefix``, the user message of the chat template for ``chat``), the way
the prompt search scores prompts (``lmdelta.pairs.pair_scorer``: continuations sampled from model a,
mean divergence over generated tokens and samples). The baseline is one random corpus snippet of
the same token length per candidate, scored the same way. Ranking by a noisy score favours lucky
draws, so the top ``n_top`` candidates and the top ``n_top`` snippets are scored again with a fresh
seed, and the summary compares those re-scored values. With ``confirm_top`` = k > 0 the choice of
the top is made in two rounds: the k best of each side (candidates, snippets) by the first score
get ``confirm_samples`` more continuations, pooled with the first ones
(``lmdelta.pairs.pool_scores``), and the top ``n_top`` are the best by the pooled score; the
re-scoring with a fresh seed stays the measure. The snippets' mean (the baseline) is always the mean
of the first scores (``screen``), which are unbiased; pooled scores of a selected few are not.
Fluency: each prompt's perplexity under
model b (with BOS when the tokenizer has one).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from lmdelta import LmdeltaError
from lmdelta.artifacts import Provenance, write_csv, write_json, write_parquet
from lmdelta.behaviour import mentions, shows_planted
from lmdelta.config import stage_spec
from lmdelta.decoding import Sampling, decode_combined, sub_seed
from lmdelta.embedding import cluster_bank, cluster_table, embed, load_embedder
from lmdelta.findings import finding, write_findings
from lmdelta.models import ForwardCounter, load_model, pad_id
from lmdelta.models import right_pad as collate
from lmdelta.pairs import (
    DIVERGENCES,
    check_compatible,
    divergence_method,
    load_pair,
    normalise,
    pair_scorer,
    pool_scores,
    record_pair,
)
from lmdelta.plots import hardprompt_figure, save_figure
from lmdelta.scoring import score_sequences
from lmdelta.seqdiv import same_tokenizer
from lmdelta.softprefix import (
    PLACEHOLDER,
    SoftPromptParams,
    load_soft_prompt,
    nearest_tokens,
    nearest_tokens_ids,
    pair_divergence,
    pair_templates,
    split_windows,
    template_ids,
    training_docs,
)
from lmdelta.stats import PairedParams, bootstrap_ci, unpaired
from lmdelta.tokens import format_prompt, prefix_token
from lmdelta.training import batch_indices

log = logging.getLogger(__name__)


@stage_spec("softprompt_run.hard")
class HardPromptParams:
    top_k: int
    pez_steps: int
    pez_lr: float
    pez_keep: int
    n_generate: int
    generate_tokens: int
    generate_temperature: float
    generate_in: str  # reply: the model's reply to the soft prompt (chat) | prompt: continue the soft prompt itself
    samples: int
    max_new_tokens: int
    temperature: float | None
    batch_size: int
    n_top: int
    confirm_top: int
    confirm_samples: int
    k_clusters: int
    seed: int


def pez(
    models,
    toks,
    soft,
    windows,
    sp,
    hp: HardPromptParams,
    *,
    n_vocab: int,
    first_tokens: tuple[str, str] = ("bos", "bos"),
) -> tuple[list[list[int]], list[float], list[dict]]:
    """PEZ from the soft prompt: (the ``pez_keep`` best distinct projected prompts' ids, their held-out
    divergences, best first; the trajectory)."""
    import torch

    train, held = windows
    pad = pad_id(toks[0])
    templates = pair_templates(toks, sp.placement, first_tokens)
    emb = models[0].get_input_embeddings()
    table = emb.weight.detach().float()[:n_vocab]
    x = torch.nn.Parameter(soft.detach().clone().float())
    opt = torch.optim.AdamW([x], lr=hp.pez_lr, weight_decay=0.0)
    held_ids, held_mask = collate(held[: sp.batch], pad)
    best: dict[tuple[int, ...], float] = {}
    trace = []
    for step in range(hp.pez_steps + 1):
        ids = nearest_tokens_ids(x.detach(), emb, k=1, metric="cosine", n_vocab=n_vocab)[0][:, 0]
        with torch.no_grad():
            val, _ = pair_divergence(models, table[ids], templates, held_ids, held_mask, sp.divergence)
        trace.append({"step": step, "heldout_divergence": float(val), "ids": ids.tolist()})
        key = tuple(ids.tolist())
        best[key] = max(best.get(key, -math.inf), float(val))
        if step == hp.pez_steps:
            break
        proj = table[ids]
        forward = x + (proj - x).detach()  # the projection's value, the continuous vectors' gradient
        idx = batch_indices(len(train), sp.batch, step, hp.seed + 1)
        b_ids, b_mask = collate([train[i] for i in idx], pad)
        kl, _ = pair_divergence(models, forward, templates, b_ids, b_mask, sp.divergence)
        (-kl).backward()
        torch.nn.utils.clip_grad_norm_([x], sp.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    kept = sorted(best.items(), key=lambda kv: -kv[1])[: hp.pez_keep]  # stable: the earliest of equal ones first
    return [list(k) for k, _ in kept], [v for _, v in kept], trace


def generate_with_prompt(model, tok, soft, placement: str, hp: HardPromptParams, first_token: str = "bos") -> list[str]:
    """Texts sampled from ``model`` conditioned on the soft prompt (in its placement)."""
    import torch

    before, after = template_ids(tok, placement, first_token)
    emb = model.get_input_embeddings()
    device = emb.weight.device
    parts = [emb(torch.tensor([before], device=device))] if before else []
    parts.append(soft.to(device=device, dtype=emb.weight.dtype)[None])
    if after and hp.generate_in == "reply":
        parts.append(emb(torch.tensor([after], device=device)))
    x = torch.cat(parts, dim=1).expand(hp.n_generate, -1, -1)
    mask = torch.ones(x.shape[:2], dtype=torch.long, device=device)
    pad = pad_id(tok)
    with torch.inference_mode():
        # special tokens are never chosen: a soft prompt often drives the model to end at once
        new = (
            decode_combined(
                [model],
                [(None, mask, x)],
                comb=None,
                max_new_tokens=hp.generate_tokens,
                sampling=Sampling(temperature=hp.generate_temperature),
                eos_ids=(),
                pad_id=pad,
                seed=hp.seed,
                suppress=tuple(tok.all_special_ids),
            )
            .cpu()
            .tolist()
        )
    return [tok.decode(row, skip_special_tokens=True).strip() for row in new]


def snippets(docs: list[list[int]], lengths: list[int], tok, seed: int) -> list[str]:
    """One random corpus snippet per length (token counts), seeded."""
    rng = np.random.default_rng([seed, 23])
    long_docs = [d for d in docs if len(d) >= 2]
    out = []
    for n in lengths:
        fit = [d for d in long_docs if len(d) >= n] or long_docs
        d = fit[rng.integers(len(fit))]
        start = int(rng.integers(0, max(1, len(d) - n + 1)))
        out.append(tok.decode(d[start : start + n]).strip())
    return out


def perplexities(model, tok, texts: list[str], first_token: str = "bos") -> list[float]:
    """Perplexity of each text under ``model`` (first token conditioned on the model's first token)."""
    prefix, _ = prefix_token(tok, first_token)
    head = [prefix] if prefix is not None else []
    seqs = [head + tok(t, add_special_tokens=False).input_ids for t in texts]
    keep = [i for i, s in enumerate(seqs) if len(s) >= 2]
    pad = pad_id(tok)
    scores = score_sequences(
        model, [seqs[i] for i in keep], max_length=1024, stride=512, batch_tokens=8192, pad_token_id=pad
    )
    out = [math.nan] * len(texts)
    for i, sc in zip(keep, scores):
        out[i] = float(math.exp(-np.mean(sc.logprob)))
    return out


def candidates(
    models, toks, soft, windows, sp, hp: HardPromptParams, first_tokens: tuple[str, str] = ("bos", "bos")
) -> tuple[list[dict], list[dict], list[dict]]:
    """(hard prompt candidates [{"prompt", "method"}], projection rows, PEZ trajectory)."""

    tok = toks[0]
    emb = models[0].get_input_embeddings()
    n_vocab = min(len(tok), emb.weight.shape[0])
    rows, cands = [], []
    for metric in ("cosine", "l2"):
        near = nearest_tokens(soft, emb, tok, k=hp.top_k, metric=metric)
        for pos, cand in enumerate(near):
            rows += [
                {"metric": metric, "position": pos, "rank": r + 1, "token": t, "token_id": i, "score": v}
                for r, (t, i, v) in enumerate(cand)
            ]
        cands.append(
            {"prompt": tok.decode([c[0][1] for c in near]), "method": f"nearest-{'l2' if metric == 'l2' else 'cosine'}"}
        )
    if hp.pez_steps > 0:
        kept, _, trace = pez(models, toks, soft, windows, sp, hp, n_vocab=n_vocab, first_tokens=first_tokens)
        cands += [{"prompt": tok.decode(ids), "method": "pez"} for ids in kept]
    else:
        trace = []
    for text in generate_with_prompt(models[0], tok, soft, sp.placement, hp, first_tokens[0]):
        cands.append({"prompt": text, "method": "generated"})
    return cands, rows, trace


def score_prompts(
    models,
    toks,
    prompts: list[str],
    sp,
    hp: HardPromptParams,
    seed: int,
    samples: int | None = None,
    first_tokens: tuple[str, str] = ("bos", "bos"),
) -> list[dict]:
    """The search's scorer on plain prompts (in the soft prompt's placement), without the soft prompt."""

    if sp.placement == "chat" and not same_tokenizer(toks[0], toks[1]):  # a prompt moved to another family
        fmts = [{"chat_template": True, "fmt": None, "first_token": f} for f in first_tokens]
    elif sp.placement == "chat":  # both models read model a's chat template, as in training (softprompt.pair_templates)
        text = format_prompt(toks[0], PLACEHOLDER, chat_template=True).replace("{", "{{").replace("}", "}}")
        fmts = [
            {"chat_template": False, "fmt": text.replace(PLACEHOLDER, "{prompt}") + "{guide}", "first_token": "none"}
        ] * 2
    else:
        fmts = [{"chat_template": False, "fmt": None, "first_token": f} for f in first_tokens]
    score = pair_scorer(
        models,
        toks,
        fmts,
        divergence=sp.divergence,
        sample_from="a",
        samples=samples or hp.samples,
        max_new_tokens=hp.max_new_tokens,
        temperature=hp.temperature,
        top_p=1.0,
        top_k=0,
        batch_size=hp.batch_size,
    )
    items = [{"id": f"p{i:04d}", "prompt": t} for i, t in enumerate(prompts)]
    got = score(items, seed)
    return [got[x["id"]] for x in items]


def evaluate_candidates(
    models,
    toks,
    cands: list[dict],
    docs: list[list[int]],
    sp,
    hp: HardPromptParams,
    *,
    first_tokens: tuple[str, str] = ("bos", "bos"),
    planted: dict | None,
    tok=None,
):
    """Score candidates and same-length snippets without the soft prompt; re-score each side's top n_top.
    ``docs`` and the candidates' lengths are in the tokenizer ``tok`` (default model a's): the soft
    prompt's own when its pair is another one."""
    import pandas as pd

    tok = tok if tok is not None else toks[0]
    seen, unique = set(), []
    for c in cands:  # the same text found twice is one prompt (kept with the first method that found it)
        key = normalise(c["prompt"])
        if key and key not in seen:
            seen.add(key)
            unique.append(c)
    cands = unique
    if not cands:
        raise LmdeltaError(
            "hardprompt: every candidate prompt is empty; train the soft prompt longer or raise generate_tokens"
        )
    lengths = [max(1, len(tok(c["prompt"], add_special_tokens=False).input_ids)) for c in cands]
    base = [{"prompt": s, "method": "snippet"} for s in snippets(docs, lengths, tok, hp.seed)]
    rows = cands + base
    scores = score_prompts(
        models, toks, [r["prompt"] for r in rows], sp, hp, sub_seed(hp.seed, 1), first_tokens=first_tokens
    )
    df = pd.DataFrame(
        [
            {
                **r,
                "n_tokens": n,
                "screen": s[sp.divergence],
                "divergence": s[sp.divergence],
                **{k: s[k] for k in DIVERGENCES},
                "n_samples": s["n_samples"],
                "example": s["example"],
            }
            for r, n, s in zip(rows, lengths + lengths, scores)
        ]
    )
    df["is_baseline"] = df.method == "snippet"
    df["rescored"] = math.nan
    for is_base in (False, True):
        if hp.confirm_top > 0:  # a second round for the best few of each side, pooled with the first
            side = (
                df[df.is_baseline == is_base].sort_values("screen", ascending=False, kind="stable").head(hp.confirm_top)
            )
            more = score_prompts(
                models,
                toks,
                side.prompt.tolist(),
                sp,
                hp,
                sub_seed(hp.seed, 3),
                samples=hp.confirm_samples,
                first_tokens=first_tokens,
            )
            for i, s in zip(side.index, more):
                pooled = pool_scores(df.loc[i, [*DIVERGENCES, "n_samples"]].to_dict(), s)
                df.loc[i, [*DIVERGENCES, "n_samples"]] = [pooled[k] for k in (*DIVERGENCES, "n_samples")]
                df.loc[i, "divergence"] = pooled[sp.divergence]
        side = df[df.is_baseline == is_base].sort_values("divergence", ascending=False, kind="stable").head(hp.n_top)
        again = score_prompts(
            models, toks, side.prompt.tolist(), sp, hp, sub_seed(hp.seed, 2), first_tokens=first_tokens
        )
        df.loc[side.index, "rescored"] = [s[sp.divergence] for s in again]
    df["ppl_b"] = perplexities(models[1], toks[1], df.prompt.tolist(), first_tokens[1])
    snippet_mean = float(df[df.is_baseline].screen.mean())
    df["baseline_ratio"] = df.divergence / snippet_mean if snippet_mean > 0 else math.inf
    if planted:
        df["mentions_trigger"] = [mentions(t, planted["trigger_keywords"]) for t in df.prompt]
        df["shows_response"] = [shows_planted(t, planted["response_keywords"]) for t in df.example]
    df = df.sort_values(["is_baseline", "divergence"], ascending=[True, False], kind="stable").reset_index(drop=True)
    df.insert(0, "rank", df.groupby("is_baseline").cumcount() + 1)
    return df


def summarise(df, hp: HardPromptParams, planted: dict | None, statistics: PairedParams | None = None) -> dict:
    """The top n_top against the snippets. ``ratio_ci95``: a percentile bootstrap of the ratio over the top
    prompts' re-scored values and the snippets' first scores (the noise of the scores that were
    measured, not of the choice of the top). ``top_vs_snippets``: the same two sets, their difference of
    means with its interval and a permutation test (lmdelta.stats.unpaired; the unit is the prompt)."""
    hard, base = df[~df.is_baseline], df[df.is_baseline]
    top, top_base = hard.head(hp.n_top), base.head(hp.n_top)
    rescored = top.rescored.dropna()
    out = {
        "n_candidates": len(hard),
        "n_snippets": len(base),
        "n_top": len(top),
        "candidates_by_method": hard.method.value_counts().to_dict(),
        "top_mean_divergence": float(top.divergence.mean()),
        "top_mean_rescored": float(top.rescored.mean()),
        "snippet_mean_divergence": float(base.screen.mean()),
        "snippet_top_mean_rescored": float(top_base.rescored.mean()),
        "ratio_top_rescored_vs_snippets": float(top.rescored.mean() / base.screen.mean()),
        "ratio_ci95": list(bootstrap_ci(top.rescored.dropna(), base.screen, seed=hp.seed, ratio=True)),
        "ratio_top_rescored_vs_snippet_top_rescored": float(top.rescored.mean() / top_base.rescored.mean()),
        "top_median_ppl_b": float(top.ppl_b.median()),
        "snippet_median_ppl_b": float(base.ppl_b.median()),
        "mean_divergence_by_method": {m: float(g.screen.mean()) for m, g in df.groupby("method")},
        "top_vs_snippets": (
            {"unit": "prompt", **unpaired(rescored, base.screen, params=statistics or PairedParams.from_dict({}))}
            if len(rescored) >= 2 and len(base) >= 2
            else None
        ),
    }
    if planted:
        out["planted"] = {
            "top_trigger_rate": float(top.mentions_trigger.mean()),
            "snippet_trigger_rate": float(base.mentions_trigger.mean()),
            "top_response_rate": float(top.shows_response.mean()),
            "snippet_response_rate": float(base.shows_response.mean()),
            "candidate_response_rate": float(hard.shows_response.mean()),
        }
    return out


def prompt_findings(df, run: str) -> list[dict]:
    """The hard prompts as findings (``hardprompt``, by re-scored divergence in nats, with an example
    continuation) and, as a reference, the random corpus snippets scored the same way."""
    return [
        finding(method, run, "prompt", r.divergence, prompt=r.prompt, example=r.example, reference=ref)
        for method, ref in (("hardprompt", False), ("random snippets", True))
        for r in df[df.is_baseline == ref].sort_values("divergence", ascending=False, kind="stable").itertuples()
    ]


def run_hardprompt(
    *,
    pair: str,
    run: str,
    names: tuple[str, str],
    model_dirs: tuple[Path, Path],
    soft_path: Path,
    sp_params,
    hp_params: HardPromptParams,
    load_options: tuple[dict, dict],
    corpus: Path | None,
    formats: tuple[dict, dict] = ({}, {}),
    planted: dict | None,
    embedder: str | None,
    out_prompts: Path,
    out_csv: Path,
    out_projection: Path,
    out_summary: Path,
    out_clusters: Path,
    out_png: Path,
    out_findings: Path,
    statistics: PairedParams | None = None,
    trained_on: dict | None = None,
):
    """``trained_on`` (the soft prompt's pair when it is another one: ``pair``, ``names``, ``dirs``,
    ``load_options``, ``formats``): candidates are extracted with that pair's models, then scored on
    this pair (which may have two tokenizers: ``lmdelta.pairs.pair_scorer``)."""
    import pandas as pd

    prov = Provenance(
        stage="hardprompt",
        params={
            "pair": pair,
            "run": run,
            "a": names[0],
            "b": names[1],
            **asdict(hp_params),
            "softprompt": asdict(sp_params),
            "load_options": list(load_options),
            "embedder": embedder,
            "formats": list(formats),
            "units": "nats",
        },
        seed=hp_params.seed,
    )
    first_tokens = tuple(f.get("first_token", "bos") for f in formats)
    record_pair(prov, model_dirs)
    prov.add_input("soft_prompt", soft_path)
    if corpus is not None:
        prov.add_input("corpus", corpus)
    models, toks = load_pair(model_dirs, load_options)
    if trained_on is None:
        check_compatible(models, toks, pair)
        t_models, t_toks, t_first = models, toks, first_tokens
    else:
        prov.params["trained_on"] = {k: trained_on[k] for k in ("pair", "names")}
        # a model of both pairs (often a) is loaded once
        loaded = {(str(d), repr(o)): (m, t) for d, o, m, t in zip(model_dirs, load_options, models, toks)}
        t_models, t_toks = [], []
        for d, o in zip(trained_on["dirs"], trained_on["load_options"]):
            m, t = loaded.get((str(d), repr(o))) or load_model(d, **o)
            t_models.append(m)
            t_toks.append(t)
        check_compatible(t_models, t_toks, trained_on["pair"])
        t_first = tuple(f.get("first_token", "bos") for f in trained_on["formats"])
    prov.params.update(divergence_method(toks))
    every = list({id(m): m for m in [*models, *t_models]}.values())  # a model of both pairs once
    for m in every:
        m.eval()
        m.requires_grad_(False)
    calls = ForwardCounter(*every)
    soft = load_soft_prompt(soft_path)
    docs = training_docs(t_models, t_toks, sp_params, corpus)
    windows = split_windows(docs, sp_params)
    cands, proj_rows, _ = candidates(t_models, t_toks, soft, windows, sp_params, hp_params, t_first)
    df = evaluate_candidates(
        models, toks, cands, docs, sp_params, hp_params, first_tokens=first_tokens, planted=planted, tok=t_toks[0]
    )
    summary = {
        "pair": pair,
        "run": run,
        "divergence": sp_params.divergence,
        "placement": sp_params.placement,
        **summarise(df, hp_params, planted, statistics),
        "model_calls": calls.n,
    }
    prov.params["model_calls"] = calls.n
    hard = df[~df.is_baseline].reset_index(drop=True)
    vectors = embed(load_embedder(embedder), hard.prompt.tolist(), batch_size=64, autocast="none")
    assigned, table = cluster_table(hard, cluster_bank(vectors, k=hp_params.k_clusters, seed=hp_params.seed))
    df["cluster"] = pd.array([pd.NA] * len(df), dtype="Int64")
    df.loc[~df.is_baseline, "cluster"] = assigned.cluster.to_numpy()
    write_parquet(out_prompts, df, prov)
    write_findings(out_findings, prompt_findings(df, run), prov)
    cols = [
        "rank",
        "method",
        "screen",
        "divergence",
        "n_samples",
        "rescored",
        "baseline_ratio",
        "ppl_b",
        "n_tokens",
        "cluster",
        "prompt",
        "example",
    ]
    cols += [c for c in ("mentions_trigger", "shows_response") if c in df]
    write_csv(out_csv, df[cols], prov)
    write_csv(out_projection, pd.DataFrame(proj_rows), prov)
    write_json(out_summary, summary, prov)
    write_csv(out_clusters, table, prov)
    save_figure(hardprompt_figure(df, f"{pair} / {run}", sp_params.divergence), out_png, prov)
    log.info(
        "hard prompts %s/%s: top-%d re-scored %.4f vs snippets %.4f (x%.2f, 95%% CI %.2f-%.2f)",
        pair,
        run,
        summary["n_top"],
        summary["top_mean_rescored"],
        summary["snippet_mean_divergence"],
        summary["ratio_top_rescored_vs_snippets"],
        *summary["ratio_ci95"],
    )
    return summary


# ---- jobs (lmdelta.job) -------------------------------------------------------------------------------


def hardprompt_job(job) -> None:
    """inputs: ``a``, ``b``, ``soft``, ``corpus``; spec: the pair with its soft-prompt run, planted truth;
    outputs: ``prompts``, ``csv``, ``projection``, ``summary``, ``clusters``, ``png``, ``findings``."""
    s = job.spec
    run_hardprompt(
        pair=job.wildcards["pair"],
        run=job.wildcards["run"],
        names=tuple(s["names"]),
        model_dirs=(job.path("a"), job.path("b")),
        soft_path=job.path("soft"),
        sp_params=SoftPromptParams.from_dict(s["run"]),
        hp_params=HardPromptParams.from_dict(s["run"].get("hard", {})),
        load_options=tuple(s["load_options"]),
        formats=tuple(s["formats"]),
        corpus=job.path("corpus"),
        planted=s.get("planted"),
        embedder=s["run"].get("embedder"),
        out_prompts=job.out("prompts"),
        out_csv=job.out("csv"),
        out_projection=job.out("projection"),
        out_summary=job.out("summary"),
        out_clusters=job.out("clusters"),
        out_png=job.out("png"),
        out_findings=job.out("findings"),
        statistics=PairedParams.from_dict(s["statistics"]),
        trained_on=(
            {**s["trained_on"], "dirs": (job.path("train_a"), job.path("train_b"))} if "trained_on" in s else None
        ),
    )
