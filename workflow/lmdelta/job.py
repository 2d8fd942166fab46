"""The job contract: how a rule hands its work to the package.

Every rule runs ``workflow/scripts/job.py`` (Snakemake's ``script:``), which builds one :class:`Job`
from the rule's named inputs, outputs, params, wildcards, threads and log, and calls :func:`run`.
``run`` is the one setup place: logging to the job's log, torch threads, the malloc setting that keeps
peak memory flat, the one-line error for a mistake the user can fix, and the peak-memory line every
job ends with. It then calls the stage function the rule is registered under (:data:`STAGES`), a
plain function of the job in its stage module.

A job is plain data: ``python -m lmdelta run --job FILE`` runs one by hand from a JSON file of the
same fields, and every job run by Snakemake leaves that file beside its log (``<log>.job.json``), so a
failed job can be rerun, or debugged, outside Snakemake with exactly its inputs and parameters.

Why ``script:`` and not a shell command: inputs and outputs arrive by name, parameters as data (no
flags to keep in step with the rules, no JSON quoted through a shell), and Snakemake runs it in the
job's own Python (the one it runs in, or the rule's conda environment).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmdelta import LmdeltaError
from lmdelta.artifacts import PROV_SUFFIX, prov_path

log = logging.getLogger("lmdelta")

#: rule -> "module:function" of the stage function that does its work.
STAGES: dict[str, str] = {
    "materialise_model": "lmdelta.models:materialise_job",
    "interpolate_model": "lmdelta.models:interpolate_job",
    "adapter_model": "lmdelta.models:adapter_job",
    "corpus_fetch": "lmdelta.corpus:fetch_job",
    "corpus_sample": "lmdelta.corpus:sample_job",
    "logprobs_shard": "lmdelta.logprobs:shard_job",
    "logprobs": "lmdelta.logprobs:gather_job",
    "entropy_perplexity": "lmdelta.perplexity:summary_job",
    "compare_entropy_perplexity": "lmdelta.perplexity:compare_job",
    "text_scores": "lmdelta.textscores:text_scores_job",
    "join_text_scores": "lmdelta.textscores:join_job",
    "derive_data": "lmdelta.planted:data_job",
    "derive_model": "lmdelta.derive:derive_job",
    "check_planted": "lmdelta.planted:check_job",
    "prompts_from_corpus": "lmdelta.promptsets:from_corpus_job",
    "completions_shard": "lmdelta.completions:shard_job",
    "completions": "lmdelta.completions:gather_job",
    "diversity": "lmdelta.diversity:diversity_job",
    "compare_diversity": "lmdelta.diversity:compare_job",
    "uid_score_texts": "lmdelta.uid:score_job",
    "uid_score_human": "lmdelta.uid:score_job",
    "uid": "lmdelta.uid:uid_job",
    "contrastive": "lmdelta.contrastive:contrastive_job",
    "search": "lmdelta.search:search_job",
    "search_clusters": "lmdelta.search:clusters_job",
    "softprompt": "lmdelta.softprompt:softprompt_job",
    "hardprompt": "lmdelta.hardprompt:hardprompt_job",
    "corpus_findings": "lmdelta.perplexity:corpus_findings_job",
    "words": "lmdelta.words:words_job",
    "elicit": "lmdelta.words:elicit_job",
    "scan": "lmdelta.scan:scan_job",
    "scan_confirm": "lmdelta.scan:confirm_job",
    "summary": "lmdelta.summary:summary_job",
    "lens": "lmdelta.lens:lens_job",
    "scorecard": "lmdelta.scorecard:scorecard_job",
    "scorecard_matrix": "lmdelta.scorecard:matrix_job",
    "comparator": "lmdelta.comparator:comparator_job",
}


@dataclass(frozen=True)
class Job:
    """One job: what a stage function reads. ``inputs``/``outputs``: name -> path (or list of paths);
    ``params``: name -> value, ``spec`` the stage's parameters as plain data; ``wildcards``: name ->
    value; ``threads``: torch threads; ``log``: the log file."""

    stage: str
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    wildcards: dict[str, str] = field(default_factory=dict)
    threads: int = 1
    log: str | None = None

    @property
    def spec(self) -> dict[str, Any]:
        return self.params.get("spec", {})

    def path(self, name: str, *, output: bool = False) -> Path:
        """A named input (or output) as one path."""
        return Path((self.outputs if output else self.inputs)[name])

    def paths(self, name: str) -> list[Path]:
        """A named input that is a list of paths (one path is a list of one)."""
        value = self.inputs[name]
        return [Path(value)] if isinstance(value, (str, Path)) else [Path(v) for v in value]

    def out(self, name: str) -> Path:
        return self.path(name, output=True)

    @classmethod
    def from_snakemake(cls, smk) -> Job:
        """From the ``snakemake`` object of a ``script:``: every input, output and param must be named
        (a param named ``spec`` holds JSON text, so that Snakemake's change detection compares text)."""

        def flat(values) -> list:
            return [x for v in values for x in (v if isinstance(v, list) else [v])]

        def named(items) -> dict[str, Any]:
            out = {
                k: (list(v) if not isinstance(v, (str, int, float, bool, type(None))) else v) for k, v in items.items()
            }
            # Snakemake lists a named list's files in place: an entry no name covers is one left unnamed.
            if len(flat(list(items))) != len(flat(out.values())):
                raise LmdeltaError(
                    f"rule {smk.rule}: name every input, output and param (the job contract reads names)"
                )
            return out

        params = named(smk.params)
        if isinstance(params.get("spec"), str):
            params["spec"] = json.loads(params["spec"])
        return cls(
            stage=smk.rule,
            inputs=named(smk.input),
            outputs=named(smk.output),
            params=params,
            wildcards=dict(smk.wildcards.items()),
            threads=int(smk.threads),
            log=str(smk.log[0]) if len(smk.log) else None,
        )

    @classmethod
    def from_file(cls, path: str | Path) -> Job:
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise LmdeltaError(
                f"{path}: cannot read the job ({e}); give the .job.json a job left beside its log"
            ) from None
        unknown = sorted(set(d) - {f for f in cls.__dataclass_fields__})
        if unknown or "stage" not in d:
            raise LmdeltaError(f"{path}: not a job file (unknown keys {unknown}, stage given: {'stage' in d})")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=str)


def setup_logging(logfile: str | None) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile:
        Path(logfile).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(logfile, mode="w"))
    # The one-line user error is printed plainly; keep it out of the stderr log stream.
    handlers[0].addFilter(lambda record: not getattr(record, "user_error", False))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fixed_mmap_threshold(nbytes: int = 4 << 20) -> None:
    """Serve allocations above ``nbytes`` with mmap, always.

    glibc raises its mmap threshold after large blocks are freed, after which logits-sized tensors
    come from the heap and fragment it: peak memory then creeps up with the length of a run (1.19x
    for 10x the documents, measured; 1.04x with a fixed threshold, bench/logprobs_memory.py).
    A no-op where glibc is absent.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, nbytes)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (the kernel's high-water mark, not a sample)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def use_threads(n: int) -> None:
    """torch's intra-op threads for the job (the rule's ``threads``); set before torch starts its pool."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def stage_function(stage: str):
    if stage not in STAGES:
        raise LmdeltaError(f"job: no stage {stage!r}; stages: {', '.join(sorted(STAGES))}")
    module, func = STAGES[stage].split(":")
    return getattr(importlib.import_module(module), func)


def output_sidecars(job: Job) -> list[Path]:
    """The provenance sidecars (``<artifact>.prov.json``) of a job's file outputs; a folder output holds
    its provenance inside and goes with it."""
    files = [Path(p) for v in job.outputs.values() for p in (v if isinstance(v, list) else [v])]
    return [prov_path(f) for f in files if not f.is_dir() and prov_path(f).exists()]


def run(job: Job, *, keep_job_file: bool = True, under_snakemake: bool = False) -> int:
    """Run one job with the common setup; 0 on success, 2 on an error the user can fix (one line).

    Under Snakemake a job's outputs are deleted before it runs and again when it fails (Snakemake's
    rule: an output that exists when its job starts is stale), so no earlier version survives a failed
    rerun; their provenance sidecars go with them here, so that no provenance describes a file that is
    gone. Run by hand (``python -m lmdelta run --job``), outputs are replaced atomically with their
    provenance only when the job succeeds: a failure leaves both as they were."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    fixed_mmap_threshold()
    setup_logging(job.log)
    if job.log and keep_job_file:
        Path(f"{job.log}.job.json").write_text(job.to_json())
    use_threads(job.threads)
    if under_snakemake:
        for sidecar in output_sidecars(job):
            if not sidecar.with_name(sidecar.name.removesuffix(PROV_SUFFIX)).exists():
                sidecar.unlink()  # its artifact was deleted by Snakemake before this job
    try:
        stage_function(job.stage)(job)
    except BaseException as e:
        if under_snakemake:  # Snakemake deletes this job's outputs after a failure: their provenance too
            for sidecar in output_sidecars(job):
                sidecar.unlink(missing_ok=True)
        if not isinstance(e, LmdeltaError):
            raise
        log.error("%s", e, extra={"user_error": True})
        print(f"lmdelta: error: {e}", file=sys.stderr)
        return 2
    log.info(
        "%s: peak memory %.0f MB (max RSS), %.1f s since the process started", job.stage, peak_rss_mb(), process_s()
    )
    return 0


def process_s() -> float:
    """Seconds since this process started (imports included: what a job costs; bench/estimate_check.py)."""
    import time

    import psutil

    return time.time() - psutil.Process().create_time()
