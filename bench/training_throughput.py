"""Soft-prompt training speed: float32 against bf16 autocast, with and without casting the frozen weights
once (`lmdelta.models.FrozenAutocast`), on the same pair, windows and steps, in one run.

- float32: `autocast: none`
- bf16 autocast (plain): `torch.autocast` alone, as the trainer ran before FrozenAutocast; it casts every
  frozen weight again at every product of every forward and backward
- bf16 autocast (lmdelta): the trainer as it is (the frozen linear weights cast once, bitwise the same numbers)

Each variant trains ``--steps`` steps of the real `train_prompt` from the same start, ``--rounds`` times
round robin; the time per step is the median of the trainer's own per-step times after the first two
(warm-up), evaluation excluded, and the best round counts.
Prints steps/s, each variant's ratio to float32, and whether the two bf16 variants trained the same
prompt (they must, bit for bit). ``--profile`` adds the top operators of two steps of each variant
(torch.profiler; on a GPU sorted by device time): what to fix next.

    python bench/training_throughput.py [--shape smollm2-135m|pythia-1b] [--device cpu|cuda] [--steps 8] [--rounds 2]
        [--batch 8] [--seq-len 64] [--threads 2] [--tokenizer DIR] [--profile]

The models are randomly initialised of the real shapes (`bench/random_models.py`): the cost per step
depends on the shapes, not on the weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "workflow"), str(ROOT / "bench")]

from random_models import SHAPES, add_shape_argument, build, tokenizer_dir  # noqa: E402
from timing import print_profile  # noqa: E402

import lmdelta.softprompt as softprompt  # noqa: E402
from lmdelta.models import FrozenAutocast, load_model  # noqa: E402
from lmdelta.softprefix import split_windows  # noqa: E402


class PlainAutocast(FrozenAutocast):
    """torch.autocast alone: no weight is cast ahead (the trainer before FrozenAutocast)."""

    def __init__(self, models, *, enabled: bool, device_type: str):
        super().__init__(models, enabled=False, device_type=device_type)
        self.enabled = enabled


def train(models, toks, docs, args, autocast: str, plain: bool, work: Path, profile: bool):
    p = softprompt.SoftPromptParams(
        n_tokens=8,
        seq_len=args.seq_len,
        batch=args.batch,
        steps=args.steps,
        lr=0.05,
        eval_every=args.steps,
        checkpoint_every=args.steps,
        autocast=autocast,
        eval_windows=args.batch,
        patience=10,
    )
    softprompt.FrozenAutocast = PlainAutocast if plain else FrozenAutocast
    ckpt = Path(tempfile.mkdtemp(dir=work))
    try:
        if profile:
            p = dataclasses.replace(p, steps=2, eval_every=2, checkpoint_every=2)
            windows = split_windows(docs, p)
            print_profile(
                args.device,
                lambda: softprompt.train_prompt(models, toks, windows, p, ckpt_dir=ckpt, progress=False),
                rows=12,
            )
            return None, None
        res = softprompt.train_prompt(models, toks, split_windows(docs, p), p, ckpt_dir=ckpt, progress=False)
    finally:
        softprompt.FrozenAutocast = FrozenAutocast
    secs = [r["seconds"] for r in res["metrics"]][2:]
    return 1.0 / float(np.median(secs)), res["prompt"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_argument(ap)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument(
        "--rounds", type=int, default=2, help="each variant trained this many times, round robin; best kept"
    )
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokenizer", default=str(ROOT / "resources" / "models" / "smollm2"))
    ap.add_argument("--profile", action="store_true", help="also print the top operators of two steps per variant")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp())
    tok_dir = tokenizer_dir(work, args.tokenizer)
    folders = [build(SHAPES[args.shape], work, tok_dir, name=f"m{seed}", seed=seed) for seed in (0, 1)]
    loaded = [load_model(f, dtype="float32", device=args.device) for f in folders]
    models, toks = [m for m, _ in loaded], [t for _, t in loaded]
    rng = np.random.default_rng(0)
    docs = [rng.integers(5, 500, int(n)).tolist() for n in rng.integers(300, 900, 24)]
    print(
        f"soft prompt on a {args.shape} pair (random weights), {args.device}, batch {args.batch} x "
        f"{args.seq_len} tokens, {args.steps} steps, {args.threads} threads"
    )
    variants = [
        ("float32", "none", False),
        ("bf16 autocast (plain)", "bf16", True),
        ("bf16 autocast (lmdelta)", "bf16", False),
    ]
    speed, prompts = dict.fromkeys([v[0] for v in variants], 0.0), {}
    for _ in range(args.rounds):  # round robin: a host whose speed drifts slows every variant alike
        for name, autocast, plain in variants:
            s, prompts[name] = train(models, toks, docs, args, autocast, plain, work, profile=False)
            speed[name] = max(speed[name], s)
    for name, _, _ in variants:
        print(f"{name:24} {speed[name]:7.2f} steps/s   {speed[name] / speed['float32']:5.2f}x float32")
    same = torch.equal(prompts["bf16 autocast (plain)"], prompts["bf16 autocast (lmdelta)"])
    print(f"bf16 prompts equal bit for bit: {same}")
    if args.profile:
        for name, autocast, plain in variants:
            print(f"--- profile: {name}")
            train(models, toks, docs, args, autocast, plain, work, profile=True)
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
