"""The vocabulary scan against the raw batched forward of its tokens, on the same words, in one run.

- raw: for each batch of the scan's questions, each model's forward of the tokens after the shared
  prefix (the word and the rest of the template) on the prefix's KV cache, prepared outside the clock,
  with the logits of the last position only: the least work any scan of these questions can do.
- scan: ``lmdelta.scan.scan_scores`` as the scan job runs it (the prefix read once per model, its cache
  expanded for each batch, both models, KL and JS of the two distributions, top tokens).

Prints words/s of each (best of ``--rounds``, each round timing both once, round robin) and scan/raw
(Step 18's goal: >= 0.8x). One model folder serves as both models of the pair (the cost is the same).

    python bench/scan_throughput.py [--model resources/models/smollm2] [--words 2048] [--batch 128]
        [--dtype float32|bfloat16] [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "workflow"), str(ROOT / "bench")]

from lmdelta.models import load_model  # noqa: E402
from lmdelta.scan import PrefixScorer, candidate_words, scan_scores  # noqa: E402
from lmdelta.tokens import TextFormat, prompt_ids  # noqa: E402

FORMAT = {"chat_template": True, "fmt": None, "first_token": "<|endoftext|>"}  # the demo's SmolLM2


def batches(scorer: PrefixScorer, n: int, size: int) -> list[list[int]]:
    """The scan's batches: questions grouped by the length after the shared prefix (no padding)."""
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(len(scorer.seqs[i]) - scorer.n_prefix, []).append(i)
    return [idx[b : b + size] for idx in groups.values() for b in range(0, len(idx), size)]


def raw(scorers: list[PrefixScorer], size: int) -> float:
    """Seconds of the forwards alone (each batch's cache expanded before the clock starts)."""
    total = 0.0
    for index in batches(scorers[0], len(scorers[0].seqs), size):
        for sc in scorers:
            cache = copy.deepcopy(sc.cache)
            cache.batch_repeat_interleave(len(index))
            suffix = torch.tensor([sc.seqs[i][sc.n_prefix :] for i in index])
            pos = torch.arange(sc.n_prefix, sc.n_prefix + suffix.shape[1]).expand(len(index), -1)
            t = time.perf_counter()
            with torch.inference_mode():
                sc.model(input_ids=suffix, use_cache=True, position_ids=pos, **{sc.arg: cache}, **sc.extra)
            total += time.perf_counter() - t
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resources/models/smollm2", help="a materialised folder (make demo writes it)")
    ap.add_argument("--words", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not Path(args.model).exists():
        sys.exit(f"{args.model} does not exist: run make demo (or snakemake resources/models/smollm2) first")
    models, tok = [], None
    for _ in range(2):
        m, tok = load_model(args.model, dtype=args.dtype, device="cpu")
        models.append(m)
    words = candidate_words(tok, min_letters=4, max_words=args.words)
    fmt = TextFormat.from_dict(FORMAT)
    seqs = [prompt_ids(tok, f"Tell me about {w}.", fmt) for w in words]
    scorers = [PrefixScorer(m, seqs) for m in models]
    best = {"raw": float("inf"), "scan": float("inf")}
    for r in range(args.rounds):
        best["raw"] = min(best["raw"], raw(scorers, args.batch))
        t = time.perf_counter()
        scan_scores(models, tok, (seqs, seqs), batch_size=args.batch, desc=f"round {r + 1}")
        best["scan"] = min(best["scan"], time.perf_counter() - t)
    n = len(words)
    print(
        f"{n} words, prefix {scorers[0].n_prefix} tokens, {args.dtype}, {args.threads} threads, best of {args.rounds}: "
        f"raw {n / best['raw']:.1f} words/s, scan {n / best['scan']:.1f} words/s, "
        f"scan/raw {best['raw'] / best['scan']:.2f}x (goal >= 0.8x)"
    )


if __name__ == "__main__":
    main()
