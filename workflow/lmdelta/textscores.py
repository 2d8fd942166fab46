"""Text-aligned scores: a model's per-token surprisal mapped onto the text, per word and per byte, so
that models with different tokenizers can be compared on the same units.

Words are defined on the text alone, never by a tokenizer (``word_spans``): a word is a run of
non-space characters together with the spaces before it; spaces at the end of a text join its last
word. The words tile the text: every character is in exactly one word, and two models' word tables of
the same corpus have the same rows (doc_id, word, start, end), so they join with no lost or doubled
character.

Tokens are placed on the text by the tokenizer's character offsets (a fast tokenizer's
``offset_mapping``). Tokens whose spans overlap form one *group*: the byte tokens of one character
(byte-level BPE, SentencePiece byte fallback) and a SentencePiece dummy-prefix mark sharing the first
space. A token with an empty span joins the group before it (the group after it at the start).

- Per word: a group is counted in the word that holds its first non-space character (a group of
  spaces only: its first character). So " the" counts in "the", and a token ".\\n\\n" that ends one
  word and starts the next counts in the first. A word's ``surprisal`` is the sum of its groups'
  surprisal (nats, -logprob); ``exact`` says that no group counted in it reaches outside it and no
  group counted elsewhere reaches into it: such words compare token-for-token between tokenizers.
- Per byte: a group's surprisal is spread evenly over the UTF-8 bytes from the end of the group
  before it to its own end (characters no token covers, such as a space some tokenizers leave out
  of the offsets, go with the group after them; the text's last bytes with the last group).

Both tables sum, per document, to the document's total surprisal (the sum over its scored tokens in
the logprobs artifact). A token that was not scored (the first one under ``first_token: none``)
counts 0 and its word or bytes are marked ``complete = false``.
"""

from __future__ import annotations

import bisect
import logging
import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from lmdelta import LmdeltaError
from lmdelta.artifacts import Provenance, atomic_path, write_parquet
from lmdelta.models import load_tokenizer, read_fingerprint
from lmdelta.plots import save_figure, word_surprisal_figure

log = logging.getLogger(__name__)

WORD = re.compile(r"\s*\S+")

WORD_RULE = "a run of non-space characters with the spaces before it; trailing spaces join the last word"
GROUP_RULE = "tokens with overlapping character spans form a group; an empty span joins the group before it"
WORD_OF_GROUP_RULE = "a group counts in the word holding its first non-space character (spaces only: its first)"
BYTE_RULE = "a group's surprisal spread evenly over its bytes and the uncovered bytes before it"


def word_spans(text: str) -> list[tuple[int, int]]:
    """The words of ``text`` as [start, end) character offsets; they tile the text."""
    spans = [m.span() for m in WORD.finditer(text)]
    if not spans:
        return [(0, len(text))] if text else []
    if spans[-1][1] < len(text):
        spans[-1] = (spans[-1][0], len(text))
    return spans


def token_groups(offsets: list[tuple[int, int]], n_chars: int) -> list[tuple[int, int, int, int]]:
    """Group the tokens of a text by their character spans: (first token, end token, start, end)
    per group, in order; every token is in exactly one group (empty spans join the group before,
    the first group at the start)."""
    opening: list[list[int]] = []  # [token that opens the group, start, end]
    for i, (s, e) in enumerate(offsets):
        if e <= s:
            continue
        if opening and s < opening[-1][2]:
            opening[-1][2] = max(opening[-1][2], e)
        else:
            opening.append([i, s, e])
    if not opening:  # no token has a span: the text is one group
        return [(0, len(offsets), 0, n_chars)] if offsets else []
    firsts = [0] + [g[0] for g in opening[1:]]
    ends = firsts[1:] + [len(offsets)]
    return [(t0, t1, s, e) for t0, t1, (_, s, e) in zip(firsts, ends, opening)]


WORD_COLUMNS = ("word", "start", "end", "byte_start", "byte_end", "text", "surprisal", "n_tokens", "exact", "complete")
BYTE_COLUMNS = ("byte", "surprisal", "complete")


def align(
    text: str, offsets: list[tuple[int, int]], surprisal: np.ndarray, scored: np.ndarray
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Per-word and per-byte columns of one text (without doc_id) from its tokens' character
    ``offsets``, ``surprisal`` (nats; 0 where not scored) and ``scored`` flags."""
    words = word_spans(text)
    starts = [s for s, _ in words]
    ends = [e for _, e in words]
    byte_at = np.concatenate([[0], np.cumsum([len(c.encode("utf-8")) for c in text])]).astype(np.int64)
    n_words = len(words)
    w_sum = np.zeros(n_words, np.float64)
    w_tokens = np.zeros(n_words, np.int32)
    w_unscored = np.zeros(n_words, np.int64)
    w_exact = np.ones(n_words, bool)
    n_bytes = int(byte_at[-1])
    b_val = np.zeros(n_bytes, np.float64)
    b_complete = np.ones(n_bytes, bool)
    groups = token_groups(offsets, len(text))
    prev_end = 0
    for k, (t0, t1, s, e) in enumerate(groups):
        g_sum = float(surprisal[t0:t1].sum())
        # per word
        anchor = next((j for j in range(s, e) if not text[j].isspace()), s)
        w = bisect.bisect_right(starts, anchor) - 1
        w_sum[w] += g_sum
        w_tokens[w] += t1 - t0
        w_unscored[w] += int((~scored[t0:t1]).sum())
        first, last = bisect.bisect_right(starts, s) - 1, bisect.bisect_right(starts, max(s, e - 1)) - 1
        if first != last:  # the group reaches over a word boundary: no word it touches is exact
            w_exact[first : last + 1] = False
        # per byte: groups do not overlap and have non-empty spans, so each has bytes of its own
        end = len(text) if k == len(groups) - 1 else e
        b0, b1 = int(byte_at[prev_end]), int(byte_at[end])
        b_val[b0:b1] = g_sum / (b1 - b0)
        b_complete[b0:b1] = bool(scored[t0:t1].all())
        prev_end = end
    word_cols = {
        "word": np.arange(n_words, dtype=np.int32),
        "start": np.array(starts, np.int32),
        "end": np.array(ends, np.int32),
        "byte_start": byte_at[starts].astype(np.int32),
        "byte_end": byte_at[ends].astype(np.int32),
        "text": [text[s:e] for s, e in words],
        "surprisal": w_sum,
        "n_tokens": w_tokens,
        "exact": w_exact,
        "complete": w_unscored == 0,
    }
    byte_cols = {"byte": np.arange(n_bytes, dtype=np.int32), "surprisal": b_val, "complete": b_complete}
    return word_cols, byte_cols


class DocTokens(NamedTuple):
    """The scored tokens of one document: positions in its tokenization, token ids, logprobs."""

    position: np.ndarray
    token_id: np.ndarray
    logprob: np.ndarray


def doc_tokens(logprobs_path: str | Path) -> dict[str, DocTokens]:
    """doc_id -> its rows of the logprobs artifact, as numpy arrays in artifact order (no per-row
    Python objects: the table of a large corpus is held once)."""
    import pyarrow.parquet as pq

    t = pq.read_table(logprobs_path, columns=["doc_id", "position", "token_id", "logprob"])
    codes = t.column("doc_id").combine_chunks().dictionary_encode()
    names = codes.dictionary.to_pylist()
    idx = codes.indices.to_numpy(zero_copy_only=False)
    order = np.argsort(idx, kind="stable")
    bounds = np.searchsorted(idx[order], np.arange(len(names) + 1))
    cols = [t.column(c).to_numpy() for c in ("position", "token_id", "logprob")]
    del t
    return {name: DocTokens(*(c[order[bounds[k] : bounds[k + 1]]] for c in cols)) for k, name in enumerate(names)}


def _table(doc_ids: list[str], counts: list[int], cols: list[dict[str, Any]], names: tuple[str, ...]):
    """One pyarrow table of several documents' columns, doc_id first (dictionary-decoded strings)."""
    import pyarrow as pa

    doc = pa.DictionaryArray.from_arrays(
        pa.array(np.repeat(np.arange(len(doc_ids), dtype=np.int32), counts), pa.int32()), pa.array(doc_ids, pa.string())
    ).dictionary_decode()
    arrays = [doc]
    for c in names:
        if c == "text":
            arrays.append(pa.array([x for col in cols for x in col[c]], pa.string()))
        else:
            arrays.append(pa.array(np.concatenate([col[c] for col in cols]) if cols else np.zeros(0, COLUMN_DTYPES[c])))
    return pa.Table.from_arrays(arrays, names=["doc_id", *names])


COLUMN_DTYPES = {
    "word": np.int32, "start": np.int32, "end": np.int32, "byte_start": np.int32, "byte_end": np.int32,
    "surprisal": np.float64, "n_tokens": np.int32, "exact": bool, "complete": bool, "byte": np.int32,
}  # fmt: skip


def text_tables_empty():
    """Empty word and byte tables with the artifacts' schema."""
    return _table([], [], [], WORD_COLUMNS), _table([], [], [], BYTE_COLUMNS)


def iter_text_scores(tokenizer, doc_ids: list[str], texts: list[str], tokens: dict[str, Any], *, batch: int = 64):
    """(words, bytes) pyarrow tables of every ``batch`` documents in turn (doc_id first), checking that
    the tokenizer gives the very token ids the logprobs artifact scored. ``tokens`` maps doc_id to
    its scored rows (``position``, ``token_id``, ``logprob``: ``DocTokens`` or a DataFrame)."""
    from tqdm import tqdm

    if not getattr(tokenizer, "is_fast", False):
        raise LmdeltaError(
            "text-aligned scores need a fast tokenizer (character offsets); this model's tokenizer has no fast "
            "version: install the tokenizers package or convert the tokenizer to tokenizer.json"
        )
    for i in tqdm(range(0, len(texts), batch), desc="text scores", unit="batch", leave=False):
        chunk, ids_chunk = texts[i : i + batch], doc_ids[i : i + batch]
        enc = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        words, bytes_ = [], []
        for doc_id, text, ids, offsets in zip(ids_chunk, chunk, enc["input_ids"], enc["offset_mapping"]):
            rows = tokens.get(doc_id)
            surprisal = np.zeros(len(ids), np.float64)
            scored = np.zeros(len(ids), bool)
            if rows is not None:
                pos = np.asarray(rows.position)
                if len(pos) and (
                    pos.max() >= len(ids) or not np.array_equal(np.asarray(ids)[pos], np.asarray(rows.token_id))
                ):
                    raise LmdeltaError(
                        f"document {doc_id}: the logprobs artifact scored other tokens than this tokenizer gives; "
                        "it was made with another tokenizer or corpus: rerun the logprobs rule"
                    )
                surprisal[pos] = -np.asarray(rows.logprob, np.float64)
                scored[pos] = True
            w, b = align(text, [tuple(o) for o in offsets], surprisal, scored)
            words.append(w)
            bytes_.append(b)
        yield (
            _table(ids_chunk, [len(w["word"]) for w in words], words, WORD_COLUMNS),
            _table(ids_chunk, [len(b["byte"]) for b in bytes_], bytes_, BYTE_COLUMNS),
        )


def text_scores(
    tokenizer, doc_ids: list[str], texts: list[str], tokens: dict[str, Any], *, batch: int = 64
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-word and per-byte tables of every document (doc_id first): ``iter_text_scores`` in one
    piece, for a corpus that fits in memory."""
    import pyarrow as pa

    parts = list(iter_text_scores(tokenizer, doc_ids, texts, tokens, batch=batch)) or [text_tables_empty()]
    return tuple(pa.concat_tables([p[k] for p in parts]).to_pandas() for k in (0, 1))


def join_words(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Word tables of several models on one corpus, side by side: the word columns once, then
    ``surprisal``, ``n_tokens``, ``exact``, ``complete`` per model (suffixed ``:<model>``)."""
    keys = ["doc_id", "word", "start", "end", "byte_start", "byte_end", "text"]
    names = list(tables)
    if not names:
        raise ValueError("join_words: no tables")
    out = tables[names[0]][keys].reset_index(drop=True)
    for name in names:
        t = tables[name].reset_index(drop=True)
        if not t[keys].equals(out[keys]):
            raise LmdeltaError(
                f"the word tables of {names[0]} and {name} differ: they were made from different corpora; rerun text_scores"
            )
        for c in ("surprisal", "n_tokens", "exact", "complete"):
            out[f"{c}:{name}"] = t[c].to_numpy()
    return out


def run_text_scores(
    model_dir: str | Path,
    logprobs_path: str | Path,
    corpus_path: str | Path,
    out_words: str | Path,
    out_bytes: str | Path,
    *,
    model: str,
    corpus_name: str,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    import pyarrow.parquet as pq

    tok = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
    corpus = pq.read_table(corpus_path, columns=["doc_id", "text"]).to_pydict()
    tokens = doc_tokens(logprobs_path)
    counts = {"n_docs": len(corpus["doc_id"]), "n_words": 0, "n_bytes": 0}
    counts["surprisal_total"] = -sum(float(t.logprob.astype(np.float64).sum()) for t in tokens.values())
    prov = Provenance(
        stage="textscores",
        params={
            "model": model,
            "corpus": corpus_name,
            "units": "nats",
            "words": WORD_RULE,
            "groups": GROUP_RULE,
            "word_of_group": WORD_OF_GROUP_RULE,
            "bytes": BYTE_RULE,
            "counts": counts,
        },
    )
    prov.add_input("logprobs", logprobs_path)
    prov.add_input("corpus", corpus_path)
    prov.inputs["model"] = {"path": str(model_dir), "fingerprint": read_fingerprint(model_dir)["digest"]}
    # written batch by batch (one row group per batch of documents): memory does not grow with the corpus
    n_exact = 0
    schemas = [t.schema for t in text_tables_empty()]
    with atomic_path(out_words, prov) as tmp_w, atomic_path(out_bytes, prov) as tmp_b:
        with (
            pq.ParquetWriter(tmp_w, schemas[0], compression="zstd") as word_writer,
            pq.ParquetWriter(tmp_b, schemas[1], compression="zstd") as byte_writer,
        ):
            for words, bytes_ in iter_text_scores(tok, corpus["doc_id"], corpus["text"], tokens):
                word_writer.write_table(words)
                byte_writer.write_table(bytes_)
                counts["n_words"] += words.num_rows
                counts["n_bytes"] += bytes_.num_rows
                n_exact += int(words.column("exact").to_numpy(zero_copy_only=False).sum())
        counts["exact_words"] = n_exact / counts["n_words"] if counts["n_words"] else float("nan")
    log.info(
        "text scores of %s on %s: %d words (%.1f%% exact), %d bytes",
        model,
        corpus_name,
        counts["n_words"],
        100 * counts["exact_words"],
        counts["n_bytes"],
    )
    return counts


def run_join(
    word_paths: list[str | Path],
    models: list[str],
    out: str | Path,
    out_png: str | Path,
    *,
    corpus_name: str,
    pairs: list[dict[str, str]],
) -> pd.DataFrame:
    """The models' word tables of one corpus joined side by side (``join_words``), and its figure."""
    import pyarrow.parquet as pq

    joined = join_words({m: pq.read_table(p).to_pandas() for m, p in zip(models, word_paths)})
    prov = Provenance(
        stage="textscores",
        params={"models": list(models), "pairs": list(pairs), "units": "nats", "join": "doc_id, word"},
    )
    for m, p in zip(models, word_paths):
        prov.add_input(f"words_{m}", p)
    write_parquet(out, joined, prov)
    save_figure(word_surprisal_figure(joined, list(models), list(pairs), f"words of {corpus_name}"), out_png, prov)
    return joined


# ---- jobs (lmdelta.job) -------------------------------------------------------------------------------


def text_scores_job(job) -> None:
    """inputs: ``model``, ``logprobs``, ``corpus``; spec: ``trust_remote_code``; outputs: ``words``, ``bytes``."""
    run_text_scores(
        job.path("model"),
        job.path("logprobs"),
        job.path("corpus"),
        job.out("words"),
        job.out("bytes"),
        model=job.wildcards["model"],
        corpus_name=job.wildcards["corpus"],
        trust_remote_code=bool(job.spec.get("trust_remote_code", False)),
    )


def join_job(job) -> None:
    """inputs: ``words`` (one per model of spec ``models``); spec: ``models``, ``pairs``; outputs:
    ``words``, ``png``."""
    run_join(
        job.paths("words"),
        job.spec["models"],
        job.out("words"),
        job.out("png"),
        corpus_name=job.wildcards["corpus"],
        pairs=job.spec["pairs"],
    )
