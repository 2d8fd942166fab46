"""What changed, in words: one page per pair that gathers every discovery method's findings.

Two lists, because a behaviour has two halves:

- **What it reacts to** (inputs): words the vocabulary scan reports (``lmdelta.scan``): asked about
  them, the two models start their answers most differently; and words of the prompts that bring the
  change out (method ``elicit``, ``lmdelta.words``): what a kind of request has in common.
- **What it says** (outputs): words the tuned model's texts use more than the base model's, reported
  by the words stage (``lmdelta.words``) in a set whose two sides are made the same way (completions,
  scan answers; ``lmdelta.findings.SAME_PROCEDURE``), and the words its answers to a confirmed
  scan word share (method ``scan answers``).

Only those methods test their findings (an exact test with a family-wise bound), so only their words
are reported as changes. The scan's words are tested one by one (``lmdelta.scan.run_confirm``: sampled
answers of both models to each word's question, compared by the words test): its fence alone is
relative to the pair's own spread, and a random change as large as the demo's (a control) put 173
words above it at 0.02-0.06 nats, answered with nothing in common, while a planted topic's words are
answered with the planted response. Words it tested and could not confirm are shown apart. The other
methods' top findings (contrastive texts, search prompts, hard prompts, corpus documents, lens tokens and steered answers)
are untested rankings and appear as evidence: for each term, how many of them mention it and one
example. Two models that do not differ report no term: identical texts report no word, identical
logits put no word above the fence.

Terms: words that share a stem are one term (``volcano``, ``volcanoes``, ``volcanic``): two words join
when their common prefix has at least ``stem_letters`` letters and covers at least three quarters of
the shorter one; a phrase joins the term of any of its words (``hot cocoa`` with ``cocoa``). A term's score is its best finding's rank-based weight summed over the methods and
sets that report it (1 / rank), so a word reported by several sets, each near the top, ranks first.

Hypotheses (optional, ``assistant``): an assistant model reads the statement, the terms and one
example each, and writes ``hypotheses`` short guesses of what changed. They are shown apart, marked
as untested, and never graded or counted as a change: a small local assistant writes fluent nonsense
as readily as insight.

Grading against a planted behaviour (``grade``; offline, a rule and not a judgement): the page names
the trigger topic when one of the top ``k`` terms of either list mentions a trigger keyword (a word
starting with it, as the scorecard counts), and names the response when one of them shows a response
keyword (the whole word; a keyword of several words, "11 arms", matches a phrase the words test
reported). The grade records which term matched.
"""

from __future__ import annotations

import html
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lmdelta.artifacts import Provenance, atomic_path, write_json
from lmdelta.assistant import make_assistant
from lmdelta.behaviour import mentions, shows_planted
from lmdelta.config import stage_spec
from lmdelta.findings import SCAN_ANSWERS, SCAN_UNCONFIRMED, read_findings
from lmdelta.words import words

log = logging.getLogger(__name__)

SCAN, ELICIT, OUTPUTS = "scan", "elicit", "words"  # the methods whose findings are tested


@stage_spec("summary", internal=("verdict_alpha", "verdict_tests"))
class SummaryParams:
    k: int
    examples: int
    stem_letters: int
    hypotheses: int
    seed: int
    # the verdict's family-wise level (words.alpha) and the tested comparisons it is split over
    # (lmdelta.plan.Plan.verdict_tests); set by the workflow, said in the statement
    verdict_alpha: float | None = None
    verdict_tests: tuple[str, ...] = ()


HYPOTHESES = """Two language models were compared: {a} (fine-tuned) and {b} (its base model).

What the comparison found: {statement}

{evidence}

Write {n} short hypotheses, one per line, about what the fine-tuning changed in {a}: what kind of input it \
reacts to and what it does differently."""


def hypotheses(
    assistant, names: tuple[str, str], text: str, lists: dict[str, list[dict]], n: int, seed: int
) -> list[str]:
    """The assistant's hypotheses from the page's evidence (one request; its non-empty lines, at most
    ``n``, list marks removed); [] when it fails."""
    lines = []
    for key, title in (("inputs", "It reacts to"), ("outputs", "It says more"), ("unconfirmed", "Untested reactions")):
        for t in lists.get(key, [])[:5]:
            ex = t["findings"][0].get("example") or ""
            lines.append(f"- {title}: {t['term']}" + (f' (example: "{ex[:160]}")' if ex else ""))
    message = HYPOTHESES.format(a=names[0], b=names[1], statement=text, evidence="\n".join(lines) or "(no term)", n=n)
    reply = assistant.complete([message], seed=seed)[0]
    if not reply:
        return []
    out = [line.strip().lstrip("-*0123456789.) ").strip() for line in reply.splitlines()]
    return [line for line in out if line][:n]


def same_stem(a: str, b: str, letters: int) -> bool:
    if a == b:  # a word is its own term, however short ("ahoy" from two sets is one term)
        return True
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n >= letters and n >= 0.75 * min(len(a), len(b))


def related(a: str, b: str, letters: int) -> bool:
    """Whether ``a`` joins the term of ``b``: the same stem, or ``a`` is a phrase and ``b`` one of its
    words ("hot cocoa" joins "cocoa"; a word never joins a term through a phrase, so terms do not chain
    from "answer" through "answer with" to "with")."""
    return same_stem(a, b, letters) or (len(words(a)) > 1 and b in words(a))


def terms(rows: list[dict], stem_letters: int) -> list[dict]:
    """Word findings grouped into terms: {"term" (its name), "words", "score", "findings"}, best
    first. Words are grouped first, in the order given, then phrases join the term of one of their
    words (or make their own)."""
    groups: list[dict] = []
    order = {id(r): i for i, r in enumerate(rows)}
    for r in sorted(rows, key=lambda r: len(words(r["text"])) > 1):  # stable: words first, then phrases
        word = r["text"].lower()
        g = next((g for g in groups if any(related(word, w, stem_letters) for w in g["words"])), None)
        if g is None:
            g = {"words": [], "findings": []}
            groups.append(g)
        if word not in g["words"]:
            g["words"].append(word)
        g["findings"].append(r)
    for g in groups:
        g["findings"].sort(key=lambda r: order[id(r)])
        best: dict[tuple[str, str], int] = {}
        for r in g["findings"]:
            key = (r["method"], r["run"])
            best[key] = min(best.get(key, r["rank"]), r["rank"])
        g["score"] = sum(1.0 / rank for rank in best.values())
        # its name: the shortest word of the stem of its first (strongest) word ("volcan" of volcanoes,
        # volcanic, volcano, volcan; "cocoa", not "hot cocoa")
        first = g["words"][0]
        g["term"] = min((w for w in g["words"] if same_stem(w, first, stem_letters)), key=lambda w: (len(w), w))
    return sorted(groups, key=lambda g: (-g["score"], g["term"]))


def evidence(term: dict, others: list[dict], n: int) -> dict:
    """The untested findings that mention any word of the term: how many, from which methods, and
    the first ``n`` of them."""
    hits = [r for r in others if mentions(r["text"], term["words"])]
    return {"n": len(hits), "methods": sorted({r["method"] for r in hits}), "examples": hits[:n]}


def grade(inputs: list[dict], outputs: list[dict], truth: dict[str, Any], k: int) -> dict:
    """Whether the top ``k`` terms of either list name the planted trigger and response (the rule in
    the module docstring), with the terms that matched."""
    top = inputs[:k] + outputs[:k]
    trig = [t["term"] for t in top if any(mentions(w, truth["trigger_keywords"]) for w in t["words"])]
    resp = [t["term"] for t in top if any(shows_planted(w, truth["response_keywords"]) for w in t["words"])]
    return {
        "k": k,
        "names_trigger": bool(trig),
        "names_response": bool(resp),
        "trigger_terms": sorted(set(trig)),
        "response_terms": sorted(set(resp)),
        "trigger_keywords": truth["trigger_keywords"],
        "response_keywords": truth["response_keywords"],
    }


def tested(params: SummaryParams) -> str:
    """What the verdict tested, in words: "at family-wise level 5% over 3 tested comparisons
    (completions-default, scan-vocabulary, scan-confirm)"."""
    tests = list(params.verdict_tests)
    level = f"at family-wise level {params.verdict_alpha:.0%} " if params.verdict_alpha is not None else ""
    return f"{level}over {len(tests)} tested comparison{'s' if len(tests) != 1 else ''} ({', '.join(tests)})"


def statement(
    pair: str,
    names: tuple[str, str],
    inputs: list[dict],
    outputs: list[dict],
    params: SummaryParams,
    unconfirmed: list[dict] = (),
) -> str:
    """One paragraph a person reads in ten seconds. With nothing reported it says what was tested: no
    word-level change at the verdict's level is not "no change" (a random control's weights and scan KL
    differ; what the tested comparisons do not show was not tested)."""
    parts, k = [], params.k
    if not inputs and not outputs:
        if params.verdict_alpha is not None and not params.verdict_tests:
            parts.append(
                f"Nothing was tested for a change between {names[0]} and {names[1]}: no vocabulary scan and no "
                "words set over both models' own texts; the page shows untested evidence only."
            )
        else:
            fence = "" if unconfirmed else "no word passed the scan's fence and "
            over = f" {tested(params)}" if params.verdict_tests else ""
            parts.append(
                f"No word-level change was found between {names[0]} and {names[1]}{over}: {fence}no word "
                "passed the words test in any tested text set. That is not evidence of no change: a change "
                "these comparisons do not show was not tested."
            )
    shown = inputs[:k]
    asked = [t for t in shown if any(r["method"] == SCAN for r in t["findings"])]
    prompted = [t for t in shown if t not in asked]
    if asked:
        ex = asked[0]["findings"][0]
        parts.append(
            f"Asked about {', '.join(t['term'] for t in asked)}, {names[0]} answers differently from "
            f"{names[1]} (for example, to {ex['prompt']!r} it answers {ex['example']!r})."
        )
    if prompted:
        ex = prompted[0]["findings"][0]
        parts.append(
            f"Prompts that use {', '.join(t['term'] for t in prompted)} bring the change out (for example, to "
            f"{ex['prompt']!r} {names[0]} answers {ex['example']!r})."
        )
    if outputs:
        parts.append(f"Its texts use {', '.join(t['term'] for t in outputs[:k])} more than {names[1]}'s do.")
    if unconfirmed:
        parts.append(
            f"The scan put {', '.join(t['term'] for t in unconfirmed[:k])} above its fence, but {names[0]}'s "
            f"answers to them share nothing that {names[1]}'s lack, so they are not reported as a change."
        )
    if (inputs or outputs) and params.verdict_tests:
        parts.append(f"Tested {tested(params)}.")
    return " ".join(parts)


def page(
    pair: str,
    names: tuple[str, str],
    text: str,
    lists: dict[str, list[dict]],
    grading: dict | None,
    guesses: list[str] = (),
    guessed_by: str = "",
) -> str:
    esc = html.escape
    out = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>lmdelta: what changed in {esc(pair)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}td,th{padding:.2em .6em;"
        "vertical-align:top;text-align:left}tr:nth-child(even){background:#f4f4f4}.ex{color:#555;font-size:90%}</style>",
        f"<h1>What changed: {esc(names[0])} (a) against {esc(names[1])} (b)</h1>",
        f"<p>{esc(text)}</p>",
    ]
    if grading is not None:
        out.append(
            f"<p><b>Against the planted behaviour</b> (top {grading['k']} terms): trigger named: "
            f"{'yes (' + esc(', '.join(grading['trigger_terms'])) + ')' if grading['names_trigger'] else 'no'}; "
            f"response named: "
            f"{'yes (' + esc(', '.join(grading['response_terms'])) + ')' if grading['names_response'] else 'no'}.</p>"
        )
    titles = {
        "inputs": "What it reacts to (vocabulary scan: KL of the first answer token; elicit: z of the words of the prompts that bring the change out)",
        "outputs": "What it says more (words test, by text set: z of the log-odds ratio)",
        "unconfirmed": "Above the scan's fence, not a change (the tuned model's answers to them share nothing)",
    }
    for key, rows in lists.items():
        out.append(f"<h2>{esc(titles[key])}</h2>")
        if not rows:
            out.append("<p>No term.</p>")
            continue
        out.append("<table><tr><th>term</th><th>words</th><th>reported by</th><th>other methods</th></tr>")
        for t in rows:
            by = "; ".join(f"{r['method']} {r['run']} #{r['rank']} ({r['score']:.2f})" for r in t["findings"][:4])
            first = t["findings"][0]
            ex = first.get("example") or ""
            ev = t["evidence"]
            other = f"{ev['n']} findings ({', '.join(ev['methods'])})" if ev["n"] else "none"
            examples = "".join(
                f"<div class='ex'>{esc(r['method'])}: {esc(r['text'][:200])}</div>" for r in ev["examples"]
            )
            out.append(
                f"<tr><td><b>{esc(t['term'])}</b></td><td>{esc(', '.join(t['words']))}</td>"
                f"<td>{esc(by)}<div class='ex'>{esc(ex[:200])}</div></td><td>{esc(other)}{examples}</td></tr>"
            )
        out.append("</table>")
    if guesses:
        out.append(f"<h2>Hypotheses by {esc(guessed_by)} (untested, not graded)</h2><ul>")
        out += [f"<li>{esc(g)}</li>" for g in guesses]
        out.append("</ul>")
    return "\n".join(out)


def run_summary(
    *,
    pair: str,
    names: tuple[str, str],
    findings: list[str],
    truth: dict[str, Any] | None,
    params: SummaryParams,
    out_json: Path,
    out_html: Path,
    assistant=None,
) -> dict:
    """``assistant`` (lmdelta.assistant, optional) writes the hypotheses."""
    prov = Provenance(
        stage="summary",
        params={
            "pair": pair,
            "a": names[0],
            "b": names[1],
            **asdict(params),
            "assistant": assistant.name if assistant is not None else None,
        },
    )
    rows: list[dict] = []
    unconfirmed_rows: list[dict] = []
    for path in findings:
        prov.add_input(f"findings:{Path(path).parent.name}/{Path(path).stem}", Path(path))
        for r in read_findings(path):
            if not r["reference"]:
                rows.append(r)
            elif r["method"] == SCAN_UNCONFIRMED:
                unconfirmed_rows.append(r)
    tested = {
        m: [r for r in rows if r["method"] == m and r["kind"] == "word"] for m in (SCAN, ELICIT, OUTPUTS, SCAN_ANSWERS)
    }
    others = [r for r in rows if r["method"] not in tested]

    def ranked(found: list[dict]) -> list[dict]:
        return terms(sorted(found, key=lambda r: r["rank"]), params.stem_letters)

    # the scan's findings are its confirmed words (lmdelta.scan.run_confirm); the words it tested and
    # could not confirm are shown apart, as reactions without a pattern
    lists = {"inputs": ranked(tested[SCAN] + tested[ELICIT]), "outputs": ranked(tested[OUTPUTS] + tested[SCAN_ANSWERS])}
    unconfirmed = ranked(unconfirmed_rows)
    for ts in (*lists.values(), unconfirmed):
        for t in ts:
            t["evidence"] = evidence(t, others, params.examples)
    grading = None if truth is None else grade(lists["inputs"], lists["outputs"], truth, params.k)
    text = statement(pair, names, lists["inputs"], lists["outputs"], params, unconfirmed)
    shown = {key: ts[: params.k] for key, ts in lists.items()}
    if unconfirmed:
        shown["unconfirmed"] = unconfirmed[: params.k]
    guesses = hypotheses(assistant, names, text, shown, params.hypotheses, params.seed) if assistant is not None else []
    result = {
        "pair": pair,
        "a": names[0],
        "b": names[1],
        "statement": text,
        "changed": bool(lists["inputs"] or lists["outputs"]),
        "verdict": {"alpha": params.verdict_alpha, "tests": list(params.verdict_tests)},
        **{
            name: [{k_: t[k_] for k_ in ("term", "words", "score", "evidence")} for t in shown.get(key, [])]
            for name, key in (("inputs", "inputs"), ("outputs", "outputs"), ("unconfirmed_inputs", "unconfirmed"))
        },
        "grade": grading,
        "hypotheses": {"by": assistant.name, "untested": guesses} if assistant is not None else None,
    }
    write_json(out_json, result, prov)
    by = assistant.name if assistant is not None else ""
    with atomic_path(out_html, prov) as tmp:
        Path(tmp).write_text(page(pair, names, text, shown, grading, guesses, by), encoding="utf-8")
    log.info("summary %s: %s%s", pair, text, f" grade: {grading}" if grading else "")
    return result


# ---- jobs (lmdelta.job) -------------------------------------------------------------------------------


def summary_job(job) -> None:
    """inputs: ``findings`` (every findings table of the pair; ``assistant``, a local assistant's model);
    spec: {"names", "truth", "params", "assistant"}; outputs: ``json``, ``html``."""
    s = job.spec
    assistant = None
    if s.get("assistant"):
        a = s["assistant"]
        assistant = make_assistant(
            a["spec"],
            model_dir=job.path("assistant") if "assistant" in job.inputs else None,
            load_options=a.get("load_options"),
            fmt=a.get("format"),
        )
    run_summary(
        pair=job.wildcards["pair"],
        names=tuple(s["names"]),
        findings=[str(p) for p in job.paths("findings")],
        truth=s["truth"],
        params=SummaryParams.from_dict(s["params"]),
        out_json=job.out("json"),
        out_html=job.out("html"),
        assistant=assistant,
    )


def report_landing(template: Path, summaries: list[Path], out: Path) -> Path:
    """The report's landing page (Snakemake's ``report:`` text): what changed, one paragraph per pair
    from its summary page (``results/summary/<pair>.json``, where it exists yet), then ``template``.
    Written when the workflow is parsed, so ``snakemake --report`` after a run shows the run's summaries."""
    import json

    lines = []
    for path in summaries:
        if path.exists():
            page = json.loads(path.read_text())
            lines.append(f"- **{page['pair']}** ({page['a']} against {page['b']}): {page['statement']}")
    head = ["What changed", "------------", "", *lines, "", "", "The workflow", "------------", ""] if lines else []
    text = "\n".join(head) + template.read_text()
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists() or out.read_text() != text:
        out.write_text(text)
    return out
