"""Command line of the stages: ``python -m lmdelta <command> ...``.

Rules call these commands with explicit parameters (specs as JSON); nothing here reads config.yaml.
Errors the user can fix print one line, ``lmdelta: error: ...``, and exit with status 2.

    python -m lmdelta provenance results/corpus/demo.parquet    # print an artifact's provenance
    python -m lmdelta check-config config.yaml                   # validate a config file
    python -m lmdelta config-reference --out docs/config-reference.md   # the key reference, from the schema
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from lmdelta import LmdeltaError

log = logging.getLogger("lmdelta")


def _setup_logging(logfile: str | None) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile:
        Path(logfile).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(logfile, mode="w"))
    # The one-line user error is printed plainly by main(); keep it out of the stderr log stream.
    handlers[0].addFilter(lambda record: not getattr(record, "user_error", False))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _spec(kind: str, name: str, spec_json: str):
    from lmdelta.config import CorpusSpec, ModelSpec

    d = json.loads(spec_json)
    return (ModelSpec if kind == "model" else CorpusSpec).from_dict(name, d)


def cmd_materialise(a: argparse.Namespace) -> None:
    from lmdelta.models import materialise

    materialise(_spec("model", a.name, a.spec), a.out, timeout_s=a.timeout, tries=a.tries)


def cmd_corpus_fetch(a: argparse.Namespace) -> None:
    from lmdelta.corpus import fetch

    fetch(_spec("corpus", a.name, a.spec), a.out, timeout_s=a.timeout, tries=a.tries)


def cmd_corpus_sample(a: argparse.Namespace) -> None:
    from lmdelta.corpus import build_corpus

    build_corpus(_spec("corpus", a.name, a.spec), a.raw, a.out)


def add_shard_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--shard", type=int, default=0, help="which shard, from 0")
    sp.add_argument("--n-shards", type=int, default=1, help="how many shards the work is split into")


def cmd_logprobs_shard(a: argparse.Namespace) -> None:
    from lmdelta.logprobs import LogprobParams, score_logprobs_shard

    score_logprobs_shard(
        a.model_dir,
        a.corpus,
        a.out,
        params=LogprobParams.from_dict(json.loads(a.params)),
        load_options=json.loads(a.load_options),
        shard=a.shard,
        n_shards=a.n_shards,
        threads=a.threads,
    )


def cmd_logprobs_gather(a: argparse.Namespace) -> None:
    from lmdelta.logprobs import gather_logprobs

    gather_logprobs(a.shards, a.out, a.out_meanprob)


def cmd_entropy_perplexity(a: argparse.Namespace) -> None:
    from lmdelta.perplexity import run_summary

    run_summary(a.logprobs, a.meanprob, a.corpus, a.out_json, a.out_docs, model=a.model, corpus_name=a.corpus_name)


def cmd_compare_perplexity(a: argparse.Namespace) -> None:
    from lmdelta.perplexity import run_compare

    if not (len(a.models) == len(a.summaries) == len(a.docs)):
        raise LmdeltaError("compare-perplexity: give as many --summaries and --docs as --models")
    run_compare(a.corpus_name, a.models, a.summaries, a.docs, a.out_csv, a.out_entropy, a.out_doc_perplexity)


def _assistant_args(spec: dict) -> dict:
    a = spec.get("assistant")
    if not a:
        return {"assistant_spec": None, "assistant_dir": None, "assistant_load_options": None, "assistant_format": None}
    return {
        "assistant_spec": a["spec"],
        "assistant_dir": Path(a["dir"]) if a.get("dir") else None,
        "assistant_load_options": a.get("load_options"),
        "assistant_format": a.get("format"),
    }


def cmd_search(a: argparse.Namespace) -> None:
    from lmdelta.search import SearchParams, run_search

    spec = json.loads(a.spec)
    run = spec["run"]
    run_search(
        pair=a.pair,
        run=a.run,
        names=tuple(spec["names"]),
        model_dirs=(Path(a.model_a), Path(a.model_b)),
        params=SearchParams.from_dict(run),
        load_options=tuple(spec["load_options"]),
        formats=tuple(spec["formats"]),
        **_assistant_args(spec),
        seeds_file=Path(a.seeds),
        planted=spec.get("planted"),
        embedder=run["embedder"],
        out_bank=Path(a.out_bank),
        out_cycles=Path(a.out_cycles),
        out_top=Path(a.out_top),
        out_png=Path(a.out_png),
        out_summary=Path(a.out_summary),
        n_top=run["n_top"],
        threads=a.threads,
    )


def cmd_search_clusters(a: argparse.Namespace) -> None:
    from lmdelta.search import run_clusters

    spec = json.loads(a.spec)
    run_clusters(
        bank_path=Path(a.bank),
        k=spec["k"],
        seed=spec["seed"],
        embedder=spec["embedder"],
        **_assistant_args(spec),
        out_parquet=Path(a.out),
        out_csv=Path(a.out_csv),
        out_png=Path(a.out_png),
        threads=a.threads,
    )


def cmd_softprompt(a: argparse.Namespace) -> None:
    from lmdelta.softprompt import SoftPromptParams, run_softprompt

    spec = json.loads(a.spec)
    run_softprompt(
        pair=a.pair,
        run=a.run,
        names=tuple(spec["names"]),
        model_dirs=(Path(a.model_a), Path(a.model_b)),
        params=SoftPromptParams.from_dict(spec["run"]),
        load_options=tuple(spec["load_options"]),
        formats=tuple(spec["formats"]),
        corpus=Path(a.corpus),
        out_prompt=Path(a.out),
        out_metrics=Path(a.out_metrics),
        out_png=Path(a.out_png),
        out_summary=Path(a.out_summary),
        ckpt_dir=Path(a.checkpoints),
        tensorboard_dir=Path(a.tensorboard) if a.tensorboard else None,
        threads=a.threads,
    )


def cmd_hardprompt(a: argparse.Namespace) -> None:
    from lmdelta.hardprompt import HardPromptParams, run_hardprompt
    from lmdelta.softprompt import SoftPromptParams

    spec = json.loads(a.spec)
    run_hardprompt(
        pair=a.pair,
        run=a.run,
        names=tuple(spec["names"]),
        model_dirs=(Path(a.model_a), Path(a.model_b)),
        soft_path=Path(a.soft),
        sp_params=SoftPromptParams.from_dict(spec["run"]),
        hp_params=HardPromptParams.from_dict(spec["run"].get("hard", {})),
        load_options=tuple(spec["load_options"]),
        formats=tuple(spec["formats"]),
        corpus=Path(a.corpus),
        planted=spec.get("planted"),
        embedder=spec["run"].get("embedder"),
        out_prompts=Path(a.out),
        out_csv=Path(a.out_csv),
        out_projection=Path(a.out_projection),
        out_summary=Path(a.out_summary),
        out_clusters=Path(a.out_clusters),
        out_png=Path(a.out_png),
        threads=a.threads,
    )


def cmd_comparator(a: argparse.Namespace) -> None:
    from lmdelta.comparator import run_comparator

    spec = json.loads(a.spec)
    run_comparator(
        pair=a.pair,
        names=tuple(spec["names"]),
        model_dirs=(Path(a.model_a), Path(a.model_b)),
        load_options=tuple(spec["load_options"]),
        formats=tuple(spec["formats"]),
        promptset=Path(a.promptset),
        completions=tuple(Path(p) for p in a.completions),
        diversity=tuple(Path(p) for p in a.diversity),
        planted=spec.get("planted"),
        out=Path(a.out),
        batch_size=spec["batch_size"],
        threads=a.threads,
    )


def cmd_scorecard(a: argparse.Namespace) -> None:
    from lmdelta.scorecard import run_scorecard

    spec = json.loads(a.spec)
    run_scorecard(
        pair=a.pair,
        truth=spec["truth"],
        sources=spec["sources"],
        k=spec["k"],
        threshold=spec["threshold"],
        embedder=spec["embedder"],
        out_csv=Path(a.out_csv),
        out_top=Path(a.out_top),
        out_png=Path(a.out_png),
    )


def cmd_check_report(a: argparse.Namespace) -> None:
    from lmdelta.reportcheck import check_report

    got = check_report(Path(a.report), expect=a.expect, screenshot=Path(a.screenshot) if a.screenshot else None)
    print(
        f"report {a.report}: {got['categories']} categories, {got['results']} results, {got['links']} links; renders in Chromium"
    )


def cmd_derive_data(a: argparse.Namespace) -> None:
    from lmdelta.planted import run_derive_data

    run_derive_data(
        Path(a.base),
        json.loads(a.planted),
        Path(a.out_train),
        Path(a.out_heldout),
        seed=a.seed,
        text_format=json.loads(a.text_format),
        load_options=json.loads(a.load_options),
        name=a.name,
    )


def cmd_derive(a: argparse.Namespace) -> None:
    from lmdelta.derive import run_derive

    run_derive(
        Path(a.base),
        Path(a.data),
        Path(a.out),
        Path(a.loss_csv),
        name=a.name,
        source=json.loads(a.source),
        text_format=json.loads(a.text_format),
        ckpt_dir=Path(a.checkpoints),
        threads=a.threads,
    )


def cmd_check_planted(a: argparse.Namespace) -> None:
    from lmdelta.planted import run_check

    run_check(
        Path(a.base),
        Path(a.tuned),
        Path(a.heldout),
        json.loads(a.planted),
        Path(a.out_json),
        Path(a.out_csv),
        text_format=json.loads(a.text_format),
        load_options=json.loads(a.load_options),
        name=a.name,
    )


def cmd_completions_shard(a: argparse.Namespace) -> None:
    from lmdelta.completions import CompletionParams, run_completions_shard

    run_completions_shard(
        a.model_dir,
        a.promptset,
        a.out,
        params=CompletionParams.from_dict(json.loads(a.params)),
        load_options=json.loads(a.load_options),
        text_format=json.loads(a.text_format),
        shard=a.shard,
        n_shards=a.n_shards,
        threads=a.threads,
    )


def cmd_completions_gather(a: argparse.Namespace) -> None:
    from lmdelta.completions import gather_completions

    gather_completions(a.shards, a.out)


def cmd_diversity(a: argparse.Namespace) -> None:
    from lmdelta.diversity import run_diversity

    p = json.loads(a.params)
    run_diversity(
        a.completions,
        a.out,
        truncations=p["truncations"],
        embedder=p["embedder"],
        batch_size=p["batch_size"],
        autocast=p["autocast"],
    )


def cmd_compare_diversity(a: argparse.Namespace) -> None:
    from lmdelta.diversity import run_compare

    if len(a.models) != len(a.inputs):
        raise LmdeltaError("compare-diversity: give as many --inputs as --models")
    run_compare(a.promptset, a.models, [Path(p) for p in a.inputs], Path(a.out_csv), Path(a.out_png))


def cmd_prompts_from_corpus(a: argparse.Namespace) -> None:
    from lmdelta.promptsets import prompts_from_corpus

    prompts_from_corpus(
        a.corpus, a.out, name=a.corpus_name, n_prompts=json.loads(a.n_prompts), instruction=json.loads(a.instruction)
    )


def cmd_uid_score_texts(a: argparse.Namespace) -> None:
    from lmdelta.logprobs import LogprobParams
    from lmdelta.uid import score_texts

    score_texts(
        a.model_dir,
        a.completions,
        a.out,
        params=LogprobParams.from_dict(json.loads(a.params)),
        load_options=json.loads(a.load_options),
        context=a.context,
        threads=a.threads,
        human_tokens=a.human_tokens,
    )


def cmd_uid(a: argparse.Namespace) -> None:
    from lmdelta.uid import run_uid

    if len(a.human_names) != len(a.human) or len(a.model_names) != len(a.model_texts):
        raise LmdeltaError("uid: give one name per --human and per --model-texts file")
    p = json.loads(a.params)
    run_uid(
        scorer=a.scorer,
        human=dict(zip(a.human_names, map(Path, a.human))),
        word_level=p["word_level"],
        tokenizer_dir=Path(a.scorer_dir) if a.scorer_dir else None,
        model_texts=dict(zip(a.model_names, map(Path, a.model_texts))),
        lengths=p["lengths"],
        n_boot=p["n_boot"],
        seed=p["seed"],
        out_docs=Path(a.out_docs),
        out_csv=Path(a.out_csv),
        out_txt=Path(a.out_txt),
        out_png=Path(a.out_png),
        out_contours=Path(a.out_contours),
    )


def cmd_contrastive(a: argparse.Namespace) -> None:
    from lmdelta.contrastive import RunParams, run_contrastive

    spec = json.loads(a.spec)
    run_contrastive(
        pair=a.pair,
        run=a.run,
        names=tuple(spec["names"]),
        model_dirs=(Path(a.model_a), Path(a.model_b)),
        params=RunParams.from_dict(spec["run"]),
        load_options=tuple(spec["load_options"]),
        formats=tuple(spec["formats"]),
        promptset=Path(a.promptset) if a.promptset else None,
        corpus=Path(a.corpus) if a.corpus else None,
        out=Path(a.out),
        out_csv=Path(a.out_csv),
        out_html=Path(a.out_html),
        out_png=Path(a.out_png),
        threads=a.threads,
    )


def cmd_interpolate(a: argparse.Namespace) -> None:
    from lmdelta.models import interpolate

    source = json.loads(a.source)
    interpolate(a.model_a, a.model_b, source["interpolate"]["alpha"], a.out, name=a.name, source=source)


def cmd_provenance(a: argparse.Namespace) -> None:
    from lmdelta.artifacts import read_provenance

    json.dump(read_provenance(a.artifact, verify=not a.no_verify), sys.stdout, indent=2)
    sys.stdout.write("\n")


def cmd_check_config(a: argparse.Namespace) -> None:
    from lmdelta.config import load_config_file

    cfg = load_config_file(a.config)
    print(f"{a.config}: valid ({len(cfg['models'])} models, {len(cfg['corpora'])} corpora)")


def cmd_config_reference(a: argparse.Namespace) -> None:
    from lmdelta.config import schema_reference

    text = schema_reference()
    if a.out:
        Path(a.out).write_text(text)
    else:
        sys.stdout.write(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lmdelta", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--log", help="also write the log to this file")
    sub = p.add_subparsers(dest="command", required=True)

    def net(sp):
        sp.add_argument("--timeout", type=float, default=60.0, help="network timeout per attempt, seconds")
        sp.add_argument("--tries", type=int, default=3, help="download attempts before giving up")

    sp = sub.add_parser("materialise", help="model source -> resources/models/<name>/")
    sp.add_argument("--name", required=True)
    sp.add_argument("--spec", required=True, help="the model's config entry as JSON")
    sp.add_argument("--out", required=True)
    net(sp)
    sp.set_defaults(func=cmd_materialise)

    sp = sub.add_parser("corpus-fetch", help="remote corpus source -> resources/corpus/<name>/raw")
    sp.add_argument("--name", required=True)
    sp.add_argument("--spec", required=True, help="the corpus's config entry as JSON")
    sp.add_argument("--out", required=True)
    net(sp)
    sp.set_defaults(func=cmd_corpus_fetch)

    sp = sub.add_parser("corpus-sample", help="read, filter and sample a corpus -> results/corpus/<name>.parquet")
    sp.add_argument("--name", required=True)
    sp.add_argument("--spec", required=True, help="the corpus's config entry as JSON")
    sp.add_argument("--raw", help="fetched file, for url and hf_dataset sources")
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_corpus_sample)

    sp = sub.add_parser(
        "logprobs-shard", help="per-token logprob, entropy, top-1, rank of one model on one shard of a corpus"
    )
    sp.add_argument("--model-dir", required=True)
    sp.add_argument("--corpus", required=True, help="results/corpus/<name>.parquet")
    sp.add_argument("--out", required=True, help="the shard's folder, .../<i>-of-<n>")
    sp.add_argument("--params", required=True, help="the logprobs config section as JSON")
    sp.add_argument("--load-options", required=True, help="the model's load options as JSON")
    add_shard_args(sp)
    sp.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    sp.set_defaults(func=cmd_logprobs_shard)

    sp = sub.add_parser("logprobs-gather", help="join logprobs shards into the logprobs artifact")
    sp.add_argument("--shards", nargs="+", required=True, help="every shard folder, in order")
    sp.add_argument("--out", required=True)
    sp.add_argument("--out-meanprob", required=True)
    sp.set_defaults(func=cmd_logprobs_gather)

    sp = sub.add_parser("entropy-perplexity", help="summary of one logprobs artifact")
    for opt in ("--logprobs", "--meanprob", "--corpus", "--out-json", "--out-docs", "--model", "--corpus-name"):
        sp.add_argument(opt, required=True)
    sp.set_defaults(func=cmd_entropy_perplexity)

    sp = sub.add_parser("compare-perplexity", help="table and figures of one corpus across models")
    sp.add_argument("--corpus-name", required=True)
    sp.add_argument("--models", nargs="+", required=True)
    sp.add_argument("--summaries", nargs="+", required=True)
    sp.add_argument("--docs", nargs="+", required=True)
    for opt in ("--out-csv", "--out-entropy", "--out-doc-perplexity"):
        sp.add_argument(opt, required=True)
    sp.set_defaults(func=cmd_compare_perplexity)

    sp = sub.add_parser("derive-data", help="planted training set and held-out prompts of a derived model")
    for opt in ("--name", "--base", "--planted", "--out-train", "--out-heldout", "--load-options", "--text-format"):
        sp.add_argument(opt, required=True)
    sp.add_argument("--seed", type=int, required=True)
    sp.set_defaults(func=cmd_derive_data)

    sp = sub.add_parser("derive", help="fine-tune a materialised model into resources/models/<name>/")
    for opt in ("--name", "--base", "--data", "--out", "--loss-csv", "--source", "--checkpoints", "--text-format"):
        sp.add_argument(opt, required=True)
    sp.add_argument("--threads", type=int, default=None)
    sp.set_defaults(func=cmd_derive)

    sp = sub.add_parser("check-planted", help="rate of the planted response, base vs tuned, trigger vs ordinary")
    for opt in (
        "--name",
        "--base",
        "--tuned",
        "--heldout",
        "--planted",
        "--out-json",
        "--out-csv",
        "--load-options",
        "--text-format",
    ):
        sp.add_argument(opt, required=True)
    sp.set_defaults(func=cmd_check_planted)

    sp = sub.add_parser(
        "completions-shard", help="one shard of the sampled completions of a prompt set over a temperature grid"
    )
    for opt in ("--model-dir", "--promptset", "--out", "--params", "--load-options", "--text-format"):
        sp.add_argument(opt, required=True)
    add_shard_args(sp)
    sp.add_argument("--threads", type=int, default=None)
    sp.set_defaults(func=cmd_completions_shard)

    sp = sub.add_parser("completions-gather", help="join completion shards into the completions artifact")
    sp.add_argument("--shards", nargs="+", required=True, help="every shard file, in order")
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_completions_gather)

    sp = sub.add_parser("diversity", help="diversity metrics per (prompt, temperature) cell of one model's completions")
    for opt in ("--completions", "--out", "--params"):
        sp.add_argument(opt, required=True)
    sp.set_defaults(func=cmd_diversity)

    sp = sub.add_parser("compare-diversity", help="table and figure of a prompt set's diversity across models")
    sp.add_argument("--promptset", required=True)
    sp.add_argument("--models", nargs="+", required=True)
    sp.add_argument("--inputs", nargs="+", required=True)
    for opt in ("--out-csv", "--out-png"):
        sp.add_argument(opt, required=True)
    sp.set_defaults(func=cmd_compare_diversity)

    sp = sub.add_parser("prompts-from-corpus", help="'continue the article' prompts from a corpus")
    for opt in ("--corpus", "--corpus-name", "--out", "--n-prompts", "--instruction"):
        sp.add_argument(opt, required=True)
    sp.set_defaults(func=cmd_prompts_from_corpus)

    sp = sub.add_parser("uid-score-texts", help="per-token logprobs of completions under a scorer model")
    for opt in ("--model-dir", "--completions", "--out", "--params", "--load-options"):
        sp.add_argument(opt, required=True)
    sp.add_argument("--context", choices=["none", "prompt"], required=True)
    sp.add_argument(
        "--human-tokens",
        type=int,
        default=None,
        help="score a prompt set's human continuations (reference), cut to this many scorer tokens",
    )
    sp.add_argument("--threads", type=int, default=None)
    sp.set_defaults(func=cmd_uid_score_texts)

    sp = sub.add_parser("uid", help="UID metrics per source and comparisons between sources")
    sp.add_argument("--scorer", required=True)
    sp.add_argument("--scorer-dir", help="the scorer's materialised folder (its tokenizer, for word_level)")
    sp.add_argument("--params", required=True)
    for opt in ("--human-names", "--human", "--model-names", "--model-texts"):
        sp.add_argument(opt, nargs="*", default=[])
    for opt in ("--out-docs", "--out-csv", "--out-txt", "--out-png", "--out-contours"):
        sp.add_argument(opt, required=True)
    sp.set_defaults(func=cmd_uid)

    sp = sub.add_parser("contrastive", help="contrastive decoding of a pair, with per-token divergences")
    for opt in ("--pair", "--run", "--spec", "--model-a", "--model-b", "--out", "--out-csv", "--out-html", "--out-png"):
        sp.add_argument(opt, required=True)
    sp.add_argument("--promptset")
    sp.add_argument("--corpus")
    sp.add_argument("--threads", type=int, default=None)
    sp.set_defaults(func=cmd_contrastive)

    sp = sub.add_parser("search", help="divergence prompt search with an assistant LM")
    for opt in (
        "--pair",
        "--run",
        "--spec",
        "--model-a",
        "--model-b",
        "--seeds",
        "--out-bank",
        "--out-cycles",
        "--out-top",
        "--out-png",
        "--out-summary",
    ):
        sp.add_argument(opt, required=True)
    sp.add_argument("--threads", type=int, default=None)
    sp.set_defaults(func=cmd_search)

    sp = sub.add_parser(
        "search-clusters", help="k-means clusters of a search bank, optionally labelled by the assistant"
    )
    for opt in ("--bank", "--spec", "--out", "--out-csv", "--out-png"):
        sp.add_argument(opt, required=True)
    sp.add_argument("--threads", type=int, default=None)
    sp.set_defaults(func=cmd_search_clusters)

    sp = sub.add_parser("softprompt", help="train a soft prompt that maximises a pair's divergence")
    for opt in (
        "--pair",
        "--run",
        "--spec",
        "--model-a",
        "--model-b",
        "--corpus",
        "--out",
        "--out-metrics",
        "--out-png",
        "--out-summary",
        "--checkpoints",
    ):
        sp.add_argument(opt, required=True)
    sp.add_argument("--tensorboard", help="TensorBoard log folder (used when tensorboard is installed)")
    sp.add_argument("--threads", type=int, default=None)
    sp.set_defaults(func=cmd_softprompt)

    sp = sub.add_parser("hardprompt", help="hard prompts from a soft prompt, scored without it against corpus snippets")
    for opt in (
        "--pair",
        "--run",
        "--spec",
        "--model-a",
        "--model-b",
        "--corpus",
        "--soft",
        "--out",
        "--out-csv",
        "--out-projection",
        "--out-summary",
        "--out-clusters",
        "--out-png",
    ):
        sp.add_argument(opt, required=True)
    sp.add_argument("--threads", type=int, default=None)
    sp.set_defaults(func=cmd_hardprompt)

    sp = sub.add_parser("comparator", help="export a pair's completions as LLM Comparator JSON")
    for opt in ("--pair", "--spec", "--model-a", "--model-b", "--promptset", "--out"):
        sp.add_argument(opt, required=True)
    sp.add_argument("--completions", nargs=2, required=True, help="completions of model a, then of model b")
    sp.add_argument("--diversity", nargs=2, required=True, help="diversity cells of model a, then of model b")
    sp.add_argument("--threads", type=int, default=None)
    sp.set_defaults(func=cmd_comparator)

    sp = sub.add_parser("scorecard", help="precision@k of each discovery method on a planted pair")
    for opt in ("--pair", "--spec", "--out-csv", "--out-top", "--out-png"):
        sp.add_argument(opt, required=True)
    sp.set_defaults(func=cmd_scorecard)

    sp = sub.add_parser("check-report", help="check a snakemake --report file rendered in headless Chromium")
    sp.add_argument("report")
    sp.add_argument("--expect", nargs="*", default=[], help="categories that must be present")
    sp.add_argument("--screenshot", help="save a screenshot of the rendered page (PNG)")
    sp.set_defaults(func=cmd_check_report)

    sp = sub.add_parser("interpolate", help="parameter interpolation of two same-architecture models")
    for opt in ("--name", "--model-a", "--model-b", "--source", "--out"):
        sp.add_argument(opt, required=True)
    sp.set_defaults(func=cmd_interpolate)

    sp = sub.add_parser("provenance", help="print the provenance record of an artifact")
    sp.add_argument("artifact")
    sp.add_argument("--no-verify", action="store_true", help="skip checking the record's sha256 against the artifact")
    sp.set_defaults(func=cmd_provenance)

    sp = sub.add_parser("check-config", help="validate a config file")
    sp.add_argument("config")
    sp.set_defaults(func=cmd_check_config)
    sp = sub.add_parser("config-reference", help="every config key with its type, default and description (markdown)")
    sp.add_argument("--out", help="write to this file (docs/config-reference.md) instead of stdout")
    sp.set_defaults(func=cmd_config_reference)
    return p


def _fixed_mmap_threshold(nbytes: int = 4 << 20) -> None:
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


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _fixed_mmap_threshold()
    a = build_parser().parse_args(argv)
    _setup_logging(a.log)
    try:
        a.func(a)
    except LmdeltaError as e:
        log.error("%s", e, extra={"user_error": True})
        print(f"lmdelta: error: {e}", file=sys.stderr)
        return 2
    log.info("%s: peak memory %.0f MB (max RSS)", a.command, peak_rss_mb())
    return 0


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (the kernel's high-water mark, not a sample)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    sys.exit(main())
