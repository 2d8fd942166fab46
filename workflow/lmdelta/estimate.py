"""What a run will cost, before it starts: ``python -m lmdelta estimate --configfile X [targets]``.

The jobs are Snakemake's own plan (a dry run of the same command: only the jobs that would run).
Each job's work is counted from the config, per model it loads:

- ``forward``: tokens read in batched forward passes (scoring, the scan's questions, prompt prefill);
- ``generate``: decoding steps and their batch (sampling, contrastive decoding, greedy answers);
- ``train``: tokens of training steps (forward and backward: three forwards' work);

plus a fixed start-up (a job imports torch and transformers: about 5 s; sentence-transformers about
6 s more) and the loading of each model (its weights read at ``LOAD_MB_PER_S``).

Rates come from a probe of each model on this machine (``probe``): a randomly initialised copy of the
model's own architecture in its load dtype on its device times a batched forward and a decoding step.
A model up to ``PROBE_FULL_PARAMS`` is built whole; a larger one with one and with two decoder layers,
the per-layer difference extrapolated to its depth, so the probe costs seconds even for a large model. Its configuration comes from the
materialised folder, the local folder, the GGUF header or the hub cache (a hub model never
downloaded has no size yet: its jobs are listed without a time). Probes are kept in
``.snakemake/lmdelta-probes.json`` per architecture, dtype, device and thread count.

The estimate is an order of magnitude, not a promise: it is checked against the measured job times of
the demo (bench/estimate_check.py: every stage within 2x), and it does not know what the data will do
(how many search cycles stop early, how long the corpus texts are before they are sampled: then
``max_chars`` is assumed).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmdelta import LmdeltaError
from lmdelta.config import load_config_file, planted_truth, weights_owner
from lmdelta.plan import Plan

log = logging.getLogger(__name__)

# Calibrated on the demo (bench/estimate_check.py; 2 cores of an AVX512-BF16 Xeon, 2026-12-07).
STARTUP_S = 5.0  # python, torch and transformers imports of a job that loads a model
LIGHT_STARTUP_S = 1.5  # a job that loads no model (pandas, scipy, the package)
# A job's model work takes this much longer than the probe's forwards and steps: tokenising, sampling
# and stopping checks, padding, the first forward's warm-up.
WORK_FACTOR = 1.1
EMBEDDER_S = 6.0  # sentence-transformers' import and the MiniLM embedder's load
LOAD_MB_PER_S = 400.0  # safetensors read and placed, CPU
MATERIALISE_MB_PER_S = 60.0  # a GGUF dequantised or a hub folder converted, and written as safetensors
CHARS_PER_TOKEN = 4.0  # English text and code with a 32k-260k vocabulary
PROBE_FILE = Path(".snakemake") / "lmdelta-probes.json"
SNAKEFILE = Path(__file__).resolve().parents[2] / "Snakefile"


@dataclass
class Work:
    """A job's work per model: forward tokens, decoding steps at a batch size, training tokens."""

    forward: dict[str, float] = field(default_factory=dict)
    generate: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    train: dict[str, float] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)  # loaded by the job
    extra_s: float = 0.0
    embedder: bool = False
    writes_model: bool = False  # materialises its model: sized by its weights

    def fwd(self, model: str, tokens: float) -> Work:
        self.forward[model] = self.forward.get(model, 0.0) + tokens
        return self._load(model)

    def gen(self, model: str, texts: float, new_tokens: int, batch: int, prompt_tokens: float = 24) -> Work:
        """``texts`` sequences of ``new_tokens`` each, decoded ``batch`` at a time (after their prompts)."""
        if texts <= 0:
            return self
        batches = -(-int(texts) // max(batch, 1))
        self.generate.setdefault(model, []).append((batches * new_tokens, min(batch, int(texts))))
        self.fwd(model, texts * prompt_tokens)
        return self

    def trn(self, model: str, tokens: float) -> Work:
        self.train[model] = self.train.get(model, 0.0) + tokens
        return self._load(model)

    def _load(self, model: str) -> Work:
        if model not in self.models:
            self.models.append(model)
        return self


@dataclass(frozen=True)
class Rates:
    """A model's measured speed here: seconds per forward token (batched), per decoding step at batch 1
    and per extra sequence in a step, and its size."""

    forward_s: float
    step_s: float
    step_per_seq_s: float
    n_params: int
    weight_mb: float

    def step(self, batch: int) -> float:
        return self.step_s + self.step_per_seq_s * max(batch - 1, 0)


# ---- job list ----------------------------------------------------------------------------------------


def planned_jobs(snakemake_args: list[str], cwd: Path | None = None) -> list[dict[str, Any]]:
    """The jobs a dry run of ``snakemake <args>`` plans: rule and wildcards of each."""
    cmd = [str(Path(sys.executable).parent / "snakemake"), "-n", "--nolock", *snakemake_args]
    if "-s" not in snakemake_args and not (Path(cwd or ".") / "Snakefile").exists():
        cmd[1:1] = ["-s", str(SNAKEFILE)]  # run from another folder: this checkout's workflow
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if r.returncode != 0:
        lines = [ln for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
        said = next((ln for ln in lines if "config:" in ln or "Error" in ln), lines[-1] if lines else "")
        raise LmdeltaError(f"estimate: the dry run failed: {said.strip()}")
    jobs, current = [], None
    for line in r.stdout.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line.strip()):
            current = {"rule": m.group(1), "wildcards": {}}
            if current["rule"] != "all":
                jobs.append(current)
        elif current is not None and line.strip().startswith("wildcards:"):
            pairs = line.split(":", 1)[1].split(",")
            current["wildcards"] = dict(p.strip().split("=", 1) for p in pairs if "=" in p)
    return jobs


# ---- work of each rule --------------------------------------------------------------------------------


def _prompt_count(plan: Plan, promptset: str) -> int:
    ps = plan.config["promptsets"][promptset]
    if "from_corpus" in ps:
        return ps["from_corpus"]["n_prompts"]
    path = Path(plan.promptset_file(promptset))
    return sum(1 for ln in path.read_text().splitlines() if ln.strip()) if path.exists() else 40


PROMPTED_METHODS = ("contrastive", "search", "lens", "scan", "hardprompt")  # findings the scorecard continues
SAMPLE_LOCAL_MB = 100  # a local corpus file up to this size is sampled by the estimate itself


def _document_tokens(plan: Plan, corpus: str) -> list[float]:
    """Tokens of each document of a sampled corpus: counted in the sample when it exists, or in the
    sample drawn here from a builtin corpus or a small local file; else n_docs of max_chars (a bound)."""
    path = Path(f"results/corpus/{corpus}.parquet")
    if path.exists():
        import pandas as pd

        return [n / CHARS_PER_TOKEN for n in pd.read_parquet(path, columns=["text"]).text.str.len()]
    spec = plan.config["corpora"][corpus]
    kind, src = next(iter(spec["source"].items()))
    s = spec["sample"]
    if kind == "builtin" or (kind == "file" and Path(src["path"]).stat().st_size < SAMPLE_LOCAL_MB * 1e6):
        from lmdelta.config import CorpusSpec
        from lmdelta.corpus import iter_documents, sample_documents

        docs, _ = sample_documents(
            iter_documents(CorpusSpec.from_dict(corpus, spec), None),
            **{k: s[k] for k in ("n_docs", "method", "seed", "min_chars", "max_chars")},
        )
        return [len(d.text) / CHARS_PER_TOKEN for d in docs]
    return [(s.get("max_chars") or 4000) / CHARS_PER_TOKEN] * (s.get("n_docs") or 1000)


def window_tokens(n: int, max_length: int, stride: int) -> int:
    """Tokens read to score a document of ``n`` tokens: the scorer's own rolling windows."""
    from lmdelta.scoring import rolling_windows

    return sum(stop - start for start, stop, _ in rolling_windows(n + 1, max_length, stride))  # + its first token


def _pair(plan: Plan, pair: str) -> tuple[str, str]:
    p = plan.config["pairs"][pair]
    return p["a"], p["b"]


def work_of(plan: Plan, rule: str, wc: dict[str, str]) -> Work:
    """The work of one job of ``rule`` with wildcards ``wc`` (counted from the config)."""
    c, w = plan.config, Work()
    if rule in ("materialise_model", "interpolate_model", "adapter_model"):
        w.writes_model = True
        return w._load(wc["model"])
    if rule == "text_scores":  # the logprobs mapped onto words and bytes: tokenising only
        w.extra_s = 2.0
        return w
    if rule == "logprobs_shard":
        lp = c["logprobs"]
        docs = _document_tokens(plan, wc["corpus"])
        read = sum(window_tokens(round(n), lp["max_length"], lp["stride"]) for n in docs)
        return w.fwd(wc["model"], read / lp["shards"])
    if rule == "completions_shard":
        cp = c["completions"]
        n = _prompt_count(plan, wc["promptset"]) * len(cp["temperatures"]) * cp["samples"] / cp["shards"]
        return w.gen(wc["model"], n, cp["max_new_tokens"], cp["batch_size"])
    if rule == "derive_data":  # the base model's answers (lmdelta.planted.build_data, 24 at a time)
        d = plan.derive_source(wc["model"])
        planted = d["data"].get("planted", {})
        n = planted.get("n_train_ordinary", 0) + planted.get("n_train_odd", 0)
        n += planted.get("n_heldout", 0) if planted.get("n_heldout_odd") else 0
        n += planted.get("n_train_trigger", 0) if planted.get("response_mode") in ("append", "prepend") else 0
        return w.gen(d["from"], n, planted.get("answer_tokens", 48), 24)
    if rule == "derive_model":
        d = plan.derive_source(wc["model"])
        return w.trn(d["from"], d["steps"] * d["batch"] * d["max_tokens"] * 0.6)  # examples are shorter than max
    if rule == "check_planted":
        planted = plan.derive_source(wc["model"])["data"]["planted"]
        n = 2 * planted["n_heldout"] + planted.get("n_heldout_odd", 0)
        for m in (plan.derive_source(wc["model"])["from"], wc["model"]):
            w.gen(m, n, planted.get("answer_tokens", 48), 30)
        return w
    if rule == "diversity":  # the embedder over every completion of the model
        cp = c["completions"]
        w.embedder = True
        w.extra_s = _prompt_count(plan, wc["promptset"]) * len(cp["temperatures"]) * cp["samples"] * 0.01
        return w
    if rule == "search_clusters":  # the embedder over the search's bank
        w.embedder = True
        w.extra_s = 1.0
        return w
    if rule in ("uid_score_texts", "uid_score_human"):
        cp = c["completions"]
        n = _prompt_count(plan, wc["promptset"]) * len(cp["temperatures"]) * cp["samples"]
        return w.fwd(wc["scorer"], n * (cp["max_new_tokens"] + (24 if wc.get("context") == "prompt" else 0)))
    if rule == "contrastive":
        a, b = _pair(plan, wc["pair"])
        run = c["contrastive"]["runs"][wc["run"]]
        src = run["prompts"]
        n = (
            _prompt_count(plan, src["promptset"])
            if "promptset" in src
            else src.get("unconditional") or src.get("corpus", {}).get("n", 32)
        ) * run["samples"]
        for m in (a, b):
            w.gen(m, n * (2 if run.get("baseline") and m == a else 1), run["max_new_tokens"], run["batch_size"])
        return w
    if rule == "search":
        a, b = _pair(plan, wc["pair"])
        run = c["search"]["runs"][wc["run"]]
        seeds = _prompt_count(plan, run["seeds"]) + run["seed_findings"]["n"] * len(run["seed_findings"]["methods"])
        cycles = run["cycles"]
        scored = seeds + cycles * (run["requests"] * run["proposals"] + run["rescore_top"])
        for m in (a, b):  # one model samples, both are read at every step (lmdelta.pairs.pair_scorer)
            w.gen(m, scored * run["samples"], run["max_new_tokens"], run["batch_size"])
        if "model" in run["assistant"]:
            w.gen(run["assistant"]["model"], cycles * run["requests"], run["assistant"]["max_new_tokens"], 1, 200)
        w.embedder = True
        return w
    if rule == "softprompt":
        a, b = _pair(plan, wc["pair"])
        run = c["softprompt"]["runs"][wc["run"]]
        tokens = run["steps"] * run["batch"] * run["accumulation"] * (run["seq_len"] + run["n_tokens"] + 20)
        evals = (run["steps"] // run["eval_every"] + 2) * run["eval_windows"] * (run["seq_len"] + 20)
        for m in (a, b):
            w.trn(m, tokens)
            w.fwd(m, evals)
        return w
    if rule == "hardprompt":
        a, b = _pair(plan, wc["pair"])
        h = c["softprompt"]["runs"][wc["run"]]["hard"]
        w.gen(a, h["n_generate"], h["generate_tokens"], h["batch_size"])
        candidates = 2 * (h["n_generate"] + h["pez_keep"] + 1)  # the candidates and as many snippets
        # screened, the best confirm_top of each side again, the best n_top of each side re-scored
        scored = candidates * h["samples"] + 2 * h["confirm_top"] * h["confirm_samples"] + 2 * h["n_top"] * h["samples"]
        for m in (a, b):  # sampled from a, both read at every step (lmdelta.pairs.pair_scorer)
            w.gen(m, scored, h["max_new_tokens"], h["batch_size"])
        w.trn(a, h["pez_steps"] * 256)
        w.fwd(b, candidates * 16)  # perplexities
        w.embedder = True
        return w
    if rule == "lens":
        a, b = _pair(plan, wc["pair"])
        run = c["lens"]["runs"][wc["run"]]
        reads = run["n_texts"] * (run["positions"] + 2)
        w.fwd(a, reads)
        w.fwd(b, reads * (1 + len(run["controls"])))  # b, and each control model, read on the same texts
        steer = run["steer"]
        n = _prompt_count(plan, run["prompts"]) if run["prompts"] else 40
        n *= steer["samples"] * len(steer["scales"])
        for _ in range(1 + ("random_lora" in run["controls"])):  # the pair's direction and a random one
            w.gen(b, n, steer["max_new_tokens"], steer["batch_size"])
            for m in (a, b):  # each answer's log-ratio under the pair
                w.fwd(m, n * (steer["max_new_tokens"] + 24))
        return w
    if rule == "scan":
        a, b = _pair(plan, wc["pair"])
        s = c["scan"]
        n_words = _scan_words(plan, b)
        for m in (a, b):
            w.fwd(m, n_words * 8)  # the word and the rest of the template after the shared prefix
            w.gen(m, s["top_n"], s["answer_tokens"], s["batch_size"])
        return w
    if rule == "scan_confirm":
        a, b = _pair(plan, wc["pair"])
        s = c["scan"]
        n = s["confirm_top"] * s["confirm_samples"]
        w.gen(a, 2 * n, s["answer_tokens"], 64)  # its answers and the reference words' answers
        return w.gen(b, n, s["answer_tokens"], 64)
    if rule == "scorecard":  # the top k findings of each method with a prompt, continued afresh
        model = planted_truth(c, wc["pair"])["model"]
        r = c["scorecard"]["resample"]
        prompted = [s for s in plan.discovery_sources(wc["pair"]) if s["method"] in PROMPTED_METHODS]
        n = len(prompted) * c["scorecard"]["k"] * r["samples"]
        w.embedder = True
        return w.gen(model, n, r["max_new_tokens"], r["batch_size"])
    if rule == "comparator":
        a, b = _pair(plan, wc["pair"])
        cp = c["completions"]
        n = _prompt_count(plan, wc["promptset"]) * len(cp["temperatures"]) * cp["samples"] * 2
        for m in (a, b):
            w.fwd(m, n * (cp["max_new_tokens"] + 24))
        return w
    w.extra_s = {"uid": 3.0, "compare_diversity": 2.0, "compare_entropy_perplexity": 1.5}.get(rule, 0.0)  # bootstraps
    return w  # gathering, tables, statistics, pages: no model


SCAN_WORDS_UNKNOWN = 20093  # SmolLM2's candidates: assumed while the tokenizer is not materialised


def _scan_words(plan: Plan, model: str) -> int:
    """The scan's questions: its candidate words (lmdelta.scan.candidate_words) of the model's tokenizer
    once it is materialised, else SCAN_WORDS_UNKNOWN, at most ``max_words``."""
    s = plan.config["scan"]
    folder = Path(plan.model_dir(model))
    if not (folder / "fingerprint.json").is_file():
        return min(s["max_words"] or SCAN_WORDS_UNKNOWN, SCAN_WORDS_UNKNOWN)
    from lmdelta.models import load_tokenizer
    from lmdelta.scan import candidate_words

    tok = load_tokenizer(folder, trust_remote_code=plan.config["models"][model]["trust_remote_code"])
    return len(candidate_words(tok, min_letters=s["min_letters"], max_words=s["max_words"]))


# ---- probes ------------------------------------------------------------------------------------------


def model_config(plan: Plan, name: str) -> dict[str, Any] | None:
    """The transformers config (as a dict) of a model, from wherever it is known without downloading."""
    c = plan.config
    owner = weights_owner(c, name)
    folder = Path(plan.model_dir(owner))
    if (folder / "config.json").is_file():
        return json.loads((folder / "config.json").read_text())
    src = c["models"][owner]["source"]
    kind, spec = next(iter(src.items()))
    if kind == "local" and (Path(spec["path"]) / "config.json").is_file():
        return json.loads((Path(spec["path"]) / "config.json").read_text())
    if kind in ("derive", "interpolate", "adapter"):
        base = {"derive": "from", "interpolate": "a", "adapter": "base"}[kind]
        return model_config(plan, spec[base])
    gguf = None
    if kind == "gguf" and not spec["path"].startswith(("http://", "https://")):
        gguf = Path(spec["path"])
    if kind == "wheel":
        from packaging.requirements import Requirement

        from lmdelta.models import installed_member

        gguf = installed_member(Requirement(spec["requirement"]), spec["path"].strip("/"))
    if gguf is not None and gguf.is_file():
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        return load_gguf_checkpoint(str(gguf), return_tensors=False)["config"]
    if kind == "hf":
        try:
            from transformers import AutoConfig

            return AutoConfig.from_pretrained(
                spec["id"], revision=spec.get("revision", "main"), local_files_only=True
            ).to_dict()
        except (OSError, ValueError):
            return None
    return None


PROBE_FULL_PARAMS = 2e9  # a model up to this size is probed whole; a larger one by one and two layers


def probe(cfg: dict[str, Any], *, dtype: str, device: str, threads: int, repeats: int = 3) -> Rates:
    """Time a randomly initialised model of this architecture on this machine: a batched forward
    (8 x 64 tokens, logits everywhere) and one decoding step at batch 1 and 16 after 32 cached tokens.
    A model of up to PROBE_FULL_PARAMS is built whole; a larger one with one and with two decoder
    layers, the difference extrapolated to its depth (its weights need not fit here)."""
    import copy

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from lmdelta.models import resolve_device

    dev = resolve_device(device)
    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype, torch.float32)
    rest = {k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version", "model_type")}
    base = AutoConfig.for_model(cfg["model_type"], **rest)
    text = base.get_text_config()
    depth = text.num_hidden_layers

    def sync():
        if dev.startswith("cuda"):
            torch.cuda.synchronize()

    def best(fn) -> float:
        fn()
        out = []
        for _ in range(repeats):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - t)
        return min(out)

    def measure(layers: int) -> tuple[list[float], int]:
        small = base.__class__.from_dict({**base.to_dict(), "num_hidden_layers": layers})
        if getattr(small, "layer_types", None):
            small.layer_types = small.layer_types[:layers]
        model = AutoModelForCausalLM.from_config(small, dtype=torch_dtype).to(dev)
        model.eval()
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, text.vocab_size, (16, 64), generator=gen).to(dev)
        with torch.inference_mode():
            times = [best(functools.partial(model, input_ids=ids[:8]))]
            for batch in (1, 16):
                cache = model(input_ids=ids[:batch, :32], use_cache=True).past_key_values
                copies = [copy.deepcopy(cache) for _ in range(repeats + 1)]

                def step(nxt=ids[:batch, 32:33], copies=copies):
                    model(input_ids=nxt, past_key_values=copies.pop(), use_cache=True)

                times.append(best(step))
        return times, sum(p.numel() for p in model.parameters())

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        one, n1 = measure(1)
        n_params = n1
        if depth > 1:
            two, n2 = measure(2)
            n_params = n1 + (n2 - n1) * (depth - 1)
            if n_params <= PROBE_FULL_PARAMS:
                full, n_params = measure(depth)
            else:
                full = [a + max(b - a, 0.0) * (depth - 1) for a, b in zip(one, two)]
        else:
            full = one
    finally:
        torch.set_num_threads(old)
    bytes_per = {"bfloat16": 2, "float16": 2}.get(dtype, 4)
    return Rates(
        forward_s=full[0] / 512,
        step_s=full[1],
        step_per_seq_s=max(full[2] - full[1], 0.0) / 15,
        n_params=int(n_params),
        weight_mb=n_params * bytes_per / 1e6,
    )


def model_rates(plan: Plan, names: list[str], threads: int, cache_file: Path = PROBE_FILE) -> dict[str, Rates | None]:
    """Rates of each model (None when its architecture is not known yet), probes cached on disk."""
    cache: dict[str, Any] = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    out: dict[str, Rates | None] = {}
    for name in names:
        cfg = model_config(plan, name)
        if cfg is None:
            out[name] = None
            continue
        m = plan.config["models"][name]
        dtype = "float32" if m["dtype"] == "auto" else m["dtype"]
        key = hashlib.sha256(
            json.dumps([cfg, dtype, m["device"], threads], sort_keys=True, default=str).encode()
        ).hexdigest()[:16]
        if key not in cache:
            log.info("estimate: probing %s (%s, %s)", name, dtype, m["device"])
            cache[key] = vars(probe(cfg, dtype=dtype, device=m["device"], threads=threads))
        out[name] = Rates(**cache[key])
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps(cache, indent=1))
    return out


# ---- the estimate ------------------------------------------------------------------------------------


def job_seconds(w: Work, rates: dict[str, Rates | None]) -> float | None:
    """Wall seconds of one job's work at these rates (None when a model it needs has no rates)."""
    if any(rates.get(m) is None for m in w.models):
        return None
    s = (STARTUP_S if w.models else LIGHT_STARTUP_S) + (EMBEDDER_S if w.embedder else 0.0)
    if w.writes_model:  # materialisation: sized by the weights
        r = rates[w.models[0]]
        return s + r.weight_mb / MATERIALISE_MB_PER_S
    s += w.extra_s
    for m in w.models:
        r = rates[m]
        s += r.weight_mb / LOAD_MB_PER_S
        work = w.forward.get(m, 0.0) * r.forward_s + 3 * w.train.get(m, 0.0) * r.forward_s
        work += sum(steps * r.step(batch) for steps, batch in w.generate.get(m, []))
        s += WORK_FACTOR * work
    return s


def estimate(config_path: str, snakemake_args: list[str], *, threads: int = 2) -> list[dict[str, Any]]:
    """One row per planned job: rule, wildcards, forward/generated/training tokens, estimated seconds."""
    plan = Plan(load_config_file(config_path))
    jobs = planned_jobs(["--configfile", config_path, *snakemake_args])
    works = [work_of(plan, j["rule"], j["wildcards"]) for j in jobs]
    rates = model_rates(plan, sorted({m for w in works for m in w.models}), threads)
    rows = []
    for j, w in zip(jobs, works):
        rows.append(
            {
                "rule": j["rule"],
                "job": ",".join(f"{k}={v}" for k, v in j["wildcards"].items()),
                "forward_tokens": int(sum(w.forward.values())),
                "generated_tokens": int(sum(st * b for g in w.generate.values() for st, b in g)),
                "train_tokens": int(sum(w.train.values())),
                "models": ",".join(w.models),
                "seconds": job_seconds(w, rates),
            }
        )
    return rows


def _duration(s: float) -> str:
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min" if s >= 3600 else f"{s / 60:.0f} min"


def format_estimate(rows: list[dict[str, Any]]) -> str:
    """A line per job (rule, wildcards, tokens, seconds) and the total (``total_line``)."""
    lines = [f"{'rule':26s} {'job':40s} {'forward':>10s} {'generated':>10s} {'train':>10s} {'estimate':>9s}"]
    for r in rows:
        t = "unknown" if r["seconds"] is None else f"{r['seconds']:.0f} s"
        lines.append(
            f"{r['rule']:26s} {r['job'][:40]:40s} {r['forward_tokens']:>10,} {r['generated_tokens']:>10,} "
            f"{r['train_tokens']:>10,} {t:>9s}"
        )
    return "\n".join([*lines, total_line(rows)])


def total_line(rows: list[dict[str, Any]]) -> str:
    """One line: jobs, the sum of their estimated times (jobs one at a time), the costliest rules, and
    how many jobs have no estimate (a model not downloaded yet)."""
    if not rows:
        return "estimate: nothing to run (every requested file is up to date)"
    known = sum(r["seconds"] for r in rows if r["seconds"] is not None)
    by_rule: dict[str, float] = {}
    for r in rows:
        if r["seconds"] is not None:
            by_rule[r["rule"]] = by_rule.get(r["rule"], 0.0) + r["seconds"]
    top = sorted(by_rule.items(), key=lambda kv: -kv[1])[:3]
    unknown = sum(r["seconds"] is None for r in rows)
    return (
        f"estimate: {len(rows)} jobs, about {_duration(known)} on this machine, one job at a time"
        + (f"; most in {', '.join(f'{k} ({_duration(v)})' for k, v in top)}" if top else "")
        + (f"; {unknown} jobs not counted (their models' sizes are known once downloaded)" if unknown else "")
    )
