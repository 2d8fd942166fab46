"""Calibration of the paired tests on models: one model against itself, sampled with different seeds.

Two runs of the same model on the same prompts differ only by sampling noise, so every paired test of
a per-prompt metric should reject at alpha = 0.05 about 5% of the time. For ``--replicates`` R
independent pairs of seeds, the prompt set's completions (``--samples`` per prompt, temperature 1) of
run 2r are compared with those of run 2r + 1, prompt by prompt, on the n-gram diversity metrics
(Wilcoxon's signed-rank test, as ``results/diversity/<set>/paired.csv`` does) and on the mean length
in words (the sign-flip test). Prints, per metric and pooled, the share of p <= 0.05 with its exact
interval. The metrics of one replicate are correlated, so the pooled interval is too narrow; the
per-metric rows are independent across replicates.

    python bench/calibration.py [--model resources/models/smollm2] [--replicates 100]

Without ``--model`` it uses a randomly initialised SmolLM2-shaped model with 4 layers (bench/random_models.py),
with SmolLM2's tokenizer where resources/models/smollm2 exists.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "workflow"), str(ROOT / "bench")]

import numpy as np  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a materialised model folder; default: a random SmolLM2-shaped one")
    ap.add_argument("--replicates", type=int, default=100)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    args = ap.parse_args()

    import torch
    from tqdm import tqdm

    from lmdelta.decoding import Sampling
    from lmdelta.diversity import distinct_n, pairwise_jaccard, pairwise_ncd, self_bleu, words
    from lmdelta.generation import TextFormat, generate_texts, prompt_ids
    from lmdelta.models import load_model
    from lmdelta.promptsets import builtin_promptset_path, read_promptset
    from lmdelta.stats import PairedParams, paired, proportion_interval

    torch.set_num_threads(2)
    folder = args.model
    if folder is None:
        from random_models import SMOLLM2_135M, build, tokenizer_dir

        work = Path(tempfile.mkdtemp())
        folder = build(SMOLLM2_135M, work, tokenizer_dir(work, ROOT / "resources/models/smollm2"), num_hidden_layers=4)
    model, tok = load_model(folder, dtype="float32", device="cpu")
    prompts = read_promptset(builtin_promptset_path("default"))
    fmt = TextFormat.from_dict({"chat_template": tok.chat_template is not None})
    seqs = [prompt_ids(tok, p["prompt"], fmt) for p in prompts for _ in range(args.samples)]

    def metrics(texts: list[str]) -> dict[str, float]:
        toks = [words(t) for t in texts]
        return {
            **{f"distinct_{n}": distinct_n(toks, n) for n in (1, 2, 3)},
            "self_bleu": self_bleu(texts),
            "jaccard_2": pairwise_jaccard(toks, 2),
            "ncd": pairwise_ncd(texts),
            "length_words": float(np.mean([len(t) for t in toks])),
        }

    def run(seed: int) -> dict[str, np.ndarray]:
        out = generate_texts(
            model,
            tok,
            seqs,
            max_new_tokens=args.max_new_tokens,
            sampling=Sampling(temperature=1.0),
            seed=seed,
            batch_size=len(seqs),
        )
        texts = [o["text"] for o in out]
        cells = [metrics(texts[i * args.samples : (i + 1) * args.samples]) for i in range(len(prompts))]
        return {k: np.array([c[k] for c in cells]) for k in cells[0]}

    params = PairedParams.from_dict({"n_boot": 1000, "n_permutations": 2000})
    rejected: dict[str, list[bool]] = {}
    t0 = time.perf_counter()
    for r in tqdm(range(args.replicates), desc="replicates"):
        x, y = run(2 * r), run(2 * r + 1)
        for name in x:
            test = "sign-flip" if name == "length_words" else "wilcoxon"
            ok = np.isfinite(x[name]) & np.isfinite(y[name])
            if not ok.any():
                continue
            p = paired(x[name][ok], y[name][ok], test=test, params=params)["p"]
            rejected.setdefault(f"{name} ({test})", []).append(p <= 0.05)
    print(
        f"model: {folder}; {len(prompts)} prompts x {args.samples} samples, {args.replicates} replicate pairs of seeds"
    )
    print(f"{'metric':<28} {'rejected at 0.05':>18} {'95% interval':>18}")
    pooled = [v for flags in rejected.values() for v in flags]
    for name, r in [*rejected.items(), ("pooled", pooled)]:
        k, n = int(np.sum(r)), len(r)
        low, high = proportion_interval(k, n, 0.95)
        print(f"{name:<28} {k:>6} / {n:<5} {k / n:6.3f}   [{low:.3f}, {high:.3f}]")
    print(f"wall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
