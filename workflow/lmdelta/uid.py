"""Surprisal and Uniform Information Density (UID) metrics of texts, and comparisons between sources.

Surprisal is in bits: ``-logprob / ln 2`` of each scored token (logprobs from ``lmdelta.scoring``).
Per document, for the token surprisals s_1..s_N:

| metric | definition |
|---|---|
| n_tokens | N |
| mean / median / max | of s |
| uid_var_doc | (1/N) Σ (s_i - mean(s))²  (bits²; normaliser N) |
| uid_var_corpus | (1/N) Σ (s_i - μ)², μ = mean surprisal of all tokens of the source |
| uid_pairwise_sq | (1/(N-1)) Σ (s_{i+1} - s_i)²  (normaliser N-1) |
| uid_pairwise_abs | (1/(N-1)) Σ abs(s_{i+1} - s_i) |
| power_k | ((1/N) Σ s_i^k)^(1/k) for k in 0.5, 1, 1.5, 2, 2.5, 3 |

Length control: the same metrics on the first L tokens only; documents shorter than L are left out
of that table (so that every document contributes exactly L tokens). Word level (option): token
surprisals are summed into the words they belong to before any metric.

Comparisons between two sources, per metric: Mann-Whitney U (two-sided), Cohen's d (pooled SD),
a percentile bootstrap CI of the difference of means (seeded), and Holm-corrected p-values over all
the comparisons of a table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

POWER_KS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
METRICS = ("mean", "median", "max", "uid_var_doc", "uid_var_corpus", "uid_pairwise_sq", "uid_pairwise_abs",
           *(f"power_{k:g}" for k in POWER_KS))


def surprisal_bits(logprob_nats) -> np.ndarray:
    return -np.asarray(logprob_nats, np.float64) / math.log(2)


def doc_metrics(s: Sequence[float], corpus_mean: float) -> dict[str, float]:
    """Every per-document metric of one surprisal sequence (bits); see the module docstring."""
    s = np.asarray(s, np.float64)
    n = len(s)
    if n == 0:
        raise ValueError("a document with no scored token has no UID metrics")
    mean = float(s.mean())
    diffs = np.diff(s)
    out = {
        "n_tokens": n,
        "mean": mean,
        "median": float(np.median(s)),
        "max": float(s.max()),
        "uid_var_doc": float(((s - mean) ** 2).mean()),
        "uid_var_corpus": float(((s - corpus_mean) ** 2).mean()),
        "uid_pairwise_sq": float((diffs ** 2).sum() / (n - 1)) if n > 1 else math.nan,
        "uid_pairwise_abs": float(np.abs(diffs).sum() / (n - 1)) if n > 1 else math.nan,
    }
    for k in POWER_KS:
        out[f"power_{k:g}"] = float(np.mean(s ** k) ** (1.0 / k))
    return out


def word_surprisals(s: Sequence[float], word_ids: Sequence[int]) -> np.ndarray:
    """Sum token surprisals into words: ``word_ids[i]`` is the word of token i (non-decreasing)."""
    s = np.asarray(s, np.float64)
    ids = np.asarray(word_ids)
    _, starts = np.unique(ids, return_index=True)
    return np.add.reduceat(s, np.sort(starts))


def first_tokens(s: Sequence[float], length: int | None) -> np.ndarray | None:
    """The first ``length`` surprisals, or None when the document is shorter (left out)."""
    s = np.asarray(s, np.float64)
    if length is None:
        return s
    return s[:length] if len(s) >= length else None


def cohens_d(a: Sequence[float], b: Sequence[float]) -> float:
    """(mean(a) - mean(b)) / pooled SD (ddof 1)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = len(a), len(b)
    pooled = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    return float((a.mean() - b.mean()) / pooled) if pooled > 0 else math.nan


def bootstrap_ci(a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of mean(a) - mean(b), resampling each source independently."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ia = rng.integers(0, len(a), (n_boot, len(a)))
    ib = rng.integers(0, len(b), (n_boot, len(b)))
    diffs = a[ia].mean(1) - b[ib].mean(1)
    lo, hi = np.quantile(diffs, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    p = np.asarray(pvalues, np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def compare(a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Two sources' values of one metric: Mann-Whitney U, p, Cohen's d, bootstrap CI of the mean difference."""
    from scipy.stats import mannwhitneyu

    res = mannwhitneyu(a, b, alternative="two-sided")
    lo, hi = bootstrap_ci(a, b, n_boot=n_boot, seed=seed)
    return {"n_a": len(a), "n_b": len(b), "mean_a": float(np.mean(a)), "mean_b": float(np.mean(b)),
            "u": float(res.statistic), "p": float(res.pvalue), "cohens_d": cohens_d(a, b), "diff_ci_low": lo, "diff_ci_high": hi}
