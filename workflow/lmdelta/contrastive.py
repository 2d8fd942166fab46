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
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from lmdelta.artifacts import Provenance, atomic_path, write_csv, write_parquet
from lmdelta.config import known_fields, stage_spec
from lmdelta.findings import finding, write_findings
from lmdelta.models import ForwardCounter
from lmdelta.pairs import PairDecoding, check_same_tokenizer, generate_pair, load_pair, record_pair
from lmdelta.plots import divergence_figure, save_figure
from lmdelta.promptsets import read_promptset
from lmdelta.stats import PairedParams, corrected_table, paired_metrics

log = logging.getLogger(__name__)


@stage_spec("contrastive_run")
class RunParams:
    prompts: dict[str, Any]
    weights: tuple[float, float]
    space: str
    plausibility_alpha: float | None
    samples: int
    max_new_tokens: int
    temperature: float | None
    top_p: float
    top_k: int
    seed: int
    batch_size: int
    colour_by: str
    include_prompt: bool
    baseline: bool

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunParams:
        kw = known_fields(cls, d)
        if "weights" in kw:
            kw["weights"] = tuple(kw["weights"])
        return cls(**kw)

    def decoding(self) -> PairDecoding:
        """The run's decoding settings: every field of PairDecoding, taken from the run by name."""
        return PairDecoding(**{f.name: getattr(self, f.name) for f in fields(PairDecoding)})


def build_prompts(spec: dict[str, Any], *, promptset: Path | None, corpus: Path | None) -> list[dict[str, str]]:
    """[{"id", "prompt"}] from a prompt set, the first words of corpus documents, or nothing (BOS only)."""
    if "promptset" in spec:
        return [{"id": p["id"], "prompt": p["prompt"]} for p in read_promptset(promptset)]
    if "corpus" in spec:
        import pandas as pd

        c = spec["corpus"]
        df = pd.read_parquet(corpus, columns=["doc_id", "text"]).head(c.get("n", 16))
        return [{"id": d, "prompt": " ".join(t.split()[: c.get("words", 12)])} for d, t in zip(df.doc_id, df.text)]
    return [{"id": f"bos-{i}", "prompt": ""} for i in range(spec["unconditional"])]


def html_page(records: list[dict], *, pair: str, run: str, names: tuple[str, str], colour_by: str) -> str:
    """Texts ranked by mean divergence, each token coloured by its divergence; hover: values and top tokens."""
    top = max((v for r in records for v in r[colour_by]), default=1.0) or 1.0
    parts = [
        f"<!doctype html><meta charset='utf-8'><title>lmdelta {html.escape(pair)} {html.escape(run)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}span.t{white-space:pre-wrap}"
        "div.x{border-top:1px solid #ccc;padding:.5em 0}</style>",
        f"<h1>Contrastive decoding: {html.escape(names[0])} (a) vs {html.escape(names[1])} (b), run {html.escape(run)}</h1>",
        f"<p>Tokens coloured by {colour_by} (nats; darkest = {top:.3g}). Hover a token for KL(a‖b), KL(b‖a), JS "
        "and each model's three most probable next tokens at that position.</p>",
    ]
    for rank, r in enumerate(records, start=1):
        spans = []
        for i, tok in enumerate(r["tokens"]):
            alpha = min(1.0, r[colour_by][i] / top)
            tip = (
                f"KL(a||b) {r['kl_a_b'][i]:.3f}  KL(b||a) {r['kl_b_a'][i]:.3f}  JS {r['js'][i]:.3f}\n"
                f"a: {r['top_a'][i]}\nb: {r['top_b'][i]}"
            )
            spans.append(
                f"<span class='t' style='background:rgba(220,40,40,{alpha:.3f})' title='{html.escape(tip, quote=True)}'>{html.escape(tok)}</span>"
            )
        parts.append(
            f"<div class='x'><b>#{rank}</b> mean {colour_by} {r['mean_' + colour_by]:.3f} · perplexity a {r['ppl_a']:.1f}, "
            f"b {r['ppl_b']:.1f} · prompt <i>{html.escape(r['prompt']) or '(BOS only)'}</i><br>{''.join(spans)}</div>"
        )
    return "\n".join(parts) + "\n"


BASELINE_METRICS = ("mean_js", "mean_kl_a_b", "mean_kl_b_a")


def baseline_table(records: list[dict], sampled: list[dict], params: PairedParams):
    """The contrastive texts against a's own samples of the same prompts: per prompt, the mean over its
    samples of each text's mean per-token divergence, compared prompt by prompt (sign-flip test,
    ``lmdelta.stats``), Holm over the metrics. A positive ``diff``: contrastive decoding finds texts on
    which the two models differ more than on what a says anyway."""
    import pandas as pd

    def per_prompt(recs):
        return pd.DataFrame(recs).groupby("prompt_id")[list(BASELINE_METRICS)].mean()

    rows = (
        paired_metrics(
            per_prompt(records),
            per_prompt(sampled),
            unit="prompt",
            metrics=BASELINE_METRICS,
            test="sign-flip",
            params=params,
        )
        if records and sampled
        else []
    )
    cols = ["metric", "unit", "n", "mean_a", "mean_b", "diff", "diff_low", "diff_high", "test", "p"]
    return corrected_table(rows, cols).rename(columns={"mean_a": "mean_contrastive", "mean_b": "mean_sampled_a"})


def text_findings(df, run: str, colour_by: str) -> list[dict]:
    """The decoded texts as findings (``contrastive``, kind continuation), by rank; score = the text's
    mean per-token divergence (``mean_<colour_by>``, nats)."""
    return [
        finding("contrastive", run, "continuation", getattr(r, f"mean_{colour_by}"), prompt=r.prompt, example=r.text)
        for r in df.sort_values("rank", kind="stable").itertuples()
    ]


def run_contrastive(
    *,
    pair: str,
    run: str,
    names: tuple[str, str],
    model_dirs: tuple[Path, Path],
    params: RunParams,
    load_options: tuple[dict, dict],
    formats: tuple[dict, dict],
    promptset: Path | None,
    corpus: Path | None,
    out: Path,
    out_csv: Path,
    out_html: Path,
    out_png: Path,
    out_findings: Path,
    out_baseline: Path | None = None,
    statistics: PairedParams | None = None,
) -> list[dict]:
    import pandas as pd

    statistics = statistics or PairedParams.from_dict({})
    prov = Provenance(
        stage="contrastive",
        params={
            "pair": pair,
            "run": run,
            "a": names[0],
            "b": names[1],
            **asdict(params),
            "formats": list(formats),
            "load_options": list(load_options),
            "units": "nats",
            "statistics": vars(statistics),
        },
        seed=params.seed,
    )
    record_pair(prov, model_dirs)
    for name, path in (("promptset", promptset), ("corpus", corpus)):
        if path is not None:
            prov.add_input(name, path)
    models, toks = load_pair(model_dirs, load_options)
    check_same_tokenizer(toks[0], toks[1], pair, "contrastive decoding")
    prompts = build_prompts(params.prompts, promptset=promptset, corpus=corpus)
    calls = ForwardCounter(*models)
    sampled = []
    if params.baseline:  # a alone, same prompts, samples, seed and sampling; only its means are kept
        alone = replace(params.decoding(), weights=(1.0, 0.0), plausibility_alpha=None)
        sampled = [
            {k: r[k] for k in ("prompt_id", *BASELINE_METRICS)}
            for r in generate_pair(models, toks, prompts, alone, formats=list(formats))
        ]
    records = generate_pair(models, toks, prompts, params.decoding(), formats=list(formats))
    prov.params["model_calls"] = calls.n
    records.sort(
        key=lambda r: -r[f"mean_{params.colour_by}"] if not math.isnan(r[f"mean_{params.colour_by}"]) else math.inf
    )
    df = pd.DataFrame(records)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    write_parquet(out, df, prov)
    write_findings(out_findings, text_findings(df, run, params.colour_by), prov)
    cols = [
        "rank",
        "prompt_id",
        "sample",
        "mean_js",
        "mean_kl_a_b",
        "mean_kl_b_a",
        "ppl_a",
        "ppl_b",
        "n_tokens",
        "prompt",
        "text",
    ]
    write_csv(out_csv, df[cols], prov)
    with atomic_path(out_html, prov) as tmp:
        tmp.write_text(
            html_page(records, pair=pair, run=run, names=names, colour_by=params.colour_by), encoding="utf-8"
        )
    save_figure(divergence_figure(records, names, f"{pair} / {run}"), out_png, prov)
    if out_baseline is not None:
        table = baseline_table(records, sampled, statistics)
        write_csv(out_baseline, table, prov)
        for r in table.itertuples():
            log.info(
                "contrastive %s/%s: %s %.3f vs a's own samples %.3f (p_holm %.3g)",
                pair,
                run,
                r.metric,
                r.mean_contrastive,
                r.mean_sampled_a,
                r.p_holm,
            )
    log.info("contrastive %s/%s: %d texts -> %s", pair, run, len(records), out)
    return records


# ---- jobs (lmdelta.job) -------------------------------------------------------------------------------


def contrastive_job(job) -> None:
    """inputs: ``a``, ``b`` (+ ``promptset`` or ``corpus``); spec: the pair (names, run, load_options,
    formats, statistics); outputs: ``parquet``, ``csv``, ``html``, ``png``, ``findings``, ``baseline``."""
    s = job.spec
    run_contrastive(
        pair=job.wildcards["pair"],
        run=job.wildcards["run"],
        names=tuple(s["names"]),
        model_dirs=(job.path("a"), job.path("b")),
        params=RunParams.from_dict(s["run"]),
        load_options=tuple(s["load_options"]),
        formats=tuple(s["formats"]),
        promptset=job.path("promptset") if "promptset" in job.inputs else None,
        corpus=job.path("corpus") if "corpus" in job.inputs else None,
        out=job.out("parquet"),
        out_csv=job.out("csv"),
        out_html=job.out("html"),
        out_png=job.out("png"),
        out_findings=job.out("findings"),
        out_baseline=job.out("baseline"),
        statistics=PairedParams.from_dict(s["statistics"]),
    )
