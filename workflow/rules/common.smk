# Config validation, helpers that build inputs, params and targets, wildcard constraints.
import hashlib
import json
import re
import shlex
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import update_config, validate

# The Snakefile imports the package from the source tree, so `snakemake -n` needs no install; jobs
# run workflow/scripts/job.py (lmdelta.job), which needs it installed (make setup / envs/*.yaml), in
# the Python Snakemake runs in (.venv/bin/snakemake works without an activated venv). Its folder also
# goes first on PATH in every job's shell (a cluster job loads this file too).
sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))
shell.prefix(f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"; ')
from lmdelta import LmdeltaError  # noqa: E402
from lmdelta.config import (  # noqa: E402
    LOAD_OPTION_KEYS,
    comparator_pairs,
    derived_models,
    interpolated_models,
    materialised_models,
    planted_models,
    planted_truth,
    scorecard_pairs,
    selected,
    validate_config,
    weights_owner,
)

# config.yaml (the offline demo) is the default. A --configfile replaces it rather than being merged
# into it, so that a paper configuration never inherits the demo's models; --config key=value
# overrides apply on top of either.
if not workflow.config_settings.configfiles:
    _default = yaml.safe_load((Path(workflow.basedir) / "config.yaml").read_text())
    update_config(_default, dict(config))
    config.clear()
    config.update(_default)

try:
    _checked = validate_config(config)
except LmdeltaError as e:
    # One line naming the key and the fix, before any job starts.
    raise WorkflowError(str(e)) from None
config.clear()
config.update(_checked)
# The schema is also applied by Snakemake's own validator (fills the same defaults).
validate(config, "../schemas/config.schema.yaml")

NAME = "[A-Za-z0-9][A-Za-z0-9_.-]*"
NOTHING = "(?!x)x"  # a pattern that matches no name


def name_pattern(names):
    """A wildcard pattern matching exactly these names (none when empty)."""
    return "|".join(re.escape(n) for n in names) or NOTHING


# resources/models/{model} of a derived model is trained (derive_model), of the others materialised.
DERIVED = name_pattern(derived_models(config))
INTERPOLATED = name_pattern(interpolated_models(config))
SOURCED = name_pattern(
    [n for n in materialised_models(config) if n not in derived_models(config) + interpolated_models(config)]
)


wildcard_constraints:
    model=NAME,
    corpus=NAME,
    promptset=NAME,
    scorer=NAME,
    context="none|prompt",
    pair=NAME,
    run=NAME,
    shard=r"\d+",
    n=r"\d+",


# Conda users (--sdm conda) get envs/lmdelta-cpu.yaml or -cuda.yaml (conda_env); the same packages as pyproject.toml.
CONDA_ENV = f"../../envs/lmdelta-{config['conda_env']}.yaml"
# Every rule runs this script (the job contract, lmdelta.job), with its named inputs, outputs and params; the
# stage function registered under the rule's name does the work.
JOB = "../scripts/job.py"


def spec_of(**parts):
    """A rule's ``spec`` param: the named parts (functions of the wildcards) as one JSON text, which the
    job reads as data and Snakemake compares as text to decide what reruns."""
    return lambda wildcards: json.dumps({k: f(wildcards) for k, f in parts.items()})


def all_targets():
    return [
        *expand("resources/models/{model}", model=materialised_models(config)),
        *expand("results/corpus/{corpus}.parquet", corpus=config["corpora"]),
        *logprobs_targets(),
        *expand("results/planted/{model}.json", model=planted_models(config)),
        *diversity_targets(),
        *uid_targets(),
        *expand(
            "results/contrastive/{pair}/{run}.parquet",
            pair=selected(config, "contrastive", "pairs"),
            run=config["contrastive"]["runs"],
        ),
        *expand(
            "results/search/{pair}/{run}/clusters.csv",
            pair=selected(config, "search", "pairs"),
            run=config["search"]["runs"],
        ),
        *expand(
            "results/hardprompt/{pair}/{run}/prompts.parquet",
            pair=selected(config, "softprompt", "pairs"),
            run=config["softprompt"]["runs"],
        ),
        *expand("results/scorecard/{pair}.csv", pair=scorecard_pairs(config)),
        *expand(
            "results/comparator/{pair}/{promptset}.json",
            pair=comparator_pairs(config),
            promptset=[
                p
                for p in selected(config, "comparator", "promptsets")
                if p in selected(config, "completions", "promptsets")
            ],
        ),
    ]


# ---- models -------------------------------------------------------------------------------------


def local_stamp(source):
    """For a local folder or file without a sha256: a digest of its files' names, sizes and
    modification times. It is a materialise param, so a changed local model is materialised again,
    and --cache never hands out a copy of an older version."""
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


def materialise_spec(wildcards):
    """Only what determines the materialised folder: load options (dtype, device...) apply later."""
    m = config["models"][wildcards.model]
    return json.dumps({"source": m["source"], "trust_remote_code": m["trust_remote_code"]})


def materialise_stamp(wildcards):
    """Not passed to the job: a param only so that a changed local source reruns materialisation."""
    return local_stamp(config["models"][wildcards.model]["source"])


def model_dir(name):
    """The materialised folder holding a model's weights (a variant's is its target's)."""
    return f"resources/models/{weights_owner(config, name)}"


def model_input(wildcards):
    return model_dir(wildcards.model)


def model_load_options(name):
    """A model's load options (dtype, quantization, device, trust_remote_code)."""
    return {k: config["models"][name][k] for k in LOAD_OPTION_KEYS}


def load_options(wildcards):
    return model_load_options(wildcards.model)


_BYTES_PER_PARAM = {"float32": 4, "auto": 4, "bfloat16": 2, "float16": 2}


def model_mem_mb(wildcards, input, attempt):
    """Memory for a job that holds one model: its weights in the load dtype plus the logits of one
    batch (float32, twice for the reductions), plus 1.5 GB for the runtime; more on each retry.
    Before the model is materialised (a dry run) its size is unknown: 8 GB is assumed."""
    fp_path = Path(input.model) / "fingerprint.json"
    if not fp_path.exists():
        return 8000 * attempt
    fp = json.loads(fp_path.read_text())
    m = config["models"][wildcards.model]
    per_param = {"8bit": 1, "4bit": 0.5}.get(m["quantization"], _BYTES_PER_PARAM[m["dtype"]])
    logits = 2 * 4 * config["logprobs"]["batch_tokens"] * fp["vocab_size"]
    return int((fp["n_parameters"] * per_param + logits) / 1e6 * 1.2 + 1500) * attempt


def job_models(wildcards):
    """The models a job loads, from its wildcards: its scorer (the UID stage, whose model wildcard
    names whose texts are scored), else its model, and a pair's two models."""
    names = (
        [wildcards.scorer] if hasattr(wildcards, "scorer") else [wildcards.model] if hasattr(wildcards, "model") else []
    )
    if hasattr(wildcards, "pair"):
        names += [config["pairs"][wildcards.pair][side] for side in ("a", "b")]
    return names


def job_gpus(wildcards):
    """GPUs a job that runs models asks for: 1 when one of its models has device: cuda, else 0
    (device auto or cpu: a profile's set-resources can still ask for one). The SLURM plugin turns it
    into --gpus; local runs ignore it unless --resources gpu=N is given (then at most N GPU jobs run
    at once)."""
    return int(any(config["models"][m]["device"] == "cuda" for m in job_models(wildcards)))


def pair_mem_mb(wildcards, input, attempt):
    """Memory for a job that holds both models of a pair (contrastive decoding, search, soft and hard
    prompts, the comparator export): their weights in the load dtype, plus 3 GB for activations,
    logits and the runtime; more on each retry. 8 GB per model while a size is unknown (dry run)."""
    pair = config["pairs"][wildcards.pair]
    total = 3000
    for side in ("a", "b"):
        fp_path = Path(getattr(input, side)) / "fingerprint.json"
        if not fp_path.exists():
            total += 8000
            continue
        m = config["models"][pair[side]]
        per_param = {"8bit": 1, "4bit": 0.5}.get(m["quantization"], _BYTES_PER_PARAM[m["dtype"]])
        total += json.loads(fp_path.read_text())["n_parameters"] * per_param / 1e6 * 1.2
    return int(total) * attempt


# ---- corpora ------------------------------------------------------------------------------------


def corpus_source_kind(name):
    return next(iter(config["corpora"][name]["source"]))


def corpus_fetch_spec(wildcards):
    """The source alone: changing how documents are sampled must not trigger a new download."""
    return json.dumps({"source": config["corpora"][wildcards.corpus]["source"]})


def corpus_spec(wildcards):
    return json.dumps(config["corpora"][wildcards.corpus])


def corpus_inputs(wildcards):
    kind = corpus_source_kind(wildcards.corpus)
    if kind in ("url", "hf_dataset"):
        return {"raw": f"resources/corpus/{wildcards.corpus}/raw"}
    if kind == "file":
        return {"file": config["corpora"][wildcards.corpus]["source"]["file"]["path"]}
    return {}


# ---- logprobs, entropy and perplexity ---------------------------------------------------------------


def scoring_params(model):
    """The logprobs settings with the scoring model's first token (models.<name>.first_token)."""
    lp = config["logprobs"]
    return {
        **{k: lp[k] for k in ("max_length", "stride", "batch_tokens", "chunk_positions", "part_docs")},
        "first_token": config["models"][model]["first_token"],
    }


def logprobs_params(wildcards):
    return scoring_params(wildcards.model)


def scorer_params(wildcards):
    return scoring_params(wildcards.scorer)


def logprobs_shards(wildcards):
    n = config["logprobs"]["shards"]
    return [f"results/logprobs/{wildcards.corpus}/shards/{wildcards.model}/{i}-of-{n}" for i in range(n)]


def logprobs_targets():
    corpora = selected(config, "logprobs", "corpora")
    models = selected(config, "logprobs", "models")
    if not corpora or not models:  # the section is off
        return []
    return [
        *expand("results/entropy_perplexity/{corpus}/{model}.json", corpus=corpora, model=models),
        *expand("results/entropy_perplexity/{corpus}/comparison.csv", corpus=corpora),
    ]


def compare_inputs(wildcards):
    models = selected(config, "logprobs", "models")
    return {
        "summaries": expand("results/entropy_perplexity/{corpus}/{model}.json", corpus=wildcards.corpus, model=models),
        "docs": expand(
            "results/entropy_perplexity/{corpus}/{model}.docs.parquet", corpus=wildcards.corpus, model=models
        ),
    }


def compare_models(wildcards):
    return selected(config, "logprobs", "models")


# ---- derived models and planted behaviours ----------------------------------------------------------


def derive_spec(name):
    return config["models"][name]["source"]["derive"]


def derive_base(wildcards):
    return model_dir(derive_spec(wildcards.model)["from"])


def derive_inputs(wildcards):
    data = derive_spec(wildcards.model)["data"]
    train = data["file"]["path"] if "file" in data else f"resources/derive/{wildcards.model}/train.jsonl"
    return {"base": derive_base(wildcards), "data": train}


def training_view(planted):
    """A planted behaviour as training sees it: trigger_keywords only score discovery methods, so
    changing them must not retrain the model."""
    return {k: v for k, v in planted.items() if k != "trigger_keywords"}


def model_source(wildcards):
    src = config["models"][wildcards.model]["source"]
    if "derive" in src and "planted" in src["derive"]["data"]:
        derive = src["derive"]
        src = {"derive": {**derive, "data": {"planted": training_view(derive["data"]["planted"])}}}
    return src


def planted_json(wildcards):
    return training_view(derive_spec(wildcards.model)["data"]["planted"])


def derive_seed(wildcards):
    return derive_spec(wildcards.model)["seed"]


def text_format_arg(wildcards):
    """How the job's model reads prompts and where its sequences start (lmdelta.tokens.TextFormat)."""
    return model_format(wildcards.model)


def base_load_options(wildcards):
    """Load options of the model a derived model comes from (used to distil its answers)."""
    return model_load_options(derive_spec(wildcards.model)["from"])


def pair_load_options(wildcards):
    """Load options of a derived model and of its base, for the planted-behaviour check."""
    base = derive_spec(wildcards.model)["from"]
    return {"base": model_load_options(base), "tuned": model_load_options(wildcards.model)}


def derive_runtime(wildcards):
    """Minutes: about 5 s per step on 2 CPU cores for a 135M model, with a wide margin."""
    return 30 + derive_spec(wildcards.model)["steps"] // 6


# ---- completions and diversity -------------------------------------------------------------------------


def promptset_file(name):
    from lmdelta.promptsets import builtin_promptset_path

    ps = config["promptsets"][name]
    if "builtin" in ps:
        return str(builtin_promptset_path(ps["builtin"]))
    if "from_corpus" in ps:
        return f"results/prompts/{name}.jsonl"
    return ps["file"]


def promptset_path(wildcards):
    return promptset_file(wildcards.promptset)


def prompts_corpus(wildcards):
    return f"results/corpus/{config['promptsets'][wildcards.promptset]['from_corpus']['corpus']}.parquet"


def prompts_corpus_name(wildcards):
    return config["promptsets"][wildcards.promptset]["from_corpus"]["corpus"]


def prompts_n(wildcards):
    return config["promptsets"][wildcards.promptset]["from_corpus"]["n_prompts"]


def prompts_instruction(wildcards):
    return config["promptsets"][wildcards.promptset]["from_corpus"]["instruction"]


def completion_params(wildcards):
    c = config["completions"]
    return {k: c[k] for k in ("temperatures", "samples", "max_new_tokens", "top_p", "top_k", "seed", "batch_size")}


def completions_shards(wildcards):
    n = config["completions"]["shards"]
    return [f"results/completions/{wildcards.promptset}/shards/{wildcards.model}/{i}-of-{n}.parquet" for i in range(n)]


def diversity_params(wildcards):
    return config["diversity"]


def diversity_inputs(wildcards):
    return expand(
        "results/diversity/{promptset}/{model}.parquet",
        promptset=wildcards.promptset,
        model=selected(config, "completions", "models"),
    )


def completion_models(wildcards):
    return selected(config, "completions", "models")


# ---- surprisal and UID -------------------------------------------------------------------------------


def uid_scorers():
    """The scorers (null: the first model; []: none, the UID stage is off)."""
    s = config["uid"]["scorers"]
    return [next(iter(config["models"]))] if s is None else list(s)


def uid_promptsets():
    p = config["uid"]["promptsets"]
    return selected(config, "completions", "promptsets") if p is None else list(p)


def uid_models():
    m = config["uid"]["models"]
    return selected(config, "completions", "models") if m is None else list(m)


def uid_targets():
    if not uid_models():
        return []
    return expand("results/uid/{promptset}/{scorer}/comparisons.csv", promptset=uid_promptsets(), scorer=uid_scorers())


def diversity_targets():
    if not selected(config, "completions", "models"):
        return []
    return expand(
        "results/diversity/{promptset}/comparison.csv", promptset=selected(config, "completions", "promptsets")
    )


def uid_corpora(promptset):
    """Human sources of a prompt set: the corpus a from_corpus set continues, else uid.corpora."""
    ps = config["promptsets"][promptset]
    return [ps["from_corpus"]["corpus"]] if "from_corpus" in ps else selected(config, "uid", "corpora")


def scorer_input(wildcards):
    return model_dir(wildcards.scorer)


def scorer_load_options(wildcards):
    return model_load_options(wildcards.scorer)


def uid_matched(promptset):
    """A from_corpus prompt set carries the human continuation of each prompt: the human source then is
    that continuation, scored like the model texts (else whole corpus documents, unmatched)."""
    return "from_corpus" in config["promptsets"][promptset]


def uid_human_tokens(wildcards):
    """The human continuations' budget in scorer tokens: uid.human_tokens, else completions.max_new_tokens."""
    return config["uid"]["human_tokens"] or config["completions"]["max_new_tokens"]


def uid_inputs(wildcards):
    if uid_matched(wildcards.promptset):
        human = expand(
            "results/uid/{promptset}/{scorer}/human.{context}.parquet",
            promptset=wildcards.promptset,
            scorer=wildcards.scorer,
            context=config["uid"]["contexts"],
        )
    else:
        human = expand(
            "results/logprobs/{corpus}/{scorer}.parquet",
            corpus=uid_corpora(wildcards.promptset),
            scorer=wildcards.scorer,
        )
    return {
        "human": human,
        "model_texts": expand(
            "results/uid/{promptset}/{scorer}/texts/{model}.{context}.parquet",
            promptset=wildcards.promptset,
            scorer=wildcards.scorer,
            model=uid_models(),
            context=config["uid"]["contexts"],
        ),
    }


def uid_spec(wildcards):
    """The sources' names (in the order of uid_inputs' files) and the UID settings."""
    models = [f"{m}@{c}" for m in uid_models() for c in config["uid"]["contexts"]]
    if uid_matched(wildcards.promptset):
        humans = [f"continuation@{c}" for c in config["uid"]["contexts"]]
    else:
        humans = uid_corpora(wildcards.promptset)
    u = config["uid"]
    return json.dumps(
        {"human_names": humans, "model_names": models, **{k: u[k] for k in ("lengths", "n_boot", "seed", "word_level")}}
    )


def model_format(name):
    """How a model reads a prompt (its chat template or prompt_format) and its first token (lmdelta.tokens)."""
    m = config["models"][name]
    return {"chat_template": m["chat_template"], "fmt": m["prompt_format"], "first_token": m["first_token"]}


def pair_models(pair_name, run=None):
    """The two models of a pair as the stages take them: names (a, b), the run's settings, load
    options and prompt formats (in this key order, which the rules' params keep stable)."""
    pair = config["pairs"][pair_name]
    names = [pair["a"], pair["b"]]
    return {
        "names": names,
        **({"run": run} if run is not None else {}),
        "load_options": [model_load_options(n) for n in names],
        "formats": [model_format(n) for n in names],
    }


# ---- contrastive decoding -----------------------------------------------------------------------------


def contrastive_inputs(wildcards):
    pair = config["pairs"][wildcards.pair]
    prompts = config["contrastive"]["runs"][wildcards.run]["prompts"]
    out = {"a": model_dir(pair["a"]), "b": model_dir(pair["b"])}
    if "promptset" in prompts:
        out["promptset"] = promptset_file(prompts["promptset"])
    if "corpus" in prompts:
        out["corpus"] = f"results/corpus/{prompts['corpus']['name']}.parquet"
    return out


def contrastive_spec(wildcards):
    return json.dumps(pair_models(wildcards.pair, run=config["contrastive"]["runs"][wildcards.run]))


# ---- divergence prompt search -------------------------------------------------------------------------


def search_run(wildcards):
    return config["search"]["runs"][wildcards.run]


def assistant_inputs(run):
    a = run["assistant"]
    return {"assistant": model_dir(a["model"])} if "model" in a else {}


def assistant_json(run):
    a = run["assistant"]
    out = {"spec": a}
    if "model" in a:
        out.update(
            dir=model_dir(a["model"]), load_options=model_load_options(a["model"]), format=model_format(a["model"])
        )
    return out


def search_inputs(wildcards):
    pair = config["pairs"][wildcards.pair]
    run = search_run(wildcards)
    return {
        "a": model_dir(pair["a"]),
        "b": model_dir(pair["b"]),
        "seeds": promptset_file(run["seeds"]),
        **assistant_inputs(run),
    }


def search_spec(wildcards):
    return json.dumps(
        {
            **pair_models(wildcards.pair, run=search_run(wildcards)),
            "assistant": assistant_json(search_run(wildcards)),
            "planted": planted_truth(config, wildcards.pair),
        }
    )


def cluster_inputs(wildcards):
    run = search_run(wildcards)
    bank = {"bank": f"results/search/{wildcards.pair}/{wildcards.run}/bank.parquet"}
    return {**bank, **assistant_inputs(run)} if run["clusters"]["label"] else bank


def cluster_spec(wildcards):
    run = search_run(wildcards)
    spec = {**run["clusters"], "embedder": run["embedder"]}
    if run["clusters"]["label"]:
        spec["assistant"] = assistant_json(run)
    return json.dumps(spec)


# ---- discovery-method scorecard ------------------------------------------------------------------------


def scorecard_sources(pair_name):
    """Every discovery method's artifacts for a pair (as configured), for the scorecard."""
    pair = config["pairs"][pair_name]
    names = [pair["a"], pair["b"]]
    out = []
    if set(names) <= set(selected(config, "logprobs", "models")):
        for c in selected(config, "logprobs", "corpora"):
            out.append(
                {
                    "kind": "corpus",
                    "run": c,
                    "corpus": f"results/corpus/{c}.parquet",
                    "logprobs": [f"results/logprobs/{c}/{n}.parquet" for n in names],
                }
            )
    if pair_name in selected(config, "contrastive", "pairs"):
        out += [
            {"kind": "contrastive", "run": r, "path": f"results/contrastive/{pair_name}/{r}.parquet"}
            for r in config["contrastive"]["runs"]
        ]
    if pair_name in selected(config, "search", "pairs"):
        out += [
            {"kind": "search", "run": r, "path": f"results/search/{pair_name}/{r}/bank.parquet"}
            for r in config["search"]["runs"]
        ]
    if pair_name in selected(config, "softprompt", "pairs"):
        out += [
            {
                "kind": "hardprompt",
                "run": r,
                "path": f"results/hardprompt/{pair_name}/{r}/prompts.parquet",
                "soft": f"results/softprompt/{pair_name}/{r}/prompt.safetensors",
            }
            for r in config["softprompt"]["runs"]
        ]
    return out


def scorecard_inputs(wildcards):
    files = []
    for s in scorecard_sources(wildcards.pair):
        files += [s[k] for k in ("path", "corpus", "soft") if k in s] + s.get("logprobs", [])
    return files


def scorecard_spec(wildcards):
    sc = config["scorecard"]
    return json.dumps(
        {
            "truth": planted_truth(config, wildcards.pair),
            "sources": scorecard_sources(wildcards.pair),
            "k": sc["k"],
            "threshold": sc["threshold"],
            "embedder": sc["embedder"],
        }
    )


# ---- LLM Comparator export ----------------------------------------------------------------------------


def comparator_inputs(wildcards):
    pair = config["pairs"][wildcards.pair]
    names = [pair["a"], pair["b"]]
    return {
        "a": model_dir(names[0]),
        "b": model_dir(names[1]),
        "promptset": promptset_file(wildcards.promptset),
        "completions": expand(
            "results/completions/{promptset}/{model}.parquet", promptset=wildcards.promptset, model=names
        ),
        "diversity": expand(
            "results/diversity/{promptset}/{model}.parquet", promptset=wildcards.promptset, model=names
        ),
    }


def comparator_spec(wildcards):
    return json.dumps(
        {
            **pair_models(wildcards.pair),
            "planted": planted_truth(config, wildcards.pair),
            "batch_size": config["comparator"]["batch_size"],
        }
    )


# ---- soft and hard prompts ----------------------------------------------------------------------------


def softprompt_run(wildcards):
    return config["softprompt"]["runs"][wildcards.run]


def softprompt_inputs(wildcards):
    pair = config["pairs"][wildcards.pair]
    return {
        "a": model_dir(pair["a"]),
        "b": model_dir(pair["b"]),
        "corpus": f"results/corpus/{softprompt_run(wildcards)['corpus']}.parquet",
    }


def hardprompt_inputs(wildcards):
    return {
        **softprompt_inputs(wildcards),
        "soft": f"results/softprompt/{wildcards.pair}/{wildcards.run}/prompt.safetensors",
    }


def softprompt_spec(wildcards):
    """The run without its hard-prompt settings: changing those must not retrain the soft prompt."""
    run = {k: v for k, v in softprompt_run(wildcards).items() if k not in ("hard", "embedder")}
    return json.dumps(pair_models(wildcards.pair, run=run))


def hardprompt_spec(wildcards):
    return json.dumps(
        {**pair_models(wildcards.pair, run=softprompt_run(wildcards)), "planted": planted_truth(config, wildcards.pair)}
    )


def softprompt_runtime(wildcards):
    """Minutes: about 4 s per step for a 135M pair on 2 CPU cores (batch 8 x 32 tokens), with a wide margin."""
    run = softprompt_run(wildcards)
    return 30 + run["steps"] * run["accumulation"] * run["batch"] * run["seq_len"] // 1000


def interpolate_inputs(wildcards):
    src = config["models"][wildcards.model]["source"]["interpolate"]
    return {"a": model_dir(src["a"]), "b": model_dir(src["b"])}
