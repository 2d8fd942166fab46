"""Completions stage: sampled completions of a prompt set over a temperature grid, for one model.

Prompt sets are JSONL files of ``{"id", "category", "prompt", "guide"?, "reference"?, "chat_prompt"?}``; ``guide`` is an
assistant prefix appended after the formatted prompt. Output ``results/completions/<set>/<model>.parquet``:
prompt_id, category, temperature, sample, text, n_tokens, finish_reason, seed. All prompts x samples
of a temperature are generated in batches of ``batch_size`` sequences with a KV cache; the seed of a
batch is ``seed + 100003 * temperature index + batch start``, so the output is deterministic for a
fixed config (batch_size included, as batch composition changes the random stream). The batches
are dealt out to ``shards`` independent jobs and gathered in order: the artifact's bytes do not
depend on the shard count.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lmdelta import LmdeltaError
from lmdelta.artifacts import Provenance, write_parquet
from lmdelta.config import known_fields, stage_spec
from lmdelta.generation import Sampling, TextFormat, check_context, generate_texts, prompt_ids
from lmdelta.models import load_model, read_fingerprint
from lmdelta.promptsets import _schema, read_promptset
from lmdelta.shards import read_shards, shard_name, shard_range

log = logging.getLogger(__name__)


@stage_spec("completions")
class CompletionParams:
    temperatures: tuple[float, ...]
    samples: int
    max_new_tokens: int
    top_p: float
    top_k: int
    seed: int
    batch_size: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompletionParams:
        kw = known_fields(cls, d)
        if "temperatures" in kw:
            kw["temperatures"] = tuple(float(t) for t in kw["temperatures"])
        return cls(**kw)


def run_completions_shard(
    model_dir: str | Path,
    promptset: str | Path,
    out: str | Path,
    *,
    params: CompletionParams,
    load_options: dict[str, Any],
    text_format: dict[str, Any],
    shard: int = 0,
    n_shards: int = 1,
) -> int:
    """Shard ``shard`` of ``n_shards`` of a model's completions: a contiguous range of the generation
    batches (temperature by temperature, ``batch_size`` sequences each), written to ``out``."""
    import pyarrow as pa
    from tqdm import tqdm

    if any(t <= 0 for t in params.temperatures):
        raise LmdeltaError(
            f"completions: temperatures must be > 0 (got {list(params.temperatures)}); greedy decoding is not a temperature"
        )
    prompts = read_promptset(promptset)
    jobs = [(i, s) for i in range(len(prompts)) for s in range(params.samples)]
    units = [
        (t_index, b) for t_index in range(len(params.temperatures)) for b in range(0, len(jobs), params.batch_size)
    ]
    mine = [units[u] for u in shard_range(len(units), shard, n_shards)]
    fmt = TextFormat.from_dict(text_format)
    prov = Provenance(
        stage="completions_shard",
        params={
            **asdict(params),
            "text_format": asdict(fmt),
            "load_options": load_options,
            "shard": shard,
            "n_shards": n_shards,
        },
        seed=params.seed,
    )
    prov.inputs["model"] = {"path": str(model_dir), "fingerprint": read_fingerprint(model_dir)["digest"]}
    prov.add_input("promptset", promptset)
    rows = []
    if mine:
        model, tok = load_model(model_dir, **load_options)
        seqs = [
            prompt_ids(tok, p["prompt"], fmt, guide=p.get("guide", ""), chat_prompt=p.get("chat_prompt"))
            for p in prompts
        ]
        check_context(model, seqs, params.max_new_tokens, tok)  # every prompt, before generating anything
        bar = tqdm(
            total=sum(len(jobs[b : b + params.batch_size]) for _, b in mine),
            desc=f"completions {Path(out).stem}",
            unit=" seq",
            mininterval=2.0,
        )
        for t_index, b in mine:
            temp = params.temperatures[t_index]
            chunk = jobs[b : b + params.batch_size]
            seed = params.seed + 100003 * t_index + b
            outs = generate_texts(
                model,
                tok,
                [seqs[i] for i, _ in chunk],
                max_new_tokens=params.max_new_tokens,
                sampling=Sampling(temperature=temp, top_p=params.top_p, top_k=params.top_k),
                seed=seed,
                batch_size=len(chunk),
            )
            for (i, s), o in zip(chunk, outs):
                rows.append(
                    {
                        "prompt_id": prompts[i]["id"],
                        "category": prompts[i]["category"],
                        "temperature": temp,
                        "sample": s,
                        "text": o["text"],
                        "n_tokens": o["n_tokens"],
                        "finish_reason": o["finish_reason"],
                        "seed": seed,
                    }
                )
            bar.update(len(chunk))
        bar.close()
    table = pa.Table.from_pylist(rows, schema=_schema())
    write_parquet(out, table, prov)
    log.info("completions shard %d of %d: %d texts -> %s", shard, n_shards, len(rows), out)
    return len(rows)


def gather_completions(shards: list[str | Path], out: str | Path) -> int:
    """Join completion shards in order into ``out``: the same bytes whatever the shard count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n_shards, recs, settings, prior_time_s = read_shards(shards, vary=("shard",))
    prov = Provenance(
        stage="completions",
        params={**{k: v for k, v in settings.items() if k != "n_shards"}, "shards": n_shards},
        seed=recs[0]["seed"],
        prior_time_s=prior_time_s,
    )
    prov.inputs = recs[0]["inputs"]
    table = pa.concat_tables([pq.read_table(p, schema=_schema()) for p in shards])
    write_parquet(out, table, prov)
    log.info("completions: %d texts from %d shard(s) -> %s", table.num_rows, n_shards, out)
    return table.num_rows


def run_completions(model_dir: str | Path, promptset: str | Path, out: str | Path, *, n_shards: int = 1, **kw) -> int:
    """Every shard in this process, then the gather (what the workflow does with one job per shard)."""
    import shutil

    out = Path(out)
    folder = out.parent / "shards" / out.stem
    paths = [folder / f"{shard_name(i, n_shards)}.parquet" for i in range(n_shards)]
    for i, p in enumerate(paths):
        run_completions_shard(model_dir, promptset, p, shard=i, n_shards=n_shards, **kw)
    n = gather_completions(paths, out)
    shutil.rmtree(folder, ignore_errors=True)
    return n


# ---- jobs (lmdelta.job) -------------------------------------------------------------------------------


def shard_job(job) -> None:
    """inputs: ``model``, ``promptset``; spec: {"params", "load_options", "text_format"}; output: ``shard``."""
    s = job.spec
    run_completions_shard(
        job.path("model"),
        job.path("promptset"),
        job.out("shard"),
        params=CompletionParams.from_dict(s["params"]),
        load_options=s["load_options"],
        text_format=s["text_format"],
        shard=int(job.wildcards["shard"]),
        n_shards=int(job.wildcards["n"]),
    )


def gather_job(job) -> None:
    """input: ``shards``; output: ``completions``."""
    gather_completions(job.paths("shards"), job.out("completions"))
