"""Entropy and perplexity of one model on one corpus, from its logprobs artifact; and the comparison across models.

Definitions (natural logarithms; NLL = -logprob of the actual token):
- ``perplexity_tokens`` = exp(mean NLL over all scored tokens of the corpus)
- ``perplexity_docs_mean`` = mean over documents of exp(mean NLL of the document)
- ``mean_entropy_nats_tokens`` / ``_docs``: token average / average of per-document means
- ``bits_per_byte`` = total NLL / ln 2 / total UTF-8 bytes of the scored tokens (with
  ``first_token: none`` the first token of each document is not scored: its bytes are left out too,
  so a model scored that way is not favoured in a comparison across tokenizers)
- ``vocab_fraction_70`` / ``_90``: the smallest fraction of the model's output vocabulary whose
  tokens together hold 70% / 90% of the mean next-token distribution (lower = mass on fewer tokens)

Paired comparisons (``paired_table``, ``paired.csv``): for every pair of the config whose two models
were both scored on the corpus, the same documents are the units: per document, the mean NLL and the
mean entropy in nats per token, and bits per byte; the mean difference a - b with its
bootstrap interval over documents and the sign-flip permutation test (``lmdelta.stats``), Holm-corrected
over the table. A corpus-level perplexity is one number per model; its difference has no unit to
resample except the documents, which is why the test is on per-document values (each document
weighted once, not by its length). Per-token means are compared only when the two models scored the
same tokens of every document (``same_tokens``: the same tokenizer and the same first-token policy);
otherwise a token of one is not a token of the other (two tokenizers cut the same text into tokens of
different lengths, so nats per token differ with the cut, not with the model) and the pair's rows are
bits per byte alone, which do not depend on the tokenizer.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lmdelta.artifacts import Provenance, write_csv, write_json, write_parquet
from lmdelta.findings import finding, write_findings
from lmdelta.plots import doc_perplexity_figure, entropy_figure, save_figure
from lmdelta.stats import PairedParams, corrected_table, paired_metrics

#: Entropy histogram bins (nats), shared by all models so that they can be compared and summed.
ENTROPY_BIN_WIDTH = 0.05
ENTROPY_MAX = 13.0  # above ln(262144) = 12.48, the largest vocabulary among the supported models
SUMMARY_BATCH_ROWS = 1 << 16  # token rows read at a time


def vocab_fraction(mean_prob: np.ndarray, mass: float) -> float:
    """Smallest fraction of the vocabulary whose most probable tokens hold ``mass`` of ``mean_prob``."""
    p = np.sort(np.asarray(mean_prob, np.float64))[::-1]
    # a relative tolerance keeps float rounding of the cumulative sum from adding a token
    k = int(np.searchsorted(np.cumsum(p), mass * p.sum() * (1 - 1e-12), side="left")) + 1
    return min(k, len(p)) / len(p)


def unscored_bytes(tokenizer, text: str) -> int:
    """UTF-8 bytes of a document's first token, which is not scored under ``first_token: none`` (nothing
    before it predicts it): the text is tokenised as the scorer does (``lmdelta.tokens.encode``, no
    special tokens) and the first token's characters counted."""
    if not text:
        return 0
    spans = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True).offset_mapping
    return len(text[: spans[0][1]].encode("utf-8")) if spans else 0


def summarise(
    logprobs_path: str | Path, meanprob_path: str | Path, corpus_path: str | Path, tokenizer=None
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Corpus-level summary and per-document table, streaming the token table by row group. With a
    ``tokenizer`` (the scorer's, when its ``first_token`` is none) each document's bytes are those of
    its scored tokens: its first token's bytes are left out, as its logprob is."""
    import pyarrow.parquet as pq

    edges = np.arange(0.0, ENTROPY_MAX + ENTROPY_BIN_WIDTH / 2, ENTROPY_BIN_WIDTH)
    hist = np.zeros(len(edges) - 1, np.int64)
    per_doc = []
    digests: dict[Any, Any] = {}  # doc -> hash of its scored token ids, in order (rows of a doc may span batches)
    pf = pq.ParquetFile(logprobs_path)
    cols = ["doc_id", "token_id", "logprob", "entropy", "top1_prob"]
    for batch in pf.iter_batches(columns=cols, batch_size=SUMMARY_BATCH_ROWS):
        df = batch.to_pandas().astype({"logprob": np.float64, "entropy": np.float64, "top1_prob": np.float64})
        df["nll"] = -df["logprob"]
        ids, doc = df.token_id.to_numpy(np.int64), df.doc_id.to_numpy()
        cuts = [0, *(np.flatnonzero(doc[1:] != doc[:-1]) + 1), len(doc)]
        for start, end in zip(cuts[:-1], cuts[1:]):
            digests.setdefault(doc[start], hashlib.blake2b(digest_size=8)).update(ids[start:end].tobytes())
        hist += np.histogram(np.clip(df["entropy"].to_numpy(), 0, ENTROPY_MAX - 1e-9), bins=edges)[0]
        per_doc.append(
            df.groupby("doc_id", sort=False).agg(
                n_tokens=("nll", "size"),
                nll_sum=("nll", "sum"),
                entropy_sum=("entropy", "sum"),
                top1_sum=("top1_prob", "sum"),
            )
        )
    docs = pd.concat(per_doc).groupby(level=0, sort=False).sum()
    n_bytes = {}
    for batch in pq.ParquetFile(corpus_path).iter_batches(columns=["doc_id", "text"], batch_size=1024):
        n_bytes.update(
            (d, len(t.encode("utf-8")) - (unscored_bytes(tokenizer, t) if tokenizer is not None else 0))
            for d, t in zip(batch.column("doc_id").to_pylist(), batch.column("text").to_pylist())
        )
    docs["n_bytes"] = [n_bytes[d] for d in docs.index]
    docs["mean_nll"] = docs.nll_sum / docs.n_tokens
    docs["perplexity"] = np.exp(docs.mean_nll)
    docs["mean_entropy"] = docs.entropy_sum / docs.n_tokens
    docs["mean_top1_prob"] = docs.top1_sum / docs.n_tokens
    docs["tokens_digest"] = [digests[d].hexdigest() for d in docs.index]
    docs = docs.reset_index(names="doc_id")

    mean_prob = np.load(meanprob_path)
    n = int(docs.n_tokens.sum())
    mean_nll = float(docs.nll_sum.sum() / n)
    summary = {
        "n_docs": len(docs),
        "n_tokens": n,
        "mean_nll_nats": mean_nll,
        "perplexity_tokens": math.exp(mean_nll),
        "perplexity_docs_mean": float(docs.perplexity.mean()),
        "mean_entropy_nats_tokens": float(docs.entropy_sum.sum() / n),
        "mean_entropy_nats_docs": float(docs.mean_entropy.mean()),
        "mean_top1_prob": float(docs.top1_sum.sum() / n),
        "bits_per_byte": float(docs.nll_sum.sum() / math.log(2) / docs.n_bytes.sum()),
        "vocab_size": len(mean_prob),
        "vocab_fraction_70": vocab_fraction(mean_prob, 0.70),
        "vocab_fraction_90": vocab_fraction(mean_prob, 0.90),
        "entropy_histogram": {"bin_width_nats": ENTROPY_BIN_WIDTH, "counts": hist.tolist()},
    }
    cols = ["doc_id", "n_tokens", "n_bytes", "nll_sum", "mean_nll", "perplexity", "mean_entropy", "mean_top1_prob"]
    return summary, docs[[*cols, "tokens_digest"]]


TABLE_COLUMNS = [
    "model",
    "n_docs",
    "n_tokens",
    "perplexity_tokens",
    "perplexity_docs_mean",
    "mean_nll_nats",
    "mean_entropy_nats_tokens",
    "mean_entropy_nats_docs",
    "mean_top1_prob",
    "bits_per_byte",
    "vocab_fraction_70",
    "vocab_fraction_90",
    "vocab_size",
]


def comparison_table(summaries: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per model, in the given order."""
    return pd.DataFrame(
        [{"model": m, **{k: s[k] for k in TABLE_COLUMNS[1:]}} for m, s in summaries.items()], columns=TABLE_COLUMNS
    )


def run_summary(
    logprobs: Path,
    meanprob: Path,
    corpus: Path,
    out_json: Path,
    out_docs: Path,
    *,
    model: str,
    corpus_name: str,
    first_token: str = "bos",
    model_dir: Path | None = None,
) -> dict[str, Any]:
    """``results/entropy_perplexity/<corpus>/<model>.json`` and the per-document table beside it. Under
    ``first_token: none`` the model's tokenizer (``model_dir``) says which bytes were scored."""
    prov = Provenance(
        stage="entropy_perplexity",
        params={
            "model": model,
            "corpus": corpus_name,
            "log_base": "e",
            "entropy_bin_width_nats": ENTROPY_BIN_WIDTH,
            "first_token": first_token,
            "bytes": "of the scored tokens (the first token's left out when first_token is none)",
        },
    )
    for name, path in (("logprobs", logprobs), ("meanprob", meanprob), ("corpus", corpus)):
        prov.add_input(name, path)
    tokenizer = None
    if first_token == "none":
        from lmdelta.models import load_tokenizer

        tokenizer = load_tokenizer(model_dir)
    summary, docs = summarise(logprobs, meanprob, corpus, tokenizer)
    summary = {"model": model, "corpus": corpus_name, **summary}
    write_parquet(out_docs, docs, prov)
    write_json(out_json, summary, prov)
    return summary


#: per-document metrics of the paired table: (name, unit of the values)
PAIRED_METRICS = (
    ("mean_nll", "nats per token"),
    ("mean_entropy", "nats per token"),
    ("bits_per_byte", "bits per UTF-8 byte"),
)
PAIRED_COLUMNS = [
    "corpus",
    "pair",
    "a",
    "b",
    "metric",
    "values",
    "unit",
    "n",
    "mean_a",
    "mean_b",
    "diff",
    "diff_low",
    "diff_high",
    "test",
    "p",
]


def same_tokens(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Whether two models scored the same tokens of every document both scored (per-document tables
    indexed by document, with ``tokens_digest``): only then is a token of one a token of the other, and
    per-token means comparable. A table without digests (written before they were) counts as different."""
    if "tokens_digest" not in a or "tokens_digest" not in b:
        return False
    shared = a.index.intersection(b.index)
    return bool((a.tokens_digest.reindex(shared) == b.tokens_digest.reindex(shared)).all())


def paired_table(
    corpus_name: str, docs: dict[str, pd.DataFrame], pairs: list[dict[str, str]], params: PairedParams
) -> pd.DataFrame:
    """Every pair's per-document metrics compared on the documents both models scored (see the module
    docstring); ``docs`` maps a model to its per-document table."""
    values = dict(PAIRED_METRICS)
    rows = []
    for pair in pairs:
        a, b = (docs[pair[s]].set_index("doc_id") for s in "ab")
        a, b = (df.assign(bits_per_byte=df.nll_sum / math.log(2) / df.n_bytes) for df in (a, b))
        metrics = list(values) if same_tokens(a, b) else ["bits_per_byte"]
        for row in paired_metrics(a, b, unit="document", metrics=metrics, test="sign-flip", params=params):
            head = {"corpus": corpus_name, "pair": pair["pair"], "a": pair["a"], "b": pair["b"]}
            rows.append(head | {"metric": row["metric"], "values": values[row["metric"]]} | row)
    return corrected_table(rows, PAIRED_COLUMNS)


def run_compare(
    corpus_name: str,
    models: list[str],
    summaries: list[Path],
    docs: list[Path],
    out_csv: Path,
    out_entropy: Path,
    out_doc_perplexity: Path,
    *,
    pairs: list[dict[str, str]] = (),
    params: PairedParams | None = None,
    out_paired: Path | None = None,
) -> pd.DataFrame:
    """The comparison table (CSV) and figures of one corpus across models; with ``out_paired``, the
    paired comparisons of ``pairs`` ({"pair", "a", "b"}, models of ``models``) on the documents."""
    import json

    params = params or PairedParams.from_dict({})
    prov = Provenance(
        stage="compare_entropy_perplexity",
        params={"corpus": corpus_name, "models": models, "pairs": list(pairs), "statistics": vars(params)},
    )
    for m, path in zip(models, summaries):
        prov.add_input(f"summary:{m}", path)
    loaded = {m: json.loads(Path(p).read_text()) for m, p in zip(models, summaries)}
    table = comparison_table(loaded)
    write_csv(out_csv, table, prov)
    if out_paired is not None:
        doc_tables = {m: pd.read_parquet(p) for m, p in zip(models, docs)}
        write_csv(out_paired, paired_table(corpus_name, doc_tables, list(pairs), params), prov)
    hists = {m: s["entropy_histogram"]["counts"] for m, s in loaded.items()}
    save_figure(entropy_figure(hists, ENTROPY_BIN_WIDTH, f"Next-token entropy on {corpus_name}"), out_entropy, prov)
    per_doc = {m: pd.read_parquet(p, columns=["perplexity"])["perplexity"].to_numpy() for m, p in zip(models, docs)}
    save_figure(doc_perplexity_figure(per_doc, f"Per-document perplexity on {corpus_name}"), out_doc_perplexity, prov)
    return table


def corpus_findings(
    logprobs: tuple[Path, Path], corpus: Path, out: Path, *, pair: str, names: tuple[str, str], corpus_name: str
) -> pd.DataFrame:
    """A pair's corpus documents as findings (method ``corpus``): ranked by the mean per-token
    log-likelihood ratio log p_a(x) - log p_b(x) (nats per token) of the actual tokens under the two
    models: the difference of their cross-entropies on the document, not a KL between distributions.
    When the two models scored different tokens (two tokenizers, or another first token), a token of
    one is not a token of the other: the ratio is then per UTF-8 byte of the document (nats per byte)."""
    prov = Provenance(
        stage="corpus_findings",
        params={"pair": pair, "a": names[0], "b": names[1], "corpus": corpus_name, "units": "nats per token"},
    )
    for side, path in zip(("a", "b"), logprobs):
        prov.add_input(f"logprobs:{side}", path)
    prov.add_input("corpus", corpus)
    a, b = (pd.read_parquet(p, columns=["doc_id", "token_id", "logprob"]) for p in logprobs)
    docs = pd.read_parquet(corpus, columns=["doc_id", "text"]).set_index("doc_id").text
    if len(a) == len(b) and a.doc_id.equals(b.doc_id) and a.token_id.equals(b.token_id):
        ratio = a.groupby("doc_id").logprob.mean() - b.groupby("doc_id").logprob.mean()
    else:
        n_bytes = docs.map(lambda t: len(t.encode("utf-8")))
        diff = a.groupby("doc_id").logprob.sum().astype(float) - b.groupby("doc_id").logprob.sum().astype(float)
        ratio = diff / n_bytes.reindex(diff.index)
        prov.params["units"] = "nats per byte"
    ratio = ratio.dropna().sort_values(ascending=False, kind="stable")
    rows = [finding("corpus", corpus_name, "document", v, text=docs[d][:1000]) for d, v in ratio.items()]
    return write_findings(out, rows, prov)


# ---- jobs (lmdelta.job) -------------------------------------------------------------------------------


def summary_job(job) -> None:
    """inputs: ``logprobs``, ``meanprob``, ``corpus``, ``model``; spec: ``first_token``; outputs: ``json``,
    ``docs``."""
    run_summary(
        job.path("logprobs"),
        job.path("meanprob"),
        job.path("corpus"),
        job.out("json"),
        job.out("docs"),
        model=job.wildcards["model"],
        corpus_name=job.wildcards["corpus"],
        first_token=job.spec["first_token"],
        model_dir=job.path("model"),
    )


def compare_job(job) -> None:
    """inputs: ``summaries``, ``docs`` (one per model of spec ``models``); spec: ``models``, ``pairs``,
    ``statistics``; outputs: ``csv``, ``paired``, ``entropy``, ``doc_perplexity``."""
    run_compare(
        job.wildcards["corpus"],
        job.spec["models"],
        job.paths("summaries"),
        job.paths("docs"),
        job.out("csv"),
        job.out("entropy"),
        job.out("doc_perplexity"),
        pairs=job.spec["pairs"],
        params=PairedParams.from_dict(job.spec["statistics"]),
        out_paired=job.out("paired"),
    )


def corpus_findings_job(job) -> None:
    """inputs: ``a``, ``b`` (the pair's logprobs on one corpus), ``corpus``; spec: ``names`` (a, b);
    output: ``findings``."""
    corpus_findings(
        (job.path("a"), job.path("b")),
        job.path("corpus"),
        job.out("findings"),
        pair=job.wildcards["pair"],
        names=tuple(job.spec["names"]),
        corpus_name=job.wildcards["corpus"],
    )
