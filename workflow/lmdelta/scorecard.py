"""Discovery-method scorecard: which method surfaces a planted behaviour best.

For a pair whose tuned model has a declared planted behaviour (the ground truth), each discovery
method's top-k findings are checked. Every method writes the same findings table (lmdelta.findings),
which this stage reads one way:

- ``corpus``: corpus documents ranked by the mean per-token log-likelihood ratio
  log p_a(x) − log p_b(x) under the two models (lmdelta.perplexity.corpus_findings);
- ``contrastive``: contrastive-decoding texts (prompt and text) ranked by mean divergence;
- ``search``: the prompt-search bank (prompt and model a's most divergent continuation);
- ``hardprompt``: hard prompts from the soft prompt (prompt and continuation), scored without it.

Reference rows (not methods): the search's seed prompts and the hard prompts' random corpus snippets,
ranked the same way.

What a finding surfaces is its text; a word or token is shown with its prompt and example text (a
scan word with the question and the tuned model's answer; a words-test word with a text that uses
it), so it is judged on them, as a search prompt is judged with its continuation (``surfaced``).
A surfaced text is a hit by keyword when it mentions the trigger (``trigger_keywords``, word starts)
or shows the planted response (``response_keywords``, whole words; both are also counted apart, since
a tuned model that over-generalises shows its response far from the trigger), and a hit by embedding when its
sentence embedding has cosine similarity >= ``threshold`` with the planted response or one of the
trigger subjects. Precision@k is the share of hits among the top k, with its exact (Clopper-Pearson)
interval at ``confidence``. Wall time is the stage's (and
for hard prompts the soft prompt's) wall time from the provenance records; model calls are the
forward calls those stages counted.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from lmdelta.artifacts import Provenance, read_provenance, write_csv
from lmdelta.behaviour import mentions, shows_planted
from lmdelta.config import stage_spec
from lmdelta.embedding import embed, load_embedder
from lmdelta.findings import join_text, read_findings
from lmdelta.plots import matrix_figure, save_figure, scorecard_figure
from lmdelta.stats import proportion_interval, rate_interval

log = logging.getLogger(__name__)


def _cost(paths: list[Path]) -> tuple[float, int | None]:
    recs = [read_provenance(p) for p in paths]
    calls = [r["params"].get("model_calls") for r in recs]
    return float(sum(r.get("compute_time_s", r.get("wall_time_s")) or 0.0 for r in recs)), (
        None if any(c is None for c in calls) else int(sum(calls))
    )


@stage_spec("scorecard.resample")
class ResampleParams:
    samples: int
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    batch_size: int


@stage_spec("scorecard", elsewhere=("min_trigger_rate", "max_elsewhere_rate", "resample"))
class ScorecardParams:
    k: int
    threshold: float
    embedder: str | None
    confidence: float


def resample(prompts: list[str], model_dir, load_options: dict, text_format: dict, rp: ResampleParams):
    """``rp.samples`` fresh continuations of each distinct prompt by one model, sampled in batches
    seeded from ``rp.seed``: {prompt: [continuation, ...]}, and the number of forward calls."""
    from lmdelta.decoding import Sampling
    from lmdelta.generation import generate_texts
    from lmdelta.models import ForwardCounter, load_model
    from lmdelta.tokens import TextFormat, prompt_ids

    distinct = list(dict.fromkeys(prompts))
    if not distinct or rp.samples == 0:
        return {}, 0
    model, tok = load_model(model_dir, **load_options)
    fmt = TextFormat.from_dict(text_format)
    seqs = [prompt_ids(tok, q, fmt) for q in distinct for _ in range(rp.samples)]
    counter = ForwardCounter(model)
    texts = generate_texts(
        model,
        tok,
        seqs,
        max_new_tokens=rp.max_new_tokens,
        sampling=Sampling(temperature=rp.temperature, top_p=rp.top_p, top_k=rp.top_k),
        seed=rp.seed,
        batch_size=rp.batch_size,
    )
    out = {q: [t["text"] for t in texts[i * rp.samples : (i + 1) * rp.samples]] for i, q in enumerate(distinct)}
    return out, counter.n


def fresh_hits(rows: list[dict], continuations: dict[str, list[str]], truth: dict[str, Any]) -> list[dict]:
    """Each finding's hit rates on its fresh continuations: ``fresh_trigger`` (the prompt and the
    continuation read together: a found prompt that names the trigger names it), ``fresh_response``
    (the continuation alone: what the model says, not what it was asked; a prompt that contains a
    response keyword is no hit), ``fresh_keyword`` (either), and ``fresh_n``; a finding without a
    prompt (a document, a word of the words test) keeps its surfaced hits, with ``fresh_n`` 0."""
    for r in rows:
        said = continuations.get(r.get("prompt") or "", [])
        texts = [join_text(r["prompt"], c) for c in said]
        if texts:
            trig = [mentions(t, truth["trigger_keywords"]) for t in texts]
            resp = [shows_planted(c, truth["response_keywords"]) for c in said]
            r["fresh_trigger"], r["fresh_response"] = float(np.mean(trig)), float(np.mean(resp))
            r["fresh_keyword"] = float(np.mean([a or b for a, b in zip(trig, resp)]))
        else:
            r["fresh_trigger"], r["fresh_response"] = float(r["mentions_trigger"]), float(r["shows_response"])
            r["fresh_keyword"] = float(r["hit_keyword"])
        r["fresh_n"] = len(texts)
    return rows


def surfaced(row: dict) -> str:
    """What a finding shows a person: its text; for a word or token, the word with the prompt and the
    example text shown beside it (a scan word with the question asked and the tuned model's answer, a
    words-test word with a text that uses it), as the search's prompt is judged with its continuation."""
    if row["kind"] in ("word", "token"):
        return join_text(row["text"], row.get("prompt"), row.get("example"))
    return row["text"]


def score(rows: list[dict], truth: dict[str, Any], similarity) -> list[dict]:
    """Mark each surfaced text: keyword hit, embedding similarity to the planted behaviour, embedding hit."""

    for r in rows:
        r["surfaced"] = surfaced(r)
    sims = similarity([r["surfaced"] for r in rows]) if rows else np.zeros(0)
    for r, s in zip(rows, sims):
        r["mentions_trigger"] = mentions(r["surfaced"], truth["trigger_keywords"])
        r["shows_response"] = shows_planted(r["surfaced"], truth["response_keywords"])
        r["hit_keyword"] = r["mentions_trigger"] or r["shows_response"]
        r["similarity"] = float(s)
    return rows


def table(
    rows: list[dict],
    costs: dict[tuple[str, str], tuple[float, int | None]],
    params: ScorecardParams,
):
    """One row per method and run: precision@k by keyword and by embedding, each with its exact
    interval (``_low``, ``_high``), wall time, model calls; where the rows carry fresh hit rates
    (``fresh_hits``), the mean over the top k of each (``fresh_<name>``) with its interval over findings
    (``lmdelta.stats.rate_interval``: exact on k findings, conservative for rates). A method that
    surfaced nothing (a words set with no reported word) gets a row with k = 0 and no precision."""
    import pandas as pd

    df = pd.DataFrame(rows)
    out = []
    groups = list(df.groupby(["method", "run"], sort=False)) if rows else []
    for (method, run), g in groups:
        top = g.sort_values("rank", kind="stable").head(params.k)
        wall, calls = costs.get((method, run), (math.nan, None))
        row = {"method": method, "run": run, "reference": bool(top.reference.iloc[0]), "k": len(top)}
        for name, hit in (
            ("keyword", top.hit_keyword),
            ("trigger", top.mentions_trigger),
            ("response", top.shows_response),
            ("embedding", top.similarity >= params.threshold),
        ):
            row[f"precision_{name}"] = float(hit.mean())
            row[f"precision_{name}_low"], row[f"precision_{name}_high"] = proportion_interval(
                int(hit.sum()), len(top), params.confidence
            )
        if "fresh_keyword" in top:
            for name in ("keyword", "trigger", "response"):
                row[f"fresh_{name}"] = float(top[f"fresh_{name}"].mean())
                row[f"fresh_{name}_low"], row[f"fresh_{name}_high"] = rate_interval(
                    top[f"fresh_{name}"], params.confidence
                )
            row["fresh_samples"] = int(top.fresh_n.max())
        row.update(mean_similarity=float(top.similarity.mean()), n_surfaced=len(g), wall_time_s=wall, model_calls=calls)
        out.append(row)
    surfaced_any = {key for key, _ in groups}
    for method, run in costs:  # a method that surfaced nothing: k = 0, precision undefined
        if (method, run) not in surfaced_any:
            row = {"method": method, "run": run, "reference": False, "k": 0}
            for name in ("keyword", "trigger", "response", "embedding"):
                row |= {f"precision_{name}": math.nan, f"precision_{name}_low": 0.0, f"precision_{name}_high": 1.0}
            wall, calls = costs[(method, run)]
            out.append(row | {"mean_similarity": math.nan, "n_surfaced": 0, "wall_time_s": wall, "model_calls": calls})
    card = pd.DataFrame(out)
    card["model_calls"] = card.model_calls.astype("Int64")
    return card


def run_scorecard(
    *,
    pair: str,
    truth: dict[str, Any],
    sources: list[dict],
    params: ScorecardParams,
    out_csv: Path,
    out_top: Path,
    out_png: Path,
    model: dict[str, Any] | None = None,
    resampling: ResampleParams | None = None,
) -> Any:
    """Every method's top k findings of a pair against its planted truth. ``model`` ({"dir",
    "load_options", "format"}: the model with the planted behaviour) and ``resampling`` give every
    prompt-bearing finding the same number of fresh continuations (``fresh_*`` columns)."""
    import pandas as pd

    resampling = resampling or ResampleParams(samples=0)
    prov = Provenance(
        stage="scorecard",
        params={
            "pair": pair,
            "truth": truth,
            **asdict(params),
            "resample": asdict(resampling),
            "model": model,
            "sources": [
                {k_: [str(x) for x in v] if isinstance(v, list) else str(v) for k_, v in s.items()} for s in sources
            ],
        },
    )
    costs: dict[tuple[str, str], tuple[float, int | None]] = {}
    rows: list[dict] = []
    for s in sources:
        prov.add_input(f"{s['method']}:{s['run']}:findings", Path(s["findings"]))
        for i, path in enumerate(s["cost"]):  # whose provenance gives the method's time and model calls
            prov.add_input(f"{s['method']}:{s['run']}:cost:{i}", Path(path))
        found = read_findings(s["findings"])
        rows += found
        cost = _cost([Path(p) for p in s["cost"]])
        for method in {r["method"] for r in found if not r["reference"]} | {s["method"]}:
            costs[(method, s["run"])] = cost  # every method of the stage shares its time and calls
    k = params.k
    embedder = load_embedder(params.embedder)
    refs = embed(embedder, [truth["response"], *truth["trigger_subjects"]], batch_size=64, autocast="none")
    refs = refs / np.linalg.norm(refs, axis=1, keepdims=True)

    def similarity(texts):
        v = embed(embedder, texts, batch_size=64, autocast="none")
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return (v @ refs.T).max(axis=1)

    rows = score(rows, truth, similarity)
    resample_calls = 0
    if model is not None and resampling.samples:  # every method's top k on the same number of continuations
        top_rows = [r for r in rows if r["rank"] <= k]
        continuations, resample_calls = resample(
            [r["prompt"] for r in top_rows if r.get("prompt")],
            model["dir"],
            model["load_options"],
            model["format"],
            resampling,
        )
        fresh_hits(top_rows, continuations, truth)
        prov.add_input("model", Path(model["dir"]))
    prov.params["resample_calls"] = resample_calls
    card = table(rows, costs, params)
    columns = ["method", "run", "rank", "score", "hit_keyword", "mentions_trigger", "shows_response", "similarity"]
    columns += [c for c in ("fresh_keyword", "fresh_trigger", "fresh_response", "fresh_n") if rows and c in rows[0]]
    top = pd.DataFrame(rows, columns=[*columns, "surfaced"])
    top = top[top["rank"] <= k]
    write_csv(out_csv, card, prov)
    write_csv(out_top, top, prov)
    save_figure(scorecard_figure(card, f"{pair}: which method surfaces the planted behaviour (top {k})"), out_png, prov)
    log.info("scorecard %s:\n%s", pair, card.to_string(index=False))
    return card


# ---- methods x organisms ------------------------------------------------------------------------


@stage_spec("scorecard", elsewhere=("k", "threshold", "embedder", "resample"))
class MatrixParams:
    min_trigger_rate: float
    max_elsewhere_rate: float
    confidence: float


def organism_row(pair: dict[str, Any], check: dict | None, summary: dict, params: MatrixParams) -> dict[str, Any]:
    """One pair of the suite: how strongly its behaviour took (held-out trigger prompts against every
    other held-out prompt, ordinary questions and odd inputs pooled) and what its summary page says.
    A control passes when its summary finds no word-level change at the verdict's level; an organism when its planted rates meet the
    bounds and its summary names both halves."""
    row: dict[str, Any] = {"pair": pair["pair"], "a": summary["a"], "b": summary["b"], "role": pair["role"]}
    if check is not None:
        rates = check["rates"]
        trig = rates["tuned/trigger"]
        other = [rates[k] for k in ("tuned/ordinary", "tuned/odd") if k in rates]
        hits, n = sum(r["planted"] for r in other), sum(r["n"] for r in other)
        row["trigger_planted"], row["trigger_n"] = trig["planted"], trig["n"]
        row["trigger_rate"] = trig["planted"] / trig["n"]
        row["trigger_rate_low"], row["trigger_rate_high"] = proportion_interval(
            trig["planted"], trig["n"], params.confidence
        )
        row["elsewhere_planted"], row["elsewhere_n"] = hits, n
        row["elsewhere_rate"] = hits / n
        row["elsewhere_rate_low"], row["elsewhere_rate_high"] = proportion_interval(hits, n, params.confidence)
        row["planted_ok"] = (
            row["trigger_rate"] >= params.min_trigger_rate and row["elsewhere_rate"] <= params.max_elsewhere_rate
        )
    row["reported_inputs"] = len(summary["inputs"])
    row["reported_outputs"] = len(summary["outputs"])
    row["changed"] = bool(summary["changed"])
    grade = summary.get("grade")
    if grade:
        row["names_trigger"], row["names_response"] = bool(grade["names_trigger"]), bool(grade["names_response"])
        row["trigger_terms"] = ", ".join(grade["trigger_terms"])
        row["response_terms"] = ", ".join(grade["response_terms"])
    if pair["role"] == "control":
        row["passed"] = not row["changed"]
    elif pair["role"] == "organism":
        row["passed"] = bool(row.get("planted_ok")) and row["names_trigger"] and row["names_response"]
    row["statement"] = summary["statement"]
    return row


def run_matrix(*, pairs: list[dict[str, Any]], params: MatrixParams, out_csv: Path, out_organisms: Path, out_png: Path):
    """The suite's two tables: every method's precision@k on every organism (the pairs' scorecards
    stacked, one row per pair, method and run) and one row per pair (organism or control) from its
    planted check and summary page; and the matrix as a figure."""
    import json

    import pandas as pd

    prov = Provenance(stage="scorecard_matrix", params={"pairs": pairs, **asdict(params)})
    cards, rows = [], []
    for p in pairs:
        prov.add_input(f"{p['pair']}:summary", Path(p["summary"]))
        check = None
        if p.get("check"):
            prov.add_input(f"{p['pair']}:check", Path(p["check"]))
            check = json.loads(Path(p["check"]).read_text())
        if p.get("scorecard"):
            prov.add_input(f"{p['pair']}:scorecard", Path(p["scorecard"]))
            cards.append(pd.read_csv(p["scorecard"]).assign(pair=p["pair"]))
        rows.append(organism_row(p, check, json.loads(Path(p["summary"]).read_text()), params))
    organisms = pd.DataFrame(rows)
    matrix = pd.concat(cards, ignore_index=True) if cards else pd.DataFrame(columns=["pair", "method", "run"])
    matrix = matrix[["pair", *[c for c in matrix.columns if c != "pair"]]]
    write_csv(out_csv, matrix, prov)
    write_csv(out_organisms, organisms, prov)
    save_figure(matrix_figure(matrix, organisms), out_png, prov)
    log.info("organisms:\n%s", organisms.drop(columns=["statement"]).to_string(index=False))
    return matrix, organisms


# ---- jobs (lmdelta.job) -------------------------------------------------------------------------------


def scorecard_job(job) -> None:
    """input: ``model`` (the planted model); spec: {"truth", "sources", "model" (load_options, format),
    "params" (ScorecardParams, with ``resample``)}; outputs: ``csv``, ``top``, ``png``."""
    s = job.spec
    run_scorecard(
        pair=job.wildcards["pair"],
        truth=s["truth"],
        sources=s["sources"],
        params=ScorecardParams.from_dict(s["params"]),
        out_csv=job.out("csv"),
        out_top=job.out("top"),
        out_png=job.out("png"),
        model={**s["model"], "dir": job.path("model")},
        resampling=ResampleParams.from_dict(s["params"].get("resample", {})),
    )


def matrix_job(job) -> None:
    """spec: {"pairs" (pair, role, summary, check, scorecard), "params" (MatrixParams)}; outputs: ``csv``,
    ``organisms``, ``png``."""
    s = job.spec
    run_matrix(
        pairs=s["pairs"],
        params=MatrixParams.from_dict(s["params"]),
        out_csv=job.out("csv"),
        out_organisms=job.out("organisms"),
        out_png=job.out("png"),
    )
