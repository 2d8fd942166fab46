"""Batched generation vs the study's approach, same model, prompts and token counts, in one run.

- study: for each prompt the model is loaded again, and samples are drawn 5 per generate call,
  in float32 as the original code ran
- lmdelta: one load, all prompts x samples in batches through `lmdelta.generation.generate_texts`,
  once per dtype in ``--dtypes`` (the model's `dtype` load option)

Every sequence is forced to ``--tokens`` new tokens (the study: ``min_new_tokens``; lmdelta: no EOS
stop) so both do the same work.
Prints tokens/s of each and the ratio. Goal (issue "Step 4"): >= 4x on the CPU, >= 10x on a GPU.
On a GPU each dtype's generation is timed again once warm (kernels chosen, caches allocated), alone,
and with a host sync every step (``sync_every=1``) against the engine's default (every 8 steps); the
last lines compare the dtypes' generation alone (Step 17's goals: bf16 at least as fast as float32 at
135M, at least 1.5x at about 1B: ``--shape pythia-1b``). ``--profile`` prints the top operators of
one batch per dtype; ``--library`` times transformers' own generate on the same batch, warm, with its
dynamic cache and with its static cache (which on a GPU compiles the forward into CUDA graphs).

    python bench/generation_throughput.py [--model resources/models/smollm2] [--prompts 4] [--samples 10]
        [--tokens 48] [--batch 40] [--dtypes float32,bfloat16] [--device cpu|cuda] [--threads 2]
        [--tokenizer DIR]

Without the --model folder a randomly initialised model with SmolLM2-135M's config is built (with
the tokenizer in --tokenizer, else the tests' tiny one): the same cost per token as the real one.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "workflow"), str(ROOT / "bench")]

from random_models import SHAPES, add_shape_argument, build, tokenizer_dir  # noqa: E402
from timing import print_profile, sync  # noqa: E402

from lmdelta.generation import Sampling, format_prompt  # noqa: E402
from lmdelta.models import load_model  # noqa: E402
from lmdelta.promptsets import builtin_promptset_path, read_promptset  # noqa: E402


def generate_study(model, tok, texts, tokens, sampling, batch, seed, cache_implementation=None):
    """The study's generation: transformers' generate, min_new_tokens so every sequence is full length.
    ``cache_implementation="static"``: the library's static KV cache, which on a GPU makes generate
    compile the forward (CUDA graphs): the library's own fast path, to compare the engine with."""
    from transformers import GenerationConfig

    cfg = GenerationConfig(
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        do_sample=True,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
        cache_implementation=cache_implementation,
    )
    tok.padding_side = "left"
    n = 0
    for b in range(0, len(texts), batch):
        enc = tok(texts[b : b + batch], return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        torch.manual_seed(seed + b)
        with torch.inference_mode():
            out = model.generate(**enc, generation_config=cfg)
        n += (out.shape[1] - enc.input_ids.shape[1]) * out.shape[0]
    return n


def generate_lmdelta(model, tok, texts, tokens, sampling, batch, seed, sync_every=None):
    """lmdelta's engine (as generate_texts uses it), without the EOS stop so every sequence is full length."""
    from lmdelta.decoding import decode

    tok.padding_side = "left"
    n = 0
    for b in range(0, len(texts), batch):
        enc = tok(texts[b : b + batch], return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            new = decode(
                model,
                enc.input_ids,
                enc.attention_mask,
                max_new_tokens=tokens,
                sampling=sampling,
                eos_ids=(),
                pad_id=tok.eos_token_id,
                seed=seed + b,
                sync_every=sync_every,
            )
        n += new.numel()
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "resources" / "models" / "smollm2"))
    add_shape_argument(ap)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--batch", type=int, default=40)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="print the top operators of one batch per dtype")
    ap.add_argument(
        "--library", action="store_true", help="also time transformers' generate, dynamic and static cache (warm)"
    )
    ap.add_argument(
        "--tokenizer", default=None, help="tokenizer folder for the random model built when --model is missing"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not Path(args.model).exists():
        import tempfile

        work = Path(tempfile.mkdtemp())
        args.model = str(build(SHAPES[args.shape], work, tokenizer_dir(work, args.tokenizer)))
        print(f"{args.model}: a randomly initialised model of {args.shape}'s config")
    sampling = Sampling(temperature=1.0, top_p=1.0, top_k=0)
    prompts = [p for p in read_promptset(builtin_promptset_path("default")) if p["category"] == "creative"][
        : args.prompts
    ]
    t0 = time.perf_counter()
    n_study = 0
    for p in prompts:
        model, tok = load_model(args.model, dtype="float32", device=args.device)  # reloaded for every prompt
        text = format_prompt(tok, p["prompt"], chat_template=True)
        n_study += generate_study(model, tok, [text] * args.samples, args.tokens, sampling, batch=5, seed=0)
        del model
    study = n_study / (time.perf_counter() - t0)

    print(
        f"{args.prompts} prompts x {args.samples} samples x {args.tokens} tokens on {args.device}, {args.threads} threads"
    )
    print(f"study (float32, reload per prompt, 5 per call): {study:7.1f} tok/s")
    alone = {}
    for dtype in args.dtypes.split(","):
        t0 = time.perf_counter()
        model, tok = load_model(args.model, dtype=dtype, device=args.device)
        texts = [format_prompt(tok, p["prompt"], chat_template=True) for p in prompts for _ in range(args.samples)]
        t_gen = time.perf_counter()
        n_ours = generate_lmdelta(model, tok, texts, args.tokens, sampling, batch=args.batch, seed=0)
        ours = n_ours / (time.perf_counter() - t0)
        print(f"lmdelta ({dtype}, one load, batch {args.batch}): {ours:7.1f} tok/s   {ours / study:.2f}x the study")
        if args.device != "cpu":  # warm now (kernels chosen, caches allocated): generation alone, timed again
            t_gen = time.perf_counter()
            n_ours = generate_lmdelta(model, tok, texts, args.tokens, sampling, batch=args.batch, seed=0)
        alone[dtype] = n_ours / (time.perf_counter() - t_gen)
        if args.device != "cpu":  # the engine's default on a GPU reads "all finished?" every 8 steps
            t0 = time.perf_counter()
            n = generate_lmdelta(model, tok, texts, args.tokens, sampling, batch=args.batch, seed=0, sync_every=1)
            every_step = n / (time.perf_counter() - t0)
            print(
                f"   generation alone: default (sync every 8 steps) {alone[dtype]:7.1f} tok/s, a sync every step "
                f"{every_step:7.1f} tok/s: {alone[dtype] / every_step:.2f}x"
            )
        if args.library:  # transformers' generate, one batch: dynamic cache, then static (compiled on a GPU)
            for impl in (None, "static"):
                for _ in range(2):  # the first call warms up (a static cache compiles there); the second is timed
                    sync(args.device)
                    t0 = time.perf_counter()
                    n = generate_study(model, tok, texts, args.tokens, sampling, args.batch, 0, impl)
                    sync(args.device)
                tps = n / (time.perf_counter() - t0)
                print(
                    f"   transformers generate ({impl or 'dynamic'} cache, batch {args.batch}): {tps:7.1f} tok/s, "
                    f"lmdelta's engine {alone[dtype] / tps:.2f}x that"
                )
        if args.profile:
            one_batch = (model, tok, texts[: args.batch], args.tokens, sampling, args.batch)
            print_profile(args.device, partial(generate_lmdelta, *one_batch, seed=0))
        del model
    if "float32" in alone:
        for dtype, tps in alone.items():
            print(f"generation alone, {dtype}: {tps:7.1f} tok/s   {tps / alone['float32']:.2f}x float32")


if __name__ == "__main__":
    main()
