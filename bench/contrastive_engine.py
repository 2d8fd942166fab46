"""Cost of the two-model decoding engine, in one run on the same prompts and token counts.

- separate: each model generates alone with its own KV cache (lmdelta.decoding.decode), one after the other
- engine: both models combined at each step (decode_combined: log p_a - log p_b, plausibility 0.1)
- uncached: the same combination recomputing both models over the whole sequence at every step

Every sequence runs to ``--tokens`` new tokens (no EOS stop). Goals (issue "Step 6"): engine at most
1.3x separate; at least 5x faster than uncached.

    python bench/contrastive_engine.py [--a resources/models/smollm2-cocoa] [--b resources/models/smollm2]
        [--prompts 8] [--tokens 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "workflow"))

from lmdelta.decoding import Combination, Sampling, choose, combine, decode, decode_combined  # noqa: E402
from lmdelta.models import load_model  # noqa: E402
from lmdelta.promptsets import builtin_promptset_path, read_promptset  # noqa: E402


def left_pad(tok, texts):
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc.input_ids, enc.attention_mask


def uncached(models, ids, mask, comb, sampling, tokens, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(tokens):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = [m(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1] for m in models]
        nxt = choose(combine(logits, comb), sampling, gen)
        ids = torch.cat([ids, nxt[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", default=str(ROOT / "resources" / "models" / "smollm2-cocoa"))
    ap.add_argument("--b", default=str(ROOT / "resources" / "models" / "smollm2"))
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    (a, tok), (b, _) = load_model(args.a, device="cpu"), load_model(args.b, device="cpu")
    texts = [p["prompt"] for p in read_promptset(builtin_promptset_path("default"))][: args.prompts]
    ids, mask = left_pad(tok, texts)
    sampling = Sampling(temperature=1.0)
    comb = Combination(weights=(1.0, -1.0), plausibility_alpha=0.1)
    kw = dict(max_new_tokens=args.tokens, sampling=sampling, eos_ids=(), pad_id=tok.eos_token_id, seed=0)
    times = {}
    with torch.inference_mode():
        decode(a, ids[:1], mask[:1], **{**kw, "max_new_tokens": 2})  # warm-up
        t0 = time.perf_counter()
        decode(a, ids, mask, **kw)
        decode(b, ids, mask, **kw)
        times["separate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        decode_combined([a, b], [(ids, mask), (ids, mask)], comb=comb, **kw)
        times["engine"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        uncached([a, b], ids, mask, comb, sampling, args.tokens, seed=0)
        times["uncached"] = time.perf_counter() - t0
    print(f"{args.prompts} prompts x {args.tokens} new tokens, two models, {args.threads} threads")
    for k, v in times.items():
        print(f"{k:9} {v:7.2f} s")
    print(
        f"engine / separate: {times['engine'] / times['separate']:.2f}x (goal <= 1.3x); "
        f"uncached / engine: {times['uncached'] / times['engine']:.1f}x (goal >= 5x)"
    )


if __name__ == "__main__":
    main()
