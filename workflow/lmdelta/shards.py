"""Splitting a stage's work into independent jobs (shards) and checking them before a gather.

A stage that grows with its data (logprobs over a corpus, completions over a prompt set) is cut into
``n`` contiguous shards of its natural work units (logprobs: parts of ``part_docs`` documents;
completions: generation batches). Each shard is computed exactly as in an unsharded run (same
batches, same seeds), so gathering the shards in order gives the same bytes as one job.
Shard outputs live under ``.../shards/<name>/<i>-of-<n>``; the gather rule names them all.
"""

from __future__ import annotations

import re
from pathlib import Path

from lmdelta import LmdeltaError
from lmdelta.artifacts import read_provenance

_SHARD_NAME = re.compile(r"^(\d+)-of-(\d+)(?:\.\w+)?$")


def shard_range(n_items: int, shard: int, n_shards: int) -> range:
    """The items of shard ``shard`` (0-based) of ``n_shards``: contiguous, sizes differ by at most one."""
    if not 0 <= shard < n_shards:
        raise LmdeltaError(f"shard {shard} is outside 0..{n_shards - 1}; shards are numbered from 0")
    return range(n_items * shard // n_shards, n_items * (shard + 1) // n_shards)


def shard_name(shard: int, n_shards: int) -> str:
    return f"{shard}-of-{n_shards}"


def check_complete(paths: list[str | Path]) -> int:
    """The shard count of a gather's inputs; an error unless they are exactly shards 0..n-1 of n, in order."""
    parsed = []
    for p in paths:
        m = _SHARD_NAME.match(Path(p).name)
        if not m:
            raise LmdeltaError(f"{p} is not a shard output (<i>-of-<n>); gather the outputs of the shard rule")
        parsed.append((int(m.group(1)), int(m.group(2))))
    n = parsed[0][1] if parsed else 0
    if parsed != [(i, n) for i in range(n)]:
        raise LmdeltaError(
            f"shards {[shard_name(*s) for s in parsed]} are not shards 0..{n - 1} of {n} in order; gather every shard once"
        )
    return n


def read_shards(paths: list[str | Path], vary: tuple[str, ...]) -> tuple[int, list[dict], dict, float]:
    """What a gather needs from its inputs: the shard count (all of 0..n-1, in order), each shard's
    provenance record, the params they all share (all but ``vary``), and their summed compute time.
    An error names the first shard computed with other settings or inputs: rerun it before a gather."""
    n_shards = check_complete(paths)
    records = [read_provenance(p) for p in paths]

    def strip(r):
        return {k: v for k, v in r["params"].items() if k not in vary}

    for p, r in zip(paths, records):
        if strip(r) != strip(records[0]) or r["inputs"] != records[0]["inputs"]:
            raise LmdeltaError(f"{p} was computed with other settings or inputs than {paths[0]}; rerun its shard")
    prior_time_s = sum(r.get("compute_time_s", r["wall_time_s"]) for r in records)
    return n_shards, records, strip(records[0]), prior_time_s
