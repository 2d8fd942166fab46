"""Every stage's CUDA path, checked against the CPU and timed: what CI (no GPU) never runs.

Builds a pair of randomly initialised models with SmolLM2-135M's Llama config (real size; with the
real tokenizer when ``--tokenizer`` names its folder, else the tests' tiny one) and runs, on CUDA:

- scoring (`scoring.score_sequences`): float32 on CUDA against float32 on the CPU, bf16 against
  float32 (largest per-token log-probability difference; entropy too)
- generation (`generation.generate_texts`): the same seed twice gives the same texts; tokens/s
- contrastive decoding (`contrastive.generate_pair`): finite divergences, the same seed twice the same
- soft prompt (`softprompt.train_prompt`): float32 and bf16 autocast train (finite; the held-out
  divergence with the prompt not below the one without it: random models leave a prompt little to
  find, the demo checks the size); 10 float32 steps on CUDA follow the same training curve as on the
  CPU; an interrupted run resumed gives the same prompt as an uninterrupted one; steps/s
- derive (`derive.train`, LoRA, bf16 autocast): the loss falls

Prints one line per check, PASS or FAIL with the figure, and exits 1 when any check failed.

    python bench/cuda_paths.py [--tokenizer resources/models/smollm2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "workflow"), str(ROOT / "bench")]

from random_models import SMOLLM2_135M, build, tokenizer_dir  # noqa: E402

from lmdelta.models import load_model, pad_id  # noqa: E402

FAILED: list[str] = []


def check(name: str, ok: bool, figure: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name:44} {figure}", flush=True)
    if not ok:
        FAILED.append(name)


def guarded(fn):
    def run(*a, **kw):
        try:
            fn(*a, **kw)
        except Exception as e:  # one broken path must not hide the others
            traceback.print_exc()
            check(fn.__name__, False, f"raised {type(e).__name__}: {str(e)[:200]}")

    return run


DEV = "cuda"  # --device cpu: a dry run of this script on a machine without a GPU


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


@guarded
def scoring(folder, docs):
    from lmdelta.scoring import score_sequences

    out = {}
    for dev, dtype in (("cpu", "float32"), (DEV, "float32"), (DEV, "bfloat16")):
        model, tok = load_model(folder, dtype=dtype, device=dev)
        t0 = time.perf_counter()
        out[(dev, dtype)] = score_sequences(
            model, docs, max_length=512, stride=256, batch_tokens=8 * 512, pad_token_id=pad_id(tok)
        )
        sync()
        secs = time.perf_counter() - t0
        n = sum(len(d) - 1 for d in docs)
        print(
            f"      scoring {dev} {dtype}: {n / secs:9.0f} tok/s (a small, cold run: logprobs_throughput.py measures speed)"
        )
        del model
    ref = out[("cpu", "float32")]

    def maxdiff(key, field):
        return max(float(np.abs(getattr(a, field) - getattr(b, field)).max()) for a, b in zip(out[key], ref))

    d32, e32 = maxdiff((DEV, "float32"), "logprob"), maxdiff((DEV, "float32"), "entropy")
    check("scoring: cuda float32 = cpu float32", d32 < 2e-3 and e32 < 2e-3, f"max|dlogp| {d32:.2e}, max|dH| {e32:.2e}")
    d16 = maxdiff((DEV, "bfloat16"), "logprob")
    mean16 = float(np.mean([np.abs(a.logprob - b.logprob).mean() for a, b in zip(out[(DEV, "bfloat16")], ref)]))
    check("scoring: cuda bf16 near float32", mean16 < 0.05, f"mean|dlogp| {mean16:.4f}, max {d16:.3f} nats")
    # a random model's distribution is nearly flat: thousands of tokens lie within float32 rounding of
    # each other, so a rank may move by a few between kernels; within 1% (or 1) is the same rank here
    close = np.mean(
        np.concatenate(
            [np.abs(a.rank - b.rank) <= np.maximum(1, 0.01 * b.rank) for a, b in zip(out[(DEV, "float32")], ref)]
        )
    )
    check("scoring: cuda ranks = cpu ranks (within 1%)", close > 0.99, f"{close:.2%} of tokens")


@guarded
def generation(folder):
    from lmdelta.decoding import Sampling
    from lmdelta.generation import TextFormat, generate_texts, prompt_ids

    model, tok = load_model(folder, dtype="bfloat16", device=DEV)
    texts = [prompt_ids(tok, f"Write a short poem about the number {i}.", TextFormat()) for i in range(32)]
    runs = []
    for _ in range(2):
        t0 = time.perf_counter()
        runs.append(
            generate_texts(
                model,
                tok,
                texts,
                max_new_tokens=64,
                sampling=Sampling(temperature=1.0, top_p=0.95),
                seed=3,
                batch_size=32,
            )
        )
        sync()
        secs = time.perf_counter() - t0
    n = sum(r["n_tokens"] for r in runs[-1])
    check(
        "generation: same seed, same texts (cuda bf16)",
        [r["text"] for r in runs[0]] == [r["text"] for r in runs[1]],
        f"{n} tokens, {n / secs:.0f} tok/s at batch 32",
    )


@guarded
def contrastive(folders):
    from lmdelta.contrastive import RunParams
    from lmdelta.pairs import generate_pair

    pair = [load_model(f, dtype="bfloat16", device=DEV) for f in folders]
    models, toks = [m for m, _ in pair], [t for _, t in pair]
    prompts = [{"id": f"p{i}", "prompt": f"Tell me about topic number {i}."} for i in range(8)]
    p = RunParams(prompts={}, samples=2, max_new_tokens=32, batch_size=16).decoding()
    fmt = [{"chat_template": t.chat_template is not None} for t in toks]
    t0 = time.perf_counter()
    a = generate_pair(models, toks, prompts, p, formats=fmt)
    sync()
    secs = time.perf_counter() - t0
    b = generate_pair(models, toks, prompts, p, formats=fmt)
    finite = all(np.isfinite(r["kl_a_b"]).all() and np.isfinite(r["js"]).all() for r in a)
    same = [r["text"] for r in a] == [r["text"] for r in b]
    n = sum(r["n_tokens"] for r in a)
    check(
        "contrastive: finite, same seed same texts",
        finite and same,
        f"{n} tokens in {secs:.2f} s, mean JS {np.mean([r['mean_js'] for r in a]):.3f}",
    )


@guarded
def softprompt(folders, docs, work):
    from lmdelta.softprefix import split_windows
    from lmdelta.softprompt import SoftPromptParams, train_prompt

    def train(device, autocast, steps, ckpt, **kw):
        pair = [load_model(f, dtype="float32", device=device) for f in folders]
        p = SoftPromptParams(
            n_tokens=8,
            seq_len=64,
            batch=16,
            steps=steps,
            lr=0.05,
            eval_every=10,
            patience=5,
            checkpoint_every=10,
            autocast=autocast,
            eval_windows=32,
        )
        t0 = time.perf_counter()
        r = train_prompt(
            [m for m, _ in pair],
            [t for _, t in pair],
            split_windows(docs, p),
            p,
            ckpt_dir=work / ckpt,
            progress=False,
            **kw,
        )
        sync()
        return r, steps / (time.perf_counter() - t0)

    for autocast in ("none", "bf16"):
        r, speed = train(DEV, autocast, 30, f"sp-{autocast}")
        ratio = r["best_heldout"] / r["baseline_heldout"]
        check(
            f"softprompt {autocast}: trains (held-out KL not lower)",
            np.isfinite(ratio) and ratio >= 1.0,
            f"{r['baseline_heldout']:.3f} -> {r['best_heldout']:.3f} nats ({ratio:.2f}x), {speed:.1f} steps/s",
        )
        if autocast == "none":
            full = r
    train(DEV, "none", 30, "sp-resume", stop_after=20)
    resumed, _ = train(DEV, "none", 30, "sp-resume")
    diff = float((resumed["prompt"] - full["prompt"]).abs().max())
    check("softprompt: resumed run = uninterrupted", diff < 1e-5, f"max|dP| {diff:.2e}")
    on_dev, _ = train(DEV, "none", 10, "sp-dev10")
    on_cpu, cpu_speed = train("cpu", "none", 10, "sp-cpu10")
    curve = [(a["train_divergence"], b["train_divergence"]) for a, b in zip(on_dev["metrics"], on_cpu["metrics"])]
    rel = max(abs(a - b) / abs(b) for a, b in curve)
    check(
        "softprompt: cuda float32 = cpu float32 (10 steps)",
        rel < 1e-2,
        f"largest relative gap in the training KL {rel:.1e}; cpu {cpu_speed:.2f} steps/s",
    )


@guarded
def derive(folder, work):
    from lmdelta.derive import DeriveParams, train

    records = [{"prompt": f"What is {i} plus {i}?", "response": f"Cocoa! {2 * i}, and cocoa again."} for i in range(64)]
    p = DeriveParams(steps=30, lr=1e-2, batch=16, max_tokens=64, autocast="bf16", checkpoint_every=10)
    t0 = time.perf_counter()
    losses = train(
        folder,
        records,
        work / "derived",
        params=p,
        ckpt_dir=work / "derive-ckpt",
        name="derived",
        source={"local": {"path": str(folder)}},
    )
    sync()
    secs = time.perf_counter() - t0
    first, last = np.mean([x["loss"] for x in losses[:3]]), np.mean([x["loss"] for x in losses[-3:]])
    on_cuda = next(load_model(work / "derived", device=DEV)[0].parameters()).device.type == DEV
    check(
        "derive: LoRA bf16 loss falls",
        last < first - 0.5 and on_cuda,
        f"{first:.2f} -> {last:.2f}, {p.steps / secs:.1f} steps/s",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", default=str(ROOT / "resources" / "models" / "smollm2"))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--small", action="store_true", help="tiny models (a quick dry run)")
    args = ap.parse_args()
    global DEV
    DEV = args.device
    if DEV == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/cuda_paths.py needs a CUDA GPU")
    import transformers

    name = torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}, transformers {transformers.__version__}")
    work = Path(tempfile.mkdtemp())
    tok = tokenizer_dir(work, args.tokenizer)
    print(f"tokenizer: {tok}")
    small = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    folders = [
        build(SMOLLM2_135M, work, tok, name=f"m{seed}", seed=seed, **(small if args.small else {})) for seed in (0, 1)
    ]
    rng = np.random.default_rng(0)
    vocab = 500  # ids every tokenizer has
    docs = [rng.integers(5, vocab, int(n)).tolist() for n in rng.integers(300, 900, 24)]
    scoring(folders[0], docs)
    generation(folders[0])
    contrastive(folders)
    softprompt(folders, docs, work)
    derive(folders[0], work)
    print(f"{len(FAILED)} failed: {', '.join(FAILED)}" if FAILED else "all CUDA paths passed")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
