"""Teacher-forced scoring: rolling windows, length-sorted batches, on-device reductions.

One implementation, reused by every stage that scores given text (logprobs, surprisal, divergence).

Windows follow lm-evaluation-harness's rolling scheme (``get_rolling_token_windows``): each window
feeds at most ``max_length`` ids; the first predicts the first ``max_length`` tokens after the prefix;
each next window predicts the next ``stride`` tokens, with the ``max_length - stride`` ids before them
fed as context only. Every token is scored exactly once, each with at least
``max_length - stride + 1`` ids of left context once the document is longer than a window.
``stride == max_length`` gives disjoint windows (lm-eval's default, ``context_len = 1``).

Per scored token the reductions are made from the logits on the model's device, in chunks of
positions (``chunk_positions``; "auto": 32 on a CPU, on a GPU as many as fit 256 MiB of float32
logits, since small chunks leave a GPU waiting on kernel launches), in float32: log-probability of the actual token, entropy of the full next-token
distribution, top-1 probability, and rank of the actual token (1 = argmax; ties counted in the
token's favour). A sum of next-token distributions is accumulated too (for the mean distribution).
Nothing vocabulary-sized goes to the host except that one accumulated vector.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from lmdelta import LmdeltaError
from lmdelta.config import stage_spec
from lmdelta.models import input_device

log = logging.getLogger(__name__)

FIELDS = ("logprob", "entropy", "top1_prob", "rank")


def rolling_windows(seq_len: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows over a sequence of ``seq_len`` ids: (start, stop, score_from).

    The model is fed ids ``[start, stop)`` (at most ``max_length``) and the window scores the ids
    ``[score_from, stop]`` (``stop`` included: the last fed position predicts the next id), each id s
    from the logits at fed position ``s - 1 - start``. Id 0 (the prefix, if any) is never scored.
    Equal to lm-evaluation-harness's windows with ``context_len = max_length - stride + 1``.
    """
    if not 1 <= stride <= max_length:
        raise LmdeltaError(
            f"logprobs: stride ({stride}) must be between 1 and max_length ({max_length}); fix logprobs.stride"
        )
    if max_length < 1:
        raise LmdeltaError("logprobs: max_length must be at least 1; raise logprobs.max_length")
    if seq_len < 2:
        return []
    stop = min(seq_len - 1, max_length)
    out = [(0, stop, 1)]
    scored_to = stop + 1  # ids below this are scored
    while scored_to < seq_len:
        new_to = min(seq_len, scored_to + stride)
        stop = new_to - 1
        out.append((max(0, stop - max_length), stop, scored_to))
        scored_to = new_to
    return out


@dataclass
class SequenceScores:
    """Scores of the ids ``seq[1:]`` of one sequence, in order (index i scores id i + 1)."""

    token_ids: np.ndarray  # int32
    logprob: np.ndarray  # float32, nats
    entropy: np.ndarray  # float32, nats
    top1_prob: np.ndarray  # float32
    rank: np.ndarray  # int32, 1 = argmax


@dataclass
class _Item:
    seq: int
    start: int
    stop: int
    score_from: int


def reduce_logits(z, targets, prob_sum=None):
    """Reductions of a [C, V] chunk of logits (any float dtype) at the target ids [C].

    Returns float32 tensors (logprob, entropy, top1_prob) and rank (float32 holding an integer:
    exact below 2**24 tokens); adds the chunk's probabilities into ``prob_sum`` ([V], float64) when
    given. Few passes over the chunk: the max, exp(z - max) once (in place), its sum, one dot product
    with z for the entropy, one matrix-vector product for the probabilities (no [C, V] probability
    tensor is divided out) and one comparison for the rank, written as floats into the buffer of
    exp(z - max) and summed (on a CPU, 7x faster than summing a boolean tensor, which was the
    costliest pass).
    """
    import torch

    z = z.float()
    m = z.amax(-1)
    e = (z - m[:, None]).exp_()
    s = e.sum(-1)
    lse = m + torch.log(s)
    z_t = z.gather(1, targets[:, None])[:, 0]
    entropy = lse - torch.linalg.vecdot(e, z) / s
    if prob_sum is not None:
        prob_sum += ((1.0 / s) @ e).to(prob_sum.dtype)
    rank = torch.gt(z, z_t[:, None], out=e).sum(-1) + 1
    return z_t - lse, entropy, 1.0 / s, rank


def reducer(device):
    """The reduction for logits on ``device``: on a GPU ``torch.compile`` of ``reduce_logits`` (one
    fused kernel instead of a launch and a pass over the chunk per operation; compiled once per
    process, shapes dynamic), else ``reduce_logits`` itself. The compiled and eager numbers agree to
    float32 rounding of sums over the vocabulary (tests/test_scoring.py)."""
    if getattr(device, "type", str(device)) != "cuda":
        return reduce_logits
    return _compiled()


@cache
def _compiled():
    import torch

    try:
        return torch.compile(reduce_logits, dynamic=True)
    except Exception as e:  # no compiler for this platform: the eager reduction, same numbers
        log.warning("torch.compile of the scorer's reduction failed (%s); using the eager one", e)
        return reduce_logits


def score_sequences(
    model,
    seqs: Sequence[Sequence[int]],
    *,
    max_length: int,
    stride: int,
    batch_tokens: int,
    pad_token_id: int,
    chunk_positions: int | str = "auto",
    padding_side: str = "right",
    prob_sum=None,
    progress: Callable[[int], None] | None = None,
) -> list[SequenceScores]:
    """Score every id after the first of each sequence; see the module docstring.

    Windows of all sequences are sorted by length (longest first, so memory problems show at once)
    and packed into batches of at most ``batch_tokens`` padded tokens. ``progress`` is called with
    the number of tokens scored after each batch.
    """
    import torch

    device = input_device(model)
    chunk_positions = resolve_chunk(chunk_positions, device, model.config.vocab_size)
    reduce = reducer(device)
    items = [
        _Item(i, s, e, f) for i, seq in enumerate(seqs) for s, e, f in rolling_windows(len(seq), max_length, stride)
    ]
    items.sort(key=lambda it: (-(it.stop - it.start), it.seq, it.start))
    out = {
        name: [np.zeros(max(len(s) - 1, 0), dtype) for s in seqs]
        for name, dtype in (
            ("logprob", np.float32),
            ("entropy", np.float32),
            ("top1_prob", np.float32),
            ("rank", np.int32),
        )
    }
    filled = [np.zeros(max(len(s) - 1, 0), bool) for s in seqs]
    arrays = [np.asarray(s, dtype=np.int64) for s in seqs]

    for batch in _batches(items, batch_tokens):
        width = batch[0].stop - batch[0].start
        ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        runs, targets = [], []
        for b, it in enumerate(batch):
            n = it.stop - it.start
            off = 0 if padding_side == "right" else width - n
            ids[b, off : off + n] = torch.from_numpy(arrays[it.seq][it.start : it.stop])
            mask[b, off : off + n] = 1
            # ids score_from..stop are predicted at fed positions score_from - 1 - start .. stop - 1 - start
            k = it.stop + 1 - it.score_from
            runs.append((b, off + it.score_from - 1 - it.start, k))
            targets.append(arrays[it.seq][it.score_from : it.stop + 1])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device)
            ).logits
            tgt_t = torch.from_numpy(np.concatenate(targets)).to(device)
            results = []
            for c, z in enumerate(_chunks(logits, runs, chunk_positions)):
                sl = slice(c * chunk_positions, (c + 1) * chunk_positions)
                results.append(torch.stack([r.float() for r in reduce(z, tgt_t[sl], prob_sum)], dim=1))
            scores = torch.cat(results).cpu().numpy()
        del logits
        at = 0
        for it, (_, _, n) in zip(batch, runs):  # each window's scores are one contiguous run, in order
            span = slice(it.score_from - 1, it.stop)
            for k, name in enumerate(FIELDS):
                out[name][it.seq][span] = scores[at : at + n, k]
            filled[it.seq][span] = True
            at += n
        if progress is not None:
            progress(at)

    result = []
    for i, seq in enumerate(seqs):
        if not filled[i].all():  # an internal invariant: every id scored exactly once
            raise RuntimeError(f"sequence {i}: {int((~filled[i]).sum())} ids were not scored")
        result.append(
            SequenceScores(
                token_ids=np.asarray(seq[1:], np.int32),
                logprob=out["logprob"][i],
                entropy=out["entropy"][i],
                top1_prob=out["top1_prob"][i],
                rank=out["rank"][i],
            )
        )
    return result


def _chunks(logits, runs, size: int):
    """The logits of the scored positions, ``size`` at a time, in order: ``runs`` are (row, first
    position, count) of consecutive positions. A chunk inside one run is a view of ``logits`` (no
    copy); one that spans runs is their concatenation. Chunks are the same rows in the same order
    whatever the layout, so the numbers do not depend on it."""
    import torch

    pieces, have = [], 0
    for row, col, n in runs:
        while n:
            take = min(n, size - have)
            pieces.append(logits[row, col : col + take])
            have, col, n = have + take, col + take, n - take
            if have == size:
                yield pieces[0] if len(pieces) == 1 else torch.cat(pieces)
                pieces, have = [], 0
    if pieces:
        yield pieces[0] if len(pieces) == 1 else torch.cat(pieces)


GPU_CHUNK_BYTES = 256 * 2**20  # float32 logits per reduced chunk on a GPU


def resolve_chunk(chunk_positions: int | str, device, vocab_size: int) -> int:
    """Positions reduced at once: the given number, or "auto" (32 on a CPU; on a GPU, GPU_CHUNK_BYTES of
    float32 logits). Speed and memory only: each position's numbers do not depend on it."""
    if chunk_positions != "auto":
        return int(chunk_positions)
    if getattr(device, "type", str(device)) == "cpu":
        return 32
    return max(32, GPU_CHUNK_BYTES // (4 * vocab_size))


def _batches(items: list[_Item], batch_tokens: int):
    """Consecutive items (sorted longest first) while batch size x longest length <= batch_tokens."""
    batch: list[_Item] = []
    for it in items:
        first = batch[0] if batch else it
        width = first.stop - first.start
        if batch and (len(batch) + 1) * width > batch_tokens:
            yield batch
            batch = []
        batch.append(it)
    if batch:
        yield batch


@stage_spec("logprobs", internal=("first_token",))
class LogprobParams:
    max_length: int
    stride: int
    first_token: str = "bos"  # bos | eos | none
    batch_tokens: int
    chunk_positions: int | str  # auto: 32 on a CPU, 256 MiB of logits on a GPU
    part_docs: int
