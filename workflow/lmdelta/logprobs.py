"""Logprobs stage: per-token log-probability, entropy, top-1 probability and rank of one model on one corpus.

Output ``results/logprobs/<corpus>/<model>.parquet``, one row per scored token:
doc_id, position (index of the token in the document's tokens), token_id, logprob (nats), entropy
(nats, of the full next-token distribution), top1_prob, rank (1 = argmax). Beside it
``<model>.meanprob.npy``: the mean next-token distribution over all scored positions (float64,
over the model's full output vocabulary).

First token: the scoring model's ``first_token`` (``lmdelta.tokens``; the id used is recorded):
``bos`` prepends the tokenizer's BOS id (its EOS id when it has no BOS) so that the document's first
token is scored too; ``eos`` prepends EOS; a token's text prepends that token; ``none`` prepends
nothing and the first token is not scored. Documents are tokenised without the tokenizer's own
special tokens, so a prefix is never added twice.

Work is split into parts of ``part_docs`` documents; each finished part is kept in a hidden folder
beside the job's output, so a killed job restarts from its last finished part. Parts are keyed by the
parameters, the model fingerprint and the corpus digest: changed settings never reuse old parts.
Parts are dealt out to ``shards`` independent jobs (``score_logprobs_shard``, one contiguous range
each) and joined in order by ``gather_logprobs``: the artifact's bytes do not depend on the shard count.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from lmdelta import LmdeltaError
from lmdelta.artifacts import Provenance, atomic_path, sha256_file
from lmdelta.config import LOAD_OPTION_KEYS
from lmdelta.models import ForwardCounter, input_device, load_model, read_fingerprint
from lmdelta.scoring import LogprobParams, score_sequences
from lmdelta.shards import read_shards, shard_name, shard_range
from lmdelta.tokens import prefix_token

log = logging.getLogger(__name__)

COLUMNS = ("doc_id", "position", "token_id", "logprob", "entropy", "top1_prob", "rank")


def _empty_table():
    import pyarrow as pa

    return pa.table(
        {
            "doc_id": pa.array([], pa.string()),
            "position": pa.array([], pa.int32()),
            "token_id": pa.array([], pa.int32()),
            "logprob": pa.array([], pa.float32()),
            "entropy": pa.array([], pa.float32()),
            "top1_prob": pa.array([], pa.float32()),
            "rank": pa.array([], pa.int32()),
        }
    )


def score_part(model, tokenizer, doc_ids: list[str], texts: list[str], p: LogprobParams, prefix: int | None, prob_sum):
    """Score one part of documents; return (pyarrow table, skipped doc ids).

    ``prefix`` is the id prepended to each document (see ``prefix_token``), or None.
    """
    import pyarrow as pa

    encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    seqs = [([prefix] if prefix is not None else []) + list(ids) for ids in encoded]
    keep = [i for i, s in enumerate(seqs) if len(s) >= 2]
    skipped = [doc_ids[i] for i in range(len(seqs)) if len(seqs[i]) < 2]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked out: its value never matters
    scores = score_sequences(
        model,
        [seqs[i] for i in keep],
        max_length=p.max_length,
        stride=p.stride,
        batch_tokens=p.batch_tokens,
        pad_token_id=pad,
        chunk_positions=p.chunk_positions,
        prob_sum=prob_sum,
    )
    if not keep:
        return _empty_table(), skipped
    first_pos = 0 if prefix is not None else 1
    lengths = [len(s.token_ids) for s in scores]
    table = pa.table(
        {
            "doc_id": pa.array(np.repeat(np.array([doc_ids[i] for i in keep], dtype=object), lengths), pa.string()),
            "position": pa.array(
                np.concatenate([np.arange(first_pos, first_pos + n, dtype=np.int32) for n in lengths])
            ),
            "token_id": pa.array(np.concatenate([s.token_ids for s in scores])),
            "logprob": pa.array(np.concatenate([s.logprob for s in scores])),
            "entropy": pa.array(np.concatenate([s.entropy for s in scores])),
            "top1_prob": pa.array(np.concatenate([s.top1_prob for s in scores])),
            "rank": pa.array(np.concatenate([s.rank for s in scores])),
        }
    )
    return table, skipped


def score_logprobs_shard(
    model_dir: str | Path,
    corpus_path: str | Path,
    out_dir: str | Path,
    *,
    params: LogprobParams,
    load_options: dict[str, Any],
    shard: int = 0,
    n_shards: int = 1,
) -> int:
    """Score shard ``shard`` of ``n_shards`` of a corpus into the folder ``out_dir``: one
    ``part-KKKKK.parquet`` (+ ``.npz`` with the probability sum, position count and skipped ids) per
    part of ``part_docs`` documents in the shard's range. Resumable by part; returns the part count."""
    import pyarrow.parquet as pq
    import torch
    from tqdm import tqdm

    out_dir = Path(out_dir)
    fingerprint = read_fingerprint(model_dir)
    corpus_digest = sha256_file(corpus_path)
    opts = {k: load_options[k] for k in (*LOAD_OPTION_KEYS, "gpu_ids") if k in load_options}
    prov = Provenance(stage="logprobs_shard", params={**asdict(params), "load_options": opts, "units": "nats"})
    prov.inputs["model"] = {"path": str(model_dir), "fingerprint": fingerprint["digest"]}
    prov.inputs["corpus"] = {"path": str(corpus_path), "sha256": corpus_digest}

    pf = pq.ParquetFile(corpus_path)
    n_docs = pf.metadata.num_rows
    n_parts = max(1, -(-n_docs // params.part_docs))
    mine = shard_range(n_parts, shard, n_shards)
    prov.params.update(shard=shard, n_shards=n_shards, n_parts=n_parts, parts=[mine.start, mine.stop])

    model, tokenizer = load_model(model_dir, **opts)
    calls = ForwardCounter(model)
    ctx = getattr(model.config, "max_position_embeddings", None)
    if ctx is not None and params.max_length > ctx:
        raise LmdeltaError(
            f"logprobs: max_length {params.max_length} exceeds the model's context ({ctx} positions); lower logprobs.max_length"
        )
    prefix_id, prefix_text = prefix_token(tokenizer, params.first_token)
    prov.params["prefix_token_id"], prov.params["prefix_token"] = prefix_id, prefix_text
    device = input_device(model)
    vocab = model.get_output_embeddings().weight.shape[0]
    prov.params["vocab_size"] = int(vocab)

    key = hashlib.sha256(
        json.dumps(
            [asdict(params), opts, fingerprint["digest"], corpus_digest, shard, n_shards], sort_keys=True
        ).encode()
    ).hexdigest()[:16]
    parts = out_dir.parent / f".{out_dir.name}.parts-{key}"
    for stale in out_dir.parent.glob(f".{out_dir.name}.parts-*"):
        if stale != parts:
            shutil.rmtree(stale, ignore_errors=True)
    parts.mkdir(parents=True, exist_ok=True)
    done = sum((parts / f"part-{k:05d}.parquet").exists() for k in mine)
    if done:
        log.info("resuming: %d of %d parts already scored in %s", done, len(mine), parts)

    first_doc, last_doc = mine.start * params.part_docs, min(n_docs, mine.stop * params.part_docs)
    bar = tqdm(
        total=last_doc - first_doc, desc=f"logprobs {out_dir.parent.name}/{out_dir.name}", unit=" docs", mininterval=2.0
    )
    for k, batch in enumerate(pf.iter_batches(batch_size=params.part_docs, columns=["doc_id", "text"])):
        if k >= mine.stop:
            break  # the rest of the corpus belongs to later shards
        if k < mine.start:
            continue
        part = parts / f"part-{k:05d}.parquet"
        if part.exists():
            bar.update(batch.num_rows)
            continue
        prob_sum = torch.zeros(vocab, dtype=torch.float64, device=device)
        table, skipped = score_part(
            model,
            tokenizer,
            batch.column("doc_id").to_pylist(),
            batch.column("text").to_pylist(),
            params,
            prefix_id,
            prob_sum,
        )
        with atomic_path(parts / f"part-{k:05d}.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                prob_sum=prob_sum.cpu().numpy(),
                n_positions=np.int64(table.num_rows),
                skipped=np.array(skipped, dtype=str),
            )
        with atomic_path(part) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        bar.update(batch.num_rows)
    bar.close()
    prov.params["model_calls"] = calls.n  # forward calls of this run (a resumed run counts only its own)
    with atomic_path(out_dir, prov) as tmp:
        os.replace(parts, tmp)
    return len(mine)


def gather_logprobs(shard_dirs: list[str | Path], out: str | Path, out_meanprob: str | Path) -> dict[str, Any]:
    """Join the shards of ``score_logprobs_shard`` into the logprobs artifact and the mean
    next-token distribution, part by part in order: the same bytes whatever the shard count."""
    import pyarrow.parquet as pq

    shard_dirs = [Path(d) for d in shard_dirs]
    n_shards, recs, settings, prior_time_s = read_shards(shard_dirs, vary=("shard", "parts", "model_calls"))
    n_parts = settings["n_parts"]
    files = {}
    for d, r in zip(shard_dirs, recs):
        for k in range(*r["params"]["parts"]):
            files[k] = d / f"part-{k:05d}"
    if sorted(files) != list(range(n_parts)):
        raise LmdeltaError(f"the shards of {out} do not cover parts 0..{n_parts - 1}; rerun the logprobs shards")

    prov = Provenance(
        stage="logprobs",
        params={k: v for k, v in settings.items() if k not in ("n_shards", "n_parts", "vocab_size")},
        prior_time_s=prior_time_s,
    )
    prov.inputs = recs[0]["inputs"]
    vocab = settings["vocab_size"]
    prob_sum = np.zeros(vocab, np.float64)
    n_positions, skipped = 0, []
    for k in range(n_parts):
        with np.load(files[k].with_suffix(".npz")) as z:
            prob_sum += z["prob_sum"]
            n_positions += int(z["n_positions"])
            skipped += [str(s) for s in z["skipped"]]
    corpus = recs[0]["inputs"]["corpus"]["path"]
    if n_positions == 0:
        raise LmdeltaError(
            f"logprobs: no token of {corpus} could be scored (every document is empty or one token long); check the corpus"
        )
    n_docs = pq.ParquetFile(corpus).metadata.num_rows if Path(corpus).exists() else None
    counts = {
        "n_docs": None if n_docs is None else n_docs - len(skipped),
        "n_docs_skipped": len(skipped),
        "n_tokens": n_positions,
        "vocab_size": int(vocab),
    }
    prov.params["counts"] = counts
    prov.params["shards"] = n_shards
    prov.params["model_calls"] = sum(r["params"]["model_calls"] for r in recs)
    prov.params["skipped_doc_ids"] = skipped[:100]
    if skipped:
        log.warning(
            "%d documents had nothing to score (empty, or one token with first_token: none) and are skipped: %s",
            len(skipped),
            ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""),
        )

    with atomic_path(out_meanprob, prov) as tmp, open(tmp, "wb") as fh:
        np.save(fh, prob_sum / n_positions)
    with atomic_path(out, prov) as tmp:
        with pq.ParquetWriter(tmp, _empty_table().schema, compression="zstd") as writer:
            for k in range(n_parts):
                writer.write_table(pq.read_table(files[k].with_suffix(".parquet")))
    log.info(
        "logprobs: %d tokens of %d documents from %d shard(s) -> %s", n_positions, counts["n_docs"] or 0, n_shards, out
    )
    return counts


def run_logprobs(
    model_dir: str | Path,
    corpus_path: str | Path,
    out: str | Path,
    out_meanprob: str | Path,
    *,
    params: LogprobParams,
    load_options: dict[str, Any],
    n_shards: int = 1,
) -> dict[str, Any]:
    """Every shard in this process, then the gather (what the workflow does with one job per shard)."""
    out = Path(out)
    dirs = [out.parent / "shards" / out.stem / shard_name(i, n_shards) for i in range(n_shards)]
    for i, d in enumerate(dirs):
        score_logprobs_shard(
            model_dir,
            corpus_path,
            d,
            params=params,
            load_options=load_options,
            shard=i,
            n_shards=n_shards,
        )
    counts = gather_logprobs(dirs, out, out_meanprob)
    shutil.rmtree(out.parent / "shards" / out.stem, ignore_errors=True)
    return counts


# ---- jobs (lmdelta.job) -------------------------------------------------------------------------------


def shard_job(job) -> None:
    """inputs: ``model``, ``corpus``; spec: {"params", "load_options"}; output: ``shard``."""
    score_logprobs_shard(
        job.path("model"),
        job.path("corpus"),
        job.out("shard"),
        params=LogprobParams.from_dict(job.spec["params"]),
        load_options=job.spec["load_options"],
        shard=int(job.wildcards["shard"]),
        n_shards=int(job.wildcards["n"]),
    )


def gather_job(job) -> None:
    """input: ``shards``; outputs: ``tokens``, ``meanprob``."""
    gather_logprobs(job.paths("shards"), job.out("tokens"), job.out("meanprob"))
