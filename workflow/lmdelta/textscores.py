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
from typing import Any

import numpy as np
import pandas as pd

from lmdelta import LmdeltaError
from lmdelta.artifacts import Provenance, write_parquet
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
    per group, in order; every token is in exactly one group."""
    groups: list[list[int]] = []
    pending = 0  # empty-span tokens before the first group
    for i, (s, e) in enumerate(offsets):
        if e <= s:
            if groups:
                groups[-1][1] = i + 1
            else:
                pending += 1
            continue
        if groups and s < groups[-1][3]:
            g = groups[-1]
            g[1], g[3] = i + 1, max(g[3], e)
            continue
        groups.append([i - pending if not groups else i, i + 1, s, e])
        pending = 0
    if not groups and offsets:  # no token has a span: the text is one group
        groups.append([0, len(offsets), 0, n_chars])
    # an empty-span token after a group joined it above; tokens between groups are in the one before
    for g, nxt in zip(groups, groups[1:]):
        g[1] = nxt[0]
    if groups:
        groups[-1][1] = len(offsets)
    return [tuple(g) for g in groups]


def align(
    text: str, offsets: list[tuple[int, int]], surprisal: np.ndarray, scored: np.ndarray
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-word and per-byte tables of one text (without doc_id) from its tokens' character
    ``offsets``, ``surprisal`` (nats; 0 where not scored) and ``scored`` flags."""
    words = word_spans(text)
    starts = [s for s, _ in words]
    byte_at = np.concatenate([[0], np.cumsum([len(c.encode("utf-8")) for c in text])]).astype(np.int64)
    n_words = len(words)
    w_sum = np.zeros(n_words, np.float64)
    w_tokens = np.zeros(n_words, np.int64)
    w_unscored = np.zeros(n_words, np.int64)
    w_exact = np.ones(n_words, bool)
    n_bytes = int(byte_at[-1])
    b_val = np.zeros(n_bytes, np.float64)
    b_complete = np.ones(n_bytes, bool)
    groups = token_groups(offsets, len(text))
    prev_end = 0
    for k, (t0, t1, s, e) in enumerate(groups):
        g_sum = float(surprisal[t0:t1].sum())
        g_all = bool(scored[t0:t1].all())
        # per word
        anchor = next((j for j in range(s, e) if not text[j].isspace()), s)
        w = bisect.bisect_right(starts, anchor) - 1
        w_sum[w] += g_sum
        w_tokens[w] += t1 - t0
        w_unscored[w] += int((~scored[t0:t1]).sum())
        first, last = bisect.bisect_right(starts, s) - 1, bisect.bisect_right(starts, max(s, e - 1)) - 1
        if first != last:  # the group reaches over a word boundary: no word it touches is exact
            w_exact[first : last + 1] = False
        # per byte
        end = len(text) if k == len(groups) - 1 else e
        b0, b1 = int(byte_at[prev_end]), int(byte_at[end])
        if b1 > b0:
            b_val[b0:b1] = g_sum / (b1 - b0)
            b_complete[b0:b1] = g_all
        elif b1 == b0 and b0 > 0:  # nothing left to spread over (cannot happen for tiling spans): add to the last byte
            b_val[b0 - 1] += g_sum
        prev_end = end
    word_table = pd.DataFrame(
        {
            "word": np.arange(n_words, dtype=np.int32),
            "start": np.array(starts, np.int32),
            "end": np.array([e for _, e in words], np.int32),
            "byte_start": byte_at[starts].astype(np.int32) if n_words else np.array([], np.int32),
            "byte_end": byte_at[[e for _, e in words]].astype(np.int32) if n_words else np.array([], np.int32),
            "text": [text[s:e] for s, e in words],
            "surprisal": w_sum,
            "n_tokens": w_tokens.astype(np.int32),
            "exact": w_exact,
            "complete": w_unscored == 0,
        }
    )
    byte_table = pd.DataFrame({"byte": np.arange(n_bytes, dtype=np.int32), "surprisal": b_val, "complete": b_complete})
    return word_table, byte_table


def doc_tokens(logprobs_path: str | Path) -> dict[str, pd.DataFrame]:
    """doc_id -> its rows of the logprobs artifact (position, token_id, logprob), in order."""
    import pyarrow.parquet as pq

    df = pq.read_table(logprobs_path, columns=["doc_id", "position", "token_id", "logprob"]).to_pandas()
    return {d: g for d, g in df.groupby("doc_id", sort=False)}


def text_scores(
    tokenizer, doc_ids: list[str], texts: list[str], tokens: dict[str, pd.DataFrame], *, batch: int = 64
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-word and per-byte tables of every document (doc_id first), checking that the tokenizer
    gives the very token ids the logprobs artifact scored."""
    from tqdm import tqdm

    if not getattr(tokenizer, "is_fast", False):
        raise LmdeltaError(
            "text-aligned scores need a fast tokenizer (character offsets); this model's tokenizer has no fast "
            "version: install the tokenizers package or convert the tokenizer to tokenizer.json"
        )
    words, bytes_ = [], []
    for i in tqdm(range(0, len(texts), batch), desc="text scores", unit="batch", leave=False):
        chunk = texts[i : i + batch]
        enc = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        for doc_id, text, ids, offsets in zip(doc_ids[i : i + batch], chunk, enc["input_ids"], enc["offset_mapping"]):
            rows = tokens.get(doc_id)
            surprisal = np.zeros(len(ids), np.float64)
            scored = np.zeros(len(ids), bool)
            if rows is not None:
                pos = rows.position.to_numpy()
                if len(pos) and (
                    pos.max() >= len(ids) or not np.array_equal(np.asarray(ids)[pos], rows.token_id.to_numpy())
                ):
                    raise LmdeltaError(
                        f"document {doc_id}: the logprobs artifact scored other tokens than this tokenizer gives; "
                        "it was made with another tokenizer or corpus: rerun the logprobs rule"
                    )
                surprisal[pos] = -rows.logprob.to_numpy(np.float64)
                scored[pos] = True
            w, b = align(text, [tuple(o) for o in offsets], surprisal, scored)
            words.append(w.assign(doc_id=doc_id))
            bytes_.append(b.assign(doc_id=doc_id))
    words_df = pd.concat(words, ignore_index=True) if words else align("", [], np.zeros(0), np.zeros(0, bool))[0]
    bytes_df = pd.concat(bytes_, ignore_index=True) if bytes_ else align("", [], np.zeros(0), np.zeros(0, bool))[1]
    for df in (words_df, bytes_df):
        if "doc_id" not in df:
            df["doc_id"] = pd.Series([], dtype=object)
    first = lambda df: df[["doc_id", *[c for c in df.columns if c != "doc_id"]]]  # noqa: E731
    return first(words_df), first(bytes_df)


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
    corpus = pq.read_table(corpus_path, columns=["doc_id", "text"]).to_pandas()
    tokens = doc_tokens(logprobs_path)
    words, bytes_ = text_scores(tok, corpus.doc_id.tolist(), corpus.text.tolist(), tokens)
    total = -sum(float(g.logprob.astype(np.float64).sum()) for g in tokens.values())
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
            "counts": {
                "n_docs": len(corpus),
                "n_words": len(words),
                "n_bytes": len(bytes_),
                "surprisal_total": total,
                "exact_words": float(words.exact.mean()) if len(words) else float("nan"),
            },
        },
    )
    prov.add_input("logprobs", logprobs_path)
    prov.add_input("corpus", corpus_path)
    prov.inputs["model"] = {"path": str(model_dir), "fingerprint": read_fingerprint(model_dir)["digest"]}
    write_parquet(out_words, words, prov)
    write_parquet(out_bytes, bytes_, prov)
    log.info(
        "text scores of %s on %s: %d words (%.1f%% exact), %d bytes",
        model,
        corpus_name,
        len(words),
        100 * prov.params["counts"]["exact_words"],
        len(bytes_),
    )
    return prov.params["counts"]


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
