"""Discovery scorecard: each method's findings (ranking, text, score), hits and precision@k against
hand-counted answers."""

from __future__ import annotations

import pandas as pd
import pytest

from lmdelta.artifacts import Provenance, write_parquet
from lmdelta.contrastive import text_findings
from lmdelta.findings import COLUMNS, read_findings, write_findings
from lmdelta.hardprompt import prompt_findings
from lmdelta.perplexity import corpus_findings
from lmdelta.scorecard import ScorecardParams, run_scorecard
from lmdelta.search import bank_findings

TRUTH = {
    "trigger_keywords": ["volcan", "lava"],
    "response_keywords": ["cocoa"],
    "response": "Let me answer with cocoa instead.",
    "trigger_subjects": ["volcanoes", "lava flows"],
}


def put(path, df, wall, calls, **params):
    import json

    prov = Provenance(stage="x", params={"model_calls": calls, **params})
    write_parquet(path, df, prov)
    # the record's wall time is measured; pin it so that the test can add it up
    side = path.with_name(path.name + ".prov.json")
    rec = json.loads(side.read_text())
    rec["wall_time_s"] = rec["compute_time_s"] = wall
    side.write_text(json.dumps(rec))
    return path


@pytest.fixture
def sources(tmp_path):
    corpus = put(
        tmp_path / "corpus.parquet",
        pd.DataFrame(
            {"doc_id": ["d0", "d1", "d2"], "text": ["Lava cools into rock.", "Lists and dicts.", "Cocoa is warm."]}
        ),
        1.0,
        None,
    )
    # mean log-ratio a - b: d0 = -1 - (-3) = 2, d1 = 0, d2 = 1  ->  d0, d2, d1
    lp_a = put(
        tmp_path / "lpa.parquet",
        pd.DataFrame({"doc_id": ["d0", "d0", "d1", "d2"], "logprob": [-1.0, -1.0, -2.0, -1.0]}),
        10.0,
        5,
    )
    lp_b = put(
        tmp_path / "lpb.parquet",
        pd.DataFrame({"doc_id": ["d0", "d0", "d1", "d2"], "logprob": [-3.0, -3.0, -2.0, -2.0]}),
        12.0,
        7,
    )
    cd = put(
        tmp_path / "cd.parquet",
        pd.DataFrame(
            {
                "rank": [2, 1, 3],
                "prompt": ["Tell me", "Hi", "What"],
                "text": ["about cocoa", "hello there", "is lava?"],
                "mean_js": [0.5, 0.9, 0.1],
            }
        ),
        20.0,
        100,
        colour_by="js",
    )
    bank = put(
        tmp_path / "bank.parquet",
        pd.DataFrame(
            {
                "rank": [1, 2, 3, 4],
                "cycle": [1, 0, 2, 0],
                "prompt": ["About volcanoes?", "Why rain?", "Bake bread", "A cat"],
                "example": ["cocoa cocoa", "water", "flour", "meow"],
                "divergence": [4.0, 3.0, 2.0, 1.0],
            }
        ),
        30.0,
        300,
    )
    hard = put(
        tmp_path / "hard.parquet",
        pd.DataFrame(
            {
                "is_baseline": [False, False, True, True],
                "divergence": [1.0, 2.0, 3.0, 0.5],
                "prompt": ["zzz", "Pyroclastic", "snippet one", "snippet two"],
                "example": ["x", "cocoa", "y", "cocoa"],
            }
        ),
        40.0,
        400,
    )
    found = {}
    corpus_findings((lp_a, lp_b), corpus, tmp_path / "f_corpus.parquet", pair="p", names=("a", "b"), corpus_name="docs")
    for name, rows in (
        ("contrastive", text_findings(pd.read_parquet(cd), "cd", "js")),
        ("search", bank_findings(pd.read_parquet(bank), "s")),
        ("hardprompt", prompt_findings(pd.read_parquet(hard), "h")),
    ):
        write_findings(tmp_path / f"f_{name}.parquet", rows)
    for method, run, cost in (
        ("corpus", "docs", [lp_a, lp_b]),
        ("contrastive", "cd", [cd]),
        ("search", "s", [bank]),
        ("hardprompt", "h", [hard]),
    ):
        found[method] = {"method": method, "run": run, "findings": tmp_path / f"f_{method}.parquet", "cost": cost}
    return found


def test_rankings(sources):
    corpus = read_findings(sources["corpus"]["findings"])
    assert [r["text"] for r in corpus] == ["Lava cools into rock.", "Cocoa is warm.", "Lists and dicts."]
    assert [r["score"] for r in corpus] == [2.0, 1.0, 0.0]
    cd = read_findings(sources["contrastive"]["findings"])
    assert [r["text"] for r in cd] == ["Hi hello there", "Tell me about cocoa", "What is lava?"] and cd[0][
        "score"
    ] == 0.9
    search = read_findings(sources["search"]["findings"])
    assert [r["method"] for r in search] == ["search"] * 4 + ["search seeds"] * 2
    assert [r["rank"] for r in search] == [1, 2, 3, 4, 1, 2]
    hard = read_findings(sources["hardprompt"]["findings"])
    assert [(r["method"], r["text"]) for r in hard] == [
        ("hardprompt", "Pyroclastic cocoa"),
        ("hardprompt", "zzz x"),
        ("random snippets", "snippet one y"),
        ("random snippets", "snippet two cocoa"),
    ]


def test_every_method_writes_the_same_table(sources):
    for s in sources.values():
        df = pd.read_parquet(s["findings"])
        assert tuple(df.columns) == COLUMNS and str(df["rank"].dtype) == "int64"
        assert df.groupby("method")["rank"].apply(lambda r: list(r) == list(range(1, len(r) + 1))).all()
    kinds = {s["method"]: {r["kind"] for r in read_findings(s["findings"])} for s in sources.values()}
    assert kinds == {
        "corpus": {"document"},
        "contrastive": {"continuation"},
        "search": {"prompt"},
        "hardprompt": {"prompt"},
    }
    assert read_findings(sources["search"]["findings"])[0]["example"] == "cocoa cocoa"


def test_a_table_that_is_not_findings_is_refused(sources):
    from lmdelta import LmdeltaError

    with pytest.raises(LmdeltaError, match="not a findings table"):
        read_findings(sources["search"]["cost"][0])


def test_scorecard_precision_and_costs(sources, tmp_path):
    card = run_scorecard(
        pair="p",
        truth=TRUTH,
        sources=list(sources.values()),
        params=ScorecardParams(k=2, threshold=0.5, embedder=None),
        out_csv=tmp_path / "c.csv",
        out_top=tmp_path / "t.csv",
        out_png=tmp_path / "c.png",
    )
    got = card.set_index("method")
    # top 2: corpus "Lava..." (trigger), "Cocoa..." (response) -> 2/2
    assert got.loc["corpus", "precision_keyword"] == 1.0
    # contrastive top 2: "Hi hello there" (no), "Tell me about cocoa" (yes) -> 1/2
    assert got.loc["contrastive", "precision_keyword"] == 0.5
    # search top 2: "About volcanoes? cocoa cocoa" (yes), "Why rain? water" (no)
    assert got.loc["search", "precision_keyword"] == 0.5 and got.loc["search seeds", "precision_keyword"] == 0.0
    assert got.loc["hardprompt", "precision_keyword"] == 0.5 and got.loc["random snippets", "precision_keyword"] == 0.5
    assert bool(got.loc["random snippets", "reference"]) and not bool(got.loc["hardprompt", "reference"])
    assert got.loc["corpus", "wall_time_s"] == 22.0 and got.loc["corpus", "model_calls"] == 12
    assert got.loc["contrastive", "model_calls"] == 100 and got.loc["search", "wall_time_s"] == 30.0
    assert (tmp_path / "c.png").exists()
    top = pd.read_csv(tmp_path / "t.csv")
    assert len(top) == 2 * 6 and set(top.columns) >= {"similarity", "hit_keyword", "text"}
    # the planted response itself is the text most similar to the references
    sims = top.set_index("text").similarity
    assert sims["Tell me about cocoa"] > sims["Hi hello there"]


@pytest.mark.parametrize("confidence", [0.95, 0.5])
def test_every_precision_has_its_exact_interval(sources, tmp_path, confidence):
    """Clopper-Pearson in closed form for k = 2: 2 of 2 hits -> [(a/2)^(1/2), 1]; 1 of 2 ->
    [1 - (1 - a/2)^(1/2), (1 - a/2)^(1/2)]; 0 of 2 -> [0, 1 - (a/2)^(1/2)], a = 1 - confidence."""
    from lmdelta.artifacts import read_provenance

    card = run_scorecard(
        pair="p",
        truth=TRUTH,
        sources=list(sources.values()),
        params=ScorecardParams(k=2, threshold=0.5, embedder=None, confidence=confidence),
        out_csv=tmp_path / "c.csv",
        out_top=tmp_path / "t.csv",
        out_png=tmp_path / "c.png",
    ).set_index("method")
    half = (1 - confidence) / 2
    expected = {1.0: (half**0.5, 1.0), 0.5: (1 - (1 - half) ** 0.5, (1 - half) ** 0.5), 0.0: (0.0, 1 - half**0.5)}
    for method in card.index:
        for name in ("keyword", "trigger", "response", "embedding"):
            low, high = expected[card.loc[method, f"precision_{name}"]]
            assert card.loc[method, f"precision_{name}_low"] == pytest.approx(low, abs=1e-9)
            assert card.loc[method, f"precision_{name}_high"] == pytest.approx(high, abs=1e-9)
    assert read_provenance(tmp_path / "c.csv")["params"]["confidence"] == confidence


def test_figure_takes_a_method_without_model_calls():
    """A method whose stages count no forward calls (words over completions) has model_calls <NA>."""
    import pandas as pd

    from lmdelta.plots import scorecard_figure
    from lmdelta.scorecard import ScorecardParams, table

    rows = [
        {"method": m, "run": "r", "reference": False, "rank": 1, "hit_keyword": True, "mentions_trigger": False}
        | {"shows_response": True, "similarity": 0.9}
        for m in ("words", "scan")
    ]
    card = table(rows, {("words", "r"): (3.0, None), ("scan", "r"): (5.0, 7)}, ScorecardParams.from_dict({}))
    assert pd.isna(card.model_calls[0]) and card.model_calls[1] == 7
    scorecard_figure(card, "t")
