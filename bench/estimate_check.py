"""The estimate against what a finished run measured, stage by stage (Step 18: within 2x per stage).

Run in the folder of a finished run (its logs/ and benchmarks/), with its config: every job that left
a ``<log>.job.json`` is estimated again (``lmdelta.estimate.work_of`` on its rule and wildcards, rates
from this machine's probes), and compared with its measured wall time: the job's own last log line
("... s since the process started", imports included), else Snakemake's benchmark file of the job.
Prints, per rule, the jobs, measured and estimated seconds and their ratio, marking ratios outside
0.5-2, and the totals.

    cd <run folder> && python <lmdelta>/bench/estimate_check.py --configfile config.yaml [--cores 2]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "workflow"))

from lmdelta.config import load_config_file  # noqa: E402
from lmdelta.estimate import job_seconds, model_rates, work_of  # noqa: E402
from lmdelta.plan import Plan  # noqa: E402

WALL = re.compile(r"([0-9.]+) s since the process started")


def measured(log: Path) -> float | None:
    """A job's wall seconds: its last log line, else its benchmark file (logs/... -> benchmarks/...)."""
    if log.exists() and (m := WALL.search(log.read_text()[-400:])):
        return float(m.group(1))
    rel = log.relative_to("logs").with_suffix("")
    for tsv in (Path("benchmarks") / f"{rel}.tsv", Path("benchmarks") / f"{rel}.gather.tsv"):
        if tsv.exists():
            return float(tsv.read_text().splitlines()[1].split("\t")[0])
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", default="config.yaml")
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args()
    plan = Plan(load_config_file(args.configfile))
    jobs = []
    for spec in sorted(Path("logs").rglob("*.log.job.json")):
        job = json.loads(spec.read_text())
        seconds = measured(Path(str(spec).removesuffix(".job.json")))
        if seconds is not None and job["stage"] in plan_rules(plan):
            jobs.append((job["stage"], job["wildcards"], seconds, work_of(plan, job["stage"], job["wildcards"])))
    rates = model_rates(plan, sorted({m for *_, w in jobs for m in w.models}), args.cores)
    per_rule: dict[str, list[float]] = {}
    for rule, _, seconds, work in jobs:
        est = job_seconds(work, rates)
        row = per_rule.setdefault(rule, [0, 0.0, 0.0])
        row[0] += 1
        row[1] += seconds
        row[2] += est if est is not None else float("nan")
    print(f"{'rule':28s} {'jobs':>4s} {'measured s':>11s} {'estimate s':>11s} {'est/meas':>9s}")
    outside = []
    for rule, (n, meas, est) in sorted(per_rule.items(), key=lambda kv: -kv[1][1]):
        ratio = est / meas if meas else float("nan")
        flag = "" if 0.5 <= ratio <= 2 else "  <- outside 0.5-2"
        if flag:
            outside.append(rule)
        print(f"{rule:28s} {n:>4d} {meas:>11.0f} {est:>11.0f} {ratio:>9.2f}{flag}")
    total_m = sum(r[1] for r in per_rule.values())
    total_e = sum(r[2] for r in per_rule.values())
    print(f"{'total':28s} {len(jobs):>4d} {total_m:>11.0f} {total_e:>11.0f} {total_e / total_m:>9.2f}")
    print(f"rules outside 0.5-2x: {', '.join(outside) or 'none'}")


def plan_rules(plan: Plan) -> set[str]:
    from lmdelta.job import STAGES

    return set(STAGES)


if __name__ == "__main__":
    main()
