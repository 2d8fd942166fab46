"""Words that changed: which words the tuned model's texts use more than the base model's.

For every text set the workflow produces for a pair, the "a side" (texts of, or steered towards, the
tuned model) is compared with its reference, the "b side". The unit of analysis is the text: a word
counts once per text that contains it, so one sample stuck repeating a word counts once, not forty
times, and texts are the independent draws the test below assumes. Words are runs of letters of any
script (apostrophes and hyphens inside a word kept), numbers ("11", "3.14") and, in scripts written
without spaces (Chinese, Japanese), single characters, all lower-cased; punctuation is not a word.
Phrases are tested beside words (``ngrams``: runs of up to two words within a clause, so a response
"11 arms" or "hot cocoa" is a term of its own); a reported phrase is kept only when one of its words
is reported on its own and the phrase is more significant than each reported word inside it (it
refines a change the words show; "it is" where neither word changed is a change of form).

Score: the log-odds ratio of the test's own 2x2 table (texts of each side with the word, and without
it), with Haldane and Anscombe's correction (0.5 added to each cell, so a word absent from one side
has a finite ratio):

    delta_w = log((y_a + 0.5) / (n_a - y_a + 0.5)) - log((y_b + 0.5) / (n_b - y_b + 0.5)),
    se(delta_w) = sqrt(sum of 1 / (cell + 0.5) over the four cells) (Woolf),   z_w = delta_w / se,

where y are the texts of each side that contain the word and n the sides' numbers of texts. So delta
is a property of the texts alone: the same share of texts with the word gives the same delta however
many other words the texts have (a corpus-level log-odds, with the sum of all word counts as n, moves
with how many distinct words each text has: a longer-winded fine-tune had its real changes
suppressed, a terse one inflated; the audit of 2026-12-07).

Which words are reported: z's normal approximation is poor for rare words (a word in 6 of 40 tuned
texts and in none of 160 base texts has z near 2.5 whatever the prior), so the decision is an exact
test: the one-sided hypergeometric (Fisher) p-value that as many of the texts containing the word
fall on the a side, against the comparison's family-wise level with Tarone's (1990) Bonferroni correction,
which counts only the words that could reach significance at all given how many texts contain them
(a word in two texts never can). A word must also be in at least ``min_texts`` a-side texts, and its
effect must reach ``min_log_odds`` (delta >= log 4 by default: the odds that a text uses it at least
quadruple), the floor of a volcano plot: on hundreds of texts the test alone reports common words
whose share moved a little (every fine-tuned organism of the suite has "is" in 193-220 of its 320
completions against the base model's 121: odds ratios 2.5-3.6, delta 0.92-1.29), which crowd out the
words that changed (the planted response is in about a third of the tuned texts and none of the
base's: delta above 4). Filtering after the test keeps its family-wise bound. Words are ranked by that p-value, then by z (z alone would put a word in
8 of 40 tuned texts and 2 of 320 base texts above one in 8 and 0, because the prior's variance term is
largest for unseen words). Two identical sides report nothing: every word then splits in proportion
to the sides' sizes.

One bound for the verdict: the summary calls a pair changed when any tested comparison reports a word
(the sets whose sides are made the same way, below, and the scan's confirmation). ``alpha`` is that
verdict's family-wise level: the plan (``lmdelta.plan.Plan.verdict_tests``) splits it over the pair's
tested comparisons (Bonferroni, ``WordsParams.verdict_tests``), so a pair whose two models' outputs are
distributed identically is called changed with probability at most ``alpha`` however many prompt sets
it has (each set at ``alpha`` had put the bound at ``alpha`` times their number: 0.15 for the demo;
tests/test_words.py simulates it). The other sets (contrastive texts, steered answers) are rankings and
keep ``alpha`` for their own table.

Sets per pair (``lmdelta.plan.Plan.words_sets``): ``completions-<promptset>`` (a's completions against
b's), ``contrastive-<run>`` (the contrastive texts against b's completions of the same prompt set),
``scan-vocabulary`` (a's answers to the scan's top words against b's: those words were chosen because
the answers differ, so this set says what the tuned model says instead, not how often) and
``lens-<run>`` (b steered along the pair's activation difference against b unsteered; b steered along
each control's difference is a reference comparison, method ``words control``).

What elicits it (method ``elicit``, one run per prompt set with completions): the words the test
reports in a's completions of a prompt set are the change's outputs. For each output word on its own,
a prompt elicits it when the share of a's completions of the prompt that use the word exceeds b's
share by at least ``elicit_share``; the same test then compares the prompts that elicit it against
those that do not (the unit is the prompt, each counted once; the family-wise level split over the
output words): its reported words say what kind of request brings the change
out (a style quirk on poems and stories has no topic word for the vocabulary scan to find, but its
prompts share "poem" and "story"). A change the prompt set never elicits (a topic it does not ask
about) reports nothing.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import regex
from scipy.stats import hypergeom

from lmdelta import LmdeltaError
from lmdelta.artifacts import Provenance, write_csv, write_parquet
from lmdelta.config import stage_spec
from lmdelta.findings import finding, words_method, write_findings

log = logging.getLogger(__name__)

# Scripts written without spaces between words: each character is a word, and the phrases (n-grams)
# of consecutive characters are its words of two or more characters.
UNSPACED = r"\p{Han}\p{Hiragana}\p{Katakana}"
WORD = regex.compile(
    rf"[{UNSPACED}]"  # one character of an unspaced script
    r"|\p{Nd}+(?:[.,]\p{Nd}+)*"  # a number: 11, 3.14, 1,000
    rf"|(?:(?![{UNSPACED}])[\p{{L}}\p{{M}}])+(?:['’-](?:(?![{UNSPACED}])[\p{{L}}\p{{M}}])+)*"  # letters, any script
)
# phrases do not run across the end of a sentence or clause
CLAUSE = regex.compile(r"[.!?;:。！？；：\n]+(?:\s|$)|[。！？；：\n]")


@stage_spec("words", internal=("verdict_tests",))
class WordsParams:
    alpha: float
    min_texts: int
    min_log_odds: float
    top_n: int
    elicit_share: float
    ngrams: int
    # the tested comparisons the pair's verdict "changed" counts (lmdelta.plan.Plan.verdict_tests):
    # ``alpha`` is the verdict's family-wise level, split (Bonferroni) over them; 1 outside the verdict
    verdict_tests: int = 1

    @property
    def level(self) -> float:
        """This comparison's family-wise level: ``alpha`` over ``verdict_tests``."""
        return self.alpha / max(self.verdict_tests, 1)


def words(text: str) -> list[str]:
    """The words of a text, lower-cased, in order: runs of letters of any script (apostrophes and
    hyphens inside kept), numbers (11, 3.14), and each character of a script written without spaces."""
    return [w.lower() for w in WORD.findall(text or "")]


UNSPACED_CHAR = regex.compile(rf"[{UNSPACED}]")


def join_words(parts: Iterable[str]) -> str:
    """Words as a phrase: a space between them, none between two characters of an unspaced script."""
    out = ""
    for w in parts:
        glued = out and UNSPACED_CHAR.fullmatch(w) and UNSPACED_CHAR.fullmatch(out[-1])
        out += w if not out or glued else " " + w
    return out


def terms_of(text: str, ngrams: int = 1) -> set[str]:
    """The words of a text and its phrases of up to ``ngrams`` consecutive words within a clause."""
    out: set[str] = set()
    for clause in CLAUSE.split(text or ""):
        ws = words(clause)
        out.update(ws)
        for n in range(2, ngrams + 1):
            out.update(join_words(ws[i : i + n]) for i in range(len(ws) - n + 1))
    return out


def text_counts(texts: Iterable[str], ngrams: int = 1) -> Counter:
    """How many of the texts contain each word (and phrase of up to ``ngrams`` words)."""
    out: Counter = Counter()
    for t in texts:
        out.update(terms_of(t, ngrams))
    return out


def dominated(df) -> np.ndarray:
    """Reported phrases that say nothing beyond the words: a phrase is kept when one of its words is
    reported on its own (the phrase refines a change the words test found: "11 arms" beside "11") and
    it is more significant than each reported shorter term inside it ("cocoa is" beside "cocoa" is
    not). A phrase of words none of which changed ("it is" where neither "it" nor "is" passes the floor)
    is a change of form, not of content."""
    best = {w: p for w, p in zip(df.word[df.reported], df.p_value[df.reported])}
    out = np.zeros(len(df), dtype=bool)
    for i in np.flatnonzero(df.reported.to_numpy()):
        w, p = df.word.iat[i], df.p_value.iat[i]
        parts = words(w)
        if len(parts) > 1:
            subs = {join_words(parts[a:b]) for a in range(len(parts)) for b in range(a + 1, len(parts) + 1)} - {w}
            out[i] = not any(x in best for x in parts) or any(x in best and best[x] <= p for x in subs)
    return out


CONTINUITY = 0.5  # Haldane-Anscombe: added to each cell of the 2x2 table


def log_odds(y_a: np.ndarray, y_b: np.ndarray, n_a: int, n_b: int) -> tuple[np.ndarray, np.ndarray]:
    """(delta, z) of a over b for each word: the log odds ratio of texts with the word against texts
    without it, ``y_a`` of ``n_a`` texts against ``y_b`` of ``n_b`` (0.5 added to each cell), and delta
    over Woolf's standard error."""
    cells = [y_a + CONTINUITY, n_a - y_a + CONTINUITY, y_b + CONTINUITY, n_b - y_b + CONTINUITY]
    delta = np.log(cells[0] / cells[1]) - np.log(cells[2] / cells[3])
    return delta, delta / np.sqrt(sum(1.0 / c for c in cells))


def tarone_tests(min_p: np.ndarray, alpha: float) -> int:
    """Tarone's number of tests: the smallest m such that at most m words can reach p <= alpha / m."""
    for m in range(1, len(min_p) + 1):
        if int((min_p <= alpha / m).sum()) <= m:
            return m
    return max(len(min_p), 1)


def compare(texts_a: list[str], texts_b: list[str], p: WordsParams):
    """Every word of either side: texts containing it (``texts_a``, ``texts_b``), ``delta`` and ``z``
    (log-odds), the exact one-sided ``p_value`` and ``reported``; ranked by p, then z. Also returns the
    p-value bound (the comparison's level, ``WordsParams.level``, over Tarone's number of tests)."""
    import pandas as pd

    ca, cb = text_counts(texts_a, p.ngrams), text_counts(texts_b, p.ngrams)
    vocab = sorted(set(ca) | set(cb))
    cols = ["word", "texts_a", "texts_b", "delta", "z", "p_value", "reported"]
    if not vocab or not texts_a or not texts_b:
        return pd.DataFrame({c: [] for c in cols}).astype({"word": str, "reported": bool}), p.level
    y_a = np.array([ca.get(w, 0) for w in vocab], dtype=float)
    y_b = np.array([cb.get(w, 0) for w in vocab], dtype=float)
    delta, z = log_odds(y_a, y_b, len(texts_a), len(texts_b))
    total, n_a, with_word = len(texts_a) + len(texts_b), len(texts_a), y_a + y_b
    p_value = hypergeom.sf(y_a - 1, total, with_word, n_a)
    min_p = hypergeom.pmf(np.minimum(with_word, n_a), total, with_word, n_a)
    bound = p.level / tarone_tests(min_p, p.level)
    df = pd.DataFrame(
        {
            "word": vocab,
            "texts_a": y_a.astype(int),
            "texts_b": y_b.astype(int),
            "delta": delta,
            "z": z,
            "p_value": p_value,
        }
    )
    df["reported"] = (df.p_value <= bound) & (df.texts_a >= p.min_texts) & (df.delta >= p.min_log_odds)
    df["reported"] &= ~dominated(df)
    order = df.sort_values(["p_value", "z", "word"], ascending=[True, False, True], kind="stable")
    return order.reset_index(drop=True)[cols], bound


def contains(text: str, term: str) -> bool:
    """Whether a text contains a word or phrase (as ``terms_of`` splits it)."""
    return term in terms_of(text, len(words(term)))


def example(word: str, texts: list[str]) -> str | None:
    """The first text that contains the word (or phrase)."""
    return next((t for t in texts if contains(t, word)), None)


def set_findings(name: str, df, texts_a: list[str], top_n: int, *, method: str = "words", reference: bool = False):
    """The reported words of one comparison as findings (kind word, score z), strongest first."""
    return [
        finding(method, name, "word", r.z, text=r.word, example=example(r.word, texts_a), reference=reference)
        for r in df[df.reported].head(top_n).itertuples()
    ]


def text_sides(kind: str, inputs: dict[str, str]) -> dict[str, tuple[list[str], list[str]]]:
    """The comparisons of one text set: label -> (a-side texts, b-side texts). ``completions``: inputs
    ``a`` and ``b`` (completions tables); ``contrastive``: ``a`` (contrastive texts) and ``b`` (b's
    completions); ``scan``: ``scan`` (the scan's words table): a's answers to the top words against b's;
    ``lens``: ``steered`` (the lens's steered answers): each comparison's answers at scales above 0
    against its unsteered answers (scale 0), the pair's first."""
    import pandas as pd

    if kind in ("completions", "contrastive"):
        return {"pair": tuple(pd.read_parquet(inputs[s], columns=["text"]).text.fillna("").tolist() for s in "ab")}
    if kind == "scan":
        top = pd.read_parquet(inputs["scan"], columns=["answer_a", "answer_b"]).dropna()
        return {"pair": (top.answer_a.tolist(), top.answer_b.tolist())}
    if kind != "lens":
        raise LmdeltaError(f"words: unknown text set kind {kind!r}")
    steered = pd.read_parquet(inputs["steered"], columns=["comparison", "scale", "text"])
    if steered.empty:  # no comparison had a difference to steer along (identical models): nothing to compare
        return {}
    unsteered = steered[steered.scale == 0]
    # every comparison's scale-0 answers are b's own, sampled with the same seed: the pair's are the reference
    ref = "pair" if (unsteered.comparison == "pair").any() else next(iter(unsteered.comparison), None)
    base = unsteered[unsteered.comparison == ref]
    if base.empty:
        raise LmdeltaError(f"{inputs['steered']}: no unsteered answers (scale 0); add 0 to lens steer.scales")
    out = {}
    for name in ["pair", *sorted(set(steered.comparison) - {"pair"})]:
        a = steered[(steered.comparison == name) & (steered.scale > 0)].text.fillna("").tolist()
        if a:
            out[name] = (a, base.text.fillna("").tolist())
    return out


def run_words(
    *,
    pair: str,
    set_name: str,
    kind: str,
    inputs: dict[str, str],
    params: WordsParams,
    out: Path,
    out_csv: Path,
    out_findings: Path,
) -> list[dict]:
    """Writes the reported and top words of every comparison of the set (``out``) and the findings:
    ``lmdelta.findings.words_method`` of the set's kind (``words`` when both sides are made the same
    way, ``words contrastive`` / ``words lens`` when not) for the pair, ``words control`` (reference
    rows) for a lens control."""
    import pandas as pd

    prov = Provenance(stage="words", params={"pair": pair, "set": set_name, "kind": kind, **vars(params)})
    tables, found = [], []
    for label, (texts_a, texts_b) in text_sides(kind, inputs).items():
        df, bound = compare(texts_a, texts_b, params)
        top = df[df.reported | (df.index < params.top_n)]
        tables.append(top.assign(comparison=label, n_texts_a=len(texts_a), n_texts_b=len(texts_b), p_bound=bound))
        control = label != "pair"
        method = "words control" if control else words_method(kind)
        found += set_findings(set_name, df, texts_a, params.top_n, method=method, reference=control)
        log.info(
            "words %s %s %s: %d of %d words reported (p <= %.2g)",
            pair,
            set_name,
            label,
            df.reported.sum(),
            len(df),
            bound,
        )
    cols = [
        "comparison",
        "word",
        "texts_a",
        "texts_b",
        "n_texts_a",
        "n_texts_b",
        "delta",
        "z",
        "p_value",
        "p_bound",
        "reported",
    ]
    table = pd.concat(tables, ignore_index=True)[cols] if tables else pd.DataFrame(columns=cols)
    write_parquet(out, table, prov)
    write_csv(out_csv, table, prov)
    write_findings(out_findings, found, prov)
    return found


def eliciting_prompts(prompts: list[dict], comp_a, comp_b, outputs: list[str], min_share: float, ngrams: int = 1):
    """One row per output word and prompt of the set: the shares of a's and of b's completions of the
    prompt that use the word, whether the prompt elicits it (a's share - b's >= ``min_share``) and a's
    first completion that uses it (``example``)."""
    import pandas as pd

    rows = []
    for p in prompts:
        texts = comp_a.text[comp_a.prompt_id == p["id"]].fillna("").tolist()
        a = [terms_of(t, ngrams) for t in texts]
        b = [terms_of(t, ngrams) for t in comp_b.text[comp_b.prompt_id == p["id"]].fillna("")]
        for w in outputs:
            share_a = sum(w in t for t in a) / len(a) if a else 0.0
            share_b = sum(w in t for t in b) / len(b) if b else 0.0
            rows.append(
                {
                    "word": w,
                    "prompt_id": p["id"],
                    "prompt": p["prompt"],
                    "share_a": share_a,
                    "share_b": share_b,
                    "elicits": bool(a) and share_a - share_b >= min_share,
                    "example": next((t for t, ws in zip(texts, a) if w in ws), None),
                }
            )
    cols = ["word", "prompt_id", "prompt", "share_a", "share_b", "elicits", "example"]
    return pd.DataFrame(rows, columns=cols)


def run_elicit(
    *,
    pair: str,
    promptset: str,
    inputs: dict[str, str],
    params: WordsParams,
    out: Path,
    out_csv: Path,
    out_findings: Path,
) -> list[dict]:
    """inputs: ``a``, ``b`` (completions tables of the prompt set), ``words`` (the words test's table
    over them), ``prompts`` (the prompt set). Writes every prompt's shares (``out``, ``out_csv``) and
    the words of eliciting prompts the test reports as findings (method ``elicit``, kind word, score z;
    prompt = the first eliciting prompt that uses the word, example = a's completion of it)."""
    import pandas as pd

    from lmdelta.promptsets import read_promptset

    prov = Provenance(stage="elicit", params={"pair": pair, "promptset": promptset, **vars(params)})
    for name, path in inputs.items():
        prov.add_input(name, Path(path))
    table = pd.read_parquet(inputs["words"])
    outputs = table[(table.comparison == "pair") & table.reported].word.tolist()
    comp_a, comp_b = (pd.read_parquet(inputs[s], columns=["prompt_id", "text"]) for s in "ab")
    prompts = read_promptset(inputs["prompts"])
    shares = eliciting_prompts(prompts, comp_a, comp_b, outputs, params.elicit_share, params.ngrams)
    # each output word on its own: a word a uses a little more everywhere ("is") elicits at random and
    # its prompts share nothing; the family-wise level is split over the output words (Bonferroni)
    per_word = replace(params, alpha=params.alpha / max(len(outputs), 1))
    best: dict[str, dict] = {}
    parts = []
    for w in outputs:
        g = shares[shares.word == w]
        on, off = g[g.elicits], g[~g.elicits]
        df, bound = compare(on.prompt.tolist(), off.prompt.tolist(), per_word)
        reported = df[df.reported].head(params.top_n)
        for r in reported.itertuples():
            first = on[on.prompt.map(lambda t, x=r.word: contains(t, x))].iloc[0]
            if r.word not in best or r.z > best[r.word]["score"]:
                best[r.word] = finding(
                    "elicit", promptset, "word", r.z, text=r.word, prompt=first.prompt, example=first.example
                )
        parts.append(
            g.assign(
                prompt_words=[", ".join(x for x in reported.word if contains(t, x)) for t in g.prompt], p_bound=bound
            )
        )
        log.info(
            "elicit %s %s: %s: %d of %d prompts elicit it; prompt words %s",
            pair,
            promptset,
            w,
            len(on),
            len(g),
            ", ".join(reported.word) or "none",
        )
    found = sorted(best.values(), key=lambda f: -f["score"])
    cols = [*shares.columns, "prompt_words", "p_bound"]
    shares = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)
    if not outputs:
        log.info("elicit %s %s: no word reported in the completions: nothing to elicit", pair, promptset)
    write_parquet(out, shares, prov)
    write_csv(out_csv, shares, prov)
    write_findings(out_findings, found, prov)
    return found


def elicit_job(job) -> None:
    """inputs: ``a``, ``b``, ``words``, ``prompts``; wildcards: ``pair``, ``promptset``; spec:
    {"params"}; outputs: ``table``, ``csv``, ``findings``."""
    run_elicit(
        pair=job.wildcards["pair"],
        promptset=job.wildcards["promptset"],
        inputs=dict(job.inputs),
        params=WordsParams.from_dict(job.spec["params"]),
        out=job.out("table"),
        out_csv=job.out("csv"),
        out_findings=job.out("findings"),
    )


def words_job(job) -> None:
    """inputs: by kind (``text_sides``); wildcards: ``pair``, ``set``; spec: {"kind", "params"};
    outputs: ``table``, ``csv``, ``findings``."""
    s = job.spec
    run_words(
        pair=job.wildcards["pair"],
        set_name=job.wildcards["set"],
        kind=s["kind"],
        inputs=dict(job.inputs),
        params=WordsParams.from_dict(s["params"]),
        out=job.out("table"),
        out_csv=job.out("csv"),
        out_findings=job.out("findings"),
    )
