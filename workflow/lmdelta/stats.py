"""Statistics shared by the stages: effect sizes, bootstrap intervals, paired tests, multiple-test
correction. Every test is a library's (scipy.stats, statsmodels); this module chooses and documents.

Paired comparisons (``paired``): two models measured on the same units (documents, prompts, held-out
questions) are compared through the per-unit differences d = a - b, which removes the units' own
spread (a hard document is hard for both). The effect is the mean difference with a percentile
bootstrap interval over units; the test is two-sided:

- ``sign-flip``: a permutation test of mean(d) = 0 that flips the sign of each unit's difference
  (scipy.stats.permutation_test, permutation_type "samples"); exact when every flip fits in
  ``n_permutations``. It assumes only that under the null each d is symmetric about 0 (exchangeable
  a and b labels per unit), not normality.
- ``wilcoxon``: the signed-rank test (scipy.stats.wilcoxon) of a symmetric distribution of d about 0,
  for bounded per-prompt metrics with ties and outliers; units with d = 0 are dropped (Wilcox).
- ``mcnemar``: the exact McNemar test (statsmodels) of a yes/no outcome on the same questions: a
  binomial test of the discordant questions (yes for a only against yes for b only).

A table's p-values are corrected together (``holm``: Holm's step-down, family-wise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmdelta.config import stage_spec


@stage_spec("statistics")
class PairedParams:
    confidence: float
    n_boot: int
    n_permutations: int
    seed: int


def cohens_d(a: Sequence[float], b: Sequence[float]) -> float:
    """(mean(a) - mean(b)) / pooled SD (ddof 1)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = len(a), len(b)
    pooled = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    return float((a.mean() - b.mean()) / pooled) if pooled > 0 else math.nan


def bootstrap_ci(
    a: Sequence[float],
    b: Sequence[float],
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    ratio: bool = False,
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a) - mean(b) (or mean(a) / mean(b) with ``ratio``),
    resampling each source independently (scipy.stats.bootstrap, two unpaired samples)."""
    from scipy.stats import bootstrap

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)

    def stat(x, y, axis):
        return np.mean(x, axis=axis) / np.mean(y, axis=axis) if ratio else np.mean(x, axis=axis) - np.mean(y, axis=axis)

    if len(a) == 0 or len(b) == 0:
        return math.nan, math.nan
    if np.all(a == a[0]) and np.all(b == b[0]):
        value = float(stat(a, b, 0))
        return value, value
    res = bootstrap(
        (a, b),
        stat,
        paired=False,
        vectorized=True,
        n_resamples=n_boot,
        confidence_level=level,
        method="percentile",
        rng=seed,
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (statsmodels' ``multipletests``); a NaN (no test) stays NaN and
    does not count as a test."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, np.float64)
    out = np.full(len(p), np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out


def proportion_interval(hits: float, n: int, confidence: float) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a proportion, ``hits`` of ``n``, from the beta quantiles
    (equal to scipy's binomtest exact interval within 1e-12); ``hits`` may be fractional (see
    ``rate_interval``). NaN for n = 0."""
    from scipy.stats import beta

    if n == 0:
        return math.nan, math.nan
    tail = (1.0 - confidence) / 2.0
    low = 0.0 if hits <= 0 else float(beta.ppf(tail, hits, n - hits + 1))
    high = 1.0 if hits >= n else float(beta.isf(tail, hits + 1, n - hits))
    return low, high


def rate_interval(rates: Sequence[float], confidence: float) -> tuple[float, float]:
    """Interval of the mean of per-unit rates in [0, 1] (each unit's share of hits among its own
    samples): the exact interval of k units with sum(rates) successes. A Bernoulli has the largest
    variance of any [0, 1] variable with its mean, so the interval is conservative for rates; unlike a
    bootstrap over the units it is not the single point 1 when every unit's rate is 1 (10 findings,
    every continuation a hit: 0.69-1). NaN for no unit."""
    v = np.clip(np.asarray(rates, dtype=np.float64), 0.0, 1.0)
    return proportion_interval(float(v.sum()), len(v), confidence)


def mean_interval(values: Sequence[float], *, confidence: float, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (scipy.stats.bootstrap), resampling the
    values (the units). All values equal gives that value; no value gives NaN."""
    from scipy.stats import bootstrap

    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return math.nan, math.nan
    if np.all(v == v[0]):
        return float(v[0]), float(v[0])
    res = bootstrap((v,), np.mean, n_resamples=n_boot, confidence_level=confidence, method="percentile", rng=seed)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def sign_flip_p(d: Sequence[float], *, n_permutations: int, seed: int) -> float:
    """Two-sided p of mean(d) = 0 by flipping signs (scipy.stats.permutation_test); 1 when every d is 0."""
    from scipy.stats import permutation_test

    d = np.asarray(d, dtype=np.float64)
    if len(d) == 0:
        return math.nan
    if np.all(d == 0):
        return 1.0
    res = permutation_test(
        (d,),
        lambda x, axis: np.mean(x, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_permutations,
        alternative="two-sided",
        rng=seed,
    )
    return float(res.pvalue)


def wilcoxon_p(d: Sequence[float]) -> float:
    """Two-sided p of Wilcoxon's signed-rank test on d (scipy.stats.wilcoxon, zero differences
    dropped); 1 when every d is 0."""
    from scipy.stats import wilcoxon

    d = np.asarray(d, dtype=np.float64)
    if len(d) == 0:
        return math.nan
    if np.all(d == 0):
        return 1.0
    return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """The exact McNemar test of a yes/no outcome of a and b on the same questions (statsmodels): the
    discordant counts (``a_only``, ``b_only``) and the two-sided p."""
    from statsmodels.stats.contingency_tables import mcnemar

    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mcnemar_exact: {a.shape} outcomes against {b.shape}; the questions must be the same")
    both, a_only, b_only, neither = (int(x) for x in ((a & b).sum(), (a & ~b).sum(), (~a & b).sum(), (~a & ~b).sum()))
    p = 1.0 if a_only + b_only == 0 else float(mcnemar([[both, a_only], [b_only, neither]], exact=True).pvalue)
    return {"n": len(a), "both": both, "a_only": a_only, "b_only": b_only, "neither": neither, "p": p}


TESTS = ("sign-flip", "wilcoxon")


def paired(a: Sequence[float], b: Sequence[float], *, test: str, params: PairedParams) -> dict[str, Any]:
    """One paired comparison of a and b on the same units (equal length, unit i of a is unit i of b):
    ``n``, ``mean_a``, ``mean_b``, ``diff`` (mean of a - b), its interval (``diff_low``, ``diff_high``),
    ``test`` and its two-sided ``p``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired: {a.shape} values against {b.shape}; the units must be the same")
    if test not in TESTS:
        raise ValueError(f"paired: test {test!r} is not one of {TESTS}")
    d = a - b
    if len(d) == 0:
        raise ValueError("paired: no units to compare")
    low, high = mean_interval(d, confidence=params.confidence, n_boot=params.n_boot, seed=params.seed)
    p = sign_flip_p(d, n_permutations=params.n_permutations, seed=params.seed) if test == "sign-flip" else wilcoxon_p(d)
    return {
        "n": len(d),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "diff": float(d.mean()),
        "diff_low": low,
        "diff_high": high,
        "test": test,
        "p": p,
    }


def paired_metrics(a, b, *, unit: str, metrics: Sequence[str], test: str, params: PairedParams) -> list[dict[str, Any]]:
    """``paired`` for each metric of two tables indexed by the same units (pandas DataFrames; the
    index names the unit, e.g. a document or a prompt id): the units both have, and of those the ones
    where both values are numbers (``n`` counts them). One row per metric, with ``metric`` and ``unit``."""
    shared = a.index.intersection(b.index)
    rows = []
    for metric in metrics:
        x, y = a.loc[shared, metric].to_numpy(np.float64), b.loc[shared, metric].to_numpy(np.float64)
        ok = np.isfinite(x) & np.isfinite(y)
        if not ok.any():
            continue
        rows.append({"metric": metric, "unit": unit, **paired(x[ok], y[ok], test=test, params=params)})
    return rows


def unpaired(a: Sequence[float], b: Sequence[float], *, params: PairedParams) -> dict[str, Any]:
    """Two sets of different units (e.g. proposed prompts against seed prompts): ``n_a``, ``n_b``, the
    means, ``diff`` (mean a - mean b) with its bootstrap interval (each set resampled on its own) and the
    two-sided p of a permutation test of the labels (scipy.stats.permutation_test, independent)."""
    from scipy.stats import permutation_test

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"unpaired: {len(a)} and {len(b)} values; each side needs at least 2")
    low, high = bootstrap_ci(a, b, n_boot=params.n_boot, level=params.confidence, seed=params.seed)
    res = permutation_test(
        (a, b),
        lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
        permutation_type="independent",
        vectorized=True,
        n_resamples=params.n_permutations,
        alternative="two-sided",
        rng=params.seed,
    )
    return {
        "n_a": len(a),
        "n_b": len(b),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "diff": float(a.mean() - b.mean()),
        "diff_low": low,
        "diff_high": high,
        "test": "permutation",
        "p": float(res.pvalue),
    }


def corrected_table(rows: list[dict[str, Any]], columns: Sequence[str]):
    """A paired table: the rows in these columns (none: the columns alone) and ``p_holm``, Holm's
    correction over every row's ``p`` (one family per table)."""
    import pandas as pd

    table = pd.DataFrame(rows, columns=list(columns))
    table["p_holm"] = holm(table.p.to_numpy())
    return table
