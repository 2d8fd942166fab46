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
surprisals are summed into the words they belong to before any metric (``lmdelta.tokens.word_ids``:
whitespace-separated words, right for byte-level and SentencePiece tokenizers).

Sources (the study's design): each model's texts per context (``none`` / ``prompt``) and temperature;
human texts either matched, the human continuation of the same first sentence (a ``from_corpus``
prompt set's ``reference``) cut to the model texts' token budget and scored with the same context
choice, or unmatched, whole corpus documents (the logprobs stage's artifact). The unit of analysis is
the prompt: the metrics of a prompt's samples (one model, context, temperature) are averaged before
any test, so n counts prompts, not samples.

Comparisons between two sources, per metric. Two sources of the same prompts (two models' texts, or
a model's texts and the matched human continuations) are paired by prompt (``design`` paired): the
prompts both have, Wilcoxon's signed-rank test and a percentile bootstrap CI of the mean paired
difference; a prompt's text from one model and from another share the prompt's own difficulty, which
the paired test removes. Sources of different units (an unmatched corpus against model texts) are
compared unpaired: Mann-Whitney U (two-sided) and a bootstrap CI of the difference of means, each
source resampled on its own. Both give Cohen's d (pooled SD) and Holm-corrected p-values over all the
comparisons of a table. Pairs: each human source against the model sources of its context (an
unmatched corpus against all), model sources against each other at the same context and temperature.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from lmdelta import LmdeltaError
from lmdelta.artifacts import Provenance, atomic_path, read_provenance, write_csv, write_parquet
from lmdelta.models import load_model, read_fingerprint
from lmdelta.plots import save_figure, surprisal_contours_figure, uid_figure
from lmdelta.promptsets import read_promptset
from lmdelta.scoring import LogprobParams, score_sequences
from lmdelta.stats import PairedParams, bootstrap_ci, cohens_d, holm, paired
from lmdelta.tokens import prefix_token
from lmdelta.tokens import word_ids as words_of

POWER_KS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
METRICS = (
    "mean",
    "median",
    "max",
    "uid_var_doc",
    "uid_var_corpus",
    "uid_pairwise_sq",
    "uid_pairwise_abs",
    *(f"power_{k:g}" for k in POWER_KS),
)


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
        "uid_pairwise_sq": float((diffs**2).sum() / (n - 1)) if n > 1 else math.nan,
        "uid_pairwise_abs": float(np.abs(diffs).sum() / (n - 1)) if n > 1 else math.nan,
    }
    for k in POWER_KS:
        out[f"power_{k:g}"] = float(np.mean(s**k) ** (1.0 / k))
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


def compare(a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Two sources' values of one metric on different units: Mann-Whitney U, p, Cohen's d, bootstrap
    CI of the difference of means."""
    from scipy.stats import mannwhitneyu

    res = mannwhitneyu(a, b, alternative="two-sided")
    lo, hi = bootstrap_ci(a, b, n_boot=n_boot, seed=seed)
    return {
        "design": "unpaired",
        "test": "mann-whitney",
        "n_a": len(a),
        "n_b": len(b),
        "mean_a": float(np.mean(a)),
        "mean_b": float(np.mean(b)),
        "u": float(res.statistic),
        "p": float(res.pvalue),
        "cohens_d": cohens_d(a, b),
        "diff_ci_low": lo,
        "diff_ci_high": hi,
    }


def compare_paired(a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Two sources' values of one metric on the same prompts (a[i] and b[i] answer prompt i): Wilcoxon's
    signed-rank test, Cohen's d (pooled SD, as unpaired), bootstrap CI of the mean paired difference."""
    row = paired(a, b, test="wilcoxon", params=PairedParams.from_dict({"n_boot": max(n_boot, 100), "seed": seed}))
    return {
        "design": "paired",
        "test": "wilcoxon",
        "n_a": row["n"],
        "n_b": row["n"],
        "mean_a": row["mean_a"],
        "mean_b": row["mean_b"],
        "u": math.nan,
        "p": row["p"],
        "cohens_d": cohens_d(a, b),
        "diff_ci_low": row["diff_low"],
        "diff_ci_high": row["diff_high"],
    }


def same_prompts(source: str) -> bool:
    """Whether a source's units are the prompts of the prompt set (model texts, matched human
    continuations), so that two such sources pair by prompt."""
    return source.startswith(("model:", "human:continuation"))


# ----------------------------------------------------------------------------------------------
# Stage: score model texts, compute per-document metrics per source, compare sources


def _scored_items(df, prompts: dict[str, str], tok, context: str, head: list[int], human_tokens: int | None):
    """(doc_id, token ids to score, index of the first text token) per row; ``human_tokens`` cuts texts
    (the human continuations) to that many scorer tokens."""
    out = []
    for row in df.itertuples():
        ctx = tok(prompts[row.prompt_id] + "\n", add_special_tokens=False).input_ids if context == "prompt" else []
        text = tok(row.text, add_special_tokens=False).input_ids
        if human_tokens is not None:
            text = text[:human_tokens]
        temp = "human" if human_tokens is not None else f"{float(row.temperature):g}"
        out.append((f"{row.prompt_id}|{temp}|{int(row.sample)}", head + ctx + text, len(head) + len(ctx)))
    return out


def score_texts(
    model_dir,
    completions,
    out,
    *,
    params,
    load_options: dict,
    context: str,
    human_tokens: int | None = None,
) -> int:
    """Per-token logprobs of texts under a scorer model, with or without their prompt as context
    (``context`` = ``prompt`` | ``none``: the prompt, then a newline, then the text); only the text's own
    tokens are kept. ``completions`` is a completions artifact (model texts: doc_id =
    ``<prompt_id>|<temperature>|<sample>``) or, with ``human_tokens``, a prompt set whose records carry
    the human continuation (``reference``), cut to its first ``human_tokens`` scorer tokens (doc_id =
    ``<prompt_id>|human|0``). ``position`` counts the text's tokens."""
    import pandas as pd
    import pyarrow as pa

    if human_tokens is None:
        df = pd.read_parquet(completions)
        prompts = _completion_prompts(completions)
    else:
        records = read_promptset(completions)
        missing = [r["id"] for r in records if not r.get("reference")]
        if missing:
            raise LmdeltaError(
                f"uid: prompt set {Path(completions).name} has no human continuation ('reference') for {missing[0]!r}; "
                "human texts matched to prompts need a from_corpus prompt set"
            )
        df = pd.DataFrame(
            {"prompt_id": [r["id"] for r in records], "text": [r["reference"] for r in records], "sample": 0}
        )
        prompts = {r["id"]: r["prompt"] for r in records}
    prov = Provenance(
        stage="uid_score_texts",
        params={
            "context": context,
            "context_separator": "\n",
            "scoring": asdict(params),
            "load_options": load_options,
            "units": "nats",
            "source": "model" if human_tokens is None else "human",
            "human_tokens": human_tokens,
        },
    )
    prov.inputs["model"] = {"path": str(model_dir), "fingerprint": read_fingerprint(model_dir)["digest"]}
    prov.add_input("texts", completions)
    model, tok = load_model(model_dir, **load_options)
    prefix, _ = prefix_token(tok, params.first_token)
    items = [
        it
        for it in _scored_items(df, prompts, tok, context, [prefix] if prefix is not None else [], human_tokens)
        if len(it[1]) > it[2] and (it[2] > 0 or len(it[1]) >= 2)
    ]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    scores = score_sequences(
        model,
        [seq for _, seq, _ in items],
        max_length=params.max_length,
        stride=params.stride,
        batch_tokens=params.batch_tokens,
        pad_token_id=pad,
        chunk_positions=params.chunk_positions,
    )
    rows = {"doc_id": [], "position": [], "token_id": [], "logprob": []}
    for (doc_id, _, start), sc in zip(items, scores):
        first = max(start - 1, 0)  # scores[j] scores seq id j + 1
        offset = 0 if start >= 1 else 1  # with nothing before it, the first text token is not scored
        lp = sc.logprob[first:]
        rows["doc_id"] += [doc_id] * len(lp)
        rows["position"] += list(range(offset, offset + len(lp)))
        rows["token_id"] += sc.token_ids[first:].tolist()
        rows["logprob"] += lp.tolist()
    table = pa.table(
        {
            "doc_id": pa.array(rows["doc_id"], pa.string()),
            "position": pa.array(rows["position"], pa.int32()),
            "token_id": pa.array(rows["token_id"], pa.int32()),
            "logprob": pa.array(rows["logprob"], pa.float32()),
        }
    )
    write_parquet(out, table, prov)
    return table.num_rows


def _completion_prompts(completions) -> dict[str, str]:
    """Prompt texts of a completions artifact, from the prompt set named in its provenance."""
    path = read_provenance(completions, verify=False)["inputs"]["promptset"]["path"]
    return {p["id"]: p["prompt"] for p in read_promptset(path)}


def source_metrics(tokens, *, source: str, lengths: Sequence[int | None], word_ids=None) -> list[dict]:
    """Per-document metrics of one source's token table (doc_id, logprob in nats), for each length."""
    rows = []
    docs = {d: surprisal_bits(g["logprob"].to_numpy()) for d, g in tokens.groupby("doc_id", sort=True)}
    if word_ids is not None:
        docs = {d: word_surprisals(s, word_ids[d]) for d, s in docs.items()}
    for length in lengths:
        cut = {d: first_tokens(s, length) for d, s in docs.items()}
        cut = {d: s for d, s in cut.items() if s is not None and len(s) > 0}
        if not cut:
            continue
        mu = float(np.concatenate(list(cut.values())).mean())
        for d, s in cut.items():
            rows.append(
                {
                    "source": source,
                    "length": -1 if length is None else length,
                    "doc_id": d,
                    "unit": d.split("|", 1)[0],
                    **doc_metrics(s, mu),
                }
            )
    return rows


def per_unit(docs):
    """The unit of analysis: one row per source, length and prompt (a human document is its own unit),
    each metric the mean over that prompt's samples; ``n_docs`` counts them."""
    import pandas as pd

    if docs.empty:
        return docs
    cols = ["n_tokens", *METRICS]
    g = docs.groupby(["source", "length", "unit"], sort=False)
    out = g[cols].mean()
    out["n_docs"] = g.size()
    return out.reset_index().astype({"n_docs": "int64"}).pipe(pd.DataFrame)


def comparisons(units, pairs: list[tuple[str, str]], *, n_boot: int, seed: int):
    """Every metric, length and pair of sources compared on their units (prompts); Holm over the whole table."""
    import pandas as pd

    out = []
    for length, g in units.groupby("length", sort=True):
        for a, b in pairs:
            va, vb = g[g.source == a].set_index("unit"), g[g.source == b].set_index("unit")
            if len(va) < 2 or len(vb) < 2:
                continue
            paired_design = same_prompts(a) and same_prompts(b)
            for metric in METRICS:
                if paired_design:  # the prompts both answered, with a value for both
                    both = va[[metric]].join(vb[[metric]], how="inner", rsuffix="_b").dropna()
                    x, y = both[metric].to_numpy(), both[f"{metric}_b"].to_numpy()
                else:
                    x, y = va[metric].dropna().to_numpy(), vb[metric].dropna().to_numpy()
                if len(x) < 2 or len(y) < 2:
                    continue
                test = compare_paired if paired_design else compare
                out.append(
                    {
                        "length": length,
                        "metric": metric,
                        "source_a": a,
                        "source_b": b,
                        "unit": "prompt",
                        **test(x, y, n_boot=n_boot, seed=seed),
                    }
                )
    table = pd.DataFrame(out)
    if len(table):
        table["p_holm"] = holm(table["p"].to_numpy())
    return table


def summary_text(table, scorer: str) -> str:
    """A few lines: for each pair, UID variance (whole texts and length-controlled) with its test."""
    lines = [
        f"Surprisal scorer: {scorer}. Units: bits. Length -1 = whole documents, L = first L tokens only.",
        "Unit of analysis: the prompt (a model's samples of one prompt at one temperature are averaged; a human "
        "document is one unit): n_a, n_b count prompts.",
        "Positive d: source_a has the larger value. p_holm: Holm-corrected over every comparison of the table.",
        "",
    ]
    if table.empty:
        return "\n".join(lines + ["No pair of sources had at least two units each."])
    for (length, a, b), g in table[table.metric.isin(["uid_var_doc", "mean"])].groupby(
        ["length", "source_a", "source_b"], sort=False
    ):
        for r in g.itertuples():
            lines.append(
                f"L={length:>4}  {r.metric:<12} {a} {r.mean_a:.3f} vs {b} {r.mean_b:.3f} (n={r.n_a}/{r.n_b})  d={r.cohens_d:+.2f}  "
                f"CI[{r.diff_ci_low:+.3f}, {r.diff_ci_high:+.3f}]  p_holm={r.p_holm:.3g}"
            )
    return "\n".join(lines) + "\n"


def _model_sources(tokens, name: str) -> dict[str, object]:
    """A model's texts split by temperature: "model:<model>@<context>@T<t>" -> its token table."""
    temp = tokens["doc_id"].str.split("|", n=2, expand=True)[1] if len(tokens) else tokens["doc_id"]
    return {f"model:{name}@T{t}": g for t, g in tokens.groupby(temp, sort=True)}


def source_pairs(sources: list[str]) -> list[tuple[str, str]]:
    """The comparisons the study needs: each human source against the model sources of the same
    context (a corpus, unmatched, against all), and model sources of the same context and temperature."""

    def ctx(s):  # "model:m@none@T1" -> ("none", "T1"); "human:continuation@none" -> ("none", None)
        parts = s.split("@")
        return (parts[1] if len(parts) > 1 else None), (parts[2] if len(parts) > 2 else None)

    humans = [s for s in sources if s.startswith("human:")]
    models = [s for s in sources if s.startswith("model:")]
    pairs = [(h, m) for h in humans for m in models if ctx(h)[0] in (None, ctx(m)[0])]
    pairs += [(a, b) for i, a in enumerate(models) for b in models[i + 1 :] if ctx(a) == ctx(b)]
    return pairs


def run_uid(
    *,
    scorer: str,
    human: dict[str, Path],
    model_texts: dict[str, Path],
    lengths: Sequence[int | None],
    n_boot: int,
    seed: int,
    out_docs: Path,
    out_csv: Path,
    out_txt: Path,
    out_png: Path,
    out_contours: Path,
    word_level: bool = False,
    tokenizer_dir: Path | None = None,
):
    """The UID stage for one scorer: ``human`` maps a human source name -> its scored tokens (a corpus's
    logprobs artifact, or "continuation@<context>" -> the prompt set's human continuations scored like
    the model texts), ``model_texts`` maps "<model>@<context>" -> scored completions (split here by
    temperature). Metrics per document (docs.parquet), compared per prompt (``per_unit``)."""
    import pandas as pd

    tok = None
    if word_level:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    prov = Provenance(
        stage="uid",
        params={
            "scorer": scorer,
            "lengths": list(lengths),
            "n_boot": n_boot,
            "units": "bits",
            "word_level": word_level,
            "unit_of_analysis": "prompt (samples averaged)",
            "normalisers": {"uid_var": "N", "uid_pairwise": "N-1"},
            "power_ks": list(POWER_KS),
        },
        seed=seed,
    )
    tables = {}
    for name, path in human.items():
        prov.add_input(f"human:{name}", path)
        tables[f"human:{name}"] = pd.read_parquet(path, columns=["doc_id", "token_id", "logprob"])
    for name, path in model_texts.items():
        prov.add_input(f"model:{name}", path)
        tables.update(_model_sources(pd.read_parquet(path, columns=["doc_id", "token_id", "logprob"]), name))
    rows, examples = [], {}
    for source, tokens in tables.items():
        rows += source_metrics(tokens, source=source, lengths=lengths)
        if tok is not None:
            words = {d: words_of(tok, g["token_id"].tolist()) for d, g in tokens.groupby("doc_id", sort=True)}
            rows += [
                {**r, "source": f"{source} (words)"}
                for r in source_metrics(tokens, source=source, lengths=lengths, word_ids=words)
            ]
        first = tokens[tokens.doc_id == tokens.doc_id.iloc[0]] if len(tokens) else tokens
        examples[source] = surprisal_bits(first["logprob"].to_numpy())
    docs = pd.DataFrame(rows)
    pairs = source_pairs(list(tables))
    if tok is not None:
        pairs += [(f"{a} (words)", f"{b} (words)") for a, b in list(pairs)]
    table = comparisons(per_unit(docs), pairs, n_boot=n_boot, seed=seed)
    write_parquet(out_docs, docs, prov)
    write_csv(out_csv, table, prov)
    with atomic_path(out_txt, prov) as tmp:
        tmp.write_text(summary_text(table, scorer))
    save_figure(
        uid_figure(
            docs, ["mean", "uid_var_doc", "uid_pairwise_sq", "power_2"], f"UID metrics per source (scorer {scorer})"
        ),
        out_png,
        prov,
    )
    save_figure(
        surprisal_contours_figure(examples, f"Surprisal of one example text per source (scorer {scorer})"),
        out_contours,
        prov,
    )
    return docs, table


# ---- jobs (lmdelta.job) -------------------------------------------------------------------------------


def score_job(job) -> None:
    """Model texts (input ``completions``) or a prompt set's human continuations (input ``promptset``,
    spec ``human_tokens``) scored by input ``model``; spec: {"params", "load_options"}; output: ``scored``."""
    s = job.spec
    texts = job.path("completions") if "completions" in job.inputs else job.path("promptset")
    score_texts(
        job.path("model"),
        texts,
        job.out("scored"),
        params=LogprobParams.from_dict(s["params"]),
        load_options=s["load_options"],
        context=job.wildcards["context"],
        human_tokens=s.get("human_tokens"),
    )


def uid_job(job) -> None:
    """inputs: ``scorer``, ``human`` and ``model_texts`` (named by spec ``human_names``, ``model_names``);
    spec: {"lengths", "n_boot", "seed", "word_level", ...}; outputs: ``docs``, ``csv``, ``txt``, ``png``, ``contours``."""
    s = job.spec
    human, texts = job.paths("human"), job.paths("model_texts")
    if len(s["human_names"]) != len(human) or len(s["model_names"]) != len(texts):
        raise LmdeltaError("uid: one name per human source and per model-texts file")
    run_uid(
        scorer=job.wildcards["scorer"],
        human=dict(zip(s["human_names"], human)),
        word_level=s["word_level"],
        tokenizer_dir=job.path("scorer"),
        model_texts=dict(zip(s["model_names"], texts)),
        lengths=s["lengths"],
        n_boot=s["n_boot"],
        seed=s["seed"],
        out_docs=job.out("docs"),
        out_csv=job.out("csv"),
        out_txt=job.out("txt"),
        out_png=job.out("png"),
        out_contours=job.out("contours"),
    )
