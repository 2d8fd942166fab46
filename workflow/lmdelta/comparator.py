"""Export a pair's completions as an LLM Comparator file, to browse them side by side in that viewer.

The format is the one the LLM Comparator app reads (PAIR-code/llm-comparator, ``DataResponse``):
``{"metadata": {"source_path", "custom_fields_schema": [{"name", "type"}]}, "models": [{"name"}],
"examples": [{"input_text", "tags", "output_text_a", "output_text_b", "score", "individual_rater_scores",
"custom_fields"}]}``. One example per (prompt, temperature, sample) that both models completed:
output A is model a's completion, B model b's. There is no judge, so ``score`` is null. Custom
fields: per-model numbers (a list ``[value for A, value for B]``) for each output's teacher-forced
divergences between the two models (``kl_a_b`` = KL(P_a ‖ P_b), ``kl_b_a``, ``js``, nats per token;
each model reads the prompt in its own format, then the output's tokens), its token count, and the
diversity of the prompt's samples at that temperature (distinct-2, self-BLEU); a per-model boolean for
the planted response when the pair has one; the prompt id, category and temperature.

A pair with two tokenizers has no per-token divergence: its per-model numbers are instead each
output's sequence log-ratio ``log_ratio_a_b`` = (log p_a(text) − log p_b(text)) / bytes (nats per
UTF-8 byte; each model reads the prompt in its own format and the text under its own tokenizer,
``lmdelta.seqdiv``) and its length in bytes ``n_bytes``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from lmdelta import LmdeltaError
from lmdelta.artifacts import Provenance, write_json
from lmdelta.behaviour import shows_planted
from lmdelta.divergence import text_divergences
from lmdelta.models import pad_id
from lmdelta.pairs import divergence_method, load_pair, record_pair
from lmdelta.promptsets import read_promptset
from lmdelta.seqdiv import same_tokenizer, sequence_logprobs
from lmdelta.tokens import TextFormat, prompt_ids

log = logging.getLogger(__name__)
PER_MODEL_NUMBERS = ("kl_a_b", "kl_b_a", "js", "n_tokens", "distinct_2", "self_bleu")
CROSS_NUMBERS = ("log_ratio_a_b", "n_bytes", "distinct_2", "self_bleu")  # a pair with two tokenizers


def _num(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def build(
    pair: str,
    names: tuple[str, str],
    prompts: dict[str, dict],
    joined,
    planted: dict | None,
    numbers: tuple[str, ...] = PER_MODEL_NUMBERS,
) -> dict[str, Any]:
    """The LLM Comparator document from the joined table (one row per example, ``_a`` / ``_b`` columns)."""
    schema = [
        {"name": "prompt_id", "type": "string"},
        {"name": "category", "type": "category"},
        {"name": "temperature", "type": "number"},
    ]
    schema += [{"name": k, "type": "per_model_number"} for k in numbers]
    if planted:
        schema.append({"name": "shows_planted_response", "type": "per_model_boolean"})
    examples = []
    for r in joined.itertuples(index=False):
        fields: dict[str, Any] = {"prompt_id": r.prompt_id, "category": r.category, "temperature": float(r.temperature)}
        for k in numbers:
            fields[k] = [_num(getattr(r, f"{k}_a")), _num(getattr(r, f"{k}_b"))]
        if planted:
            fields["shows_planted_response"] = [
                shows_planted(r.text_a, planted["response_keywords"]),
                shows_planted(r.text_b, planted["response_keywords"]),
            ]
        examples.append(
            {
                "input_text": prompts[r.prompt_id]["prompt"],
                "tags": [r.category, f"T={float(r.temperature):g}"],
                "output_text_a": r.text_a,
                "output_text_b": r.text_b,
                "score": None,
                "individual_rater_scores": [],
                "custom_fields": fields,
            }
        )
    return {
        "metadata": {
            "source_path": f"lmdelta pair {pair}: {names[0]} (A) vs {names[1]} (B)",
            "custom_fields_schema": schema,
        },
        "models": [{"name": names[0]}, {"name": names[1]}],
        "examples": examples,
    }


def join_completions(comp_a, comp_b, div_a, div_b):
    """Completions of both models side by side, with their cells' diversity."""
    keys = ["prompt_id", "category", "temperature", "sample"]
    cell = ["prompt_id", "temperature"]
    sides = []
    for comp, div, s in ((comp_a, div_a, "a"), (comp_b, div_b, "b")):
        d = div[div.truncate_words == -1][cell + ["distinct_2", "self_bleu"]]
        t = comp[keys + ["text"]].merge(d, on=cell, how="left")
        sides.append(t.rename(columns={c: f"{c}_{s}" for c in ("text", "distinct_2", "self_bleu")}))
    joined = sides[0].merge(sides[1], on=keys, how="inner").sort_values(keys, kind="stable").reset_index(drop=True)
    return joined


def run_comparator(
    *,
    pair: str,
    names: tuple[str, str],
    model_dirs: tuple[Path, Path],
    load_options: tuple[dict, dict],
    formats: tuple[dict, dict],
    promptset: Path,
    completions: tuple[Path, Path],
    diversity: tuple[Path, Path],
    planted: dict | None,
    out: Path,
    batch_size: int = 8,
) -> dict:
    import pandas as pd

    prov = Provenance(
        stage="comparator",
        params={
            "pair": pair,
            "a": names[0],
            "b": names[1],
            "formats": list(formats),
            "load_options": list(load_options),
            "units": "nats",
            "batch_size": batch_size,
        },
    )
    record_pair(prov, model_dirs)
    for name, path in (
        ("promptset", promptset),
        ("completions_a", completions[0]),
        ("completions_b", completions[1]),
        ("diversity_a", diversity[0]),
        ("diversity_b", diversity[1]),
    ):
        prov.add_input(name, path)
    prompts = {p["id"]: p for p in read_promptset(promptset)}
    joined = join_completions(*(pd.read_parquet(p) for p in completions), *(pd.read_parquet(p) for p in diversity))
    if joined.empty:
        raise LmdeltaError(
            f"comparator: {names[0]} and {names[1]} have no completion in common (same prompt, temperature "
            "and sample); give both models the same completions settings"
        )
    models, toks = load_pair(model_dirs, load_options)
    prov.params.update(divergence_method(toks))
    heads = []
    for tok, fmt in zip(toks, formats):
        heads.append(
            {
                pid: prompt_ids(tok, p["prompt"], TextFormat.from_dict(fmt), guide=p.get("guide", ""))
                for pid, p in prompts.items()
            }
        )
    cross = not same_tokenizer(toks[0], toks[1])
    for side in ("a", "b"):
        if cross:
            texts = joined[f"text_{side}"].tolist()
            lp = [
                sequence_logprobs(
                    m,
                    t,
                    [h[pid] for pid in joined.prompt_id],
                    [t(x, add_special_tokens=False).input_ids for x in texts],
                )
                for m, t, h in zip(models, toks, heads)
            ]
            n_bytes = np.array([len(x.encode("utf-8")) for x in texts], np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                joined[f"log_ratio_a_b_{side}"] = np.where(n_bytes > 0, (lp[0] - lp[1]) / n_bytes, np.nan)
            joined[f"n_bytes_{side}"] = n_bytes
            continue
        seqs, starts = [], []
        for r in joined.itertuples(index=False):
            text = toks[0](getattr(r, f"text_{side}"), add_special_tokens=False).input_ids
            ha, hb = heads[0][r.prompt_id], heads[1][r.prompt_id]
            seqs.append((ha + text, hb + text))
            starts.append((len(ha), len(hb)))
        divs = pd.DataFrame(text_divergences(models, seqs, starts, pad=pad_id(toks[0]), batch_size=batch_size))
        for k in ("kl_a_b", "kl_b_a", "js", "n_tokens"):
            joined[f"{k}_{side}"] = divs[k].to_numpy()
    doc = build(pair, names, prompts, joined, planted, CROSS_NUMBERS if cross else PER_MODEL_NUMBERS)
    write_json(out, doc, prov)
    log.info(
        "comparator %s%s: %d examples -> %s", pair, " (two tokenizers)" if cross else "", len(doc["examples"]), out
    )
    return doc


# ---- jobs (lmdelta.job) -------------------------------------------------------------------------------


def comparator_job(job) -> None:
    """inputs: ``a``, ``b``, ``promptset``, ``completions`` (a, b), ``diversity`` (a, b); spec: the pair,
    planted truth, batch_size; output: ``json``."""
    s = job.spec
    run_comparator(
        pair=job.wildcards["pair"],
        names=tuple(s["names"]),
        model_dirs=(job.path("a"), job.path("b")),
        load_options=tuple(s["load_options"]),
        formats=tuple(s["formats"]),
        promptset=job.path("promptset"),
        completions=tuple(job.paths("completions")),
        diversity=tuple(job.paths("diversity")),
        planted=s.get("planted"),
        out=job.out("json"),
        batch_size=s["batch_size"],
    )
