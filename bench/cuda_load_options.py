"""Load options on CUDA: dtype (bf16, fp16) and bitsandbytes 8-bit / 4-bit against the float32 baseline.

Builds randomly initialised models of real architectures on the machine (SmolLM2-135M's Llama config
and Pythia-1B's GPT-NeoX config), materialises each through the real `local` source, then loads it
with every option through `lmdelta.models.load_model` (and device: spread dealt GPU 0, which must
equal float32 on cuda) and prints, per option: load time, weight
memory, forward throughput (batch 8 x 512, logits over the full vocabulary) and its ratio to float32,
and the largest per-token log-probability difference from float32.

    python bench/cuda_load_options.py            # needs a CUDA GPU and bitsandbytes
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "workflow"), str(ROOT / "tests")]

sys.path.insert(0, str(ROOT / "bench"))
from random_models import PYTHIA_1B, SMOLLM2_135M, build, tokenizer_dir  # noqa: E402

from lmdelta.models import load_model  # noqa: E402

CONFIGS = {"smollm2-135m (llama)": SMOLLM2_135M, "pythia-1b (gpt_neox)": PYTHIA_1B}
SPREAD = {"device": "spread", "gpus": 1, "gpu_ids": [0]}  # dealt GPU 0 (Step 17): must equal float32 on cuda
OPTIONS = [
    ("float32", "none", {}),
    ("bfloat16", "none", {}),
    ("float16", "none", {}),
    ("auto", "8bit", {}),
    ("bfloat16", "4bit", {}),
    ("float32", "none", SPREAD),
]
BATCH, SEQ, REPS = 8, 512, 5


def timed_forward(model, ids):
    with torch.inference_mode():
        model(ids)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(REPS):
            logits = model(ids).logits
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / REPS, torch.log_softmax(logits.float(), -1)


def token_logprobs(logprobs, ids):
    """Log-probability of each next token: position t's distribution predicts token t + 1."""
    return logprobs[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("bench/cuda_load_options.py needs a CUDA GPU")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    work = Path(tempfile.mkdtemp())
    tok = tokenizer_dir(work)
    print(
        f"{'model':22} {'dtype':9} {'quant':5} {'load s':>7} {'weights GB':>10} {'tok/s':>9} {'x fp32':>7} {'max|dlogp|':>10}"
    )
    for label, config in CONFIGS.items():
        folder = build(config, work, tok, name=config[0])
        ids = torch.randint(0, 512, (BATCH, SEQ), generator=torch.Generator().manual_seed(0)).cuda()
        base_tps = base_lp = None
        for dtype, quant, extra in OPTIONS:
            t0 = time.perf_counter()
            model, _ = load_model(folder, dtype=dtype, quantization=quant, **({"device": "cuda"} | extra))
            load_s = time.perf_counter() - t0
            secs, lp = timed_forward(model, ids)
            tps = BATCH * SEQ / secs
            if base_tps is None:
                base_tps, base_lp = tps, lp
            dlp = (token_logprobs(lp, ids) - token_logprobs(base_lp, ids)).abs().max().item()
            print(
                f"{label:22} {dtype:9} {'spread' if extra else quant:5} {load_s:7.2f} {model.get_memory_footprint() / 1e9:10.3f} {tps:9.0f} {tps / base_tps:7.2f} {dlp:10.4f}"
            )
            del model
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
