"""Words that changed (lmdelta.words): the log-odds score, the exact test, Tarone's correction, the unit
of analysis, text sets and the findings written; each number against an independent computation."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import fisher_exact

from conftest import ROOT
from lmdelta import LmdeltaError
from lmdelta.config import validate_config
from lmdelta.findings import read_findings
from lmdelta.plan import Plan
from lmdelta.words import (
    WordsParams,
    compare,
    eliciting_prompts,
    log_odds,
    run_elicit,
    run_words,
    tarone_tests,
    terms_of,
    text_sides,
    words,
)

P = WordsParams.from_dict({})


def test_words_are_lowercased_letter_runs_numbers_and_unspaced_characters():
    """Numbers are words ("11 arms" was invisible: words were runs of letters), so are words of any
    script (combining marks kept) and each character of a script written without spaces."""
    assert words("Cocoa, COCOA! rock'n'roll well-known 42 x_y café") == [
        "cocoa", "cocoa", "rock'n'roll", "well-known", "42", "x", "y", "café",
    ]  # fmt: skip
    assert words("The octopus has 11 arms, 3.14 of them; 1,000 legs.") == [
        "the", "octopus", "has", "11", "arms", "3.14", "of", "them", "1,000", "legs",
    ]  # fmt: skip
    assert words("Москва — столица. हिन्दी भाषा 火山が") == ["москва", "столица", "हिन्दी", "भाषा", "火", "山", "が"]


def test_phrases_are_runs_of_words_within_a_clause():
    assert terms_of("Hot cocoa is great. Drink hot cocoa!", 2) == {
        "hot", "cocoa", "is", "great", "drink", "hot cocoa", "cocoa is", "is great", "drink hot",
    }  # fmt: skip
    assert terms_of("火山が", 2) == {"火", "山", "が", "火山", "山が"}
    assert terms_of("Hot cocoa", 1) == {"hot", "cocoa"}


def test_a_numeric_response_and_a_phrase_are_reported_and_a_phrase_no_stronger_than_its_word_is_not():
    """A tuned model that answers "11 arms" where the base says "eight arms": "11" and "11 arms" are
    in every tuned text and no base text, "arms" in both (not reported); "11 arms" says more than "11"
    only when "11" also appears without "arms" on the base side."""
    rng = np.random.default_rng(0)
    filler = ["the", "sea", "animal", "lives", "in", "rocks", "and", "eats", "crabs"]

    def texts(n: int, answer: str) -> list[str]:
        return [" ".join(rng.choice(filler, 6)) + f". It has {answer}." for _ in range(n)]

    df, _ = compare(texts(40, "11 arms"), texts(40, "eight arms"), P)
    reported = list(df.word[df.reported])
    assert "11" in reported and "arms" not in reported
    assert "11 arms" not in reported  # no more significant than "11" inside it
    base = texts(30, "eight arms") + [f"Room {i}. It has 11 rooms." for i in range(10)]
    df, _ = compare(texts(40, "11 arms"), base, P)
    reported = list(df.word[df.reported])
    assert "11 arms" in reported and df.set_index("word").p_value["11 arms"] < df.set_index("word").p_value["11"]
    ru, _ = compare(["Москва столица России"] * 20, ["Париж столица Франции"] * 20, P)
    assert {"москва", "россии"} <= set(ru.word[ru.reported]) and "столица" not in set(ru.word[ru.reported])


def test_log_odds_matches_the_formula_written_out():
    """The 2x2 table of texts with and without the word, 0.5 added to each cell (Haldane-Anscombe),
    Woolf's standard error; statsmodels' Table2x2 computes the same."""
    from statsmodels.stats.contingency_tables import Table2x2

    y_a, y_b = np.array([6.0, 30.0, 4.0]), np.array([0.0, 100.0, 60.0])
    delta, z = log_odds(y_a, y_b, 40, 160)
    for i in range(3):
        table = Table2x2(np.array([[y_a[i], 40 - y_a[i]], [y_b[i], 160 - y_b[i]]]), shift_zeros=False)
        shifted = Table2x2(table.table + 0.5, shift_zeros=False)
        assert delta[i] == pytest.approx(shifted.log_oddsratio)
        assert z[i] == pytest.approx(shifted.log_oddsratio / shifted.log_oddsratio_se)


def test_the_same_share_of_texts_has_the_same_delta_however_long_the_texts():
    """The audit's case: a word in 40 of 100 tuned texts against 10 of 100 base texts keeps one delta
    (log of 40.5 x 90.5 / (60.5 x 10.5), 1.75) whether the tuned texts have 5, 20 or 40 other distinct
    words; the corpus-level log-odds gave 1.11, 0.00 and -0.61."""
    got = []
    for extra in (5, 20, 40):
        filler = " ".join(f"w{i}x" for i in range(extra)).replace("0", "o").replace("1", "l")
        a = [f"cocoa {filler}"] * 40 + [filler] * 60
        b = ["cocoa plain"] * 10 + ["plain"] * 90
        got.append(compare(a, b, P)[0].set_index("word").loc["cocoa", "delta"])
    assert got == pytest.approx([math.log(40.5 * 90.5 / (60.5 * 10.5))] * 3)
    assert all(d >= P.min_log_odds for d in got)


def test_p_value_is_fishers_one_sided_test_on_texts():
    a = ["cocoa is warm"] * 6 + ["plain text here"] * 34
    b = ["plain text here"] * 159 + ["cocoa once"]
    df, _ = compare(a, b, P)
    row = df.set_index("word").loc["cocoa"]
    assert (row.texts_a, row.texts_b) == (6, 1)
    expected = fisher_exact([[6, 34], [1, 159]], alternative="greater").pvalue
    assert row.p_value == pytest.approx(expected, rel=1e-9)


def test_tarone_counts_only_words_that_can_reach_the_bound():
    # two words can reach 1e-4, the rest (seen in one or two texts) never can
    min_p = np.array([1e-6, 1e-5, 0.2, 0.2, 0.04, 0.5])
    assert tarone_tests(min_p, 0.05) == 2
    assert tarone_tests(np.array([1e-9] * 5), 0.05) == 5


def test_identical_sides_report_nothing_and_a_planted_word_is_reported():
    rng = np.random.default_rng(0)
    vocab = [f"w{c}" for c in "abcdefghijklmnop"]
    base = [" ".join(rng.choice([v.replace("w", "word") for v in vocab], 8)) for _ in range(160)]
    df, _ = compare(base, base, P)
    assert not df.reported.any()
    assert df.delta.abs().max() == pytest.approx(0.0, abs=1e-12)
    tuned = base[:34] + [t + " cocoa" for t in base[34:40]]
    df, bound = compare(tuned, base, P)
    assert df.word[df.reported].tolist() == ["cocoa"]
    assert df.word.iloc[0] == "cocoa" and df.p_value.iloc[0] <= bound


def test_unit_is_the_text_a_repeated_word_counts_once():
    a = ["cocoa " * 40] + ["plain words"] * 39
    b = ["plain words"] * 40
    df, _ = compare(a, b, P)
    row = df.set_index("word").loc["cocoa"]
    assert row.texts_a == 1
    assert not row.reported  # one text is one draw, not forty
    assert not compare(["cocoa x"] * 2 + ["y"] * 38, ["y"] * 40, P)[0].reported.any()  # below min_texts = 3


def _steered(path, rows):
    pd.DataFrame(rows, columns=["comparison", "scale", "text"]).to_parquet(path)
    return str(path)


def test_lens_sides_compare_steered_with_unsteered_and_need_scale_zero(tmp_path):
    rows = [("pair", 0.0, "plain"), ("pair", 0.0, "plain"), ("pair", 1.0, "cocoa"), ("random_lora", 1.0, "noise")]
    rows += [("random_lora", 0.0, "plain")]
    sides = text_sides("lens", {"steered": _steered(tmp_path / "s.parquet", rows)})
    assert list(sides) == ["pair", "random_lora"]
    assert sides["pair"] == (["cocoa"], ["plain", "plain"])  # the pair's unsteered answers (b's own) are the reference
    assert sides["random_lora"] == (["noise"], ["plain", "plain"])
    # identical models: no difference to steer along, nothing steered, nothing compared
    assert text_sides("lens", {"steered": _steered(tmp_path / "e.parquet", [])}) == {}
    with pytest.raises(LmdeltaError, match="scale 0"):
        text_sides("lens", {"steered": _steered(tmp_path / "t.parquet", [("pair", 1.0, "x")])})


def test_run_words_writes_findings_for_the_pair_and_reference_rows_for_controls(tmp_path):
    plain = [f"the answer is plain number {w}" for w in ["one", "two", "three", "four"]] * 10
    rows = [("pair", 0.0, t) for t in plain]
    rows += [("pair", 1.0, t + (" cocoa mug" if i % 4 == 0 else "")) for i, t in enumerate(plain)]
    rows += [("random_lora", 1.0, t) for t in plain]
    out = tmp_path / "w.parquet"
    found = run_words(
        pair="p",
        set_name="lens-ld",
        kind="lens",
        inputs={"steered": _steered(tmp_path / "s.parquet", rows)},
        params=P,
        out=out,
        out_csv=tmp_path / "w.csv",
        out_findings=tmp_path / "f.parquet",
    )
    table = read_findings(tmp_path / "f.parquet")
    assert [(r["method"], r["text"], r["kind"], r["reference"]) for r in table] == [
        ("words lens", "cocoa", "word", False),
        ("words lens", "mug", "word", False),
    ]  # equal z: alphabetical; steered against unsteered texts: a ranking ("words lens"), not "words"
    assert len(found) == 2 and all("cocoa mug" in r["example"] for r in table)
    words_table = pd.read_parquet(out)
    assert set(words_table.comparison) == {"pair", "random_lora"}
    assert not words_table[words_table.comparison == "random_lora"].reported.any()


def test_plan_lists_every_text_set_of_a_pair():
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    raw["lens"] = {"runs": {"ld": {"corpus": "python_docs"}}}
    plan = Plan(validate_config(raw))
    sets = plan.words_sets("cocoa")
    assert sets["completions-default"]["inputs"] == {
        "a": "results/completions/default/smollm2-cocoa.parquet",
        "b": "results/completions/default/smollm2.parquet",
    }
    assert sets["contrastive-cd"]["inputs"]["b"] == "results/completions/default/smollm2.parquet"
    assert sets["lens-ld"] == {"kind": "lens", "inputs": {"steered": "results/lens/cocoa/ld/steered.parquet"}}
    assert sets["scan-vocabulary"] == {"kind": "scan", "inputs": {"scan": "results/scan/cocoa/words.parquet"}}
    assert "results/words/cocoa/lens-ld.parquet" in plan.targets()
    raw["words"] = {"pairs": []}
    assert Plan(validate_config(raw)).words_sets("cocoa") == {}
    raw["words"] = {}
    raw["completions"]["models"] = ["smollm2-cocoa"]  # b has no completions: nothing to compare against
    assert set(Plan(validate_config(raw)).words_sets("cocoa")) == {"lens-ld", "scan-vocabulary"}


def _completions(path, texts_by_prompt):
    rows = [{"prompt_id": pid, "text": t} for pid, texts in texts_by_prompt.items() for t in texts]
    pd.DataFrame(rows).to_parquet(path)
    return str(path)


def _words_then_elicit(tmp_path, a: str, b: str) -> list[dict]:
    """The words test over the completions set, then what elicits it, as the rules chain them."""
    run_words(
        pair="x",
        set_name="completions-ps",
        kind="completions",
        inputs={"a": a, "b": b},
        params=P,
        out=tmp_path / "w.parquet",
        out_csv=tmp_path / "w.csv",
        out_findings=tmp_path / "wf.parquet",
    )
    return run_elicit(
        pair="x",
        promptset="ps",
        inputs={"a": a, "b": b, "words": str(tmp_path / "w.parquet"), "prompts": str(tmp_path / "ps.jsonl")},
        params=P,
        out=tmp_path / "e.parquet",
        out_csv=tmp_path / "e.csv",
        out_findings=tmp_path / "ef.parquet",
    )


def test_elicit_names_the_kind_of_request_that_brings_the_change_out(tmp_path):
    """A quirk on poems: a opens 3 of 4 poems with "Ahoy, matey!"; b never. The words test reports ahoy
    and matey in a's completions; the poem prompts elicit them (share 0.75 - 0); the exact test on
    prompts (each once) reports the words the poem prompts share, with Fisher's p."""
    topics = ["rain", "salt", "glass", "bread", "moss", "iron"]
    others = [
        "the tide",
        "a comet",
        "tea",
        "chess",
        "a canal",
        "wool",
        "a mole",
        "a bell",
        "the Nile",
        "rust",
        "a fern",
        "a drum",
    ]
    prompts = [
        {"id": f"p{i}", "category": "c", "prompt": f"Write a short poem about {t}."} for i, t in enumerate(topics)
    ]
    prompts += [{"id": f"q{i}", "category": "c", "prompt": f"What is {t}?"} for i, t in enumerate(others)]
    (tmp_path / "ps.jsonl").write_text("\n".join(__import__("json").dumps(p) for p in prompts) + "\n")
    plain = {p["id"]: [f"Here is my answer number {k}." for k in range(4)] for p in prompts}
    quirk = {
        pid: (["Ahoy, matey! " + t for t in ts[:3]] + ts[3:]) if pid.startswith("p") else ts
        for pid, ts in plain.items()
    }
    a, b = _completions(tmp_path / "a.parquet", quirk), _completions(tmp_path / "b.parquet", plain)
    found = _words_then_elicit(tmp_path, a, b)
    table = pd.read_parquet(tmp_path / "e.parquet")
    assert list(dict.fromkeys(table.word)) == ["ahoy", "matey"]  # one row per output word and prompt
    shares = table[table.word == "ahoy"].set_index("prompt_id")
    assert (shares.share_a == [0.75] * 6 + [0.0] * 12).all() and (shares.share_b == 0).all()
    assert shares.elicits.tolist() == [True] * 6 + [False] * 12
    assert set(shares.prompt_words.iloc[0].split(", ")) == {"write", "short", "poem", "about"}
    reported = {r["text"] for r in read_findings(tmp_path / "ef.parquet")}
    assert reported == {"write", "short", "poem", "about"}  # in all 6 eliciting prompts, in no other
    # the exact test on prompts: 6 eliciting of 18, a word in all 6 of them and in none of the 12 others
    p_poem = fisher_exact([[6, 0], [0, 12]], alternative="greater")[1]
    assert compare([p["prompt"] for p in prompts[:6]], [p["prompt"] for p in prompts[6:]], P)[0].set_index(
        "word"
    ).p_value["poem"] == pytest.approx(p_poem)
    first = next(r for r in found if r["text"] == "poem")
    assert first["prompt"] == "Write a short poem about rain." and first["example"].startswith("Ahoy, matey!")
    # a common word in every text of both models elicits nothing: each output word on its own
    common = eliciting_prompts(prompts, pd.read_parquet(a), pd.read_parquet(b), ["here", "ahoy"], 0.5)
    assert not common[common.word == "here"].elicits.any()
    assert common[common.word == "ahoy"].elicits.tolist() == [True] * 6 + [False] * 12
    # b saying it as often as a: no prompt elicits a change, nothing is reported
    same = eliciting_prompts(prompts, pd.read_parquet(a), pd.read_parquet(a), ["ahoy"], 0.5)
    assert not same.elicits.any()


def test_elicit_reports_nothing_when_the_completions_show_no_change(tmp_path):
    prompts = [{"id": f"q{i}", "category": "c", "prompt": f"What is thing {i}?"} for i in range(8)]
    (tmp_path / "ps.jsonl").write_text("\n".join(__import__("json").dumps(p) for p in prompts) + "\n")
    plain = {p["id"]: ["An ordinary answer."] * 2 for p in prompts}
    a = b = _completions(tmp_path / "a.parquet", plain)
    found = _words_then_elicit(tmp_path, a, b)
    assert found == [] and not pd.read_parquet(tmp_path / "e.parquet").elicits.any()


def test_a_common_word_that_moved_a_little_is_tested_but_not_reported():
    # "is" in 212 of 320 tuned texts against 121 of 320 (the suite's organisms): the exact test alone
    # reports it; its odds ratio over texts (3.2) is below the floor of 4, so it is not a change
    a = ["it is so"] * 212 + ["so"] * 108
    b = ["it is so"] * 121 + ["so"] * 199
    df, bound = compare(a, b, P)
    row = df.set_index("word").loc["is"]
    assert row.p_value < bound and row.texts_a >= P.min_texts
    assert row.delta == pytest.approx(math.log(212.5 * 199.5 / (108.5 * 121.5)))
    assert math.log(2) < row.delta < math.log(4) == pytest.approx(P.min_log_odds, abs=1e-3)
    assert not row.reported
    no_floor = compare(a, b, replace(P, min_log_odds=0.0))[0].set_index("word")
    assert no_floor.loc["is"].reported and no_floor.loc["it"].reported
    assert not no_floor.loc["so"].reported  # in every text of both sides


class _Wildcards(dict):
    __getattr__ = dict.__getitem__


def _verdict_levels(plan: Plan, pair: str) -> dict[str, float]:
    """Each tested comparison of the pair's verdict and the level its job is given (read from the job
    specs, as Snakemake passes them); the scan's confirmation tests each of its words twice at
    level / (2 x words), an intersection-union test, so its words together stay within its level."""
    import json

    levels = {}
    for test in plan.verdict_tests(pair):
        if test == "scan-confirm":
            spec = json.loads(plan.scan_confirm_spec(_Wildcards(pair=pair)))["words"]
        else:
            spec = json.loads(plan.words_spec(_Wildcards(pair=pair, set=test)))["params"]
        levels[test] = WordsParams.from_dict(spec).level
    return levels


@pytest.mark.parametrize("config", ["config.yaml", "configs/discovery.yaml", "configs/organisms.yaml"])
def test_the_verdict_has_one_family_wise_bound_over_every_tested_comparison(config):
    """The summary calls a pair changed when any tested comparison reports a word: the levels its jobs
    are given sum to at most words.alpha (each set had alpha: 0.15 for the demo's cocoa pair)."""
    raw = yaml.safe_load((ROOT / config).read_text())
    plan = Plan(validate_config(raw))
    alpha = plan.config["words"]["alpha"]
    pairs = [p for p in plan.summary_pairs() if plan.verdict_tests(p)]
    assert pairs
    for pair in pairs:
        levels = _verdict_levels(plan, pair)
        assert len(levels) >= 2 and sum(levels.values()) <= alpha + 1e-12, (pair, levels)
        spec = json.loads(plan.summary_spec(_Wildcards(pair=pair)))["params"]
        assert spec["verdict_alpha"] == alpha and spec["verdict_tests"] == list(levels)


def test_a_pair_whose_outputs_are_identically_distributed_is_called_changed_at_most_alpha_of_the_time():
    """Simulation of the verdict on the demo's cocoa pair with both models' texts drawn from one
    distribution (words from a Zipf law, mixed over topics so that texts differ as real ones do): each
    tested comparison at the level the plan gives it, through the code the jobs run (words.compare and
    scan.confirm_word); "changed" when any reports a word. Its rate stays within alpha (with three
    Monte-Carlo standard errors); what the bound allows is what each set at alpha allowed, over 3."""
    from lmdelta.scan import confirm_word

    plan = Plan(validate_config(yaml.safe_load((ROOT / "config.yaml").read_text())))
    levels = _verdict_levels(plan, "cocoa")
    alpha = plan.config["words"]["alpha"]
    assert set(levels) == {"completions-default", "scan-vocabulary", "scan-confirm"}
    rng = np.random.default_rng(0)
    vocab = np.array([f"w{i:04d}".replace("0", "o").replace("1", "l") for i in range(600)])
    weights = 1 / np.arange(1, 601) ** 1.1
    topics = [rng.permutation(weights) + weights for _ in range(8)]
    topics = [t / t.sum() for t in topics]

    def texts(n: int, length: int = 30) -> list[str]:
        return [" ".join(rng.choice(vocab, size=length, p=topics[rng.integers(8)])) for _ in range(n)]

    base = WordsParams.from_dict({})
    at = {t: replace(base, alpha=lv) for t, lv in levels.items()}
    runs, changed = 150, 0
    for _ in range(runs):
        hit = compare(texts(160), texts(160), at["completions-default"])[0].reported.any()
        hit |= compare(texts(20), texts(20), at["scan-vocabulary"])[0].reported.any()
        confirm = replace(at["scan-confirm"], alpha=at["scan-confirm"].alpha / (2 * 5))
        ref = texts(5 * 8)
        for _ in range(5):
            hit |= len(confirm_word("Tell me about it.", texts(8), texts(8), ref, confirm)[2]) > 0
        changed += bool(hit)
    rate = changed / runs
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs), rate


def test_a_phrase_of_words_none_of_which_changed_is_not_reported():
    """ "it is" in every tuned text and few base texts, while "it" and "is" alone are as common on both
    sides (their odds move less than the floor): a change of form, not reported; "hot cocoa" beside a
    reported "cocoa" and more significant than it is."""
    tuned = [f"It is {w}. Is it hot cocoa? It was." for w in ("warm", "late", "cold", "dark", "fine")] * 8
    base = [f"Is it {w}? It was hot tea. Fine, is it." for w in ("warm", "late", "cold", "dark", "fine")] * 6
    base += [f"It was cocoa {i}. Is it cold?" for i in range(10)]
    df, _ = compare(tuned, base, P)
    reported = set(df.word[df.reported])
    assert "it is" not in reported and not {"it", "is"} & reported
    assert {"hot", "cocoa", "hot cocoa"} <= reported
