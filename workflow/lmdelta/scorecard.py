"""Discovery-method scorecard: which method surfaces a planted behaviour best.

For a pair whose tuned model has a declared planted behaviour (the ground truth), each discovery
method's top-k surfaced texts are checked:

- ``corpus``: corpus documents ranked by the mean per-token log-likelihood ratio
  log p_a(x) − log p_b(x) under the two models (from the logprobs artifacts: the actual tokens'
  logprobs, so this is the difference of the two cross-entropies, not a KL between full distributions);
- ``contrastive``: contrastive-decoding texts (prompt and text) ranked by mean divergence;
- ``search``: the prompt-search bank (prompt and model a's most divergent continuation);
- ``hardprompt``: hard prompts from the soft prompt (prompt and continuation), scored without it.

Reference rows (not methods): the search's seed prompts and the hard prompts' random corpus snippets,
ranked the same way.

A surfaced text is a hit by keyword when it mentions the trigger (``trigger_keywords``, word starts)
or shows the planted response (``response_keywords``, whole words; both are also counted apart, since
a tuned model that over-generalises shows its response far from the trigger), and a hit by embedding when its
sentence embedding has cosine similarity >= ``threshold`` with the planted response or one of the
trigger subjects. Precision@k is the share of hits among the top k. Wall time is the stage's (and
for hard prompts the soft prompt's) wall time from the provenance records; model calls are the
forward calls those stages counted.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from lmdelta.behaviour import mentions, shows_planted

log = logging.getLogger(__name__)


def _prov(path: Path) -> dict:
    from lmdelta.artifacts import read_provenance

    return read_provenance(path)


def _cost(paths: list[Path]) -> tuple[float, int | None]:
    recs = [_prov(p) for p in paths]
    calls = [r["params"].get("model_calls") for r in recs]
    return float(sum(r.get("compute_time_s", r.get("wall_time_s")) or 0.0 for r in recs)), (
        None if any(c is None for c in calls) else int(sum(calls))
    )


def _join(*parts) -> str:
    return " ".join(str(p).strip() for p in parts if isinstance(p, str) and p.strip())


def surfaced(source: dict[str, Any]) -> list[dict]:
    """The ranked texts one source surfaces: [{"method", "run", "reference", "rank", "text", "score"}]."""
    import pandas as pd

    kind, run = source["kind"], source.get("run", "")
    rows: list[dict] = []
    if kind == "corpus":
        a, b = (pd.read_parquet(p, columns=["doc_id", "logprob"]) for p in source["logprobs"])
        ratio = (
            (a.groupby("doc_id").logprob.mean() - b.groupby("doc_id").logprob.mean())
            .dropna()
            .sort_values(ascending=False, kind="stable")
        )
        docs = pd.read_parquet(source["corpus"], columns=["doc_id", "text"]).set_index("doc_id").text
        rows = [
            {"method": "corpus", "run": run, "reference": False, "text": docs[d][:1000], "score": float(v)}
            for d, v in ratio.items()
        ]
    elif kind == "contrastive":
        df = pd.read_parquet(source["path"]).sort_values("rank", kind="stable")
        key = "mean_" + _prov(source["path"])["params"].get("colour_by", "js")
        rows = [
            {
                "method": "contrastive",
                "run": run,
                "reference": False,
                "text": _join(r.prompt, r.text),
                "score": float(getattr(r, key)),
            }
            for r in df.itertuples()
        ]
    elif kind == "search":
        df = pd.read_parquet(source["path"]).sort_values("rank", kind="stable")
        for ref, part in ((False, df), (True, df[df.cycle == 0])):
            rows += [
                {
                    "method": "search seeds" if ref else "search",
                    "run": run,
                    "reference": ref,
                    "text": _join(r.prompt, r.example),
                    "score": float(r.divergence),
                }
                for r in part.itertuples()
            ]
    elif kind == "hardprompt":
        df = pd.read_parquet(source["path"])
        for ref in (False, True):
            part = df[df.is_baseline == ref].sort_values("divergence", ascending=False, kind="stable")
            rows += [
                {
                    "method": "random snippets" if ref else "hardprompt",
                    "run": run,
                    "reference": ref,
                    "text": _join(r.prompt, r.example),
                    "score": float(r.divergence),
                }
                for r in part.itertuples()
            ]
    else:
        raise ValueError(f"unknown source kind {kind!r}")
    for i, r in enumerate(rows):
        r["rank"] = 1 + sum(1 for q in rows[:i] if q["method"] == r["method"])
    return rows


def score(rows: list[dict], truth: dict[str, Any], similarity) -> list[dict]:
    """Mark each surfaced text: keyword hit, embedding similarity to the planted behaviour, embedding hit."""

    sims = similarity([r["text"] for r in rows]) if rows else np.zeros(0)
    for r, s in zip(rows, sims):
        r["mentions_trigger"] = mentions(r["text"], truth["trigger_keywords"])
        r["shows_response"] = shows_planted(r["text"], truth["response_keywords"])
        r["hit_keyword"] = r["mentions_trigger"] or r["shows_response"]
        r["similarity"] = float(s)
    return rows


def table(rows: list[dict], costs: dict[tuple[str, str], tuple[float, int | None]], *, k: int, threshold: float):
    """One row per method and run: precision@k by keyword and by embedding, wall time, model calls."""
    import pandas as pd

    df = pd.DataFrame(rows)
    out = []
    for (method, run), g in df.groupby(["method", "run"], sort=False):
        top = g.sort_values("rank", kind="stable").head(k)
        wall, calls = costs.get((method, run), (math.nan, None))
        out.append(
            {
                "method": method,
                "run": run,
                "reference": bool(top.reference.iloc[0]),
                "k": len(top),
                "precision_keyword": float(top.hit_keyword.mean()),
                "precision_trigger": float(top.mentions_trigger.mean()),
                "precision_response": float(top.shows_response.mean()),
                "precision_embedding": float((top.similarity >= threshold).mean()),
                "mean_similarity": float(top.similarity.mean()),
                "n_surfaced": len(g),
                "wall_time_s": wall,
                "model_calls": calls,
            }
        )
    card = pd.DataFrame(out)
    card["model_calls"] = card.model_calls.astype("Int64")
    return card


def run_scorecard(
    *,
    pair: str,
    truth: dict[str, Any],
    sources: list[dict],
    k: int,
    threshold: float,
    embedder: str | None,
    out_csv: Path,
    out_top: Path,
    out_png: Path,
) -> Any:
    import pandas as pd

    from lmdelta.artifacts import Provenance, write_csv
    from lmdelta.embedding import embed, load_embedder
    from lmdelta.plots import save_figure, scorecard_figure

    prov = Provenance(
        stage="scorecard",
        params={
            "pair": pair,
            "truth": truth,
            "k": k,
            "threshold": threshold,
            "embedder": embedder,
            "sources": [{k_: str(v) for k_, v in s.items()} for s in sources],
        },
    )
    costs: dict[tuple[str, str], tuple[float, int | None]] = {}
    rows: list[dict] = []
    for s in sources:
        for key in ("path", "corpus", "soft"):
            if key in s:
                prov.add_input(f"{s['kind']}:{s.get('run', '')}:{key}", Path(s[key]))
        rows += surfaced(s)
        paths = [Path(p) for p in s.get("logprobs", [])] + [Path(s[k_]) for k_ in ("soft", "path") if k_ in s]
        name = {"corpus": "corpus", "contrastive": "contrastive", "search": "search", "hardprompt": "hardprompt"}[
            s["kind"]
        ]
        costs[(name, s.get("run", ""))] = _cost(paths)
    model = load_embedder(embedder)
    refs = embed(model, [truth["response"], *truth["trigger_subjects"]], batch_size=64, autocast="none")
    refs = refs / np.linalg.norm(refs, axis=1, keepdims=True)

    def similarity(texts):
        v = embed(model, texts, batch_size=64, autocast="none")
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return (v @ refs.T).max(axis=1)

    rows = score(rows, truth, similarity)
    card = table(rows, costs, k=k, threshold=threshold)
    top = pd.DataFrame(rows)
    top = top[top["rank"] <= k][
        ["method", "run", "rank", "score", "hit_keyword", "mentions_trigger", "shows_response", "similarity", "text"]
    ]
    write_csv(out_csv, card, prov)
    write_csv(out_top, top, prov)
    save_figure(scorecard_figure(card, f"{pair}: which method surfaces the planted behaviour (top {k})"), out_png, prov)
    log.info("scorecard %s:\n%s", pair, card.to_string(index=False))
    return card


# ---- jobs (lmdelta.job) -------------------------------------------------------------------------------


def scorecard_job(job) -> None:
    """spec: {"truth", "sources", "k", "threshold", "embedder"}; outputs: ``csv``, ``top``, ``png``."""
    s = job.spec
    run_scorecard(
        pair=job.wildcards["pair"],
        truth=s["truth"],
        sources=s["sources"],
        k=s["k"],
        threshold=s["threshold"],
        embedder=s["embedder"],
        out_csv=job.out("csv"),
        out_top=job.out("top"),
        out_png=job.out("png"),
    )
