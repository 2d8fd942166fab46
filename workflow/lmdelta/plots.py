"""Figures for the report. Matplotlib with the Agg backend; PNG files written atomically with provenance."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lmdelta.artifacts import Provenance, atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, prov: Provenance | None = None) -> None:
    plt = _pyplot()
    with atomic_path(path, prov) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def entropy_figure(histograms: dict[str, np.ndarray], bin_width: float, title: str):
    """Next-token entropy per model: density (left) and cumulative distribution (right)."""
    plt = _pyplot()
    fig, (ax_d, ax_c) = plt.subplots(1, 2, figsize=(11, 4))
    upper = 0.0
    for name, counts in histograms.items():
        counts = np.asarray(counts, np.float64)
        edges = np.arange(len(counts) + 1) * bin_width
        density = counts / counts.sum() / bin_width
        centres = (edges[:-1] + edges[1:]) / 2
        ax_d.plot(centres, density, label=name, lw=1.2)
        ax_c.plot(edges[1:], np.cumsum(counts) / counts.sum(), label=name, lw=1.2)
        nz = np.nonzero(counts)[0]
        upper = max(upper, edges[nz[-1] + 1] if len(nz) else 0)
    for ax in (ax_d, ax_c):
        ax.set_xlim(0, upper or 1)
        ax.set_xlabel("next-token entropy (nats)")
        ax.grid(alpha=0.3)
    ax_d.set_ylabel("density")
    ax_c.set_ylabel("fraction of tokens ≤ x")
    ax_c.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def doc_perplexity_figure(per_doc: dict[str, np.ndarray], title: str):
    """Per-document perplexity per model (log scale): box plot with every document as a point."""
    plt = _pyplot()
    names = list(per_doc)
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(names) + 2), 4))
    ax.boxplot([per_doc[n] for n in names], showfliers=False)
    rng = np.random.default_rng(0)
    for i, n in enumerate(names, start=1):
        v = np.asarray(per_doc[n])
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(v)), v, s=6, alpha=0.5)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("document perplexity")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title)
    return fig


def word_surprisal_figure(words, models: list[str], pairs: list[dict], title: str):
    """Per-word surprisal (nats) of every model on the same words: the distribution per model, and for
    each pair a scatter of a's against b's on the words that both count exactly (no token across
    their edges in either tokenizer)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 1 + len(pairs), figsize=(4.2 * (1 + len(pairs)), 3.8), squeeze=False)
    ax = axes[0][0]
    for m in models:
        v = np.sort(words.loc[words[f"complete:{m}"], f"surprisal:{m}"].to_numpy())
        ax.plot(v, np.arange(1, len(v) + 1) / max(len(v), 1), label=m)
    ax.set_xlabel("surprisal of a word (nats)")
    ax.set_ylabel("share of words")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    for ax, p in zip(axes[0][1:], pairs):
        a, b = p["a"], p["b"]
        ok = words[f"exact:{a}"] & words[f"exact:{b}"] & words[f"complete:{a}"] & words[f"complete:{b}"]
        x, y = words.loc[ok, f"surprisal:{b}"], words.loc[ok, f"surprisal:{a}"]
        ax.scatter(x, y, s=3, alpha=0.3)
        hi = float(max(x.max(), y.max())) if ok.any() else 1.0
        ax.plot([0, hi], [0, hi], color="grey", lw=0.8)
        ax.set_xlabel(f"{b} (nats)")
        ax.set_ylabel(f"{a} (nats)")
        ax.set_title(f"{p['pair']}: {int(ok.sum())} words", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def diversity_figure(table, metrics: list[str], directions: dict[str, str], title: str):
    """Each metric vs temperature per model; categories side by side (columns)."""
    plt = _pyplot()
    categories = sorted(table["category"].unique())
    fig, axes = plt.subplots(
        len(metrics), len(categories), figsize=(4.2 * len(categories), 2.6 * len(metrics)), squeeze=False, sharex=True
    )
    for r, metric in enumerate(metrics):
        for c, cat in enumerate(categories):
            ax = axes[r][c]
            for model, g in table[table["category"] == cat].groupby("model", sort=False):
                g = g.sort_values("temperature")
                ax.plot(g["temperature"], g[metric], marker="o", ms=3, label=model)
            if r == 0:
                ax.set_title(cat)
            if c == 0:
                arrow = "↑ diverse" if directions[metric] == "diverse" else "↑ similar"
                ax.set_ylabel(f"{metric}\n({arrow})", fontsize=8)
            if r == len(metrics) - 1:
                ax.set_xlabel("temperature")
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def uid_figure(docs, metrics: list[str], title: str):
    """Distribution of each UID metric per source (box plots), whole texts and each length L."""
    plt = _pyplot()
    lengths = sorted(docs["length"].unique())
    fig, axes = plt.subplots(
        len(metrics), len(lengths), figsize=(4.5 * len(lengths), 2.8 * len(metrics)), squeeze=False
    )
    for r, metric in enumerate(metrics):
        for c, length in enumerate(lengths):
            ax = axes[r][c]
            g = docs[docs["length"] == length]
            sources = list(dict.fromkeys(g["source"]))
            ax.boxplot([g[g["source"] == s][metric].dropna() for s in sources], showfliers=False)
            ax.set_xticks(range(1, len(sources) + 1), sources, rotation=25, ha="right", fontsize=7)
            if r == 0:
                ax.set_title("whole texts" if length == -1 else f"first {length} tokens")
            if c == 0:
                ax.set_ylabel(metric, fontsize=8)
            ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def surprisal_contours_figure(examples: dict[str, np.ndarray], title: str):
    """Surprisal (bits) token by token of one example text per source."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.5))
    for name, s in examples.items():
        ax.plot(np.arange(len(s)), s, lw=1, label=name)
    ax.set_xlabel("token")
    ax.set_ylabel("surprisal (bits)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title)
    return fig


def divergence_figure(records: list[dict], names: tuple[str, str], title: str):
    """Per-token divergence by position (mean over texts, left) and the texts' mean divergences (right)."""
    plt = _pyplot()
    fig, (ax_p, ax_h) = plt.subplots(1, 2, figsize=(11, 3.8))
    width = max((r["n_tokens"] for r in records), default=0)
    for key, label in (
        ("kl_a_b", f"KL({names[0]} ‖ {names[1]})"),
        ("kl_b_a", f"KL({names[1]} ‖ {names[0]})"),
        ("js", "JS"),
    ):
        if width:
            vals = np.full((len(records), width), np.nan)
            for i, r in enumerate(records):
                vals[i, : r["n_tokens"]] = r[key]
            ax_p.plot(np.arange(width), np.nanmean(vals, axis=0), label=label, lw=1.2)
        ax_h.hist([r[f"mean_{key}"] for r in records], bins=20, alpha=0.5, label=label)
    ax_p.set_xlabel("generated token")
    ax_p.set_ylabel("mean divergence (nats)")
    ax_h.set_xlabel("mean divergence of a text (nats)")
    ax_h.set_ylabel("texts")
    for ax in (ax_p, ax_h):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def search_figure(bank, cycles, title: str, key: str):
    """Each prompt's divergence by the cycle it was found in (left; trigger prompts marked when known),
    and the bank's top-decile mean and the new prompts' mean by cycle (right)."""
    plt = _pyplot()
    fig, (ax_s, ax_c) = plt.subplots(1, 2, figsize=(11, 3.8))
    jitter = np.random.default_rng(0).uniform(-0.2, 0.2, len(bank))
    x = bank.cycle.to_numpy() + jitter
    if "mentions_trigger" in bank:
        t = bank.mentions_trigger.to_numpy(bool)
        ax_s.scatter(x[~t], bank.divergence[~t], s=12, alpha=0.6, label="other prompts")
        ax_s.scatter(x[t], bank.divergence[t], s=16, alpha=0.8, color="tab:red", label="mentions the planted trigger")
        ax_s.legend(fontsize=7)
    else:
        ax_s.scatter(x, bank.divergence, s=12, alpha=0.6)
    ax_s.set_xlabel("cycle (0 = seeds)")
    ax_s.set_ylabel(f"divergence, mean {key} (nats)")
    ax_c.plot(cycles.cycle, cycles.top_decile_mean, marker="o", label="bank: top-decile mean")
    if "top10_mean" in cycles:
        ax_c.plot(cycles.cycle, cycles.top10_mean, marker="^", label="bank: mean of the 10 best")
    ax_c.plot(cycles.cycle, cycles.new_mean, marker="s", label="prompts new in the cycle: mean")
    failed = cycles[cycles.failed.astype(bool)]
    if len(failed):
        ax_c.scatter(failed.cycle, failed.top_decile_mean, marker="x", color="k", zorder=3, label="failed cycle")
    ax_c.set_xlabel("cycle")
    ax_c.set_ylabel(f"{key} (nats)")
    ax_c.legend(fontsize=7)
    for ax in (ax_s, ax_c):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def cluster_figure(table):
    """Mean divergence of each cluster of found prompts, labelled and sized."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(table) + 1.2))
    names = [(r.label if "label" in table and r.label else r.examples.split(" | ")[0])[:60] for r in table.itertuples()]
    names = [
        "".join(ch for ch in n if ch.isprintable()) for n in names
    ]  # model-written text may hold control characters
    y = np.arange(len(table))[::-1]
    ax.barh(y, table.mean_divergence, color="tab:blue", alpha=0.7)
    for yi, r in zip(y, table.itertuples()):
        ax.text(r.mean_divergence, yi, f"  n={r.size}", va="center", fontsize=7)
    ax.set_yticks(y, [f"{r.cluster}: {n}" for r, n in zip(table.itertuples(), names)], fontsize=7)
    ax.set_xlabel("mean divergence of the cluster's prompts (nats)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def softprompt_figure(metrics, baseline: float, title: str, key: str):
    """Training and held-out divergence of a soft prompt by step, with the held-out value without it."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.plot(metrics.step, metrics.train_divergence, lw=1, alpha=0.7, label="training batch")
    held = metrics.dropna(subset=["heldout_divergence"])
    ax.plot(held.step, held.heldout_divergence, marker="o", label="held-out, with the soft prompt")
    ax.axhline(baseline, color="k", ls="--", lw=1, label="held-out, without it")
    ax.set_xlabel("step")
    ax.set_ylabel(f"{key} per token (nats)")
    ax.set_yscale("log")  # divergences are positive and span orders of magnitude
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def hardprompt_figure(df, title: str, key: str):
    """Divergence of hard prompts by extraction method, beside same-length random corpus snippets
    (scored the same way, without the soft prompt); the top prompts' re-scored values marked."""
    plt = _pyplot()
    methods = [m for m in ("nearest-cosine", "nearest-l2", "pez", "generated", "snippet") if m in set(df.method)]
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    rng = np.random.default_rng(0)
    for i, m in enumerate(methods):
        g = df[df.method == m]
        ax.scatter(
            i + rng.uniform(-0.15, 0.15, len(g)),
            g.divergence,
            s=14,
            alpha=0.6,
            color="tab:gray" if m == "snippet" else "tab:blue",
        )
        again = g.dropna(subset=["rescored"])
        if len(again):
            ax.scatter(np.full(len(again), i + 0.3), again.rescored, marker="_", s=80, color="tab:red")
    ax.scatter([], [], marker="_", color="tab:red", label="top prompts, scored again (fresh seed)")
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel(f"{key} without the soft prompt (nats)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def scorecard_figure(card, title: str):
    """Precision@k of each discovery method (keyword and embedding hits), references hatched; wall time noted."""
    import pandas as pd

    plt = _pyplot()
    labels = [f"{r.method}" + (f" ({r.run})" if r.run else "") for r in card.itertuples()]
    y = np.arange(len(card))[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(card) + 1.4))
    ax.barh(
        y + 0.18,
        card.precision_keyword,
        height=0.35,
        label="keyword hit",
        color="tab:red",
        hatch=["//" if r else "" for r in card.reference],
    )
    ax.barh(
        y - 0.18,
        card.precision_embedding,
        height=0.35,
        label="embedding hit",
        color="tab:blue",
        hatch=["//" if r else "" for r in card.reference],
    )
    for yi, r in zip(y, card.itertuples()):
        if not (isinstance(r.wall_time_s, float) and math.isnan(r.wall_time_s)):
            calls = "" if pd.isna(r.model_calls) else f", {int(r.model_calls)} calls"  # None, NaN or pd.NA
            ax.text(1.02, yi, f"{r.wall_time_s:.0f} s{calls}", va="center", fontsize=7)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(0, 1.3)
    ax.set_xlabel("precision@k (hatched: references, not methods)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def matrix_figure(matrix, organisms):
    """Methods x organisms: precision@k of each method (trigger or response shown; on the same fresh
    continuations per finding where the scorecard drew them, bootstrap interval over findings, else on
    the surfaced texts with the exact interval) in the cell; below, whether each pair's summary page names the trigger (T) and the response (R), and
    whether each control's page reports nothing."""
    plt = _pyplot()
    methods = matrix[~matrix.reference.astype(bool)] if len(matrix) else matrix
    rows = list(dict.fromkeys(f"{m} ({r})" for m, r in zip(methods.method, methods.run)))
    cols = list(organisms.pair)
    grid = np.full((len(rows) + 1, len(cols)), np.nan)
    text = [["" for _ in cols] for _ in range(len(rows) + 1)]
    fresh = "fresh_keyword" in methods  # judged on the same fresh samples per finding where there are some
    for r in methods.itertuples():
        i, j = rows.index(f"{r.method} ({r.run})"), cols.index(r.pair)
        key = "fresh_keyword" if fresh and not np.isnan(r.fresh_keyword) else "precision_keyword"
        value, low, high = getattr(r, key), getattr(r, f"{key}_low"), getattr(r, f"{key}_high")
        if r.k == 0:
            text[i][j] = "nothing reported"
            continue
        grid[i, j] = value
        text[i][j] = f"{value:.2f}\n{low:.2f}-{high:.2f}"
    for j, o in enumerate(organisms.itertuples()):
        if o.role == "control":
            grid[-1, j] = 0.0 if o.changed else 1.0
            text[-1][j] = "reports a change" if o.changed else "no word-level\nchange found"
        elif o.role == "organism":  # every organism's page is graded
            grid[-1, j] = (bool(o.names_trigger) + bool(o.names_response)) / 2
            text[-1][j] = ("T" if o.names_trigger else "-") + " " + ("R" if o.names_response else "-")
    fig, ax = plt.subplots(figsize=(1.3 * len(cols) + 3, 0.55 * (len(rows) + 1) + 1.6))
    ax.imshow(np.ma.masked_invalid(grid), cmap="Greens", vmin=0, vmax=1, aspect="auto")
    for i, line in enumerate(text):
        for j, t in enumerate(line):
            ax.text(j, i, t, ha="center", va="center", fontsize=6.5)
    ax.set_xticks(range(len(cols)), [f"{c}\n({r})" for c, r in zip(cols, organisms.role)], fontsize=7)
    ax.set_yticks(range(len(rows) + 1), [*rows, "summary page"], fontsize=7)
    ax.set_title("precision@k of each method (trigger or response, on fresh samples) and the summary page", fontsize=8)
    fig.tight_layout()
    return fig


def lens_figure(norms: dict[str, list[float]], title: str):
    """Norm of the mean activation difference by layer, for the pair and each control."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    styles = {"pair": ("tab:red", "-"), "random_lora": ("tab:gray", "--"), "identical": ("tab:blue", ":")}
    for name, values in norms.items():
        colour, line = styles.get(name, ("black", "-"))
        ax.plot(range(len(values)), values, line, color=colour, marker="o", markersize=3, label=name)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("|mean difference| (mean over positions)")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
