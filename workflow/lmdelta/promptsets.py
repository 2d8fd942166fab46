"""Prompt sets: the builtin ones, reading a prompt-set file, and building one from a corpus.

A prompt set is JSONL, one record per prompt: ``id``, ``prompt``, optional ``category`` and, for sets
built from a corpus, the human ``reference`` continuation and the ``chat_prompt`` a chat model reads.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

from lmdelta import LmdeltaError
from lmdelta.artifacts import Provenance, atomic_path, iter_jsonl

BUILTIN_PROMPTSETS = ("default", "search_seeds")


def builtin_promptset_path(name: str) -> Path:
    if name not in BUILTIN_PROMPTSETS:
        raise LmdeltaError(f"builtin prompt set {name!r} is unknown; use one of {', '.join(BUILTIN_PROMPTSETS)}")
    return Path(str(resources.files("lmdelta") / "data" / f"prompts_{name}.jsonl"))


def read_promptset(path: str | Path) -> list[dict[str, Any]]:
    """Read and check a prompt set; a broken line is an error naming the line and the fix."""
    path = Path(path)
    prompts, seen = [], set()
    lines = path.read_text(encoding="utf-8").splitlines()
    for lineno, rec in iter_jsonl(lines, where=f"prompt set {path.name}"):
        missing = [
            k for k in ("id", "category", "prompt") if not isinstance(rec, dict) or not isinstance(rec.get(k), str)
        ]
        if missing:
            raise LmdeltaError(
                f"prompt set {path.name} line {lineno} lacks text field(s) {', '.join(missing)}; each line needs id, category and prompt"
            )
        if rec["id"] in seen:
            raise LmdeltaError(
                f"prompt set {path.name} line {lineno}: id {rec['id']!r} is used twice; ids must be unique"
            )
        seen.add(rec["id"])
        prompts.append(rec)
    if not prompts:
        raise LmdeltaError(f"prompt set {path.name} holds no prompts; add JSONL lines with id, category, prompt")
    return prompts


def _schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("prompt_id", pa.string()),
            ("category", pa.string()),
            ("temperature", pa.float32()),
            ("sample", pa.int32()),
            ("text", pa.string()),
            ("n_tokens", pa.int32()),
            ("finish_reason", pa.string()),
            ("seed", pa.int64()),
        ]
    )


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def prompts_from_corpus(
    corpus: str | Path, out: str | Path, *, name: str, n_prompts: int | None, instruction: str | None = None
) -> int:
    """ "Continue the article" prompts: each document's first sentence (reference: the rest). With an
    ``instruction`` (a format string with {prompt}), each record's ``chat_prompt`` is what a model that
    reads a chat template is asked instead of the bare sentence."""
    import pandas as pd

    prov = Provenance(
        stage="prompts_from_corpus",
        params={"corpus": name, "n_prompts": n_prompts, "split": _SENTENCE_END.pattern, "instruction": instruction},
    )
    prov.add_input("corpus", corpus)
    df = pd.read_parquet(corpus, columns=["doc_id", "text"])
    if n_prompts is not None:
        df = df.head(n_prompts)
    rows = []
    for doc_id, text in zip(df.doc_id, df.text):
        parts = _SENTENCE_END.split(text.strip(), maxsplit=1)
        if len(parts) == 2 and parts[0].strip() and parts[1].strip():
            first = parts[0].strip()
            rows.append(
                {
                    "id": doc_id,
                    "category": name,
                    "prompt": first,
                    "reference": parts[1].strip(),
                    **({"chat_prompt": instruction.format(prompt=first)} if instruction else {}),
                }
            )
    if not rows:
        raise LmdeltaError(
            f"promptsets: corpus {name} has no document with a first sentence and more text after it; check the corpus"
        )
    with atomic_path(out, prov) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    return len(rows)


# ---- jobs (lmdelta.job) -------------------------------------------------------------------------------


def from_corpus_job(job) -> None:
    """input: ``corpus``; spec: {"corpus", "n", "instruction"}; output: ``promptset``."""
    s = job.spec
    prompts_from_corpus(
        job.path("corpus"), job.out("promptset"), name=s["corpus"], n_prompts=s["n"], instruction=s["instruction"]
    )
