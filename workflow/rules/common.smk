# Config validation, the plan and wildcard constraints. Every decision behind a rule's inputs, params and
# resources (what a job receives, what reruns it, how much memory it needs) is a method of
# lmdelta.plan.Plan, unit-tested without Snakemake (tests/test_plan.py); rules refer to them as plan.<x>.
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
from lmdelta.config import validate_config  # noqa: E402
from lmdelta.plan import Plan  # noqa: E402

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

# Every job's inputs, spec and resources (lmdelta.plan).
plan = Plan(config)

# resources/models/{model}: a derived model is trained (derive_model), an interpolated one merged
# (interpolate_model), the others materialised from their source (materialise_model).
MODEL_PATTERNS = plan.model_patterns()


# Name wildcards match only the names the config defines (a typo in a target: "no rule to produce");
# each rule with a {run} matches its own section's runs.
NAMES = plan.wildcard_patterns()


wildcard_constraints:
    model=NAMES["model"],
    corpus=NAMES["corpus"],
    promptset=NAMES["promptset"],
    scorer=NAMES["scorer"],
    context="none|prompt",
    pair=NAMES["pair"],
    shard=r"\d+",
    n=r"\d+",


# Conda users (--sdm conda) get envs/lmdelta-cpu.yaml or -cuda.yaml (conda_env); the same packages as pyproject.toml.
CONDA_ENV = f"../../envs/lmdelta-{config['conda_env']}.yaml"
# Every rule runs this script (the job contract, lmdelta.job), with its named inputs, outputs and params; the
# stage function registered under the rule's name does the work.
JOB = "../scripts/job.py"
