"""The command line for people: ``python -m lmdelta <command> ...``.

Rules do not call it: each runs ``workflow/scripts/job.py`` (``lmdelta.job``). What a person needs:

    python -m lmdelta provenance results/corpus/demo.parquet     # an artifact's provenance record
    python -m lmdelta check-config config.yaml                    # validate a config file; its run's cost
    python -m lmdelta estimate --configfile config.yaml [targets]  # what each job of a run will cost here
    python -m lmdelta config-reference --out docs/config-reference.md   # the key reference, from the schema
    python -m lmdelta check-report results/report.html            # the report as rendered in Chromium
    python -m lmdelta run --job logs/corpus_sample/demo.log.job.json    # one job again, by hand
    python -m lmdelta stages                                      # the stages a job can name

Errors the user can fix print one line, ``lmdelta: error: ...``, and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from lmdelta import LmdeltaError
from lmdelta.job import STAGES, Job, run, setup_logging


def cmd_run(a: argparse.Namespace) -> int:
    job = Job.from_file(a.job)
    if a.log:
        job = dataclasses.replace(job, log=a.log)
    return run(job, keep_job_file=False)


def cmd_stages(a: argparse.Namespace) -> None:
    for stage, target in STAGES.items():
        print(f"{stage:28s} {target}")


def cmd_check_report(a: argparse.Namespace) -> None:
    from lmdelta.reportcheck import check_report

    got = check_report(Path(a.report), expect=a.expect, screenshot=Path(a.screenshot) if a.screenshot else None)
    print(
        f"report {a.report}: {got['categories']} categories, {got['results']} results, {got['links']} links; "
        "renders in Chromium"
    )


def cmd_provenance(a: argparse.Namespace) -> None:
    from lmdelta.artifacts import read_provenance

    json.dump(read_provenance(a.artifact, verify=not a.no_verify), sys.stdout, indent=2)
    sys.stdout.write("\n")


def cmd_check_config(a: argparse.Namespace) -> None:
    from lmdelta.config import load_config_file

    cfg = load_config_file(a.config)
    print(f"{a.config}: valid ({len(cfg['models'])} models, {len(cfg['corpora'])} corpora)")
    if not a.no_estimate:
        import os

        from lmdelta.estimate import estimate, total_line

        print(total_line(estimate(a.config, [], threads=os.cpu_count())), "(per job: python -m lmdelta estimate)")


def cmd_estimate(a: argparse.Namespace) -> None:
    import os

    from lmdelta.estimate import estimate, format_estimate

    rows = estimate(a.configfile, a.targets + (["--forceall"] if a.forceall else []), threads=a.cores or os.cpu_count())
    print(format_estimate(rows))


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
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("run", help="run one job from a job file (every job leaves one beside its log: <log>.job.json)")
    sp.add_argument("--job", required=True, help="JSON: stage, inputs, outputs, params, wildcards, threads, log")
    sp.add_argument("--log", help="write the log here instead of the job's own log")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("stages", help="the stages a job can name, and the function each runs")
    sp.set_defaults(func=cmd_stages)

    sp = sub.add_parser("provenance", help="print the provenance record of an artifact")
    sp.add_argument("artifact")
    sp.add_argument("--no-verify", action="store_true", help="skip checking the record's sha256 against the artifact")
    sp.set_defaults(func=cmd_provenance)

    sp = sub.add_parser("check-config", help="validate a config file and estimate its run's cost here")
    sp.add_argument("config")
    sp.add_argument("--no-estimate", action="store_true", help="validate only (no dry run, no probe)")
    sp.set_defaults(func=cmd_check_config)

    sp = sub.add_parser(
        "estimate",
        help="what a run will cost on this machine: the jobs Snakemake would run (a dry run), the tokens each "
        "reads, generates and trains on, and a time from a probe of each model",
    )
    sp.add_argument("targets", nargs="*", help="targets as for snakemake (default: the whole config)")
    sp.add_argument("--configfile", default="config.yaml", help="the config (default: config.yaml, the demo)")
    sp.add_argument("--cores", type=int, help="threads per job (default: every core)")
    sp.add_argument("--forceall", action="store_true", help="every job, as on a fresh checkout")
    sp.set_defaults(func=cmd_estimate)

    sp = sub.add_parser("config-reference", help="every config key with its type, default and description (markdown)")
    sp.add_argument("--out", help="write to this file (docs/config-reference.md) instead of stdout")
    sp.set_defaults(func=cmd_config_reference)

    sp = sub.add_parser("check-report", help="check a snakemake --report file rendered in headless Chromium")
    sp.add_argument("report")
    sp.add_argument("--expect", nargs="*", default=[], help="categories that must be present")
    sp.add_argument("--screenshot", help="save a screenshot of the rendered page (PNG)")
    sp.set_defaults(func=cmd_check_report)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        if a.command == "run":
            return cmd_run(a)  # the job sets up its own logging and reports its own errors
        setup_logging(None)
        a.func(a)
    except LmdeltaError as e:  # for run: a job file that cannot be read
        print(f"lmdelta: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
