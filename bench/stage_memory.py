"""Peak memory of every stage does not grow with the data: the workflow on a corpus of N documents
and on one of 10 x N, in one run.

Runs Snakemake twice on the same config but for the corpus size (the prompt set is made from the
corpus, so completions, diversity, UID and contrastive decoding grow 10x too), then reads the peak
RSS that every job logs as it ends (`python -m lmdelta` logs its max RSS) and prints, per rule, the largest peak at
each size, the growth in MB and the ratio. Goal: every ratio <= 1.20x.

    python bench/stage_memory.py [--docs 40] [--model tiny|smollm2-config] [--check]

`--model tiny` (default, what CI runs) uses a tiny GPT-NeoX built here; most of a job's peak is then
the Python runtime (torch, transformers: ~0.5 GB), so read the growth column too.
`--model smollm2-config` uses a randomly initialised model with SmolLM2-135M's architecture.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "workflow"), str(ROOT / "tests"), str(ROOT / "bench")]


def write_corpus(path: Path, n_docs: int) -> Path:
    """n_docs documents of about 1,200 characters from Python's documentation, each with a first sentence."""
    from pydoc_data.topics import topics

    text = " ".join(" ".join(topics[k].split()) for k in sorted(topics))
    with open(path, "w") as fh:
        for i in range(n_docs):
            start = (i * 1200) % (len(text) - 1300)
            fh.write(json.dumps({"text": f"Document {i} is about Python. " + text[start : start + 1200]}) + "\n")
    return path


def build_model(work: Path, kind: str) -> Path:
    from conftest import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer(work / "tok")
    if kind == "tiny":
        return build_tiny_model("gpt_neox", work / "model", tok)
    from random_models import SMOLLM2_135M

    arch, dims = SMOLLM2_135M
    return build_tiny_model(arch, work / "model", tok, **dims)


def config(model: Path, corpus: Path, n_docs: int) -> dict:
    return {
        "models": {
            "m": {"source": {"local": {"path": str(model)}}, "device": "cpu", "dtype": "float32"},
            "m-bf16": {"source": {"variant_of": {"model": "m"}}, "device": "cpu", "dtype": "bfloat16"},
        },
        "corpora": {
            "docs": {"source": {"file": {"path": str(corpus)}}, "sample": {"n_docs": n_docs, "method": "first"}}
        },
        "logprobs": {"max_length": 128, "stride": 64, "batch_tokens": 1024, "part_docs": 32, "models": ["m"]},
        "promptsets": {"cont": {"from_corpus": {"corpus": "docs"}}},
        "completions": {
            "promptsets": ["cont"],
            "models": ["m", "m-bf16"],
            "temperatures": [1.0],
            "samples": 2,
            "max_new_tokens": 8,
        },
        "diversity": {"truncations": [None]},
        "uid": {"scorers": ["m"], "lengths": [None], "n_boot": 200},
        "pairs": {"p": {"a": "m-bf16", "b": "m"}},
        "contrastive": {
            "runs": {
                "cd": {
                    "prompts": {"corpus": {"name": "docs", "n": n_docs, "words": 8}},
                    "samples": 1,
                    "max_new_tokens": 8,
                }
            }
        },
        "softprompt": {
            "runs": {
                "sp": {
                    "corpus": "docs",
                    "n_tokens": 3,
                    "seq_len": 16,
                    "batch": 2,
                    "steps": 4,
                    "eval_every": 2,
                    "eval_windows": 4,
                    "autocast": "none",
                    "hard": {
                        "pez_steps": 2,
                        "n_generate": 3,
                        "generate_tokens": 4,
                        "samples": 1,
                        "max_new_tokens": 3,
                        "n_top": 2,
                        "k_clusters": 2,
                    },
                }
            }
        },
        "comparator": {"pairs": ["p"], "promptsets": ["cont"]},
    }


PEAK = re.compile(r": peak memory (\d+) MB \(max RSS\)")


def peaks(project: Path) -> dict[str, float]:
    """Largest peak RSS (MB) per rule, from the line every `python -m lmdelta` job logs as it ends
    (the kernel's high-water mark; Snakemake's benchmark samples RSS and misses short peaks)."""
    out: dict[str, float] = defaultdict(float)
    for f in (project / "logs").rglob("*.log"):
        rel = f.relative_to(project / "logs")
        name = rel.parts[0] + (
            " (gather)" if rel.parts[0] in ("logprobs", "completions") and "-of-" not in f.name else ""
        )
        for m in PEAK.finditer(f.read_text()):
            out[name] = max(out[name], float(m.group(1)))
    return dict(out)


def measure(work: Path, n_docs: int, model_kind: str = "tiny", cores: int = 2) -> dict[int, dict[str, float]]:
    model = build_model(work, model_kind)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    result = {}
    for n in (n_docs, 10 * n_docs):
        project = work / f"n{n}"
        project.mkdir(parents=True, exist_ok=True)
        corpus = write_corpus(project / "docs.jsonl", n)
        (project / "c.yaml").write_text(yaml.safe_dump(config(model, corpus, n), sort_keys=False))
        r = subprocess.run(
            [
                str(bin_dir / "snakemake"),
                "-s",
                str(ROOT / "Snakefile"),
                "--cores",
                str(cores),
                "--configfile",
                "c.yaml",
            ],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise RuntimeError(r.stderr[-3000:])
        result[n] = peaks(project)
    return result


def table(result: dict[int, dict[str, float]]) -> list[tuple[str, float, float, float]]:
    small, large = result.values()
    return [(rule, small[rule], large[rule], large[rule] / small[rule]) for rule in sorted(small) if rule in large]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=40)
    ap.add_argument("--model", choices=["tiny", "smollm2-config"], default="tiny")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--check", action="store_true", help="exit 1 when a ratio exceeds 1.20")
    args = ap.parse_args()
    rows = table(measure(Path(tempfile.mkdtemp()), args.docs, args.model, args.cores))
    print(f"{'rule':28s} {args.docs:>6d} docs {10 * args.docs:>6d} docs  growth   ratio")
    for rule, a, b, ratio in rows:
        print(f"{rule:28s} {a:8.0f} MB {b:8.0f} MB {b - a:+6.0f} MB  {ratio:5.2f}x")
    worst = max(rows, key=lambda r: r[3])
    print(f"largest ratio: {worst[0]} {worst[3]:.2f}x (goal <= 1.20x)")
    if args.check and worst[3] > 1.2:
        sys.exit(1)


if __name__ == "__main__":
    main()
