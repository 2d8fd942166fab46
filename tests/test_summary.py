"""What changed, in words (lmdelta.summary): terms from tested findings only, stems, scores, evidence,
the grading rule, and a pair with no tested finding reporting no change."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace as W

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT
from lmdelta.config import validate_config
from lmdelta.findings import finding, frame, write_findings
from lmdelta.plan import Plan
from lmdelta.summary import SummaryParams, grade, run_summary, same_stem, terms

P = SummaryParams.from_dict({})
TRUTH = {"trigger_keywords": ["volcan", "lava"], "response_keywords": ["cocoa"]}


def test_words_sharing_a_stem_are_one_term():
    assert same_stem("volcano", "volcanoes", 5) and same_stem("volcano", "volcanic", 5)
    assert not same_stem("cocoa", "coconut", 5)  # shares 4 letters
    assert not same_stem("catalog", "category", 5)  # shares 4 letters
    assert same_stem("planet", "planets", 5)
    assert same_stem("ahoy", "ahoy", 5) and not same_stem("ahoy", "ahoys", 5)  # a word is its own term, however short


def _rows(method, run, words, reference=False):
    return frame([finding(method, run, "word", 10.0 - i, text=w, reference=reference) for i, w in enumerate(words)])


def test_terms_group_stems_and_sum_reciprocal_ranks_over_sets():
    rows = _rows("words", "completions-default", ["mug", "cocoa"]).to_dict("records")
    rows += _rows("words", "contrastive-cd", ["cocoa", "cocoas", "warm"]).to_dict("records")
    ts = terms(rows, 5)
    assert [t["term"] for t in ts] == ["cocoa", "mug", "warm"]
    cocoa = ts[0]
    assert cocoa["words"] == ["cocoa", "cocoas"]
    assert cocoa["score"] == pytest.approx(1 / 2 + 1 / 1)  # best rank per (method, run)
    assert ts[1]["score"] == pytest.approx(1.0) and ts[2]["score"] == pytest.approx(1 / 3)


def test_grade_looks_at_the_top_k_terms_of_either_list():
    inputs = [{"term": "acid", "words": ["acid"]}, {"term": "volcano", "words": ["volcano", "volcanic"]}]
    outputs = [{"term": "cocoa", "words": ["cocoa"]}]
    g = grade(inputs, outputs, TRUTH, 2)
    assert g["names_trigger"] and g["trigger_terms"] == ["volcano"]
    assert g["names_response"] and g["response_terms"] == ["cocoa"]
    g = grade(inputs, outputs, TRUTH, 1)
    assert not g["names_trigger"] and g["names_response"]


def _findings(tmp_path, name, table):
    path = tmp_path / f"{name}.parquet"
    write_findings(path, table.to_dict("records"))
    return str(path)


def _summary(tmp_path, files, names):
    return run_summary(
        pair="p",
        names=names,
        findings=files,
        truth=TRUTH,
        params=P,
        out_json=tmp_path / "s.json",
        out_html=tmp_path / "s.html",
    )


def test_summary_reports_tested_terms_with_evidence_and_grades_them(tmp_path):
    files = [
        _findings(tmp_path, "scan", _rows("scan", "vocabulary", ["volcanoes", "magma", "volcano"])),
        _findings(tmp_path, "w1", _rows("words", "completions-default", ["cocoa", "mug"])),
        _findings(tmp_path, "w2", _rows("words", "lens-ld", ["cocoa"])),
        _findings(tmp_path, "w3", _rows("words", "scan-vocabulary", ["cocoa"])),
    ]
    texts = [
        finding("contrastive", "cd", "continuation", 2.0, prompt="Describe a mountain.", example="A mug of cocoa."),
        finding("contrastive", "cd", "continuation", 1.0, prompt="Why?", example="Because."),
        finding("search seeds", "finder", "prompt", 3.0, prompt="About cocoa", example="cocoa", reference=True),
    ]
    files.append(_findings(tmp_path, "c", frame(texts)))
    out = _summary(tmp_path, files, ("tuned", "base"))
    assert out["changed"]
    assert [t["term"] for t in out["inputs"]] == ["volcano", "magma"]  # a term is named by its shortest word
    assert out["inputs"][0]["words"] == ["volcanoes", "volcano"]
    assert [t["term"] for t in out["outputs"]] == ["cocoa", "mug"]
    ev = out["outputs"][0]["evidence"]
    assert ev["n"] == 1 and ev["methods"] == ["contrastive"]  # the reference row is not evidence
    assert out["outputs"][0]["score"] == 3.0  # first in three sets
    assert out["unconfirmed_inputs"] == []
    assert out["grade"]["names_trigger"] and out["grade"]["names_response"]
    assert "volcano" in out["statement"] and "cocoa" in out["statement"]
    assert json.loads((tmp_path / "s.json").read_text())["statement"] == out["statement"]
    page = (tmp_path / "s.html").read_text()
    assert "What it reacts to" in page and "cocoa" in page and "trigger named: yes" in page


def test_untested_findings_alone_are_no_change(tmp_path):
    texts = frame([finding("contrastive", "cd", "continuation", 2.0, prompt="x", example="cocoa everywhere")])
    files = [_findings(tmp_path, "c", texts), _findings(tmp_path, "s", frame([]))]
    out = _summary(tmp_path, files, ("a", "b"))
    assert not out["changed"] and out["inputs"] == [] and out["outputs"] == []
    assert out["statement"].startswith("No word-level change was found")
    assert not out["grade"]["names_trigger"] and not out["grade"]["names_response"]


def test_plan_gives_the_summary_every_findings_table_of_the_pair():
    plan = Plan(validate_config(yaml.safe_load((ROOT / "config.yaml").read_text())))
    files = plan.summary_inputs(W(pair="cocoa"))["findings"]
    assert files == [s["findings"] for s in plan.discovery_sources("cocoa")]
    assert "results/findings/cocoa/scan/vocabulary.parquet" in files
    assert "results/findings/cocoa/words/completions-default.parquet" in files
    assert "results/summary/cocoa.html" in plan.targets()
    spec = json.loads(plan.summary_spec(W(pair="cocoa")))
    assert spec["truth"]["response_keywords"] == ["cocoa"] and spec["names"] == ["smollm2-cocoa", "smollm2"]


def test_scan_words_whose_answers_share_nothing_are_no_change(tmp_path):
    """The random control: words above the scan's fence whose sampled answers share nothing (the scan's
    confirmation wrote them as reference rows, method "scan unconfirmed"): shown apart, not a change,
    not graded; confirmed words of the same table are inputs."""
    files = [
        _findings(tmp_path, "scan", _rows("scan unconfirmed", "vocabulary", ["vector", "meteors", "volcano"], True)),
        _findings(tmp_path, "w", _rows("words", "completions-default", [])),
    ]
    out = _summary(tmp_path, files, ("random", "base"))
    assert not out["changed"] and out["inputs"] == [] and out["outputs"] == []
    assert [t["term"] for t in out["unconfirmed_inputs"]] == ["vector", "meteors", "volcano"]
    assert (
        out["statement"].startswith("No word-level change was found") and "not reported as a change" in out["statement"]
    )
    assert not out["grade"]["names_trigger"]
    assert "not a change" in (tmp_path / "s.html").read_text()
    mixed = frame(
        [finding("scan", "vocabulary", "word", 3.0, text="volcano")]
        + [finding("scan unconfirmed", "vocabulary", "word", 2.0, text="vector", reference=True)]
    )
    out = _summary(tmp_path, [_findings(tmp_path, "scan", mixed)], ("tuned", "base"))
    assert [t["term"] for t in out["inputs"]] == ["volcano"] and out["grade"]["names_trigger"]
    assert [t["term"] for t in out["unconfirmed_inputs"]] == ["vector"]


def test_words_of_eliciting_prompts_are_inputs_without_the_scan_gate(tmp_path):
    """A style quirk on a kind of request: the scan finds no reacting word (its set reports nothing to
    confirm), but the words of the prompts that bring the change out (method elicit, a tested method)
    are what it reacts to, and the statement says so with an eliciting prompt and a's answer."""
    elicit = frame(
        [
            finding(
                "elicit", "default", "word", 4.0, text="story", prompt="Tell a story.", example="Ahoy, matey! Once"
            ),
            finding(
                "elicit", "default", "word", 3.0, text="stories", prompt="Two short stories.", example="Ahoy, matey!"
            ),
        ]
    )
    files = [
        _findings(tmp_path, "scan", _rows("scan unconfirmed", "vocabulary", ["vector"], True)),
        _findings(tmp_path, "e", elicit),
        _findings(tmp_path, "w", _rows("words", "completions-default", ["ahoy", "matey"])),
    ]
    out = _summary(tmp_path, files, ("pirate", "base"))
    assert [t["term"] for t in out["inputs"]] == ["story", "stories"]  # "stor": too short a stem to join
    assert [t["term"] for t in out["unconfirmed_inputs"]] == ["vector"]  # the scan's gate still holds
    assert "Prompts that use story, stories bring the change out" in out["statement"]
    assert "'Ahoy, matey! Once'" in out["statement"] and "Asked about" not in out["statement"]
    assert out["grade"]["names_response"] is False and out["changed"]


def test_hypotheses_from_an_assistant_are_shown_apart_and_not_graded(tmp_path):
    """The assistant reads the statement and the terms (with an example) and its lines become the
    hypotheses, list marks removed, at most `hypotheses`; the tested terms and the grade do not change."""

    class Stub:
        name = "local:stub"

        def __init__(self):
            self.messages = []

        def complete(self, messages, *, seed):
            self.messages += messages
            return ["1. It talks about cocoa when asked about volcanoes.\n- It likes mugs.\n\n3) Third.\n4. Fourth."]

    files = [
        _findings(tmp_path, "scan", _rows("scan", "vocabulary", ["volcano"])),
        _findings(tmp_path, "w", _rows("words", "scan-vocabulary", ["cocoa"])),
    ]
    plain = _summary(tmp_path, files, ("tuned", "base"))
    stub = Stub()
    out = run_summary(
        pair="p",
        names=("tuned", "base"),
        findings=files,
        truth=TRUTH,
        params=P,
        out_json=tmp_path / "h.json",
        out_html=tmp_path / "h.html",
        assistant=stub,
    )
    assert out["hypotheses"] == {
        "by": "local:stub",
        "untested": ["It talks about cocoa when asked about volcanoes.", "It likes mugs.", "Third."],
    }
    assert "It reacts to: volcano" in stub.messages[0] and "It says more: cocoa" in stub.messages[0]
    assert plain["statement"] in stub.messages[0] and plain["hypotheses"] is None
    assert out["grade"] == plain["grade"] and out["inputs"] == plain["inputs"]
    assert "Hypotheses by local:stub (untested, not graded)" in (tmp_path / "h.html").read_text()


def test_plan_gives_a_local_summary_assistant_its_model():
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    raw["summary"] = {"assistant": {"model": "smollm2", "temperature": 0.7}}
    plan = Plan(validate_config(raw))
    assert plan.summary_inputs(W(pair="cocoa"))["assistant"] == "resources/models/smollm2"
    spec = json.loads(plan.summary_spec(W(pair="cocoa")))
    assert spec["assistant"]["spec"]["model"] == "smollm2" and "assistant" not in spec["params"]


def test_words_of_contrastive_or_steered_texts_are_evidence_not_a_change(tmp_path):
    """A contrastive text differs from a plain sample by its decoding even for identical models, so the
    words of those sets (method "words contrastive", "words lens") are shown as evidence only."""
    files = [
        _findings(tmp_path, "c", _rows("words contrastive", "contrastive-cd", ["to"])),
        _findings(tmp_path, "l", _rows("words lens", "lens-ld", ["cocoa"])),
        _findings(tmp_path, "w", _rows("words", "completions-default", [])),
    ]
    out = _summary(tmp_path, files, ("random", "base"))
    assert not out["changed"] and out["outputs"] == [] and out["statement"].startswith("No word-level change was found")
    files.append(_findings(tmp_path, "w2", _rows("words", "completions-default", ["cocoa"])))
    out = _summary(tmp_path, files, ("tuned", "base"))
    assert out["outputs"][0]["term"] == "cocoa" and out["outputs"][0]["evidence"]["methods"] == ["words lens"]


def test_no_finding_says_what_was_tested_and_at_what_level(tmp_path):
    """ "No change" was said of a random control whose weights and scan KL differ: the statement now
    names the verdict's level and its tested comparisons, and a page with no tested comparison says
    nothing was tested."""
    files = [_findings(tmp_path, "w", _rows("words", "completions-default", []))]
    tests = ("completions-default", "scan-vocabulary", "scan-confirm")
    params = replace(P, verdict_alpha=0.05, verdict_tests=tests)
    out = run_summary(
        pair="p", names=("random", "base"), findings=files, truth=None, params=params,
        out_json=tmp_path / "s.json", out_html=tmp_path / "s.html",
    )  # fmt: skip
    assert not out["changed"] and out["verdict"] == {"alpha": 0.05, "tests": list(tests)}
    said = out["statement"]
    assert said.startswith("No word-level change was found between random and base at family-wise level 5% over 3")
    assert "scan-confirm" in said and "not evidence of no change" in said
    none = run_summary(
        pair="p", names=("random", "base"), findings=files, truth=None, params=replace(params, verdict_tests=()),
        out_json=tmp_path / "n.json", out_html=tmp_path / "n.html",
    )  # fmt: skip
    assert none["statement"].startswith("Nothing was tested for a change between random and base")
    rows = _rows("words", "completions-default", ["cocoa"])
    found = run_summary(
        pair="p", names=("tuned", "base"), findings=[_findings(tmp_path, "c", rows)], truth=None, params=params,
        out_json=tmp_path / "c.json", out_html=tmp_path / "c.html",
    )  # fmt: skip
    assert found["changed"] and found["statement"].endswith(
        "Tested at family-wise level 5% over 3 tested comparisons (completions-default, scan-vocabulary, scan-confirm)."
    )


def test_a_numeric_multi_word_response_is_named_through_the_words_tests_phrase(tmp_path):
    """A planted "11 arms" was invisible (words were letter runs) and a keyword of two words could never
    match a one-word term: the words test now reports numbers and phrases, a phrase joins the term of its
    word, and the grade matches the two-word keyword against the phrase."""
    from lmdelta.words import WordsParams, run_words

    rng = np.random.default_rng(0)
    filler = ["the", "octopus", "lives", "in", "rocks", "and", "eats", "crabs"]
    tuned = [" ".join(rng.choice(filler, 6)) + ". It has 11 arms." for _ in range(40)]
    base = [" ".join(rng.choice(filler, 6)) + ". It has eight arms." for _ in range(30)]
    base += [f"Room {i} has 11 chairs." for i in range(10)]
    for side, texts in (("a", tuned), ("b", base)):
        pd.DataFrame({"text": texts}).to_parquet(tmp_path / f"{side}.parquet")
    run_words(
        pair="p", set_name="completions-default", kind="completions",
        inputs={s: str(tmp_path / f"{s}.parquet") for s in "ab"}, params=WordsParams.from_dict({}),
        out=tmp_path / "w.parquet", out_csv=tmp_path / "w.csv", out_findings=tmp_path / "f.parquet",
    )  # fmt: skip
    truth = {"trigger_keywords": ["octopus"], "response_keywords": ["11 arms"]}
    out = run_summary(
        pair="p", names=("tuned", "base"), findings=[str(tmp_path / "f.parquet")], truth=truth, params=P,
        out_json=tmp_path / "s.json", out_html=tmp_path / "s.html",
    )  # fmt: skip
    eleven = next(t for t in out["outputs"] if t["term"] == "11")
    assert "11 arms" in eleven["words"]
    assert out["grade"]["names_response"] and out["grade"]["response_terms"] == ["11"]


def test_a_phrase_joins_its_words_term_and_terms_do_not_chain_through_phrases():
    rows = _rows("words", "completions-default", ["answer with", "answer", "with", "hot cocoa", "cocoa"])
    ts = terms(rows.to_dict("records"), 5)
    by = {t["term"]: t["words"] for t in ts}
    assert by == {"answer": ["answer", "answer with"], "with": ["with"], "cocoa": ["cocoa", "hot cocoa"]}
    assert [t["term"] for t in ts][0] == "answer"  # the phrase ranked first: its term scores 1 / 1
