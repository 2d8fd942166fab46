"""Planning: what the workflow runs for one validated config, and what each job receives.

The rules (workflow/rules/*.smk) name files and resources; every decision behind them lives here, as
plain functions of the config that tests reach without Snakemake: the targets, each job's inputs and
its ``spec`` (one JSON text: Snakemake compares it as text to decide what reruns, so what a spec leaves
out is what must not rerun a job), memory and runtime estimates, and the sources the scorecard reads.

Methods that a rule calls take its ``wildcards`` (any object with the wildcard names as attributes);
the rest take names. A config section reaches its stage whole but for its planning keys (the schema's
``x-planning``, ``config.stage_section``), so a parameter added to a stage needs no change here.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any

from lmdelta import LmdeltaError
from lmdelta.config import (
    adapter_models,
    comparator_pairs,
    derived_models,
    interpolated_models,
    load_options_of,
    materialised_models,
    planted_models,
    planted_truth,
    scorecard_pairs,
    selected,
    stage_section,
    weights_owner,
)
from lmdelta.findings import SCAN_CONFIRM, SCAN_SET, words_method
from lmdelta.promptsets import builtin_promptset_path

NOTHING = "(?!x)x"  # a wildcard pattern that matches no name
# Bytes per parameter of a model's weights in its load dtype (auto loads float32 on a CPU).
BYTES_PER_PARAM = {"float32": 4, "auto": 4, "bfloat16": 2, "float16": 2, "8bit": 1, "4bit": 0.5}
# A soft-prompt run's keys that only the hard-prompt step reads: changing them must not retrain.
HARD_PROMPT_KEYS = ("hard", "embedder")


def name_pattern(names: list[str]) -> str:
    """A wildcard pattern matching exactly these names (none when empty)."""
    return "|".join(re.escape(n) for n in names) or NOTHING


def expand(pattern: str, **values: str | list[str]) -> list[str]:
    """Every filling of ``pattern`` (product of the values, first keyword outermost), as Snakemake's expand."""
    lists = [[v] if isinstance(v, str) else list(v) for v in values.values()]
    return [pattern.format(**dict(zip(values, combo))) for combo in itertools.product(*lists)]


def as_text(spec: Any) -> str:
    """A spec as the JSON text a rule's ``spec`` param holds, keys sorted: Snakemake's params trigger
    compares this text, so two configs that say the same thing in another key order (a YAML merge key,
    a reordered section) share their artifacts instead of rebuilding them."""
    return json.dumps(spec, sort_keys=True)


def local_stamp(source: dict[str, Any]) -> str:
    """For a local folder or file without a sha256: a digest of its files' names, sizes and modification
    times. It is a materialise param, so a changed local model is materialised again, and --cache never
    hands out a copy of an older version."""
    kind, spec = next(iter(source.items()))
    if kind not in ("local", "gguf") or spec.get("sha256") or re.match(r"https?://", spec["path"]):
        return ""
    root = Path(spec["path"])
    if not root.exists():
        return ""  # materialise names the missing path and the fix
    files = sorted(q for q in root.rglob("*") if q.is_file()) if root.is_dir() else [root]
    stats = [
        (q.relative_to(root).as_posix() if root.is_dir() else q.name, q.stat().st_size, q.stat().st_mtime_ns)
        for q in files
    ]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]


def training_view(planted: dict[str, Any]) -> dict[str, Any]:
    """A planted behaviour as training sees it: trigger_keywords only score discovery methods, so changing
    them must not retrain the model."""
    return {k: v for k, v in planted.items() if k != "trigger_keywords"}


def _fingerprint(model_dir: str) -> dict[str, Any] | None:
    path = Path(model_dir) / "fingerprint.json"
    return json.loads(path.read_text()) if path.exists() else None


def size_mb(size: str) -> float:
    """A memory size as accelerate reads it ("70GiB", "500MB", "2 GB") in MB (1e6 bytes)."""
    m = re.fullmatch(r"([0-9.]+) ?([KMGT])(i?)B", size.strip())
    if m is None:
        raise LmdeltaError(f"memory size {size!r} is not like 70GiB or 500MB")
    base = 1024 if m.group(3) else 1000
    return float(m.group(1)) * base ** "KMGT".index(m.group(2)) * base / 1e6


class Plan:
    """The jobs of one validated config (``config.validate_config``)."""

    def __init__(self, config: dict[str, Any]):
        self.config = config

    # ---- targets and wildcard patterns ------------------------------------------------------------

    def targets(self) -> list[str]:
        """Every final artifact the config asks for (rule all)."""
        c = self.config
        return [
            *expand("resources/models/{model}", model=materialised_models(c)),
            *expand("results/corpus/{corpus}.parquet", corpus=list(c["corpora"])),
            *self.logprobs_targets(),
            *expand("results/planted/{model}.json", model=planted_models(c)),
            *self.diversity_targets(),
            *self.uid_targets(),
            *expand(
                "results/contrastive/{pair}/{run}.parquet",
                pair=selected(c, "contrastive", "pairs"),
                run=list(c["contrastive"]["runs"]),
            ),
            *expand(
                "results/search/{pair}/{run}/clusters.csv",
                pair=selected(c, "search", "pairs"),
                run=list(c["search"]["runs"]),
            ),
            *expand(
                "results/hardprompt/{pair}/{run}/prompts.parquet",
                pair=selected(c, "softprompt", "pairs"),
                run=list(c["softprompt"]["runs"]),
            ),
            *expand(
                "results/lens/{pair}/{run}/summary.json",
                pair=selected(c, "lens", "pairs"),
                run=list(c["lens"]["runs"]),
            ),
            *expand("results/scan/{pair}/words.parquet", pair=selected(c, "scan", "pairs")),
            *self.words_targets(),
            *expand("results/summary/{pair}.html", pair=self.summary_pairs()),
            *expand("results/scorecard/{pair}.csv", pair=scorecard_pairs(c)),
            *(["results/suite/matrix.csv"] if self.matrix_pairs() else []),
            *expand(
                "results/comparator/{pair}/{promptset}.json",
                pair=comparator_pairs(c),
                promptset=[
                    p for p in selected(c, "comparator", "promptsets") if p in selected(c, "completions", "promptsets")
                ],
            ),
        ]

    def wildcard_patterns(self) -> dict[str, str]:
        """Each name wildcard matches only the names the config defines, so a target with a typo
        (results/scan/nope/words.parquet) gets Snakemake's "no rule to produce" instead of a lookup error
        inside an input function. Run names are each section's own (``run_pattern``), words sets and
        elicit tables their pairs' (``words_patterns``)."""
        c = self.config
        return {
            "model": name_pattern(list(c["models"])),
            "scorer": name_pattern(list(c["models"])),
            "corpus": name_pattern(list(c["corpora"])),
            "promptset": name_pattern(list(c["promptsets"])),
            "pair": name_pattern(list(c["pairs"])),
        }

    def words_patterns(self, elicit: bool = False) -> dict[str, str]:
        """The pairs with a words set (or an elicit table) and the names of those sets (prompt sets)."""
        sets = {p: self.elicit_sets(p) if elicit else self.words_sets(p) for p in self.config["pairs"]}
        names = name_pattern(sorted({s for v in sets.values() for s in v}))
        return {"pair": name_pattern([p for p, v in sets.items() if v]), "promptset" if elicit else "set": names}

    def run_pattern(self, section: str) -> str:
        """The run names of a section (contrastive, search, softprompt, lens)."""
        return name_pattern(list(self.config[section]["runs"]))

    def model_patterns(self) -> dict[str, str]:
        """Which rule makes resources/models/{model}: derived models are trained, interpolated ones
        mixed, adapters merged into their base, the others materialised from their source."""
        derived, interpolated = derived_models(self.config), interpolated_models(self.config)
        adapters = adapter_models(self.config)
        sourced = [n for n in materialised_models(self.config) if n not in derived + interpolated + adapters]
        return {
            "derived": name_pattern(derived),
            "interpolated": name_pattern(interpolated),
            "adapter": name_pattern(adapters),
            "sourced": name_pattern(sourced),
        }

    # ---- models ----------------------------------------------------------------------------------

    def model_dir(self, name: str) -> str:
        """The materialised folder holding a model's weights (a variant's is its target's)."""
        return f"resources/models/{weights_owner(self.config, name)}"

    def load_options(self, name: str) -> dict[str, Any]:
        """A model's load options (dtype, quantization, device, trust_remote_code) in a job that loads
        it alone."""
        return self.dealt_options([name])[0]

    def dealt_options(self, names: list[str]) -> list[dict[str, Any]]:
        """The load options of the models one job loads, in the order it loads them: a model spread with
        ``gpus`` is dealt the job's next ``gpus`` GPUs (``gpu_ids``: a pair's a takes 0..n-1, b the n
        after; a model alone, 0..n-1)."""
        out, first = [], 0
        for name in names:
            opts = load_options_of(self.config["models"][name])
            if opts.get("gpus"):
                opts["gpu_ids"] = list(range(first, first + opts["gpus"]))
                first += opts["gpus"]
            out.append(opts)
        return out

    def model_format(self, name: str) -> dict[str, Any]:
        """How a model reads a prompt (its chat template or prompt_format) and its first token."""
        m = self.config["models"][name]
        return {"chat_template": m["chat_template"], "fmt": m["prompt_format"], "first_token": m["first_token"]}

    def model_input(self, wildcards) -> str:
        return self.model_dir(wildcards.model)

    def materialise_spec(self, wildcards) -> str:
        """Only what determines the materialised folder: load options (dtype, device...) apply later."""
        m = self.config["models"][wildcards.model]
        return as_text({"source": m["source"], "trust_remote_code": m["trust_remote_code"]})

    def materialise_stamp(self, wildcards) -> str:
        """Not read by the job: a param only so that a changed local source reruns materialisation."""
        return local_stamp(self.config["models"][wildcards.model]["source"])

    def model_source(self, name: str) -> dict[str, Any]:
        """A derived or interpolated model's source as its job sees it (planted behaviour: training view)."""
        src = self.config["models"][name]["source"]
        if "derive" in src and "planted" in src["derive"]["data"]:
            derive = src["derive"]
            src = {"derive": {**derive, "data": {"planted": training_view(derive["data"]["planted"])}}}
        return src

    def interpolate_inputs(self, wildcards) -> dict[str, str]:
        src = self.config["models"][wildcards.model]["source"]["interpolate"]
        return {"a": self.model_dir(src["a"]), "b": self.model_dir(src["b"])}

    def adapter_base(self, wildcards) -> str:
        return self.model_dir(self.config["models"][wildcards.model]["source"]["adapter"]["base"])

    def adapter_spec(self, wildcards) -> str:
        """The adapter's source, and its base's (the adapter's recorded base is checked against it)."""
        src = self.config["models"][wildcards.model]["source"]
        base = self.config["models"][weights_owner(self.config, src["adapter"]["base"])]["source"]
        return as_text({"source": src, "base_source": base})

    def interpolate_spec(self, wildcards) -> str:
        return as_text({"source": self.model_source(wildcards.model)})

    # ---- resources -------------------------------------------------------------------------------

    def _bytes_per_param(self, name: str) -> float:
        m = self.config["models"][name]
        return BYTES_PER_PARAM[m["dtype"] if m["quantization"] == "none" else m["quantization"]]

    def _host_weight_mb(self, name: str, n_parameters: int) -> float:
        """The job's host memory for a model's weights (MB): all of them, except that a model spread
        over devices (``device: spread``) holds at most its ``max_memory`` for the CPU in host memory."""
        mb = n_parameters * self._bytes_per_param(name) / 1e6
        m = self.config["models"][name]
        if m["device"] == "spread" and (m.get("max_memory") or {}).get("cpu"):
            mb = min(mb, size_mb(m["max_memory"]["cpu"]))
        return mb

    def model_mem_mb(self, wildcards, input, attempt: int) -> int:
        """Memory for a job that holds one model: its weights in the load dtype plus the logits of one
        batch (float32, twice for the reductions), plus 1.5 GB for the runtime; more on each retry.
        Before the model is materialised (a dry run) its size is unknown: 8 GB is assumed."""
        return self._one_model_mem_mb(wildcards.model, input.model, attempt)

    def scorecard_mem_mb(self, wildcards, input, attempt: int) -> int:
        """The scorecard holds the planted model (fresh continuations) and a small sentence embedder."""
        return self._one_model_mem_mb(planted_truth(self.config, wildcards.pair)["model"], input.model, attempt)

    def _one_model_mem_mb(self, name: str, model_dir: str, attempt: int) -> int:
        fp = _fingerprint(model_dir)
        if fp is None:
            return 8000 * attempt
        logits = 2 * 4 * self.config["logprobs"]["batch_tokens"] * fp["vocab_size"] / 1e6
        return int((self._host_weight_mb(name, fp["n_parameters"]) + logits) * 1.2 + 1500) * attempt

    def pair_mem_mb(self, wildcards, input, attempt: int) -> int:
        """Memory for a job that holds both models of a pair (contrastive decoding, search, soft and hard
        prompts, the comparator export): their weights in the load dtype, plus 3 GB for activations,
        logits and the runtime; more on each retry. 8 GB per model while a size is unknown (dry run)."""
        pair = self.config["pairs"][wildcards.pair]
        total = 3000
        for side in ("a", "b"):
            fp = _fingerprint(getattr(input, side))
            if fp is None:
                total += 8000
                continue
            total += self._host_weight_mb(pair[side], fp["n_parameters"]) * 1.2
        return int(total) * attempt

    def job_models(self, wildcards) -> list[str]:
        """The models a job loads, from its wildcards: its scorer (the UID stage, whose model wildcard
        names whose texts are scored), else its model, and a pair's two models."""
        if hasattr(wildcards, "scorer"):
            names = [wildcards.scorer]
        elif hasattr(wildcards, "model"):
            names = [wildcards.model]
        else:
            names = []
        if hasattr(wildcards, "pair"):
            names += [self.config["pairs"][wildcards.pair][side] for side in ("a", "b")]
        return names

    def job_gpus(self, wildcards) -> int:
        """GPUs a job that runs models asks for: 1 when one of its models has device: cuda; for models
        spread over devices, the GPUs dealt to them (``gpus``) and those their max_memory names (two
        models of a pair naming the same GPUs share them); else 0
        (device auto or cpu: a profile's set-resources can still ask for one). The SLURM plugin turns
        it into --gpus; local runs ignore it unless --resources gpu=N is given (then at most N GPU jobs
        run at once)."""
        names = self.job_models(wildcards)
        models = [self.config["models"][m] for m in names]
        spread = {k for m in models if m["device"] == "spread" for k in (m.get("max_memory") or {}) if str(k).isdigit()}
        dealt = {i for o in self.dealt_options(names) for i in o.get("gpu_ids", [])}
        return max(len(spread | {str(i) for i in dealt}), int(any(m["device"] == "cuda" for m in models)))

    def derive_runtime(self, wildcards) -> int:
        """Minutes: about 5 s per step on 2 CPU cores for a 135M model, with a wide margin."""
        return 30 + self.derive_source(wildcards.model)["steps"] // 6

    def softprompt_runtime(self, wildcards) -> int:
        """Minutes: about 4 s per step for a 135M pair on 2 CPU cores (batch 8 x 32 tokens), with a wide
        margin."""
        run = self.config["softprompt"]["runs"][wildcards.run]
        return 30 + run["steps"] * run["accumulation"] * run["batch"] * run["seq_len"] // 1000

    # ---- corpora ---------------------------------------------------------------------------------

    def corpus_fetch_spec(self, wildcards) -> str:
        """The source alone: changing how documents are sampled must not trigger a new download."""
        return as_text({"source": self.config["corpora"][wildcards.corpus]["source"]})

    def corpus_spec(self, wildcards) -> str:
        return as_text(self.config["corpora"][wildcards.corpus])

    def corpus_inputs(self, wildcards) -> dict[str, str]:
        source = self.config["corpora"][wildcards.corpus]["source"]
        kind = next(iter(source))
        if kind in ("url", "hf_dataset"):
            return {"raw": f"resources/corpus/{wildcards.corpus}/raw"}
        if kind == "file":
            return {"file": source["file"]["path"]}
        return {}

    # ---- logprobs, entropy and perplexity ----------------------------------------------------------

    def scoring_params(self, model: str) -> dict[str, Any]:
        """The logprobs settings with the scoring model's first token (models.<name>.first_token)."""
        return {
            **stage_section("logprobs", self.config["logprobs"]),
            "first_token": self.config["models"][model]["first_token"],
        }

    def logprobs_shard_spec(self, wildcards) -> str:
        return as_text(
            {"params": self.scoring_params(wildcards.model), "load_options": self.load_options(wildcards.model)}
        )

    def logprobs_shards(self, wildcards) -> list[str]:
        n = self.config["logprobs"]["shards"]
        return [f"results/logprobs/{wildcards.corpus}/shards/{wildcards.model}/{i}-of-{n}" for i in range(n)]

    def logprobs_targets(self) -> list[str]:
        corpora = selected(self.config, "logprobs", "corpora")
        models = selected(self.config, "logprobs", "models")
        if not corpora or not models:  # the section is off
            return []
        return [
            *expand("results/entropy_perplexity/{corpus}/{model}.json", corpus=corpora, model=models),
            *expand("results/entropy_perplexity/{corpus}/comparison.csv", corpus=corpora),
            *expand("results/textscores/{corpus}/words.parquet", corpus=corpora),
        ]

    def entropy_spec(self, wildcards) -> str:
        """The first token: under none each document's first token, unscored, leaves bits per byte too."""
        return as_text({"first_token": self.config["models"][wildcards.model]["first_token"]})

    def text_scores_spec(self, wildcards) -> str:
        return as_text({"trust_remote_code": self.config["models"][wildcards.model]["trust_remote_code"]})

    def join_text_scores_inputs(self, wildcards) -> dict[str, list[str]]:
        models = selected(self.config, "logprobs", "models")
        return {
            "words": expand("results/textscores/{corpus}/{model}.words.parquet", corpus=wildcards.corpus, model=models)
        }

    def join_text_scores_spec(self, wildcards) -> str:
        models = selected(self.config, "logprobs", "models")
        return as_text({"models": models, "pairs": self.pairs_among(models)})

    def compare_entropy_inputs(self, wildcards) -> dict[str, list[str]]:
        models = selected(self.config, "logprobs", "models")
        return {
            "summaries": expand(
                "results/entropy_perplexity/{corpus}/{model}.json", corpus=wildcards.corpus, model=models
            ),
            "docs": expand(
                "results/entropy_perplexity/{corpus}/{model}.docs.parquet", corpus=wildcards.corpus, model=models
            ),
        }

    def compare_entropy_spec(self, wildcards) -> str:
        models = selected(self.config, "logprobs", "models")
        return as_text(
            {
                "models": models,
                "pairs": self.pairs_among(models),
                "statistics": stage_section("statistics", self.config["statistics"]),
            }
        )

    def pairs_among(self, models: list[str]) -> list[dict[str, str]]:
        """The config's pairs whose two models are both among ``models``: the comparisons a table of
        those models makes (the study's claims, not every pair of models)."""
        return [
            {"pair": name, "a": p["a"], "b": p["b"]}
            for name, p in self.config["pairs"].items()
            if p["a"] in models and p["b"] in models
        ]

    # ---- derived models and planted behaviours -----------------------------------------------------

    def derive_source(self, name: str) -> dict[str, Any]:
        return self.config["models"][name]["source"]["derive"]

    def derive_base(self, wildcards) -> str:
        return self.model_dir(self.derive_source(wildcards.model)["from"])

    def derive_inputs(self, wildcards) -> dict[str, str]:
        data = self.derive_source(wildcards.model)["data"]
        train = data["file"]["path"] if "file" in data else f"resources/derive/{wildcards.model}/train.jsonl"
        return {"base": self.derive_base(wildcards), "data": train}

    def _planted_view(self, name: str) -> dict[str, Any]:
        return training_view(self.derive_source(name)["data"]["planted"])

    def derive_data_spec(self, wildcards) -> str:
        m = wildcards.model
        derive = self.derive_source(m)
        return as_text(
            {
                "planted": self._planted_view(m),
                "seed": derive["seed"],
                "text_format": self.model_format(m),
                "load_options": self.load_options(derive["from"]),
            }
        )

    def derive_model_spec(self, wildcards) -> str:
        return as_text(
            {"source": self.model_source(wildcards.model), "text_format": self.model_format(wildcards.model)}
        )

    def check_planted_spec(self, wildcards) -> str:
        m = wildcards.model
        return as_text(
            {
                "planted": self._planted_view(m),
                "text_format": self.model_format(m),
                "load_options": dict(zip(("base", "tuned"), self.dealt_options([self.derive_source(m)["from"], m]))),
                "statistics": {"confidence": self.config["statistics"]["confidence"]},
            }
        )

    # ---- prompt sets, completions and diversity ----------------------------------------------------

    def promptset_file(self, name: str) -> str:
        ps = self.config["promptsets"][name]
        if "builtin" in ps:
            return str(builtin_promptset_path(ps["builtin"]))
        if "from_corpus" in ps:
            return f"results/prompts/{name}.jsonl"
        return ps["file"]

    def promptset_path(self, wildcards) -> str:
        return self.promptset_file(wildcards.promptset)

    def prompts_corpus(self, wildcards) -> str:
        return f"results/corpus/{self.config['promptsets'][wildcards.promptset]['from_corpus']['corpus']}.parquet"

    def prompts_from_corpus_spec(self, wildcards) -> str:
        fc = self.config["promptsets"][wildcards.promptset]["from_corpus"]
        return as_text({"corpus": fc["corpus"], "n": fc["n_prompts"], "instruction": fc["instruction"]})

    def completions_shard_spec(self, wildcards) -> str:
        m = wildcards.model
        return as_text(
            {
                "params": stage_section("completions", self.config["completions"]),
                "load_options": self.load_options(m),
                "text_format": self.model_format(m),
            }
        )

    def completions_shards(self, wildcards) -> list[str]:
        n = self.config["completions"]["shards"]
        return [
            f"results/completions/{wildcards.promptset}/shards/{wildcards.model}/{i}-of-{n}.parquet" for i in range(n)
        ]

    def diversity_spec(self, wildcards) -> str:
        return as_text(stage_section("diversity", self.config["diversity"]))

    def compare_diversity_inputs(self, wildcards) -> list[str]:
        return expand(
            "results/diversity/{promptset}/{model}.parquet",
            promptset=wildcards.promptset,
            model=selected(self.config, "completions", "models"),
        )

    def compare_diversity_spec(self, wildcards) -> str:
        models = selected(self.config, "completions", "models")
        return as_text(
            {
                "models": models,
                "pairs": self.pairs_among(models),
                "statistics": stage_section("statistics", self.config["statistics"]),
            }
        )

    def diversity_targets(self) -> list[str]:
        if not selected(self.config, "completions", "models"):
            return []
        return expand(
            "results/diversity/{promptset}/comparison.csv", promptset=selected(self.config, "completions", "promptsets")
        )

    # ---- surprisal and UID -------------------------------------------------------------------------

    def uid_scorers(self) -> list[str]:
        """The scorers (null: the first model; []: none, the UID stage is off)."""
        s = self.config["uid"]["scorers"]
        return [next(iter(self.config["models"]))] if s is None else list(s)

    def uid_promptsets(self) -> list[str]:
        p = self.config["uid"]["promptsets"]
        return selected(self.config, "completions", "promptsets") if p is None else list(p)

    def uid_models(self) -> list[str]:
        m = self.config["uid"]["models"]
        return selected(self.config, "completions", "models") if m is None else list(m)

    def uid_targets(self) -> list[str]:
        if not self.uid_models():
            return []
        return expand(
            "results/uid/{promptset}/{scorer}/comparisons.csv",
            promptset=self.uid_promptsets(),
            scorer=self.uid_scorers(),
        )

    def uid_corpora(self, promptset: str) -> list[str]:
        """Human sources of a prompt set: the corpus a from_corpus set continues, else uid.corpora."""
        ps = self.config["promptsets"][promptset]
        return [ps["from_corpus"]["corpus"]] if "from_corpus" in ps else selected(self.config, "uid", "corpora")

    def uid_matched(self, promptset: str) -> bool:
        """A from_corpus prompt set carries the human continuation of each prompt: the human source then
        is that continuation, scored like the model texts (else whole corpus documents, unmatched)."""
        return "from_corpus" in self.config["promptsets"][promptset]

    def scorer_input(self, wildcards) -> str:
        return self.model_dir(wildcards.scorer)

    def _scorer_spec(self, wildcards) -> dict[str, Any]:
        return {"params": self.scoring_params(wildcards.scorer), "load_options": self.load_options(wildcards.scorer)}

    def uid_score_texts_spec(self, wildcards) -> str:
        return as_text(self._scorer_spec(wildcards))

    def uid_score_human_spec(self, wildcards) -> str:
        """The human continuations' budget in scorer tokens: uid.human_tokens, else completions.max_new_tokens."""
        tokens = self.config["uid"]["human_tokens"] or self.config["completions"]["max_new_tokens"]
        return as_text({**self._scorer_spec(wildcards), "human_tokens": tokens})

    def uid_inputs(self, wildcards) -> dict[str, list[str]]:
        contexts = self.config["uid"]["contexts"]
        if self.uid_matched(wildcards.promptset):
            human = expand(
                "results/uid/{promptset}/{scorer}/human.{context}.parquet",
                promptset=wildcards.promptset,
                scorer=wildcards.scorer,
                context=contexts,
            )
        else:
            human = expand(
                "results/logprobs/{corpus}/{scorer}.parquet",
                corpus=self.uid_corpora(wildcards.promptset),
                scorer=wildcards.scorer,
            )
        return {
            "human": human,
            "model_texts": expand(
                "results/uid/{promptset}/{scorer}/texts/{model}.{context}.parquet",
                promptset=wildcards.promptset,
                scorer=wildcards.scorer,
                model=self.uid_models(),
                context=contexts,
            ),
        }

    def uid_spec(self, wildcards) -> str:
        """The sources' names (in the order of uid_inputs' files) and the UID settings."""
        contexts = self.config["uid"]["contexts"]
        models = [f"{m}@{c}" for m in self.uid_models() for c in contexts]
        if self.uid_matched(wildcards.promptset):
            humans = [f"continuation@{c}" for c in contexts]
        else:
            humans = self.uid_corpora(wildcards.promptset)
        return as_text({"human_names": humans, "model_names": models, **stage_section("uid", self.config["uid"])})

    # ---- pairs -----------------------------------------------------------------------------------

    def pair_models(self, pair_name: str, run: dict[str, Any] | None = None) -> dict[str, Any]:
        """The two models of a pair as the stages take them: names (a, b), the run's settings, load
        options and prompt formats (in this key order, which keeps the rules' params stable)."""
        pair = self.config["pairs"][pair_name]
        names = [pair["a"], pair["b"]]
        return {
            "names": names,
            **({"run": run} if run is not None else {}),
            "load_options": self.dealt_options(names),
            "formats": [self.model_format(n) for n in names],
        }

    def pair_dirs(self, pair_name: str) -> dict[str, str]:
        pair = self.config["pairs"][pair_name]
        return {"a": self.model_dir(pair["a"]), "b": self.model_dir(pair["b"])}

    # ---- contrastive decoding ----------------------------------------------------------------------

    def contrastive_inputs(self, wildcards) -> dict[str, str]:
        prompts = self.config["contrastive"]["runs"][wildcards.run]["prompts"]
        out = self.pair_dirs(wildcards.pair)
        if "promptset" in prompts:
            out["promptset"] = self.promptset_file(prompts["promptset"])
        if "corpus" in prompts:
            out["corpus"] = f"results/corpus/{prompts['corpus']['name']}.parquet"
        return out

    def contrastive_spec(self, wildcards) -> str:
        return as_text(
            {
                **self.pair_models(wildcards.pair, run=self.config["contrastive"]["runs"][wildcards.run]),
                "statistics": stage_section("statistics", self.config["statistics"]),
            }
        )

    # ---- divergence prompt search ------------------------------------------------------------------

    def _search_run(self, wildcards) -> dict[str, Any]:
        return self.config["search"]["runs"][wildcards.run]

    def _assistant_inputs(self, run: dict[str, Any]) -> dict[str, str]:
        a = run["assistant"]
        return {"assistant": self.model_dir(a["model"])} if "model" in a else {}

    def _assistant(self, run: dict[str, Any], after: tuple[str, ...] = ()) -> dict[str, Any]:
        """The run's assistant; a local one loaded in a job ``after`` other models is dealt GPUs after theirs."""
        a = run["assistant"]
        out = {"spec": a}
        if "model" in a:
            out.update(
                dir=self.model_dir(a["model"]),
                load_options=self.dealt_options([*after, a["model"]])[-1],
                format=self.model_format(a["model"]),
            )
        return out

    def search_inputs(self, wildcards) -> dict[str, str]:
        run = self._search_run(wildcards)
        methods = run["seed_findings"]["methods"]
        found = [s["findings"] for s in self.discovery_sources(wildcards.pair) if s["method"] in methods]
        return {
            **self.pair_dirs(wildcards.pair),
            "seeds": self.promptset_file(run["seeds"]),
            **({"seed_findings": found} if found else {}),
            **self._assistant_inputs(run),
        }

    def search_spec(self, wildcards) -> str:
        run = self._search_run(wildcards)
        return as_text(
            {
                **self.pair_models(wildcards.pair, run=run),
                "assistant": self._assistant(run, after=tuple(self.pair_models(wildcards.pair)["names"])),
                "word_template": self.config["scan"]["template"],
                "planted": planted_truth(self.config, wildcards.pair),
                "statistics": stage_section("statistics", self.config["statistics"]),
            }
        )

    def search_clusters_inputs(self, wildcards) -> dict[str, str]:
        run = self._search_run(wildcards)
        bank = {"bank": f"results/search/{wildcards.pair}/{wildcards.run}/bank.parquet"}
        return {**bank, **self._assistant_inputs(run)} if run["clusters"]["label"] else bank

    def search_clusters_spec(self, wildcards) -> str:
        run = self._search_run(wildcards)
        spec = {**run["clusters"], "embedder": run["embedder"]}
        if run["clusters"]["label"]:
            spec["assistant"] = self._assistant(run)
        return as_text(spec)

    # ---- soft and hard prompts ---------------------------------------------------------------------

    def softprompt_inputs(self, wildcards) -> dict[str, str]:
        run = self.config["softprompt"]["runs"][wildcards.run]
        return {**self.pair_dirs(wildcards.pair), "corpus": f"results/corpus/{run['corpus']}.parquet"}

    def soft_prompt_pair(self, pair: str) -> str:
        """The pair whose soft prompts ``pair``'s hard prompts come from (itself unless soft_prompts_from)."""
        return self.config["pairs"][pair].get("soft_prompts_from") or pair

    def hardprompt_inputs(self, wildcards) -> dict[str, str]:
        source = self.soft_prompt_pair(wildcards.pair)
        out = {
            **self.softprompt_inputs(wildcards),
            "soft": f"results/softprompt/{source}/{wildcards.run}/prompt.safetensors",
        }
        if source != wildcards.pair:
            out.update({f"train_{k}": v for k, v in self.pair_dirs(source).items()})
        return out

    def softprompt_spec(self, wildcards) -> str:
        """The run without its hard-prompt settings: changing those must not retrain the soft prompt."""
        run = self.config["softprompt"]["runs"][wildcards.run]
        training = {k: v for k, v in run.items() if k not in HARD_PROMPT_KEYS}
        # statistics: for the held-out test (a changed section reruns the job; the checkpoints keep the training)
        stats = stage_section("statistics", self.config["statistics"])
        return as_text({**self.pair_models(wildcards.pair, run=training), "statistics": stats})

    def hardprompt_spec(self, wildcards) -> str:
        run = self.config["softprompt"]["runs"][wildcards.run]
        source = self.soft_prompt_pair(wildcards.pair)
        return as_text(
            {
                **self.pair_models(wildcards.pair, run=run),
                "planted": planted_truth(self.config, wildcards.pair),
                "statistics": stage_section("statistics", self.config["statistics"]),
                **({"trained_on": {"pair": source, **self.pair_models(source)}} if source != wildcards.pair else {}),
            }
        )

    # ---- activation-difference lens ----------------------------------------------------------------

    def lens_inputs(self, wildcards) -> dict[str, str]:
        run = self.config["lens"]["runs"][wildcards.run]
        prompts = run["prompts"]
        return {
            **self.pair_dirs(wildcards.pair),
            "corpus": f"results/corpus/{run['corpus']}.parquet",
            "promptset": self.promptset_file(prompts) if prompts else str(builtin_promptset_path("default")),
        }

    def lens_spec(self, wildcards) -> str:
        return as_text(self.pair_models(wildcards.pair, run=self.config["lens"]["runs"][wildcards.run]))

    # ---- vocabulary scan ----------------------------------------------------------------------------

    def scan_inputs(self, wildcards) -> dict[str, str]:
        return self.pair_dirs(wildcards.pair)

    def scan_spec(self, wildcards) -> str:
        return as_text({**self.pair_models(wildcards.pair), "params": stage_section("scan", self.config["scan"])})

    def scan_confirm_inputs(self, wildcards) -> dict[str, str]:
        return {**self.pair_dirs(wildcards.pair), "scan": f"results/scan/{wildcards.pair}/words.parquet"}

    def scan_confirm_spec(self, wildcards) -> str:
        c = self.config
        return as_text(
            {
                **self.pair_models(wildcards.pair),
                "params": stage_section("scan", c["scan"]),
                "words": self.words_params(wildcards.pair, SCAN_CONFIRM),
            }
        )

    # ---- words that changed ------------------------------------------------------------------------

    def words_sets(self, pair_name: str) -> dict[str, dict[str, Any]]:
        """Every text set the config produces for a pair, by set name: its kind and input files
        (lmdelta.words.text_sides). Contrastive texts need b's completions of their prompt set; lens
        runs need unsteered answers (0 among the steering scales)."""
        c = self.config
        if pair_name not in selected(c, "words", "pairs"):
            return {}
        pair = c["pairs"][pair_name]
        a, b = pair["a"], pair["b"]
        generated = set(selected(c, "completions", "models"))
        promptsets = selected(c, "completions", "promptsets") if b in generated else []

        def completions(ps: str, model: str) -> str:
            return f"results/completions/{ps}/{model}.parquet"

        out: dict[str, dict[str, Any]] = {}
        if a in generated:
            for ps in promptsets:
                out[f"completions-{ps}"] = {
                    "kind": "completions",
                    "inputs": {"a": completions(ps, a), "b": completions(ps, b)},
                }
        if pair_name in selected(c, "contrastive", "pairs"):
            for r, run in c["contrastive"]["runs"].items():
                ps = run["prompts"].get("promptset")
                if ps in promptsets:
                    out[f"contrastive-{r}"] = {
                        "kind": "contrastive",
                        "inputs": {"a": f"results/contrastive/{pair_name}/{r}.parquet", "b": completions(ps, b)},
                    }
        if pair_name in selected(c, "scan", "pairs"):
            out[SCAN_SET] = {"kind": "scan", "inputs": {"scan": f"results/scan/{pair_name}/words.parquet"}}
        if pair_name in selected(c, "lens", "pairs"):
            for r, run in c["lens"]["runs"].items():
                if 0 in run["steer"]["scales"] and any(x > 0 for x in run["steer"]["scales"]):
                    out[f"lens-{r}"] = {
                        "kind": "lens",
                        "inputs": {"steered": f"results/lens/{pair_name}/{r}/steered.parquet"},
                    }
        return out

    def words_targets(self) -> list[str]:
        return [
            f"results/words/{pair}/{name}.parquet" for pair in self.config["pairs"] for name in self.words_sets(pair)
        ] + [f"results/elicit/{pair}/{ps}.parquet" for pair in self.config["pairs"] for ps in self.elicit_sets(pair)]

    def elicit_sets(self, pair_name: str) -> dict[str, dict[str, str]]:
        """What elicits the change, per prompt set whose completions of both models the words test
        compares: prompt set -> inputs (lmdelta.words.run_elicit)."""
        out = {}
        for name, s in self.words_sets(pair_name).items():
            if s["kind"] == "completions":
                ps = name.removeprefix("completions-")
                out[ps] = {
                    **s["inputs"],
                    "words": f"results/words/{pair_name}/{name}.parquet",
                    "prompts": self.promptset_file(ps),
                }
        return out

    def elicit_inputs(self, wildcards) -> dict[str, str]:
        return self.elicit_sets(wildcards.pair)[wildcards.promptset]

    def verdict_tests(self, pair_name: str) -> list[str]:
        """The tested comparisons behind the summary's verdict "changed" for a pair: the words sets whose
        sides are made the same way (lmdelta.findings.SAME_PROCEDURE) and the scan's confirmation. The
        words stage's ``alpha`` is the verdict's family-wise level, split over them (lmdelta.words).
        Elicit's findings need a reported output word first, so they add no chance of a false verdict."""
        tests = [name for name, s in self.words_sets(pair_name).items() if words_method(s["kind"]) == "words"]
        return tests + ([SCAN_CONFIRM] if pair_name in selected(self.config, "scan", "pairs") else [])

    def words_params(self, pair_name: str, test: str | None = None) -> dict[str, Any]:
        """The words stage's parameters for one comparison of a pair: the config's, with the verdict's
        number of tests where ``test`` is one of them (``verdict_tests``)."""
        params = stage_section("words", self.config["words"])
        tests = self.verdict_tests(pair_name)
        return {**params, "verdict_tests": len(tests)} if test in tests else params

    def elicit_spec(self, wildcards) -> str:
        return as_text({"params": stage_section("words", self.config["words"])})

    def words_inputs(self, wildcards) -> dict[str, str]:
        return self.words_sets(wildcards.pair)[wildcards.set]["inputs"]

    def words_spec(self, wildcards) -> str:
        return as_text(
            {
                "kind": self.words_sets(wildcards.pair)[wildcards.set]["kind"],
                "params": self.words_params(wildcards.pair, wildcards.set),
            }
        )

    # ---- what changed, in words --------------------------------------------------------------------

    def summary_pairs(self) -> list[str]:
        """Pairs with a summary page: those named under summary.pairs, else every pair with terms to show
        (a scan or a words set: the tested methods the page is built from). A contrastive or search
        study alone gets no page of untested evidence it did not ask for."""
        if self.config["summary"]["pairs"] is not None:
            return list(self.config["summary"]["pairs"])
        return [p for p in self.config["pairs"] if p in selected(self.config, "scan", "pairs") or self.words_sets(p)]

    def report_landing(self) -> str:
        """The report's landing page (a file written now: lmdelta.summary.report_landing), as an
        absolute path for Snakemake's ``report:``."""
        from lmdelta.summary import report_landing

        root = Path(__file__).resolve().parent.parent
        summaries = [Path(f"results/summary/{p}.json") for p in self.summary_pairs()]
        out = Path(".snakemake") / "lmdelta-report.rst"
        return str(report_landing(root / "report" / "workflow.rst", summaries, out).resolve())

    def summary_inputs(self, wildcards) -> dict[str, Any]:
        inputs: dict[str, Any] = {"findings": [s["findings"] for s in self.discovery_sources(wildcards.pair)]}
        a = self.config["summary"]["assistant"]
        return {**inputs, **self._assistant_inputs({"assistant": a})} if a else inputs

    def summary_spec(self, wildcards) -> str:
        a = self.config["summary"]["assistant"]
        return as_text(
            {
                "names": self.pair_models(wildcards.pair)["names"],
                "truth": planted_truth(self.config, wildcards.pair),
                "params": {
                    **stage_section("summary", self.config["summary"]),
                    "verdict_alpha": self.config["words"]["alpha"],
                    "verdict_tests": self.verdict_tests(wildcards.pair),
                },
                "assistant": self._assistant({"assistant": a}) if a else None,
            }
        )

    # ---- discovery-method scorecard ----------------------------------------------------------------

    def findings_path(self, pair: str, method: str, run: str) -> str:
        """Where a discovery method writes its findings table (lmdelta.findings) for a pair and run."""
        return f"results/findings/{pair}/{method}/{run}.parquet"

    def corpus_findings_inputs(self, wildcards) -> dict[str, str]:
        pair = self.config["pairs"][wildcards.pair]
        return {
            "a": f"results/logprobs/{wildcards.corpus}/{pair['a']}.parquet",
            "b": f"results/logprobs/{wildcards.corpus}/{pair['b']}.parquet",
            "corpus": f"results/corpus/{wildcards.corpus}.parquet",
        }

    def corpus_findings_spec(self, wildcards) -> str:
        return as_text({"names": self.pair_models(wildcards.pair)["names"]})

    def discovery_sources(self, pair_name: str) -> list[dict[str, Any]]:
        """Every discovery method run for a pair (as configured): its findings table, and the artifacts
        whose provenance gives its wall time and model calls."""
        c = self.config
        pair = c["pairs"][pair_name]
        names = [pair["a"], pair["b"]]
        runs: list[tuple[str, str, list[str]]] = []
        if set(names) <= set(selected(c, "logprobs", "models")):
            runs += [
                ("corpus", corpus, [f"results/logprobs/{corpus}/{n}.parquet" for n in names])
                for corpus in selected(c, "logprobs", "corpora")
            ]
        if pair_name in selected(c, "contrastive", "pairs"):
            runs += [
                ("contrastive", r, [f"results/contrastive/{pair_name}/{r}.parquet"]) for r in c["contrastive"]["runs"]
            ]
        if pair_name in selected(c, "search", "pairs"):
            runs += [("search", r, [f"results/search/{pair_name}/{r}/bank.parquet"]) for r in c["search"]["runs"]]
        if pair_name in selected(c, "lens", "pairs"):
            runs += [("lens", r, [f"results/lens/{pair_name}/{r}/tokens.parquet"]) for r in c["lens"]["runs"]]
        if pair_name in selected(c, "scan", "pairs"):
            runs += [("scan", "vocabulary", [f"results/scan/{pair_name}/{f}.parquet" for f in ("words", "confirm")])]
        words_sets = self.words_sets(pair_name)
        runs += [
            ("words", name, [f"results/words/{pair_name}/{name}.parquet", *s["inputs"].values()])
            for name, s in words_sets.items()
        ]
        runs += [
            ("elicit", ps, [f"results/elicit/{pair_name}/{ps}.parquet", *(inputs[k] for k in ("a", "b", "words"))])
            for ps, inputs in self.elicit_sets(pair_name).items()
        ]
        if pair_name in selected(c, "softprompt", "pairs"):
            runs += [
                (
                    "hardprompt",
                    r,
                    [
                        f"results/softprompt/{self.soft_prompt_pair(pair_name)}/{r}/prompt.safetensors",
                        f"results/hardprompt/{pair_name}/{r}/prompts.parquet",
                    ],
                )
                for r in c["softprompt"]["runs"]
            ]

        # a words set whose sides are made differently is its own method; its findings stay under words/
        def label(m: str, r: str) -> str:
            return words_method(words_sets[r]["kind"]) if m == "words" else m

        return [
            {"method": label(m, r), "run": r, "findings": self.findings_path(pair_name, m, r), "cost": cost}
            for m, r, cost in runs
        ]

    def scorecard_inputs(self, wildcards) -> dict[str, Any]:
        """Every method's findings and cost records, and the planted model (it continues each finding's
        prompt afresh: every method judged on the same number of samples)."""
        files = []
        for s in self.discovery_sources(wildcards.pair):
            files += [s["findings"], *s["cost"]]
        planted = planted_truth(self.config, wildcards.pair)["model"]
        # text sets share inputs (b's completions)
        return {"files": list(dict.fromkeys(files)), "model": self.model_dir(planted)}

    def scorecard_spec(self, wildcards) -> str:
        truth = planted_truth(self.config, wildcards.pair)
        return as_text(
            {
                "truth": truth,
                "sources": self.discovery_sources(wildcards.pair),
                "model": {
                    "load_options": self.load_options(truth["model"]),
                    "format": self.model_format(truth["model"]),
                },
                "params": stage_section("scorecard", self.config["scorecard"]),
            }
        )

    def matrix_pairs(self) -> list[dict[str, Any]]:
        """The suite (methods x organisms): every pair with a summary page, as an organism (a planted
        behaviour: its check and scorecard too), a control (``control: true``) or unknown; empty, so no
        matrix, unless the config has more than one such pair and at least one organism or control."""
        c = self.config
        scored = set(scorecard_pairs(c))
        out = []
        for name in self.summary_pairs():
            truth = planted_truth(c, name)
            role = "organism" if truth else "control" if c["pairs"][name]["control"] else "unknown"
            out.append(
                {
                    "pair": name,
                    "role": role,
                    "summary": f"results/summary/{name}.json",
                    "check": f"results/planted/{truth['model']}.json" if truth else None,
                    "scorecard": f"results/scorecard/{name}.csv" if name in scored else None,
                }
            )
        if len(out) < 2 or all(p["role"] == "unknown" for p in out):
            return []
        return out

    def matrix_inputs(self, wildcards) -> list[str]:
        return [path for p in self.matrix_pairs() for path in (p["summary"], p["check"], p["scorecard"]) if path]

    def matrix_spec(self, wildcards) -> str:
        return as_text({"pairs": self.matrix_pairs(), "params": stage_section("scorecard", self.config["scorecard"])})

    # ---- LLM Comparator export ---------------------------------------------------------------------

    def comparator_inputs(self, wildcards) -> dict[str, Any]:
        pair = self.config["pairs"][wildcards.pair]
        names = [pair["a"], pair["b"]]
        ps = wildcards.promptset
        return {
            **self.pair_dirs(wildcards.pair),
            "promptset": self.promptset_file(ps),
            "completions": expand("results/completions/{promptset}/{model}.parquet", promptset=ps, model=names),
            "diversity": expand("results/diversity/{promptset}/{model}.parquet", promptset=ps, model=names),
        }

    def comparator_spec(self, wildcards) -> str:
        return as_text(
            {
                **self.pair_models(wildcards.pair),
                "planted": planted_truth(self.config, wildcards.pair),
                **stage_section("comparator", self.config["comparator"]),
            }
        )
