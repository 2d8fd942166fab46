"""Divergence prompt search with an assistant LM (the DivergenceFinder method), and clustering of the bank.

The loop, per run:

1. Seed prompts are scored and form the bank (cycle 0).
2. Each cycle makes ``requests`` assistant requests. For each, ``shown`` prompts of the bank are drawn
   without replacement with probability ∝ exp(weight / selection_temperature), where
   weight = w_divergence · minmax(divergence) + w_diversity · minmax(novelty) + w_judge · [judge said yes]
   and novelty = 1 − the largest cosine similarity of the prompt's sentence embedding to any other
   prompt of the bank (recomputed every cycle). All weights 0 is uniform sampling (no weighting).
3. The assistant sees the drawn prompts (most divergent first) and is asked for ``proposals`` new
   ones as a JSON list (a local assistant's reply may be started with ``reply_prefix``, e.g. "1.",
   which helps small models write a list). Replies are parsed leniently (JSON list or object, then
   quoted strings, then one prompt per line) and counted by how they parsed; a malformed reply is
   never fatal.
4. New prompts are normalised (case, spaces, trailing punctuation) and deduplicated against the bank
   and each other, filtered by length, optionally judged, then scored and added to the bank with the
   ids of the prompts shown (``parents``).
5. A cycle *fails* when none of its prompts beats the bank's 90th percentile of divergence before the
   cycle; the run stops after ``cycles`` cycles or ``patience`` failed cycles in a row.
6. Re-evaluation (``rescore_top`` = k > 0): at the end of every cycle, the seeds' included, the k
   best prompts of the bank are scored again on ``samples`` fresh continuations and their scores
   become the mean over all their samples (``n_samples`` counts them). A score from a few samples is
   noisy and the best of many noisy scores is mostly luck (the winner's curse); re-scoring the best
   keeps a lucky draw from holding the top of the bank, so the bank's top decile measures prompts,
   not draws. ``top_decile_mean`` of a cycle is computed after its re-evaluation.

Scoring a prompt: ``samples`` continuations are sampled from one model of the pair (``sample_from``)
through the decoding engine, and the divergence between the two models' next-token distributions
(``lmdelta.divergence``) is averaged over generated tokens, then over samples (nats). Scores are
kept in a dict keyed by prompt id and joined to the bank by id, never by list position.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmdelta import LmdeltaError
from lmdelta.artifacts import Provenance, write_csv, write_json, write_parquet
from lmdelta.assistant import Generation, judge, make_assistant
from lmdelta.behaviour import mentions, shows_planted
from lmdelta.config import known_fields, stage_spec
from lmdelta.decoding import sub_seed
from lmdelta.embedding import cluster_bank, cluster_table, embed, load_embedder
from lmdelta.findings import finding, read_findings, write_findings
from lmdelta.models import ForwardCounter, read_fingerprint
from lmdelta.pairs import (
    Scorer,
    divergence_method,
    load_pair,
    normalise,
    pair_scorer,
    pool_scores,
    record_pair,
)
from lmdelta.plots import cluster_figure, save_figure, search_figure
from lmdelta.promptsets import read_promptset
from lmdelta.stats import PairedParams, unpaired

log = logging.getLogger(__name__)

META_PROMPT = (
    "We are looking for prompts on which two AI assistants give very different answers. Here are some prompts "
    "found so far, the most successful first:\n\n{examples}\n\nWrite {n} new prompts in the same spirit. Each "
    "prompt is one self-contained question or instruction for an assistant. Answer with a JSON list of {n} "
    "strings and nothing else."
)
LABEL_PROMPT = (
    "Here are prompts from one group:\n\n{examples}\n\nWhat do these prompts have in common? Answer with a short "
    "label of at most five words and nothing else."
)


@stage_spec("search_run.weighting")
class Weighting:
    divergence: float
    diversity: float
    judge: float


@stage_spec("search_run", elsewhere=("seeds", "seed_findings", "assistant", "n_top", "embedder", "clusters"))
class SearchParams:
    cycles: int
    patience: int
    requests: int
    shown: int
    proposals: int
    weighting: Weighting = field(default_factory=Weighting)
    selection_temperature: float
    judge_criterion: str | None
    divergence: str
    sample_from: str
    samples: int
    max_new_tokens: int
    temperature: float | None
    top_p: float
    top_k: int
    batch_size: int
    rescore_top: int
    reply_prefix: str
    min_chars: int
    max_chars: int
    seed: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchParams:
        kw = known_fields(cls, d, elsewhere=("seeds", "seed_findings", "assistant", "n_top", "embedder", "clusters"))
        if "weighting" in kw:
            kw["weighting"] = Weighting.from_dict(kw["weighting"])
        return cls(**kw)


# ---- parsing the assistant's replies --------------------------------------------------------------------

_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```\s*$")
_QUOTED = re.compile(r'"((?:[^"\\\n]|\\.){3,})"')
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.):]|\(\d+\)|[A-Za-z][.)](?=\s))\s*")


def _strings(value) -> list[str] | None:
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        got = [next((x for x in v.values() if isinstance(x, str)), None) for v in value]
        return [g for g in got if g] or None
    if isinstance(value, dict):
        for v in value.values():
            if (s := _strings(v)) is not None:
                return s
    return None


def parse_proposals(reply: str | None) -> tuple[list[str], str]:
    """(prompts, how) from an assistant reply; how is json, json-like, quoted, lines or none.
    List markers ("1.", "-", "B)") are removed from every prompt."""
    got, how = _parse(reply)
    got = [_BULLET.sub("", g).strip() for g in got]
    return [g for g in got if g], how


def _parse(reply: str | None) -> tuple[list[str], str]:
    if not reply or not reply.strip():
        return [], "none"
    text = _FENCE.sub("", reply.strip())
    try:
        got = _strings(json.loads(text))
        if got is not None:
            return [g.strip() for g in got if g.strip()], "json"
    except ValueError:
        pass
    start, end = text.find("["), text.rfind("]")
    if 0 <= start < end:
        try:
            got = _strings(json.loads(text[start : end + 1]))
            if got is not None:
                return [g.strip() for g in got if g.strip()], "json-like"
        except ValueError:
            pass
    quoted = [json.loads(f'"{q}"') if "\\" in q else q for q in _QUOTED.findall(text)]
    quoted = [q.strip() for q in quoted if len(q.split()) >= 3]
    if quoted:
        return quoted, "quoted"
    lines = [_BULLET.sub("", ln).strip().strip('"').strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if len(ln.split()) >= 3 and not ln.endswith(":") and ln not in "[]{}"]
    return (lines, "lines") if lines else ([], "none")


# ---- selection ----------------------------------------------------------------------------------------


def minmax(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.size == 0:
        return x
    lo, hi = np.nanmin(x), np.nanmax(x)
    return np.zeros_like(x) if not hi > lo else (x - lo) / (hi - lo)


def novelty(embeddings: np.ndarray) -> np.ndarray:
    """1 − the largest cosine similarity of each row to any other row (1 for a bank of one)."""
    e = np.asarray(embeddings, np.float64)
    if len(e) < 2:
        return np.ones(len(e))
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    s = e @ e.T
    np.fill_diagonal(s, -np.inf)
    return 1.0 - s.max(axis=1)


def selection_probabilities(divergence, diversity, judged, w: Weighting, temperature: float) -> np.ndarray:
    """The probability of showing each bank prompt to the assistant (see the module docstring)."""
    score = w.divergence * minmax(divergence) + w.diversity * minmax(diversity)
    score = score + w.judge * np.array([1.0 if j else 0.0 for j in judged])
    z = score / temperature
    p = np.exp(z - z.max())
    return p / p.sum()


# ---- the loop -----------------------------------------------------------------------------------------

Embedder = Callable[[list[str]], np.ndarray]


def _score_of(scores: dict[str, dict], prompt_id: str) -> dict:
    """A prompt's scores, found by its id (never by position)."""
    if prompt_id not in scores:
        raise LmdeltaError(f"search: the scorer returned no score for prompt {prompt_id}")
    return scores[prompt_id]


@dataclass
class Bank:
    """Prompts and their scores, keyed by id (the only link between a prompt and its score)."""

    entries: dict[str, dict] = field(default_factory=dict)
    keys: set[str] = field(default_factory=set)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, items: list[dict], scores: dict[str, dict], embeddings: np.ndarray) -> None:
        for item, vec in zip(items, embeddings):
            self.entries[item["id"]] = {**item, **_score_of(scores, item["id"])}
            self.keys.add(normalise(item["prompt"]))
            self.vectors[item["id"]] = vec

    def ids(self) -> list[str]:
        return list(self.entries)

    def rescore(self, k: int, key: str, score: Scorer, seed: int) -> int:
        """Score the k best prompts (by ``key``, ties by id) again and pool their samples; how many were."""
        if k <= 0:
            return 0
        best = sorted(self.entries.values(), key=lambda e: (-e[key], e["id"]))[:k]
        again = score([{"id": e["id"], "prompt": e["prompt"]} for e in best], seed)
        for e in best:
            self.entries[e["id"]] = pool_scores(e, _score_of(again, e["id"]))
        return len(best)

    def column(self, key: str) -> np.ndarray:
        return np.array([e[key] for e in self.entries.values()], np.float64)


def _examples(prompts: list[str]) -> str:
    return "\n".join(f"{i}. {p}" for i, p in enumerate(prompts, start=1))


def search_loop(
    seeds: list[dict], *, params: SearchParams, score: Scorer, embed: Embedder, assistant, progress: bool = True
) -> tuple[list[dict], list[dict]]:
    """Run the search; return (bank records, one stats record per cycle). ``seeds``: [{"id", "prompt"}]."""
    from tqdm import tqdm

    p = params
    bank = Bank()
    key = p.divergence
    seen, first = set(), []
    for s in seeds:  # duplicate seeds would be scored twice and weigh twice
        if normalise(s["prompt"]) not in seen:
            seen.add(normalise(s["prompt"]))
            first.append(
                {"id": s["id"], "prompt": s["prompt"], "cycle": 0, "request": -1, "parents": [], "source": "seed"}
            )
    if not first:
        raise LmdeltaError("search: no seed prompts; give seeds (a prompt set with at least one prompt)")
    if p.judge_criterion:
        for it, v in zip(
            first, judge(assistant, [x["prompt"] for x in first], p.judge_criterion, seed=sub_seed(p.seed, 0, 2))
        ):
            it["judge"] = v
    bank.add(first, score(first, sub_seed(p.seed, 0, 1)), embed([x["prompt"] for x in first]))
    zero = {
        k: 0
        for k in (
            "requests",
            "failed_requests",
            "json_replies",
            "fallback_replies",
            "unparsed_replies",
            "duplicates",
            "rejected_length",
        )
    }
    rescored = bank.rescore(p.rescore_top, key, score, sub_seed(p.seed, 0, 3))
    cycles = [
        _cycle_stats(bank, 0, key, proposed=len(first), added=len(first), failed=False, rescored=rescored, **zero)
    ]
    failed_run = 0
    bar = tqdm(range(1, p.cycles + 1), desc="search", unit="cycle", disable=not progress, mininterval=1.0)
    for c in bar:
        ids = bank.ids()
        div = bank.column(key)
        threshold = float(np.quantile(div, 0.9))
        novel = novelty(np.stack([bank.vectors[i] for i in ids]))
        for i, n in zip(ids, novel):
            bank.entries[i]["diversity"] = float(n)
        probs = selection_probabilities(
            div, novel, [bank.entries[i].get("judge") for i in ids], p.weighting, p.selection_temperature
        )
        messages, shown_ids = [], []
        for r in range(p.requests):
            rng = np.random.default_rng(sub_seed(p.seed, c, 100 + r))
            k = min(p.shown, len(ids))
            pick = rng.choice(len(ids), size=k, replace=False, p=probs)
            pick = sorted(pick, key=lambda j: -div[j])  # most divergent first
            shown_ids.append([ids[j] for j in pick])
            messages.append(
                META_PROMPT.format(examples=_examples([bank.entries[ids[j]]["prompt"] for j in pick]), n=p.proposals)
            )
        failures_before = getattr(assistant, "failures", 0)
        replies = assistant.complete(messages, seed=sub_seed(p.seed, c, 0), prefix=p.reply_prefix)
        stats = {
            "requests": len(messages),
            "failed_requests": getattr(assistant, "failures", 0) - failures_before,
            "json_replies": 0,
            "fallback_replies": 0,
            "unparsed_replies": 0,
            "proposed": 0,
            "duplicates": 0,
            "rejected_length": 0,
        }
        new: list[dict] = []
        for r, reply in enumerate(replies):
            got, how = parse_proposals(reply)
            if reply is not None:
                stats[
                    "json_replies" if how == "json" else "unparsed_replies" if how == "none" else "fallback_replies"
                ] += 1
            for text in got[: p.proposals]:
                stats["proposed"] += 1
                k_ = normalise(text)
                if not p.min_chars <= len(text) <= p.max_chars:
                    stats["rejected_length"] += 1
                elif k_ in bank.keys or k_ in {normalise(x["prompt"]) for x in new}:
                    stats["duplicates"] += 1
                else:
                    new.append(
                        {
                            "id": f"c{c:02d}-{len(new):03d}",
                            "prompt": text,
                            "cycle": c,
                            "request": r,
                            "parents": shown_ids[r],
                            "source": "assistant",
                        }
                    )
        if new and p.judge_criterion:
            for it, v in zip(
                new, judge(assistant, [x["prompt"] for x in new], p.judge_criterion, seed=sub_seed(p.seed, c, 2))
            ):
                it["judge"] = v
        failed = True
        if new:
            scores = score(new, sub_seed(p.seed, c, 1))
            bank.add(new, scores, embed([x["prompt"] for x in new]))
            failed = not any(scores[x["id"]][key] > threshold for x in new)
        failed_run = failed_run + 1 if failed else 0
        stats["rescored"] = bank.rescore(p.rescore_top, key, score, sub_seed(p.seed, c, 3))
        cycles.append(_cycle_stats(bank, c, key, added=len(new), failed=failed, threshold=threshold, **stats))
        bar.set_postfix(bank=len(bank.entries), top10=f"{cycles[-1]['top_decile_mean']:.3f}", failed=failed_run)
        log.info(
            "search cycle %d: %d proposed, %d added, top-decile mean %s %.4f%s",
            c,
            stats["proposed"],
            len(new),
            key,
            cycles[-1]["top_decile_mean"],
            " (failed)" if failed else "",
        )
        if failed_run >= p.patience:
            log.info("search: stopping after %d failed cycles in a row", failed_run)
            break
    bar.close()
    ids = bank.ids()
    for i, n in zip(ids, novelty(np.stack([bank.vectors[i] for i in ids]))):
        bank.entries[i]["diversity"] = float(n)
    return list(bank.entries.values()), cycles


def scoring(params: SearchParams) -> dict[str, Any]:
    """The prompt scorer's settings (``lmdelta.pairs.pair_scorer``) from the search's."""
    return {
        k: getattr(params, k)
        for k in (
            "divergence",
            "sample_from",
            "samples",
            "max_new_tokens",
            "temperature",
            "top_p",
            "top_k",
            "batch_size",
        )
    }


def top_decile_mean(values) -> float:
    return top_k_mean(values, max(1, math.ceil(len(values) / 10)))


def top_k_mean(values, k: int = 10) -> float:
    """Mean of the k best (all when fewer): unlike the decile, a fixed number of prompts, so it does
    not change meaning as the bank grows."""
    v = np.sort(np.asarray(values, np.float64))[::-1]
    return float(v[:k].mean())


def _cycle_stats(
    bank: Bank, cycle: int, key: str, *, added: int, failed: bool, threshold: float = math.nan, **stats
) -> dict:
    div = bank.column(key)
    new = [e[key] for e in bank.entries.values() if e["cycle"] == cycle]
    return {
        "cycle": cycle,
        **stats,
        "added": added,
        "failed": failed,
        "threshold": threshold,
        "bank_size": len(div),
        "new_mean": float(np.mean(new)) if new else math.nan,
        "new_max": float(np.max(new)) if new else math.nan,
        "bank_max": float(div.max()),
        "top_decile_mean": top_decile_mean(div),
        "top10_mean": top_k_mean(div, 10),
    }


# ---- scoring with the pair ----------------------------------------------------------------------------


# ---- files at the edge --------------------------------------------------------------------------------


def bank_findings(bank, run: str) -> list[dict]:
    """The bank as findings: every prompt (method ``search``, by rank, score = its divergence in nats)
    and, as a reference, the seed prompts alone (cycle 0, ``search seeds``)."""
    ranked = bank.sort_values("rank", kind="stable")
    return [
        finding(method, run, "prompt", r.divergence, prompt=r.prompt, example=r.example, reference=ref)
        for method, ref, part in (("search", False, ranked), ("search seeds", True, ranked[ranked.cycle == 0]))
        for r in part.itertuples()
    ]


def finding_seeds(paths: list[Path], n: int, word_template: str) -> list[dict]:
    """Seed prompts from other methods' findings: the ``n`` best of each table (reference rows left
    out); a finding with a prompt gives its prompt, a word gives ``word_template`` with the word. A
    prompt is used once (the scan's answer words share their word's question)."""
    seeds: list[dict] = []
    seen: set[str] = set()
    for path in paths:
        rows = sorted((r for r in read_findings(path) if not r["reference"]), key=lambda r: (r["method"], r["rank"]))
        taken = 0
        for r in rows:
            if taken == n:
                break
            prompt = r["prompt"] or (word_template.format(word=r["text"]) if r["kind"] in ("word", "token") else None)
            if prompt and prompt not in seen:
                seen.add(prompt)
                taken += 1
                seeds.append({"id": f"finding-{r['method']}-{r['run']}-{r['rank']}", "prompt": prompt})
    return seeds


def run_search(
    *,
    pair: str,
    run: str,
    names: tuple[str, str],
    model_dirs: tuple[Path, Path],
    params: SearchParams,
    load_options: tuple[dict, dict],
    formats: tuple[dict, dict],
    assistant_spec: dict[str, Any],
    assistant_dir: Path | None,
    assistant_load_options: dict | None,
    assistant_format: dict | None,
    seeds_file: Path,
    seed_findings: list[Path] = (),
    seed_findings_n: int = 0,
    word_template: str = "Tell me about {word}.",
    planted: dict | None,
    embedder: str | None,
    out_bank: Path,
    out_cycles: Path,
    out_top: Path,
    out_png: Path,
    out_summary: Path,
    out_findings: Path,
    n_top: int = 20,
    statistics: PairedParams | None = None,
) -> list[dict]:
    import pandas as pd

    prov = Provenance(
        stage="search",
        params={
            "pair": pair,
            "run": run,
            "a": names[0],
            "b": names[1],
            **asdict(params),
            "assistant": assistant_spec,
            "embedder": embedder,
            "formats": list(formats),
            "load_options": list(load_options),
            "units": "nats",
        },
        seed=params.seed,
    )
    record_pair(prov, model_dirs)
    if assistant_dir is not None:
        prov.inputs["assistant"] = {
            "path": str(assistant_dir),
            "fingerprint": read_fingerprint(assistant_dir)["digest"],
        }
    prov.add_input("seeds", seeds_file)
    seeds = [{"id": s["id"], "prompt": s["prompt"]} for s in read_promptset(seeds_file)]
    for i, path in enumerate(seed_findings):
        prov.add_input(f"seed_findings:{i}", path)
    seeds += finding_seeds(list(seed_findings), seed_findings_n, word_template)
    models, toks = load_pair(model_dirs, load_options)
    loaded = list(zip(models, toks))
    prov.params.update(divergence_method(toks))  # per token with one tokenizer, per byte across two
    reuse = None  # the assistant is often a model of the pair: load it once
    if "model" in assistant_spec and assistant_dir is not None:
        for d, o, lm in zip(model_dirs, load_options, loaded):
            if Path(d).resolve() == Path(assistant_dir).resolve() and o == assistant_load_options:
                reuse = lm
    assistant = make_assistant(
        assistant_spec, model_dir=assistant_dir, load_options=assistant_load_options, fmt=assistant_format, loaded=reuse
    )
    embedder_model = load_embedder(embedder)
    calls = ForwardCounter(
        *models, *([assistant.model] if hasattr(assistant, "model") and not isinstance(assistant.model, str) else [])
    )
    records, cycles = search_loop(
        seeds,
        params=params,
        score=pair_scorer(models, toks, list(formats), **scoring(params)),
        embed=lambda texts: embed(embedder_model, texts, batch_size=64, autocast="none"),
        assistant=assistant,
    )
    prov.params["model_calls"] = calls.n  # the pair's and a local assistant's forward calls
    bank = bank_frame(records, params.divergence, planted)
    cyc = pd.DataFrame(cycles)
    write_parquet(out_bank, bank, prov)
    write_findings(out_findings, bank_findings(bank, run), prov)
    write_csv(out_cycles, cyc, prov)
    top_cols = ["rank", "id", "cycle", "divergence", "kl_a_b", "kl_b_a", "js", "diversity", "prompt", "example"]
    top_cols += [c for c in ("mentions_trigger", "shows_response") if c in bank]
    write_csv(out_top, bank.head(n_top)[top_cols], prov)
    summary = {
        "pair": pair,
        "run": run,
        "divergence": params.divergence,
        "cycles_run": int(cyc.cycle.max()),
        "bank_size": len(bank),
        "top_decile_mean_by_cycle": cyc.top_decile_mean.round(6).tolist(),
        "top10_mean_by_cycle": cyc.top10_mean.round(6).tolist(),
        **{
            k: int(cyc[k].fillna(0).sum())
            for k in (
                "requests",
                "failed_requests",
                "json_replies",
                "fallback_replies",
                "unparsed_replies",
                "proposed",
                "duplicates",
                "added",
            )
        },
    }
    summary["proposals_vs_seeds"] = proposals_vs_seeds(bank, statistics or PairedParams.from_dict({}))
    if planted:
        summary["planted"] = planted_summary(bank, planted)
    write_json(out_summary, summary, prov)
    save_figure(search_figure(bank, cyc, f"{pair} / {run}", params.divergence), out_png, prov)
    log.info("search %s/%s: %d prompts over %d cycles -> %s", pair, run, len(bank), summary["cycles_run"], out_bank)
    return records


def proposals_vs_seeds(bank, statistics: PairedParams) -> dict | None:
    """Does the assistant propose prompts on which the pair diverges more than on the seeds? Every
    proposal (cycle >= 1) against every seed (cycle 0), by the run's divergence: the difference of the
    means with its bootstrap interval and a permutation test (lmdelta.stats.unpaired; the unit is the
    prompt). All proposals, not the top ones: the best of many, picked by the same scores, would be
    compared with a bias in their favour. None with fewer than two of either."""
    seeds, proposals = bank[bank.cycle == 0].divergence, bank[bank.cycle > 0].divergence
    if len(seeds) < 2 or len(proposals) < 2:
        return None
    return {"unit": "prompt", **unpaired(proposals.to_numpy(), seeds.to_numpy(), params=statistics)}


def bank_frame(records: list[dict], key: str, planted: dict | None):
    """The bank as a table ranked by divergence, with ground-truth columns when a behaviour was planted."""
    import pandas as pd

    df = pd.DataFrame(records)
    df.insert(3, "divergence", df[key])
    if "judge" not in df:
        df["judge"] = None
    df = df.sort_values(["divergence", "id"], ascending=[False, True], kind="stable").reset_index(drop=True)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    if planted:
        df["mentions_trigger"] = [mentions(t, planted["trigger_keywords"]) for t in df.prompt]
        df["shows_response"] = [shows_planted(t, planted["response_keywords"]) for t in df.example]
    return df


def planted_summary(bank, planted: dict) -> dict:
    """How strongly the bank's best prompts point at the planted trigger, against the bank and the seeds."""
    n = len(bank)
    top_k = min(10, n)
    decile = max(1, math.ceil(n / 10))
    seeds = bank[bank.cycle == 0]
    found = bank[bank.cycle > 0]
    return {
        "trigger_keywords": planted["trigger_keywords"],
        "precision_at_10_trigger": float(bank.mentions_trigger.head(top_k).mean()),
        "top_decile_trigger_rate": float(bank.mentions_trigger.head(decile).mean()),
        "bank_trigger_rate": float(bank.mentions_trigger.mean()),
        "seed_trigger_rate": float(seeds.mentions_trigger.mean()) if len(seeds) else math.nan,
        "proposed_trigger_rate": float(found.mentions_trigger.mean()) if len(found) else math.nan,
        "precision_at_10_response": float(bank.shows_response.head(top_k).mean()),
        "bank_response_rate": float(bank.shows_response.mean()),
    }


# ---- clustering ---------------------------------------------------------------------------------------


def _label(reply: str | None) -> str:
    lines = [ln for ln in (reply or "").strip().splitlines() if ln.strip()]
    return _BULLET.sub("", lines[0]).strip(" \"'*.") if lines else ""


def run_clusters(
    *,
    bank_path: Path,
    k: int,
    seed: int,
    embedder: str | None,
    assistant_spec: dict | None,
    assistant_dir: Path | None,
    assistant_load_options: dict | None,
    assistant_format: dict | None,
    out_parquet: Path,
    out_csv: Path,
    out_png: Path,
):
    import pandas as pd

    prov = Provenance(
        stage="search_clusters", params={"k": k, "embedder": embedder, "labels": assistant_spec}, seed=seed
    )
    prov.add_input("bank", bank_path)
    bank = pd.read_parquet(bank_path)
    if len(bank) == 0:
        raise LmdeltaError(f"search clusters: {bank_path} holds no prompts; rerun the search")
    vectors = embed(load_embedder(embedder), bank.prompt.tolist(), batch_size=64, autocast="none")
    assigned, table = cluster_table(bank, cluster_bank(vectors, k=k, seed=seed))
    if assistant_spec is not None:
        assistant = make_assistant(
            assistant_spec, model_dir=assistant_dir, load_options=assistant_load_options, fmt=assistant_format
        )
        msgs = [
            LABEL_PROMPT.format(
                examples=_examples(
                    assigned[assigned.cluster == c].sort_values("divergence", ascending=False).prompt.head(6).tolist()
                )
            )
            for c in table.cluster
        ]
        replies = assistant.complete(msgs, seed=sub_seed(seed, 7), gen=Generation(temperature=None, max_new_tokens=16))
        table.insert(1, "label", [_label(r) for r in replies])
    write_parquet(out_parquet, assigned, prov)
    write_csv(out_csv, table, prov)
    save_figure(cluster_figure(table), out_png, prov)
    return table


# ---- jobs (lmdelta.job) -------------------------------------------------------------------------------


def assistant_args(spec: dict) -> dict:
    """The assistant of a search or clusters job: its spec, the model folder of a local one, its load
    options and prompt format (all None without an assistant)."""
    a = spec.get("assistant")
    if not a:
        return {"assistant_spec": None, "assistant_dir": None, "assistant_load_options": None, "assistant_format": None}
    return {
        "assistant_spec": a["spec"],
        "assistant_dir": Path(a["dir"]) if a.get("dir") else None,
        "assistant_load_options": a.get("load_options"),
        "assistant_format": a.get("format"),
    }


def search_job(job) -> None:
    """inputs: ``a``, ``b``, ``seeds`` (+ the assistant's model); spec: the pair with its run, the assistant,
    planted truth; outputs: ``bank``, ``cycles``, ``top``, ``png``, ``summary``, ``findings``."""
    s = job.spec
    run = s["run"]
    run_search(
        pair=job.wildcards["pair"],
        run=job.wildcards["run"],
        names=tuple(s["names"]),
        model_dirs=(job.path("a"), job.path("b")),
        params=SearchParams.from_dict(run),
        load_options=tuple(s["load_options"]),
        formats=tuple(s["formats"]),
        **assistant_args(s),
        seeds_file=job.path("seeds"),
        seed_findings=job.paths("seed_findings") if "seed_findings" in job.inputs else [],
        seed_findings_n=run["seed_findings"]["n"],
        word_template=s["word_template"],
        planted=s.get("planted"),
        embedder=run["embedder"],
        out_bank=job.out("bank"),
        out_cycles=job.out("cycles"),
        out_top=job.out("top"),
        out_png=job.out("png"),
        out_summary=job.out("summary"),
        out_findings=job.out("findings"),
        n_top=run["n_top"],
        statistics=PairedParams.from_dict(s["statistics"]),
    )


def clusters_job(job) -> None:
    """input: ``bank``; spec: {"k", "seed", "embedder", "assistant"?}; outputs: ``parquet``, ``csv``, ``png``."""
    s = job.spec
    run_clusters(
        bank_path=job.path("bank"),
        k=s["k"],
        seed=s["seed"],
        embedder=s["embedder"],
        **assistant_args(s),
        out_parquet=job.out("parquet"),
        out_csv=job.out("csv"),
        out_png=job.out("png"),
    )
