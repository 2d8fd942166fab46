"""Randomly initialised models of real architectures and sizes, materialised through the real `local` source.

The benchmarks run on them where the real weights cannot travel (a lent GPU machine has no network and
takes 64 MiB of files): the cost per token depends on the shapes, not on the weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "workflow"), str(ROOT / "tests")]

from conftest import build_tiny_model, build_tiny_tokenizer  # noqa: E402
from lmdelta.config import ModelSpec  # noqa: E402
from lmdelta.models import materialise  # noqa: E402

SMOLLM2_135M = (
    "llama",
    dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    ),
)
PYTHIA_1B = (
    "gpt_neox",
    dict(
        vocab_size=50304,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=8,
        max_position_embeddings=2048,
        rotary_pct=0.25,
    ),
)

SHAPES = {"smollm2-135m": SMOLLM2_135M, "pythia-1b": PYTHIA_1B}  # the benches' --shape


def add_shape_argument(ap) -> None:
    """The benches' ``--shape``: the config of the random model they build (a key of SHAPES)."""
    ap.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES), help="config of the random model built")


def tokenizer_dir(work: Path, real: str | Path | None = None) -> Path:
    """``real`` when it holds a tokenizer (e.g. resources/models/smollm2: its chat template too), else the tests' tiny one."""
    if real is not None and Path(real, "tokenizer.json").exists():
        return Path(real)
    return build_tiny_tokenizer(work / "tok")


def build(config: tuple[str, dict], work: Path, tok: Path, *, name: str = "bench", seed: int = 0, **overrides) -> Path:
    """A materialised folder of a randomly initialised model of ``config`` (arch, dims).

    With ``LMDELTA_BENCH_MODELS`` set (bench/cuda_run.sh sets it), models are kept in that folder, one per
    architecture, dims, seed and tokenizer, and built only once for all the benches of a run.
    """
    arch, dims = config
    dims = {**dims, **overrides}
    cache = os.environ.get("LMDELTA_BENCH_MODELS")
    if cache:
        key = json.dumps([arch, dims, seed, str(Path(tok).resolve())], sort_keys=True)
        work, name = Path(cache), f"{arch}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
        if (work / name / "config.json").exists():
            return work / name
    src = build_tiny_model(arch, work / f"{name}-src", tok, seed=seed, **dims)
    folder = work / name
    materialise(ModelSpec(name=name, source={"local": {"path": str(src)}}), folder)
    shutil.rmtree(src)
    return folder
