"""Diversity metrics for the study's grid: 15 temperatures x 20 prompts x 25 samples (7,500 texts, 300 cells).

Texts are synthetic (words drawn from Python's documentation, 15-40 words each, about the length of a
48-token completion), embedded with the
offline all-MiniLM-L6-v2; the whole `lmdelta.diversity.run_diversity` stage is timed (embedding,
every metric, one truncation level). Goal (issue "Step 4"): under a minute on the CPU.

    python bench/diversity_speed.py [--temperatures 15] [--prompts 20] [--samples 25] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "workflow"))

from lmdelta.diversity import run_diversity  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--temperatures", type=int, default=15)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--samples", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--autocast", default="bf16", choices=["bf16", "none"])
    args = ap.parse_args()
    from pydoc_data.topics import topics

    import torch

    torch.set_num_threads(args.threads)
    vocab = " ".join(topics[k] for k in sorted(topics)[:80]).split()
    rng = np.random.default_rng(0)
    rows = []
    for t in np.linspace(0.1, 1.5, args.temperatures):
        for p in range(args.prompts):
            for s in range(args.samples):
                rows.append(
                    {
                        "prompt_id": f"p{p}",
                        "category": "creative" if p % 2 else "factual",
                        "temperature": float(t),
                        "sample": s,
                        "text": " ".join(rng.choice(vocab, rng.integers(15, 41))),
                    }
                )
    work = Path(tempfile.mkdtemp())
    pd.DataFrame(rows).to_parquet(work / "c.parquet")
    t0 = time.perf_counter()
    df = run_diversity(
        work / "c.parquet", work / "d.parquet", truncations=[None], embedder=None, batch_size=32, autocast=args.autocast
    )
    secs = time.perf_counter() - t0
    print(
        f"{len(rows)} texts, {len(df)} cells, every metric, embedder autocast {args.autocast}: {secs:.1f} s (goal < 60 s)"
    )


if __name__ == "__main__":
    main()
