# Config validation, helpers that build inputs, params and targets, wildcard constraints.
import json
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import update_config, validate

# The Snakefile imports the package from the source tree, so `snakemake -n` needs no install;
# jobs run `python -m lmdelta`, which needs it installed (make setup / envs/*.yaml).
sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))
from lmdelta import LmdeltaError  # noqa: E402
from lmdelta.config import validate_config  # noqa: E402

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


wildcard_constraints:
    model=NAME,
    corpus=NAME,


# Conda users (--sdm conda) get this environment; it installs the same packages as pyproject.toml.
CONDA_ENV = "../../envs/lmdelta.yaml"


def all_targets():
    return [
        *expand("resources/models/{model}", model=config["models"]),
        *expand("results/corpus/{corpus}.parquet", corpus=config["corpora"]),
    ]


# ---- models -------------------------------------------------------------------------------------


def materialise_spec(wildcards):
    """Only what determines the materialised folder: load options (dtype, device...) apply later."""
    m = config["models"][wildcards.model]
    return json.dumps({"source": m["source"], "trust_remote_code": m["trust_remote_code"]})


def model_dir(name):
    return f"resources/models/{name}"


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


def corpus_raw_arg(wildcards, input):
    return f"--raw {input.raw}" if "raw" in input.keys() else ""
