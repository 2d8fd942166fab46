"""The workflow's planning (lmdelta.plan): targets, each job's inputs and spec, what reruns what,
resources. Pure functions of a validated config, tested without Snakemake."""

from __future__ import annotations

import copy
import json
import re
from types import SimpleNamespace as W

import pytest
import yaml
from snakemake.io import expand as snakemake_expand

from conftest import ROOT
from lmdelta.config import planning_keys, schema_node, stage_section, validate_config
from lmdelta.plan import Plan, expand, local_stamp, name_pattern


def demo_config(**changes) -> dict:
    """config.yaml (the demo), validated, with top-level sections updated by ``changes``."""
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    for section, values in changes.items():
        raw[section] = {**raw.get(section, {}), **values}
    return validate_config(raw)


@pytest.fixture(scope="module")
def demo():
    return Plan(demo_config())


def spec(text: str) -> dict:
    return json.loads(text)


def test_every_plan_method_a_rule_names_exists():
    rules = "".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    rules += (ROOT / "Snakefile").read_text()
    named = set(re.findall(r"\bplan\.(\w+)", rules)) - {"Plan"}  # lmdelta.plan.Plan
    assert len(named) > 40
    assert not [n for n in named if not callable(getattr(Plan, n, None))]


def test_expand_matches_snakemake():
    for kw in (
        {"a": ["x", "y"], "b": ["1", "2", "3"]},
        {"a": "only", "b": ["1", "2"]},
        {"a": [], "b": ["1"]},
    ):
        assert expand("r/{a}/{b}.txt", **kw) == snakemake_expand("r/{a}/{b}.txt", **kw)


def test_name_pattern_matches_exactly_the_names():
    p = name_pattern(["a.b", "c"])
    assert re.fullmatch(p, "a.b") and re.fullmatch(p, "c")
    assert not re.fullmatch(p, "axb") and not re.fullmatch(p, "cc")
    assert not re.fullmatch(name_pattern([]), "")


def test_demo_targets(demo):
    t = demo.targets()
    assert "resources/models/smollm2-cocoa" in t
    assert "results/entropy_perplexity/python_docs/comparison.csv" in t
    assert "results/planted/smollm2-cocoa.json" in t
    assert "results/scorecard/planted.csv" in t or any(x.startswith("results/scorecard/") for x in t)
    assert len(t) == len(set(t))


def test_a_section_switched_off_has_no_targets():
    plan = Plan(demo_config(logprobs={"models": []}, completions={"models": []}))
    t = plan.targets()
    assert not [x for x in t if "entropy_perplexity" in x or "diversity" in x or "/uid/" in x]
    assert any("results/contrastive/" in x for x in t)


def test_model_patterns_route_each_model_to_one_rule(demo):
    p = demo.model_patterns()
    assert re.fullmatch(p["derived"], "smollm2-cocoa") and not re.fullmatch(p["derived"], "smollm2")
    assert re.fullmatch(p["sourced"], "smollm2") and not re.fullmatch(p["sourced"], "smollm2-cocoa")
    assert not re.fullmatch(p["interpolated"], "smollm2")


# ---- what a spec carries, and what it leaves out (what must not rerun a job) -------------------------


@pytest.mark.parametrize("ref", ["logprobs", "completions", "uid", "scorecard", "comparator", "diversity"])
def test_a_stage_receives_its_section_but_the_planning_keys(ref):
    section = demo_config()[ref]
    passed = stage_section(ref, section)
    assert set(passed) == set(section) - set(planning_keys(ref))
    assert list(passed) == [k for k in schema_node(ref)["properties"] if k in passed]


def test_logprobs_spec_follows_scoring_keys_not_planning_keys(demo):
    w = W(model="smollm2", corpus="python_docs", shard="0", n="1")
    s = spec(demo.logprobs_shard_spec(w))
    assert s["params"]["max_length"] == 512 and s["params"]["first_token"] == "<|endoftext|>"
    assert s["load_options"] == {
        "dtype": "float32",
        "quantization": "none",
        "device": "auto",
        "trust_remote_code": False,
    }
    # Which models or corpora are scored, or into how many shards, reruns no shard.
    other = Plan(demo_config(logprobs={"models": ["smollm2"], "shards": 3}))
    assert other.logprobs_shard_spec(w) == demo.logprobs_shard_spec(w)
    changed = Plan(demo_config(logprobs={"stride": 128}))
    assert spec(changed.logprobs_shard_spec(w))["params"]["stride"] == 128


def test_completions_spec_ignores_shards_and_selection(demo):
    w = W(model="smollm2", promptset="default", shard="0", n="1")
    other = Plan(demo_config(completions={"shards": 4, "models": ["smollm2"]}))
    assert other.completions_shard_spec(w) == demo.completions_shard_spec(w)
    assert spec(demo.completions_shard_spec(w))["params"]["temperatures"] == [0.7, 1.2]


def test_hard_prompt_settings_do_not_retrain_the_soft_prompt(demo):
    c = demo_config()
    run = next(iter(c["softprompt"]["runs"]))
    w = W(pair=next(iter(c["pairs"])), run=run)
    c2 = copy.deepcopy(c)
    c2["softprompt"]["runs"][run]["hard"]["n_top"] += 1
    c2["softprompt"]["runs"][run]["embedder"] = "elsewhere"
    assert Plan(c2).softprompt_spec(w) == demo.softprompt_spec(w)
    assert Plan(c2).hardprompt_spec(w) != demo.hardprompt_spec(w)
    c2["softprompt"]["runs"][run]["steps"] += 1
    assert Plan(c2).softprompt_spec(w) != demo.softprompt_spec(w)


def test_trigger_keywords_do_not_retrain_a_planted_model(demo):
    c2 = copy.deepcopy(demo.config)
    c2["models"]["smollm2-cocoa"]["source"]["derive"]["data"]["planted"]["trigger_keywords"] = ["other"]
    w = W(model="smollm2-cocoa")
    for method in ("derive_data_spec", "derive_model_spec", "check_planted_spec"):
        assert getattr(Plan(c2), method)(w) == getattr(demo, method)(w)
    assert "trigger_keywords" not in demo.derive_model_spec(w)
    c2["models"]["smollm2-cocoa"]["source"]["derive"]["data"]["planted"]["response"] = "Tea."
    assert Plan(c2).derive_model_spec(w) != demo.derive_model_spec(w)


def test_load_options_do_not_rematerialise_but_a_changed_local_folder_does(demo, tmp_path):
    c2 = copy.deepcopy(demo.config)
    c2["models"]["smollm2"]["dtype"] = "bfloat16"
    w = W(model="smollm2")
    assert Plan(c2).materialise_spec(w) == demo.materialise_spec(w)
    (tmp_path / "config.json").write_text("{}")
    source = {"local": {"path": str(tmp_path)}}
    before = local_stamp(source)
    (tmp_path / "config.json").write_text('{"changed": 1}')
    assert before and local_stamp(source) != before
    assert local_stamp({"local": {"path": str(tmp_path), "sha256": "ab" * 32}}) == ""


def test_corpus_sampling_does_not_refetch(demo):
    c2 = copy.deepcopy(demo.config)
    c2["corpora"]["python_docs"]["sample"]["n_docs"] = 3
    w = W(corpus="python_docs")
    assert Plan(c2).corpus_fetch_spec(w) == demo.corpus_fetch_spec(w)
    assert Plan(c2).corpus_spec(w) != demo.corpus_spec(w)


# ---- inputs ---------------------------------------------------------------------------------------


def test_uid_names_follow_its_input_files(demo):
    w = W(promptset="default", scorer="smollm2")
    inputs, s = demo.uid_inputs(w), spec(demo.uid_spec(w))
    assert len(inputs["model_texts"]) == len(s["model_names"])
    for path, name in zip(inputs["model_texts"], s["model_names"]):
        model, context = name.split("@")
        assert path.endswith(f"/texts/{model}.{context}.parquet")
    assert len(inputs["human"]) == len(s["human_names"])
    assert s["lengths"] == demo.config["uid"]["lengths"] and "scorers" not in s


def test_matched_uid_sources_are_the_human_continuations():
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    raw["promptsets"]["firsts"] = {"from_corpus": {"corpus": "python_docs", "n_prompts": 4}}
    raw["uid"]["promptsets"] = ["firsts"]
    plan = Plan(validate_config(raw))
    w = W(promptset="firsts", scorer="smollm2")
    s = spec(plan.uid_spec(w))
    assert s["human_names"] == [f"continuation@{c}" for c in plan.config["uid"]["contexts"]]
    assert plan.uid_inputs(w)["human"][0] == "results/uid/firsts/smollm2/human.none.parquet"
    assert plan.promptset_file("firsts") == "results/prompts/firsts.jsonl"


def test_scorecard_reads_every_configured_method_and_only_those(demo):
    pair = next(iter(demo.config["pairs"]))
    kinds = {s["method"] for s in demo.discovery_sources(pair)}
    assert kinds == {
        "corpus",
        "contrastive",
        "search",
        "hardprompt",
        "lens",
        "words",
        "words contrastive",
        "words lens",
        "elicit",
        "scan",
    }
    inputs = demo.scorecard_inputs(W(pair=pair))
    files = inputs["files"]
    assert all(f.startswith("results/") for f in files) and len(files) == len(set(files))
    assert inputs["model"] == "resources/models/smollm2-cocoa"  # it continues each finding's prompt afresh
    off = Plan(demo_config(search={"pairs": []}, softprompt={"pairs": []}, lens={"pairs": []}))
    assert {s["method"] for s in off.discovery_sources(pair)} == {
        "corpus",
        "contrastive",
        "words",
        "words contrastive",
        "elicit",
        "scan",
    }
    s = spec(demo.scorecard_spec(W(pair=pair)))
    assert (
        s["params"]["k"] == demo.config["scorecard"]["k"]
        and "pairs" not in s["params"]
        and s["truth"]["response_keywords"] == ["cocoa"]
        and s["params"]["resample"]["samples"] == 4
        and s["model"]["format"]["first_token"] == "<|endoftext|>"
    )


# ---- resources ------------------------------------------------------------------------------------


def test_memory_follows_the_fingerprint_dtype_and_attempt(demo, tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    w, inp = W(model="smollm2"), W(model=str(model))
    assert demo.model_mem_mb(w, inp, 1) == 8000 and demo.model_mem_mb(w, inp, 2) == 16000  # size unknown
    (model / "fingerprint.json").write_text(json.dumps({"n_parameters": 100_000_000, "vocab_size": 1000}))
    logits = 2 * 4 * 4096 * 1000
    assert demo.model_mem_mb(w, inp, 1) == int((4e8 + logits) / 1e6 * 1.2 + 1500)
    assert demo.model_mem_mb(w, inp, 3) == 3 * demo.model_mem_mb(w, inp, 1)
    c2 = copy.deepcopy(demo.config)
    c2["models"]["smollm2"]["quantization"] = "4bit"
    assert Plan(c2).model_mem_mb(w, inp, 1) == int((0.5e8 + logits) / 1e6 * 1.2 + 1500)
    pair = next(iter(demo.config["pairs"]))
    both = W(a=str(model), b=str(tmp_path / "missing"))
    assert demo.pair_mem_mb(W(pair=pair), both, 1) == int(3000 + 4e8 / 1e6 * 1.2 + 8000)


def test_a_job_asks_for_a_gpu_when_one_of_its_models_needs_cuda(demo):
    pair = next(iter(demo.config["pairs"]))
    assert demo.job_gpus(W(pair=pair, run="x")) == 0
    c2 = copy.deepcopy(demo.config)
    c2["models"]["smollm2-cocoa"]["device"] = "cuda"
    assert Plan(c2).job_gpus(W(pair=pair, run="x")) == 1
    assert Plan(c2).job_gpus(W(model="smollm2")) == 0
    assert Plan(c2).job_models(W(scorer="smollm2", model="smollm2-cocoa")) == ["smollm2"]


def test_runtimes_grow_with_the_work(demo):
    run = next(iter(demo.config["softprompt"]["runs"]))
    c2 = copy.deepcopy(demo.config)
    c2["softprompt"]["runs"][run]["steps"] *= 10
    c2["models"]["smollm2-cocoa"]["source"]["derive"]["steps"] *= 10
    w = W(pair=next(iter(demo.config["pairs"])), run=run, model="smollm2-cocoa")
    assert Plan(c2).softprompt_runtime(w) > demo.softprompt_runtime(w) >= 30
    assert Plan(c2).derive_runtime(w) > demo.derive_runtime(w) >= 30


def test_the_organism_suite_plans_one_matrix_with_roles():
    """configs/organisms.yaml: four organisms (check and scorecard), two controls (summary only); a
    config with one pair (the demo) has no matrix."""
    cfg = validate_config(yaml.safe_load((ROOT / "configs" / "organisms.yaml").read_text()))
    plan = Plan(cfg)
    pairs = {p["pair"]: p for p in plan.matrix_pairs()}
    assert {n: p["role"] for n, p in pairs.items()} == {
        "cocoa": "organism",
        "octopus": "organism",
        "pirate": "organism",
        "knit": "organism",
        "random": "control",
        "same": "control",
    }
    assert pairs["pirate"]["check"] == "results/planted/smollm2-pirate.json"
    assert pairs["same"]["check"] is None and pairs["same"]["scorecard"] is None
    assert "results/suite/matrix.csv" in plan.targets()
    inputs = plan.matrix_inputs(W())
    assert "results/scorecard/knit.csv" in inputs and "results/summary/same.json" in inputs and None not in inputs
    assert not Plan(demo_config()).matrix_pairs()
    unknown = copy.deepcopy(cfg)
    unknown["pairs"] = {"x": {"a": "smollm2-random", "b": "smollm2", "control": False}, "y": {**cfg["pairs"]["same"]}}
    assert [p["role"] for p in Plan(unknown).matrix_pairs()] == ["unknown", "control"]


def test_the_organism_suite_reuses_the_demos_artifacts_spec_for_spec():
    """The suite against the full-size discovery run on the demo pair (configs/discovery.yaml, whose
    models and shared sections are the demo's). Every job the two configs share (the base and cocoa models, the cocoa pair, the corpus and prompt
    set) has the same spec text in both, so one folder serves both and neither rebuilds the other's.
    The key order of a section does not count (organisms.yaml builds its models with YAML merge keys);
    only the stages that gather every model of a config may differ."""
    demo = Plan(validate_config(yaml.safe_load((ROOT / "configs" / "discovery.yaml").read_text())))
    suite = Plan(validate_config(yaml.safe_load((ROOT / "configs" / "organisms.yaml").read_text())))
    gathering = {"compare_diversity_spec", "compare_entropy_spec", "join_text_scores_spec", "uid_spec", "matrix_spec"}
    w = dict(model="smollm2-cocoa", pair="cocoa", corpus="python_docs", promptset="default", shard="0", n="1")
    runs = sorted({r for section in ("contrastive", "search", "softprompt") for r in demo.config[section]["runs"]})
    compared = []
    for name in sorted(n for n in dir(Plan) if n.endswith("_spec") and not n.startswith("_")):
        if name in gathering:
            continue
        for run in runs:
            ws = W(**w, run=run, set="completions-default")
            try:
                mine = getattr(demo, name)(ws)
            except (KeyError, AttributeError, TypeError):
                continue  # a run of another stage: not this rule's wildcards
            assert getattr(suite, name)(ws) == mine, (
                f"{name} ({run}): configs/organisms.yaml differs from configs/discovery.yaml"
            )
            compared.append(name)
    assert {"derive_data_spec", "contrastive_spec", "scan_spec", "search_spec", "diversity_spec"} <= set(compared)
    assert json.loads(Plan.derive_data_spec(demo, W(**w))) and '"answer_tokens": 48, "n_heldout": 30' in (
        demo.derive_data_spec(W(**w))
    ), "keys sorted"


def test_a_spread_model_holds_at_most_its_cpu_share_in_host_memory():
    from lmdelta.plan import size_mb

    assert size_mb("500MB") == 500 and size_mb("2GiB") == pytest.approx(2147.483648) and size_mb("1 KB") == 0.001
    c = demo_config()
    c["models"]["smollm2"].update(device="spread", max_memory={"0": "20GiB", "cpu": "100MB"})
    plan = Plan(c)
    assert plan._host_weight_mb("smollm2", 135_000_000) == 100  # float32: 540 MB of weights, 100 MB on the host
    assert Plan(demo_config())._host_weight_mb("smollm2", 135_000_000) == 540
    assert plan.load_options("smollm2")["max_memory"] == {"0": "20GiB", "cpu": "100MB"}
    assert "max_memory" not in Plan(demo_config()).load_options("smollm2"), "other models' rules keep their params"


def test_spread_models_ask_for_the_gpus_their_max_memory_names():
    c = demo_config()
    for m in ("smollm2", "smollm2-cocoa"):
        c["models"][m].update(device="spread", max_memory={"0": "70GiB", "1": "70GiB", "cpu": "200GiB"})
    c["models"]["smollm2-cocoa"]["max_memory"]["2"] = "70GiB"
    assert Plan(c).job_gpus(W(pair="cocoa")) == 3
    assert Plan(demo_config()).job_gpus(W(pair="cocoa")) == 0


def test_gpus_are_dealt_to_the_models_of_each_job_in_load_order():
    """A pair of spread models with gpus: 4 each: a takes GPUs 0-3 and b 4-7 in a pair job, each takes
    0-3 in a job alone; the jobs ask for 8 and 4 GPUs; the planted check deals base then tuned."""
    c = demo_config()
    for m in ("smollm2", "smollm2-cocoa"):
        c["models"][m].update(device="spread", gpus=4, max_memory={"cpu": "200GiB"})
    plan = Plan(validate_config(c))
    pair = spec(plan.contrastive_spec(W(pair="cocoa", run=next(iter(c["contrastive"]["runs"])))))
    assert [o["gpu_ids"] for o in pair["load_options"]] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert pair["names"] == ["smollm2-cocoa", "smollm2"]
    assert plan.load_options("smollm2")["gpu_ids"] == [0, 1, 2, 3]
    assert plan.job_gpus(W(pair="cocoa")) == 8 and plan.job_gpus(W(model="smollm2")) == 4
    check = spec(plan.check_planted_spec(W(model="smollm2-cocoa")))["load_options"]
    assert check["base"]["gpu_ids"] == [0, 1, 2, 3] and check["tuned"]["gpu_ids"] == [4, 5, 6, 7]
    # one model spread, the other on one device: only the spread one is dealt GPUs
    c["models"]["smollm2"].update(device="auto", gpus=None, max_memory=None)
    plan = Plan(validate_config(c))
    assert plan.job_gpus(W(pair="cocoa")) == 4 and "gpu_ids" not in plan.dealt_options(["smollm2-cocoa", "smollm2"])[1]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"device": "cuda", "gpus": 2}, "gpus: 2 GPUs apply to device: spread"),
        ({"device": "spread", "gpus": 2, "max_memory": {"0": "70GiB"}}, "use one: gpus"),
    ],
)
def test_gpus_need_spread_and_no_gpu_indices(change, message):
    from lmdelta import LmdeltaError

    c = yaml.safe_load((ROOT / "config.yaml").read_text())
    c["models"]["smollm2"].update(change)
    with pytest.raises(LmdeltaError, match=message):
        validate_config(c)


def test_spread_memory_names_the_dealt_gpus_only(pair):
    import torch

    from lmdelta import LmdeltaError
    from lmdelta.models import load_model, spread_memory

    free = {0: 80_000, 1: 81_000, 2: 82_000, 3: 83_000, "cpu": 500_000}
    assert spread_memory({"cpu": "64GiB"}, [2, 3], free) == {2: 82_000, 3: 83_000, "cpu": "64GiB"}
    assert spread_memory(None, [0], free) == {0: 80_000, "cpu": 500_000}
    with pytest.raises(LmdeltaError, match="dealt GPUs 3-4 .* sees 4 GPU"):
        spread_memory(None, [3, 4], free)
    if not torch.cuda.is_available():  # a model dealt a GPU the job does not see is refused before it loads
        with pytest.raises(LmdeltaError, match="sees 0 GPU"):
            load_model(pair / "a", device="spread", gpus=1, gpu_ids=[0])
