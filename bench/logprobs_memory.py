"""Peak memory of the logprobs stage does not grow with the corpus: N documents vs 10 x N, one run.

Runs `python -m lmdelta logprobs` as a child process on a corpus of N and of 10 x N documents (the
same kind of text) and prints each child's peak RSS (from wait4) and their ratio. Goal: <= 1.2x.

    python bench/logprobs_memory.py [--model resources/models/smollm2] [--docs 24] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "workflow"), str(ROOT / "bench")]


def corpus(path: Path, n_docs: int) -> Path:
    """n_docs documents of about 1,500 characters each, from Python's own documentation."""
    from pydoc_data.topics import topics

    text = " ".join(topics[k] for k in sorted(topics))
    docs = [text[(i * 1500) % (len(text) - 1500):][:1500] for i in range(n_docs)]
    pd.DataFrame({"doc_id": [f"d{i}" for i in range(n_docs)], "text": docs}).to_parquet(path)
    return path


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode()
    if proc.returncode != 0:
        sys.exit(f"child failed:\n{err[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "resources" / "models" / "smollm2"))
    ap.add_argument("--docs", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp())
    model = Path(args.model)
    if not model.exists():
        from logprobs_throughput import SMOLLM2_DIMS  # a random model with SmolLM2's config

        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import build_tiny_model, build_tiny_tokenizer
        from lmdelta.config import ModelSpec
        from lmdelta.models import materialise

        src = build_tiny_model("llama", work / "src", build_tiny_tokenizer(work / "tok"), **SMOLLM2_DIMS)
        model = work / "model"
        materialise(ModelSpec(name="bench", source={"local": {"path": str(src)}}), model)
    params = json.dumps({"max_length": 256, "stride": 256, "first_token": "bos", "batch_tokens": 2048, "chunk_positions": 32, "part_docs": 16})
    options = json.dumps({"dtype": "float32", "quantization": "none", "device": "cpu", "trust_remote_code": False})
    results = {}
    for n in (args.docs, 10 * args.docs):
        c = corpus(work / f"c{n}.parquet", n)
        out = work / f"lp{n}.parquet"
        cmd = [sys.executable, "-m", "lmdelta", "logprobs", "--model-dir", str(model), "--corpus", str(c), "--out", str(out),
               "--out-meanprob", str(work / f"lp{n}.npy"), "--params", params, "--load-options", options, "--threads", str(args.threads)]
        rss, secs = peak_rss_mb(cmd)
        rows = pd.read_parquet(out, columns=["doc_id"]).shape[0]
        results[n] = rss
        print(f"{n:5d} docs  {rows:7d} tokens  peak RSS {rss:7.0f} MB  {secs:6.1f} s")
    small, large = results.values()
    print(f"peak RSS ratio (10x documents): {large / small:.2f}x   (goal <= 1.20x)")


if __name__ == "__main__":
    main()
