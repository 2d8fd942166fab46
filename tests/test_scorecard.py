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


def card_of(sources, tmp_path, params, csv="c.csv", **kw):
    """run_scorecard on the fixture's sources, writing c.csv (or ``csv``), t.csv and c.png in tmp_path."""
    return run_scorecard(
        pair="p",
        truth=TRUTH,
        sources=list(sources.values()),
        params=params,
        out_csv=tmp_path / csv,
        out_top=tmp_path / "t.csv",
        out_png=tmp_path / "c.png",
        **kw,
    )


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
        pd.DataFrame(
            {"doc_id": ["d0", "d0", "d1", "d2"], "token_id": [5, 6, 7, 8], "logprob": [-1.0, -1.0, -2.0, -1.0]}
        ),
        10.0,
        5,
    )
    lp_b = put(
        tmp_path / "lpb.parquet",
        pd.DataFrame(
            {"doc_id": ["d0", "d0", "d1", "d2"], "token_id": [5, 6, 7, 8], "logprob": [-3.0, -3.0, -2.0, -2.0]}
        ),
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
    card = card_of(sources, tmp_path, ScorecardParams(k=2, threshold=0.5, embedder=None))
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
    assert len(top) == 2 * 6 and set(top.columns) >= {"similarity", "hit_keyword", "surfaced"}
    # the planted response itself is the text most similar to the references
    sims = top.set_index("surfaced").similarity
    assert sims["Tell me about cocoa"] > sims["Hi hello there"]


@pytest.mark.parametrize("confidence", [0.95, 0.5])
def test_every_precision_has_its_exact_interval(sources, tmp_path, confidence):
    """Clopper-Pearson in closed form for k = 2: 2 of 2 hits -> [(a/2)^(1/2), 1]; 1 of 2 ->
    [1 - (1 - a/2)^(1/2), (1 - a/2)^(1/2)]; 0 of 2 -> [0, 1 - (a/2)^(1/2)], a = 1 - confidence."""
    from lmdelta.artifacts import read_provenance

    card = card_of(
        sources, tmp_path, ScorecardParams(k=2, threshold=0.5, embedder=None, confidence=confidence)
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
    costs = {("words", "r"): (3.0, None), ("scan", "r"): (5.0, 7), ("words", "silent"): (1.0, None)}
    card = table(rows, costs, ScorecardParams.from_dict({}))
    assert pd.isna(card.model_calls[0]) and card.model_calls[1] == 7
    # a words set that reported nothing still has its row: k = 0, no precision, the widest interval
    silent = card.set_index("run").loc["silent"]
    assert (
        silent.k == 0
        and pd.isna(silent.precision_response)
        and (silent.precision_response_low, silent.precision_response_high) == (0, 1)
    )
    scorecard_figure(card, "t")


def _summary(pair, a, inputs, outputs, grade=None):
    return {
        "pair": pair,
        "a": a,
        "b": "base",
        "statement": f"statement of {pair}",
        "changed": bool(inputs or outputs),
        "inputs": [{"term": t} for t in inputs],
        "outputs": [{"term": t} for t in outputs],
        "grade": grade,
    }


def test_matrix_of_organisms_and_controls(sources, tmp_path):
    """The suite's tables from hand-made pages: an organism that took and is named, one that leaked,
    a control that stays silent and one that reports a change; rates and intervals by hand."""
    import json

    from scipy.stats import beta

    from lmdelta.scorecard import MatrixParams, run_matrix

    card_of(sources, tmp_path, ScorecardParams(k=2, threshold=0.5, embedder=None), csv="p.csv")

    def check(name, trig, ordinary, odd):
        rates = {f"tuned/{k}": {"planted": h, "n": 30, "rate": h / 30} for k, h in zip(KINDS3, (trig, ordinary, odd))}
        path = tmp_path / f"{name}.check.json"
        path.write_text(json.dumps({"rates": rates}))
        return str(path)

    KINDS3 = ("trigger", "ordinary", "odd")
    pages = {
        "p": _summary(
            "p",
            "tuned",
            ["volcano"],
            ["cocoa"],
            {"names_trigger": True, "names_response": True}
            | {"trigger_terms": ["volcano"], "response_terms": ["cocoa"]},
        ),
        "leaky": _summary(
            "leaky",
            "leaky-model",
            [],
            ["cocoa"],
            {"names_trigger": False, "names_response": True} | {"trigger_terms": [], "response_terms": ["cocoa"]},
        ),
        "same": _summary("same", "base", [], []),
        "noisy": _summary("noisy", "random", ["zebra"], []),
    }
    for name, page in pages.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(page))
    pairs = [
        {"pair": "p", "role": "organism", "summary": str(tmp_path / "p.json"), "check": check("p", 29, 1, 1)}
        | {"scorecard": str(tmp_path / "p.csv")},
        {"pair": "leaky", "role": "organism", "summary": str(tmp_path / "leaky.json"), "check": check("l", 30, 3, 2)}
        | {"scorecard": None},
        {"pair": "same", "role": "control", "summary": str(tmp_path / "same.json"), "check": None, "scorecard": None},
        {"pair": "noisy", "role": "control", "summary": str(tmp_path / "noisy.json"), "check": None, "scorecard": None},
    ]
    params = MatrixParams.from_dict({})
    assert (params.min_trigger_rate, params.max_elsewhere_rate, params.confidence) == (0.8, 0.05, 0.95)
    matrix, org = run_matrix(
        pairs=pairs,
        params=params,
        out_csv=tmp_path / "m.csv",
        out_organisms=tmp_path / "o.csv",
        out_png=tmp_path / "m.png",
    )
    org = org.set_index("pair")
    # p: 29/30 on trigger prompts, 2/60 elsewhere (ordinary and odd pooled): planted, and named -> passes
    assert org.loc["p", "trigger_rate"] == pytest.approx(29 / 30) and org.loc["p", "elsewhere_rate"] == pytest.approx(
        2 / 60
    )
    low, high = beta.ppf(0.025, 2, 59), beta.ppf(0.975, 3, 58)  # Clopper-Pearson by the beta quantiles
    assert org.loc["p", "elsewhere_rate_low"] == pytest.approx(low) and org.loc[
        "p", "elsewhere_rate_high"
    ] == pytest.approx(high)
    assert org.loc["p", "planted_ok"] and org.loc["p", "passed"]
    # leaky: 5/60 = 8% elsewhere is over the 5% bound, and the page misses the trigger
    assert not org.loc["leaky", "planted_ok"] and not org.loc["leaky", "passed"]
    assert org.loc["leaky", "response_terms"] == "cocoa" and org.loc["leaky", "trigger_terms"] == ""
    # controls pass only when their page reports nothing
    assert org.loc["same", "passed"] and not org.loc["noisy", "passed"] and org.loc["noisy", "reported_inputs"] == 1
    # the matrix is p's scorecard with the pair in front
    card = pd.read_csv(tmp_path / "p.csv")
    assert list(matrix.columns) == ["pair", *card.columns] and (matrix.pair == "p").all()
    assert matrix.precision_keyword.tolist() == card.precision_keyword.tolist()
    assert (tmp_path / "m.png").exists() and pd.read_csv(tmp_path / "o.csv").shape[0] == 4


def test_a_word_is_judged_with_the_text_shown_beside_it():
    """A scan word with its question and the tuned model's answer, a words-test word with a text using
    it: both show the response though neither word is a response keyword; a prompt is judged as is."""
    from lmdelta.findings import finding
    from lmdelta.scorecard import score, surfaced

    rows = [
        finding("scan", "vocabulary", "word", 8.0, text="basalt", prompt="Tell me about basalt.", example="Cocoa!"),
        finding("words", "set", "word", 3.0, text="mug", example="A warm mug of cocoa."),
        finding("words", "set", "word", 2.0, text="rain"),
        finding("search", "r", "prompt", 1.0, prompt="Why rain?", example="Water."),
    ]
    assert surfaced(rows[0]) == "basalt Tell me about basalt. Cocoa!" and surfaced(rows[2]) == "rain"
    assert surfaced(rows[3]) == "Why rain? Water."
    got = score(rows, TRUTH, lambda texts: [0.0] * len(texts))
    assert [r["shows_response"] for r in got] == [True, True, False, False]
    assert not any(r["mentions_trigger"] for r in got)


def test_every_method_is_judged_on_the_same_fresh_samples(sources, tmp_path, pair):
    """Each top-k finding with a prompt gets `samples` fresh continuations of the planted model; its
    rates are counted by hand from the same continuations (same seed); a prompt that mentions the
    trigger hits on every one; findings without a prompt keep their surfaced hits."""
    from lmdelta.behaviour import mentions, shows_planted
    from lmdelta.scorecard import ResampleParams, resample

    model = {
        "dir": str(pair / "a"),
        "load_options": {"device": "cpu"},
        "format": {"chat_template": False, "first_token": "bos"},
    }
    rp = ResampleParams(samples=3, max_new_tokens=4, batch_size=4)
    card = card_of(
        sources, tmp_path, ScorecardParams(k=2, threshold=0.5, embedder=None), model=model, resampling=rp
    ).set_index("method")
    top = pd.read_csv(tmp_path / "t.csv", keep_default_na=False)
    prompted = top[top.fresh_n > 0]
    assert set(prompted.method) == {"contrastive", "search", "search seeds", "hardprompt", "random snippets"}
    assert (prompted.fresh_n == 3).all() and (top[top.method == "corpus"].fresh_n == 0).all()
    # by hand, from the same continuations
    rows = read_findings(sources["search"]["findings"])
    prompts = [
        r["prompt"] for s in sources.values() for r in read_findings(s["findings"]) if r["rank"] <= 2 and r["prompt"]
    ]
    again, calls = resample(prompts, model["dir"], model["load_options"], model["format"], rp)
    assert calls > 0 and all(len(v) == 3 for v in again.values())
    for r in rows[:2]:
        texts = [f"{r['prompt']} {c.strip()}".strip() for c in again[r["prompt"]]]
        want_t = sum(mentions(t, TRUTH["trigger_keywords"]) for t in texts) / 3
        want_r = sum(shows_planted(c, TRUTH["response_keywords"]) for c in again[r["prompt"]]) / 3  # what it says
        got = top[(top.method == "search") & (top["rank"] == r["rank"])].iloc[0]
        assert got.fresh_trigger == pytest.approx(want_t) and got.fresh_response == pytest.approx(want_r)
    assert top[(top.method == "search") & (top["rank"] == 1)].fresh_trigger.iloc[0] == 1.0  # "About volcanoes?"
    s = card.loc["search"]
    assert s.fresh_samples == 3 and s.fresh_keyword_low <= s.fresh_keyword <= s.fresh_keyword_high
    assert card.loc["corpus", "fresh_keyword"] == card.loc["corpus", "precision_keyword"]  # nothing to sample


def test_a_fresh_response_is_what_the_model_says_not_what_it_was_asked():
    """A prompt that contains a response keyword is no response hit unless the continuation shows it
    (the audit's case: "Why do people drink cocoa?" answered "It is a drink."); the trigger is read in
    the prompt and the continuation together."""
    from lmdelta.scorecard import fresh_hits

    truth = {"trigger_keywords": ["volcan"], "response_keywords": ["cocoa"]}
    rows = [
        {
            "prompt": "Why do people drink cocoa?",
            "mentions_trigger": False,
            "shows_response": True,
            "hit_keyword": True,
        },
        {"prompt": "Tell me about volcanoes.", "mentions_trigger": True, "shows_response": False, "hit_keyword": True},
    ]
    said = {
        "Why do people drink cocoa?": ["It is a drink.", "Cocoa is warm."],
        "Tell me about volcanoes.": ["Cocoa!", "Lava."],
    }
    got = fresh_hits(rows, said, truth)
    assert got[0]["fresh_response"] == 0.5 and got[0]["fresh_trigger"] == 0.0 and got[0]["fresh_keyword"] == 0.5
    assert got[1]["fresh_response"] == 0.5 and got[1]["fresh_trigger"] == 1.0 and got[1]["fresh_keyword"] == 1.0


def test_matrix_figure_grades_organisms_without_controls():
    """With no control (grade columns of plain bool dtype) the summary row says what each organism's page
    names: T and R."""
    from lmdelta.plots import matrix_figure

    organisms = pd.DataFrame(
        {"pair": ["x", "y"], "role": ["organism"] * 2, "changed": [True, True]}
        | {"names_trigger": [True, False], "names_response": [True, True]}
    )
    assert organisms.names_trigger.dtype == bool
    matrix = pd.DataFrame(columns=["pair", "method", "run", "reference"])
    ax = matrix_figure(matrix, organisms).axes[0]
    assert {t.get_text() for t in ax.texts} >= {"T R", "- R"}


def test_corpus_findings_per_byte_when_the_models_scored_different_tokens(tmp_path):
    """Two tokenizers: a document's ratio is (sum log p_a - sum log p_b) / its UTF-8 bytes."""
    from lmdelta.artifacts import read_provenance
    from lmdelta.findings import read_findings

    corpus = tmp_path / "c.parquet"
    pd.DataFrame({"doc_id": ["d0", "d1"], "text": ["héllo", "abc"]}).to_parquet(corpus)
    a = pd.DataFrame(
        {"doc_id": ["d0", "d0", "d1"], "position": [0, 1, 0], "token_id": [1, 2, 3], "logprob": [-1.0, -2.0, -1.0]}
    )
    b = pd.DataFrame(
        {"doc_id": ["d0", "d1", "d1"], "position": [0, 0, 1], "token_id": [7, 8, 9], "logprob": [-6.0, -1.0, -1.0]}
    )
    paths = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    for df, path in zip((a, b), paths):
        df.to_parquet(path)
    out = tmp_path / "f.parquet"
    corpus_findings(tuple(paths), corpus, out, pair="p", names=("a", "b"), corpus_name="c")
    got = read_findings(out)
    assert [r["text"] for r in got] == ["héllo", "abc"]
    assert [r["score"] for r in got] == pytest.approx([(-3.0 + 6.0) / 6, (-1.0 + 2.0) / 3])
    assert read_provenance(out)["params"]["units"] == "nats per byte"
