"""The findings table: what a discovery method surfaces, in one shape for every method.

Each discovery stage writes one, ``results/findings/{pair}/{method}/{run}.parquet`` (the path is
``lmdelta.plan.Plan.findings_path``); the scorecard reads them all the same way, so a new method is
one module that writes this table and one rule. One row per finding, strongest first within a method:

- ``method``: the method (``contrastive``, ``search``, ``hardprompt``, ``corpus``, ``lens``,
  ``lens steering``) or a reference shown beside it (``search seeds``, ``random snippets``) with
  ``reference`` true;
- ``run``: the config's run (or corpus) name;
- ``rank``: 1 = strongest, per method;
- ``kind``: what the text is: ``prompt`` (a prompt that makes the models differ, shown with an
  example continuation), ``continuation`` (a text the pair generates), ``document`` (a human text),
  ``token`` or ``word``;
- ``text``: what a person reads (a prompt and its example joined; a document cut to 1,000 characters);
- ``score``: the method's own measure of difference (higher = more different; its unit is the
  method's, e.g. mean JS divergence in nats, a log-likelihood ratio per token);
- ``prompt``, ``example``: the parts of ``text`` where there are two (else null).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmdelta import LmdeltaError
from lmdelta.artifacts import write_parquet

COLUMNS = ("method", "run", "reference", "rank", "kind", "text", "score", "prompt", "example")
KINDS = ("prompt", "continuation", "document", "token", "word")
# the words test's run over both models' answers to the vocabulary scan's top words (lmdelta.plan names it)
SCAN_SET = "scan-vocabulary"
# the scan's confirmation of its strongest words (lmdelta.scan.run_confirm), as one of the tests behind
# the summary's verdict (lmdelta.plan.Plan.verdict_tests)
SCAN_CONFIRM = "scan-confirm"
# Sets whose a and b sides are made the same way (each model's own samples; both models' answers to the
# same questions), so the words test's null (exchangeable texts) holds for two identical models. A
# contrastive text against a plain sample differs by its decoding even for identical models (the suite's
# random control: "to" in 23 of 40 contrastive texts against 80 of 320 samples, p = 4.6e-5), and steering
# changes texts along any direction: their words are rankings (methods "words contrastive", "words
# lens"), which the summary shows as evidence and never counts as a change.
SAME_PROCEDURE = ("completions", "scan")
# the vocabulary scan's confirmation (lmdelta.scan.run_confirm): the words a confirmed word's answers share
# (tested outputs), and the words it tested and could not confirm (reference rows)
SCAN_ANSWERS, SCAN_UNCONFIRMED = "scan answers", "scan unconfirmed"


def words_method(kind: str) -> str:
    """The method of a words set's findings: ``words`` when its two sides are made the same way, else
    ``words <kind>`` (a ranking, never counted as a change)."""
    return "words" if kind in SAME_PROCEDURE else f"words {kind}"


def join_text(*parts: Any) -> str:
    """The non-empty string parts, stripped, joined by one space."""
    return " ".join(str(p).strip() for p in parts if isinstance(p, str) and p.strip())


def finding(
    method: str,
    run: str,
    kind: str,
    score: float,
    *,
    text: str | None = None,
    prompt: str | None = None,
    example: str | None = None,
    reference: bool = False,
) -> dict[str, Any]:
    """One row; ``text`` defaults to the prompt and example joined. Rank is set by ``frame``."""
    if kind not in KINDS:
        raise ValueError(f"finding kind {kind!r} is not one of {KINDS}")
    return {
        "method": method,
        "run": run,
        "reference": bool(reference),
        "rank": 0,
        "kind": kind,
        "text": join_text(prompt, example) if text is None else text,
        "score": float(score),
        "prompt": prompt,
        "example": example,
    }


def frame(rows: list[dict[str, Any]]):
    """The rows as a findings table: in the given order (strongest first within each method), ranked
    1, 2, ... per method, with the columns in their fixed order and types."""
    import pandas as pd

    counts: dict[str, int] = {}
    for r in rows:
        counts[r["method"]] = counts.get(r["method"], 0) + 1
        r["rank"] = counts[r["method"]]
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    return df.astype(
        {
            "method": "string",
            "run": "string",
            "reference": bool,
            "rank": "int64",
            "kind": "string",
            "text": "string",
            "score": "float64",
            "prompt": "string",
            "example": "string",
        }
    )


def write_findings(path: str | Path, rows: list[dict[str, Any]], prov=None):
    """Write the rows as a findings table (``frame``); returns the table written."""
    table = frame(rows)
    write_parquet(path, table, prov)
    return table


def read_findings(path: str | Path) -> list[dict[str, Any]]:
    """A findings table's rows (plain Python values); a file without its columns is an error naming it."""
    import pandas as pd

    df = pd.read_parquet(path)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise LmdeltaError(
            f"{path}: not a findings table (missing {', '.join(missing)}); rerun the stage that wrote it"
        )
    df = df[list(COLUMNS)].astype(object).where(df[list(COLUMNS)].notna(), None)
    return df.to_dict("records")
