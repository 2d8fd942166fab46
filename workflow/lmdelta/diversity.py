"""Output-diversity metrics of a set of texts (one cell: a model, a prompt, a temperature).

Direction of each metric (↑ diverse: higher means more diverse; ↑ similar: higher means more alike):

| metric | direction | definition |
|---|---|---|
| distinct_{1..4} | ↑ diverse | unique n-grams / all n-grams, pooled over the cell's texts |
| ngram_diversity | ↑ diverse | sum of distinct_1..4 (0 to 4) |
| self_bleu | ↑ similar | mean over texts of BLEU(text; the other texts as references), 0 to 1; sacrebleu, tokenize 13a, smooth_method exp, effective order |
| jaccard_{2..4} | ↑ similar | mean over pairs of |A ∩ B| / |A ∪ B| of the two texts' n-gram sets |
| compression_ratio | ↑ similar | bytes of the texts joined by newlines / bytes of their gzip (level 9, header included) |
| ncd | ↑ diverse | mean over pairs of the normalised compression distance (gzip level 9) |
| embedding_cosine | ↑ similar | mean over pairs of the cosine similarity of sentence embeddings |
| vendi_cosine | ↑ diverse | Vendi score with the cosine-similarity kernel of the embeddings (1 to n) |
| vendi_ngram | ↑ diverse | Vendi score with the cosine kernel of n-gram (1-4) count vectors (1 to n) |
| lc_q{2..6} | ↑ diverse | Leinster–Cobbold similarity-sensitive diversity of order q, uniform weights, similarity = embedding cosine clipped to [0, 1] (1 to n) |

Paired comparisons (``paired_table``, ``paired.csv``): for every pair of the config whose two models
both have completions of the prompt set, the prompts are the units (each prompt's cell of a against
its cell of b, at the same temperature and truncation): the mean difference a - b of every metric
with its bootstrap interval over prompts and Wilcoxon's signed-rank test (bounded metrics with ties),
Holm-corrected over the whole table. A cell's texts are not independent draws of the metric, so the
prompt, not the text, is the unit.

Words are ``re.findall(r"\\w+|[^\\w\\s]", text.lower())``. A cell whose texts hold no n-gram of some
order gets NaN for the metrics of that order (stated, not silent). The Vendi score is computed here
(eigenvalues of K/n, exp of their Shannon entropy; Friedman & Dieng 2023) rather than with the
``vendi-score`` package, an unmaintained sdist that pulls in scikit-learn for these few lines.
"""

from __future__ import annotations

import gzip
import itertools
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lmdelta.artifacts import Provenance, write_csv, write_parquet
from lmdelta.embedding import DEFAULT_EMBEDDER, embed, load_embedder
from lmdelta.models import resolve_autocast
from lmdelta.plots import diversity_figure, save_figure
from lmdelta.stats import PairedParams, corrected_table, paired_metrics

if TYPE_CHECKING:
    import pandas as pd

_WORD = re.compile(r"\w+|[^\w\s]")
Q_VALUES = (2, 3, 4, 5, 6)

DIRECTION = {
    **{f"distinct_{n}": "diverse" for n in (1, 2, 3, 4)},
    "ngram_diversity": "diverse",
    "self_bleu": "similar",
    **{f"jaccard_{n}": "similar" for n in (2, 3, 4)},
    "compression_ratio": "similar",
    "ncd": "diverse",
    "embedding_cosine": "similar",
    "vendi_cosine": "diverse",
    "vendi_ngram": "diverse",
    **{f"lc_q{q}": "diverse" for q in Q_VALUES},
}


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def truncate_words(text: str, k: int | None) -> str:
    """The first ``k`` whitespace-separated words (all when ``k`` is None)."""
    return text if k is None else " ".join(text.split()[:k])


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(token_lists: Sequence[Sequence[str]], n: int) -> float:
    grams = [g for t in token_lists for g in ngrams(t, n)]
    return len(set(grams)) / len(grams) if grams else math.nan


def ngram_diversity(token_lists: Sequence[Sequence[str]], ns: Sequence[int] = (1, 2, 3, 4)) -> float:
    return float(sum(distinct_n(token_lists, n) for n in ns))


def self_bleu(texts: Sequence[str]) -> float:
    """Mean BLEU of each text against all the others (0 to 1).

    sacrebleu's sentence BLEU (tokenize 13a, smooth exp, effective order), with each text tokenised
    and counted once per cell instead of once per use as a reference (25x fewer passes for 25
    samples); equal to ``BLEU.sentence_score`` (tested).
    """
    from sacrebleu.metrics import BLEU
    from sacrebleu.metrics.helpers import extract_all_word_ngrams

    if len(texts) < 2:
        return math.nan
    bleu = BLEU(tokenize="13a", smooth_method="exp", effective_order=True)
    stats = [extract_all_word_ngrams(bleu.tokenizer(t.rstrip()), 1, 4) for t in texts]
    scores = []
    for i, (hyp, hyp_len) in enumerate(stats):
        refs = [stats[j] for j in range(len(stats)) if j != i]
        correct, total = [0] * 4, [0] * 4
        for gram, count in hyp.items():
            n = len(gram) - 1
            total[n] += count
            best = max(r[0].get(gram, 0) for r in refs)
            correct[n] += min(count, best)
        ref_len = min((abs(hyp_len - r[1]), r[1]) for r in refs)[1]  # closest, the shorter on ties
        scores.append(
            BLEU.compute_bleu(correct, total, hyp_len, ref_len, smooth_method="exp", effective_order=True).score
        )
    return float(np.mean(scores) / 100)


def _pairs(n: int):
    return itertools.combinations(range(n), 2)


def pairwise_jaccard(token_lists: Sequence[Sequence[str]], n: int) -> float:
    sets = [set(ngrams(t, n)) for t in token_lists]
    vals = [len(sets[i] & sets[j]) / len(sets[i] | sets[j]) for i, j in _pairs(len(sets)) if sets[i] | sets[j]]
    return float(np.mean(vals)) if vals else math.nan


def _gz(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def compression_ratio(texts: Sequence[str]) -> float:
    raw = "\n".join(texts).encode("utf-8")
    return len(raw) / _gz(raw) if raw else math.nan


def pairwise_ncd(texts: Sequence[str]) -> float:
    """Mean normalised compression distance (C(xy) - min(C(x), C(y))) / max(C(x), C(y))."""
    enc = [t.encode("utf-8") for t in texts]
    c = [_gz(e) for e in enc]
    vals = [(_gz(enc[i] + enc[j]) - min(c[i], c[j])) / max(c[i], c[j]) for i, j in _pairs(len(enc))]
    return float(np.mean(vals)) if vals else math.nan


def cosine_matrix(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings, np.float64)
    x = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    return x @ x.T


def mean_offdiagonal(s: np.ndarray) -> float:
    n = len(s)
    return float((s.sum() - np.trace(s)) / (n * (n - 1))) if n > 1 else math.nan


def vendi(k: np.ndarray) -> float:
    """Vendi score of a similarity (kernel) matrix with unit diagonal: exp(entropy of eig(K / n))."""
    n = len(k)
    w = np.linalg.eigvalsh(np.asarray(k, np.float64) / n)
    w = w[w > 1e-12]
    return float(np.exp(-(w * np.log(w)).sum()))


def ngram_kernel(token_lists: Sequence[Sequence[str]], ns: Sequence[int] = (1, 2, 3, 4)) -> np.ndarray:
    """Cosine similarity of the texts' n-gram count vectors (all orders in ``ns`` pooled)."""
    counts = [Counter(g for n in ns for g in ngrams(t, n)) for t in token_lists]
    vocab = {g: i for i, g in enumerate(sorted(set().union(*counts)))} if counts else {}
    m = np.zeros((len(counts), max(1, len(vocab))))
    for r, c in enumerate(counts):
        for g, v in c.items():
            m[r, vocab[g]] = v
    norms = np.linalg.norm(m, axis=1)
    m = m / np.where(norms > 0, norms, 1)[:, None]
    k = m @ m.T
    np.fill_diagonal(k, 1.0)  # an empty text is identical to itself
    return k


def leinster_cobbold(z: np.ndarray, q: float) -> float:
    """Similarity-sensitive diversity of order q (q != 1) with uniform weights: (Σ p_i (Zp)_i^(q-1))^(1/(1-q))."""
    n = len(z)
    p = np.full(n, 1.0 / n)
    zp = np.asarray(z, np.float64) @ p
    return float((p * zp ** (q - 1)).sum() ** (1.0 / (1.0 - q)))


def cell_metrics(texts: Sequence[str], embeddings: np.ndarray, q_values: Sequence[int] = Q_VALUES) -> dict[str, float]:
    """Every metric of one cell; ``embeddings`` are the texts' sentence embeddings, in order."""
    toks = [words(t) for t in texts]
    out: dict[str, float] = {f"distinct_{n}": distinct_n(toks, n) for n in (1, 2, 3, 4)}
    out["ngram_diversity"] = ngram_diversity(toks)
    out["self_bleu"] = self_bleu(texts)
    out.update({f"jaccard_{n}": pairwise_jaccard(toks, n) for n in (2, 3, 4)})
    out["compression_ratio"] = compression_ratio(texts)
    out["ncd"] = pairwise_ncd(texts)
    s = cosine_matrix(embeddings)  # computed once, used by every embedding metric
    out["embedding_cosine"] = mean_offdiagonal(s)
    out["vendi_cosine"] = vendi(s)
    out["vendi_ngram"] = vendi(ngram_kernel(toks))
    z = np.clip(s, 0.0, 1.0)
    out.update({f"lc_q{q}": leinster_cobbold(z, q) for q in q_values})
    return out


def run_diversity(
    completions: str | Path,
    out: str | Path,
    *,
    truncations: list[int | None],
    embedder: str | None,
    batch_size: int = 128,
    autocast: str = "auto",
    q_values: Sequence[int] = Q_VALUES,
) -> pd.DataFrame:
    """Per (prompt, temperature, truncation) cell: every metric; written to ``out`` with provenance."""
    import pandas as pd
    from tqdm import tqdm

    prov = Provenance(
        stage="diversity",
        params={
            "truncations": truncations,
            "embedder": embedder or DEFAULT_EMBEDDER,
            "embed_autocast": autocast,
            "embed_batch_size": batch_size,
            "q_values": list(q_values),
            "words": _WORD.pattern,
            "self_bleu": "sacrebleu tokenize=13a smooth_method=exp effective_order",
            "gzip_level": 9,
            "directions": DIRECTION,
        },
    )
    prov.add_input("completions", completions)
    df = pd.read_parquet(completions)
    model = load_embedder(embedder)

    autocast = prov.params["embed_autocast_used"] = resolve_autocast(autocast, model.device, where="diversity.embedder")
    variants = {k: [truncate_words(t, k) for t in df.text] for k in truncations}
    unique = sorted({t for texts in variants.values() for t in texts})
    vectors = embed(model, unique, batch_size=batch_size, autocast=autocast)
    index = {t: i for i, t in enumerate(unique)}  # every distinct text is embedded once
    rows = []
    cells = list(df.groupby(["prompt_id", "category", "temperature"], sort=True).indices.items())
    for k in truncations:
        texts = variants[k]
        for (prompt_id, category, temp), idx in tqdm(cells, desc=f"diversity k={k}", mininterval=2.0):
            cell = [texts[i] for i in idx]
            emb = vectors[[index[t] for t in cell]]
            rows.append(
                {
                    "prompt_id": prompt_id,
                    "category": category,
                    "temperature": float(temp),
                    "truncate_words": -1 if k is None else k,
                    "n_texts": len(cell),
                    **cell_metrics(cell, emb, q_values),
                }
            )
    result = pd.DataFrame(rows)
    write_parquet(out, result, prov)
    return result


def summary_table(per_model: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Mean of every metric over the prompts of a category, per model, temperature and truncation."""
    import pandas as pd

    parts = []
    for name, df in per_model.items():
        g = df.groupby(["category", "temperature", "truncate_words"], sort=True)[list(DIRECTION)].mean().reset_index()
        g.insert(0, "model", name)
        parts.append(g)
    return pd.concat(parts, ignore_index=True)


FIGURE_METRICS = ["distinct_2", "self_bleu", "ncd", "embedding_cosine", "vendi_cosine", "lc_q2"]


CELL = ["category", "temperature", "truncate_words"]


def paired_table(
    promptset: str, per_model: dict[str, pd.DataFrame], pairs: list[dict[str, str]], params: PairedParams
) -> pd.DataFrame:
    """Every pair's metrics compared prompt by prompt, per category, temperature and truncation (see
    the module docstring)."""

    rows = []
    for pair in pairs:
        a, b = (per_model[pair[s]] for s in "ab")
        cells_b = dict(list(b.groupby(CELL, sort=True)))
        for key, ga in a.groupby(CELL, sort=True):
            if key not in cells_b:
                continue
            found = paired_metrics(
                ga.set_index("prompt_id"),
                cells_b[key].set_index("prompt_id"),
                unit="prompt",
                metrics=list(DIRECTION),
                test="wilcoxon",
                params=params,
            )
            head = {
                "promptset": promptset,
                "pair": pair["pair"],
                "a": pair["a"],
                "b": pair["b"],
                **dict(zip(CELL, key)),
            }
            rows += [head | {"metric": r["metric"], "direction": DIRECTION[r["metric"]]} | r for r in found]
    cols = ["promptset", "pair", "a", "b", *CELL, "metric", "direction", "unit", "n", "mean_a", "mean_b", "diff"]
    cols += ["diff_low", "diff_high", "test", "p"]
    return corrected_table(rows, cols)


def run_compare(
    promptset: str,
    models: list[str],
    inputs: list[Path],
    out_csv: Path,
    out_png: Path,
    *,
    pairs: list[dict[str, str]] = (),
    params: PairedParams | None = None,
    out_paired: Path | None = None,
) -> pd.DataFrame:
    """Combined table across models (category means) and the figure of the whole-text metrics; with
    ``out_paired``, the paired comparisons of ``pairs`` on the prompts."""
    import pandas as pd

    params = params or PairedParams.from_dict({})
    prov = Provenance(
        stage="compare_diversity",
        params={
            "promptset": promptset,
            "models": models,
            "aggregate": "mean over prompts",
            "pairs": list(pairs),
            "statistics": vars(params),
        },
    )
    for m, p in zip(models, inputs):
        prov.add_input(f"diversity:{m}", p)
    per_model = {m: pd.read_parquet(p) for m, p in zip(models, inputs)}
    table = summary_table(per_model)
    write_csv(out_csv, table, prov)
    if out_paired is not None:
        write_csv(out_paired, paired_table(promptset, per_model, list(pairs), params), prov)
    whole = table[table["truncate_words"] == -1]
    save_figure(
        diversity_figure(whole, FIGURE_METRICS, DIRECTION, f"Output diversity on prompt set {promptset} (whole texts)"),
        out_png,
        prov,
    )
    return table


# ---- jobs (lmdelta.job) -------------------------------------------------------------------------------


def diversity_job(job) -> None:
    """input: ``completions``; spec: the diversity section; output: ``diversity``."""
    s = job.spec
    run_diversity(
        job.path("completions"),
        job.out("diversity"),
        truncations=s["truncations"],
        embedder=s["embedder"],
        batch_size=s["batch_size"],
        autocast=s["autocast"],
    )


def compare_job(job) -> None:
    """input: ``diversity`` (one per model of spec ``models``); spec: ``models``, ``pairs``,
    ``statistics``; outputs: ``csv``, ``paired``, ``png``."""
    run_compare(
        job.wildcards["promptset"],
        job.spec["models"],
        job.paths("diversity"),
        job.out("csv"),
        job.out("png"),
        pairs=job.spec["pairs"],
        params=PairedParams.from_dict(job.spec["statistics"]),
        out_paired=job.out("paired"),
    )
