"""Scoring throughput: lmdelta's scorer against three baselines, on the same model and tokens, in one run.

- raw: batched forward only (the ceiling; logits computed, nothing reduced)
- study: the original study's method: one document per forward, full softmax copied to host numpy,
  entropy / top-1 / rank / target logprob computed there
- naive: batched forward, then log_softmax over the whole [batch x tokens x vocab] tensor
- lmdelta: `lmdelta.scoring.score_sequences` with every reduction and the mean-probability vector

Prints tokens/s (best of ``--repeats`` rounds, each timing every method once) and each one's ratio to
raw, with the median of the rounds' own ratios (steadier on a shared CPU whose speed drifts).
Goals: lmdelta >= 0.8x raw on CPU (issue "Step 2"; Step 17 raised it to 0.9x) and >= 3x study on GPU.

    python bench/logprobs_throughput.py [--model resources/models/smollm2] [--docs 24] [--tokens 400]
        [--dtype float32|bfloat16] [--device cpu|cuda] [--threads 2]

Without --model (or when the folder is missing) a randomly initialised model of ``--shape`` is built
first (SmolLM2-135M's Llama config, or Pythia-1B's GPT-NeoX config; the same cost per token as the real one).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "workflow"), str(ROOT / "bench")]

from random_models import SHAPES, add_shape_argument, build, tokenizer_dir  # noqa: E402
from timing import sync  # noqa: E402

from lmdelta.models import load_model  # noqa: E402
from lmdelta.scoring import score_sequences  # noqa: E402


def get_model(args):
    folder = Path(args.model) if args.model else None
    if folder is None or not folder.exists():
        work = Path(tempfile.mkdtemp())
        folder = build(SHAPES[args.shape], work, tokenizer_dir(work))
    model, _ = load_model(folder, dtype=args.dtype, device=args.device)
    return model, folder


def bench_raw(model, ids, batch):
    with torch.inference_mode():
        for i in range(0, len(ids), batch):
            _ = model(input_ids=ids[i : i + batch]).logits


def bench_study(model, ids, batch):
    """One document per forward; softmax to host numpy; reductions in numpy (the original code's way)."""
    with torch.inference_mode():
        for row in ids:
            logits = model(input_ids=row[None]).logits[0, :-1].float()
            probs = torch.softmax(logits, -1).cpu().numpy()
            target = row[1:].cpu().numpy()
            p_t = probs[np.arange(len(target)), target]
            np.log(p_t)
            -(probs * np.log(np.clip(probs, 1e-30, None))).sum(-1)
            probs.max(-1)
            (probs > p_t[:, None]).sum(-1) + 1
            probs.mean(0)


def bench_naive(model, ids, batch):
    with torch.inference_mode():
        for i in range(0, len(ids), batch):
            chunk = ids[i : i + batch]
            lp = torch.log_softmax(model(input_ids=chunk).logits.float(), -1)
            tgt = lp[:, :-1].gather(-1, chunk[:, 1:, None])
            p = lp.exp()
            -(p * lp).sum(-1)
            p.max(-1)
            (lp[:, :-1] > tgt).sum(-1)
            p.mean((0, 1))


def bench_lmdelta(model, ids, batch):
    prob_sum = torch.zeros(model.config.vocab_size, dtype=torch.float64, device=ids.device)
    seqs = ids.cpu().tolist()
    score_sequences(
        model,
        seqs,
        max_length=ids.shape[1],
        stride=ids.shape[1],
        batch_tokens=batch * ids.shape[1],
        pad_token_id=0,
        prob_sum=prob_sum,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "resources" / "models" / "smollm2"))
    add_shape_argument(ap)
    ap.add_argument("--docs", type=int, default=24)
    ap.add_argument("--tokens", type=int, default=400)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5, help="best of this many runs per method, round robin")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, folder = get_model(args)
    device = next(model.parameters()).device.type
    ids = torch.randint(10, 10000, (args.docs, args.tokens), generator=torch.Generator().manual_seed(0)).to(device)
    n_tok = args.docs * (args.tokens - 1)
    print(
        f"model {folder} ({model.config.model_type}), {args.dtype} on {device}, {args.threads} threads, "
        f"{args.docs} docs x {args.tokens} tokens, batch {args.batch}"
    )
    # warm-up; on a GPU over every chunk shape, so that compiling the reduction is not timed
    bench_lmdelta(model, ids if device == "cuda" else ids[:2], args.batch)
    # round robin (each repeat times every method once), so that a host whose speed drifts during the
    # run (a shared CPU does) slows every method alike instead of whichever ran in the slow minutes
    methods = {"raw": bench_raw, "study": bench_study, "naive": bench_naive, "lmdelta": bench_lmdelta}
    times = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            sync(device)
            t0 = time.perf_counter()
            fn(model, ids, args.batch)
            sync(device)
            times[name].append(time.perf_counter() - t0)
    results = {name: n_tok / min(t) for name, t in times.items()}
    for name, tps in results.items():
        per_round = np.median(np.array(times["raw"]) / np.array(times[name]))
        print(
            f"{name:8} {tps:9.0f} tok/s   {tps / results['raw']:5.2f}x raw   {tps / results['study']:5.2f}x study"
            f"   (median of the rounds' ratios to raw: {per_round:4.2f}x)"
        )


if __name__ == "__main__":
    main()
