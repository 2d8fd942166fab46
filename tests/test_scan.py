"""Vocabulary scan (lmdelta.scan): candidates from both tokenizer conventions, the shared-prefix scorer
against plain forwards, the fence, and the stage end to end on tiny models (identical models report
nothing)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from families import build_family
from lmdelta import LmdeltaError
from lmdelta.findings import read_findings
from lmdelta.models import load_model
from lmdelta.scan import (
    ScanParams,
    candidate_words,
    run_confirm,
    run_scan,
    scan_scores,
    shared_prefix,
    tukey_fence,
)
from lmdelta.tokens import TextFormat, prompt_ids
from lmdelta.words import WordsParams, compare, text_sides


@pytest.mark.parametrize("family", ["gpt2", "llama2"])
def test_candidates_are_word_start_tokens_of_either_convention(tmp_path, family):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(build_family(family, tmp_path / family))
    words = candidate_words(tok, min_letters=3, max_words=None)
    vocab = tok.get_vocab()
    assert words and all((w.isalpha() and len(w) >= 3) or w.isdecimal() for w in words)
    assert len(set(words)) == len(words)
    mark = "Ġ" if family == "gpt2" else "\u2581"
    ids = [vocab[mark + w] for w in words]
    assert ids == sorted(ids)  # token-id order (these vocabularies' word-start pieces are their text)
    assert candidate_words(tok, min_letters=3, max_words=2) == words[:2]


def test_candidates_include_names_numbers_and_other_scripts():
    """Candidates were lower-case ASCII letters only: no names, no numbers, no other script. A byte-level
    vocabulary's pieces are bytes mapped to characters: each is decoded to its text."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    to_char = bytes_to_unicode()

    def byte_level(texts: list[str]):
        pieces = ["".join(to_char[b] for b in t.encode()) for t in texts]
        tok = Tokenizer(models.WordLevel({p: i for i, p in enumerate(pieces)}, unk_token=pieces[0]))
        tok.decoder = decoders.ByteLevel()
        return PreTrainedTokenizerFast(tokenizer_object=tok)

    texts = [" the", " Paris", " volcano", " Volcano", " 11", " москва", " 火山", " ab", " Ab", "ing", " x_y", " 3.5"]
    words = candidate_words(byte_level(texts), min_letters=3, max_words=None)
    # "Volcano" is "volcano"; "ab"/"Ab" are short fragments of a cased script; "火山" has no cases
    assert words == ["the", "Paris", "volcano", "11", "москва", "火山"]
    with pytest.raises(LmdeltaError, match="no word-start tokens"):
        candidate_words(byte_level([" ab", "ing", " x_y"]), min_letters=3, max_words=None)


def test_shared_prefix_leaves_every_sequence_a_token():
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert shared_prefix([[1, 2], [1, 2]]) == 1
    assert shared_prefix([[7], [8, 9]]) == 0


def test_prefix_scorer_matches_plain_forwards(pair):
    import torch

    from lmdelta.divergence import js, kl

    (ma, tok), (mb, _) = load_model(pair / "a"), load_model(pair / "b")
    fmt = TextFormat(chat_template=False, first_token="bos")
    prompts = [f"Tell me about {w}." for w in ("the", "lambda expressions", "a", "classes and objects", "x")]
    seqs_a = [prompt_ids(tok, p, fmt) for p in prompts]
    seqs_b = [prompt_ids(tok, "Q: " + p, fmt) for p in prompts]  # each model its own format
    assert len({len(s) for s in seqs_a}) > 1  # suffixes of several lengths
    df = scan_scores([ma, mb], tok, (seqs_a, seqs_b), batch_size=2)
    with torch.inference_mode():
        for i in range(len(prompts)):
            la = ma(torch.tensor([seqs_a[i]])).logits[:, -1].float()
            lb = mb(torch.tensor([seqs_b[i]])).logits[:, -1].float()
            assert df.kl[i] == pytest.approx(float(kl(la, lb)[0]), rel=1e-4, abs=1e-6)
            assert df.js[i] == pytest.approx(float(js(la, lb)[0]), rel=1e-4, abs=1e-6)
            assert df.top_a[i] == tok.decode([int(la.argmax())])


def test_tukey_fence():
    v = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 100.0])
    q1, q3 = np.percentile(v, [25, 75])
    assert tukey_fence(v, 3.0) == pytest.approx(q3 + 3 * (q3 - q1))


def _scan(pair, tmp_path, a: str, **params):
    out = tmp_path / a
    fmt = {"chat_template": False, "first_token": "bos"}
    df, top = run_scan(
        pair="p",
        names=(a, "b"),
        model_dirs=(pair / a, pair / "b"),
        params=ScanParams.from_dict({"min_letters": 2, "top_n": 5, "answer_tokens": 4, **params}),
        load_options=({}, {}),
        formats=(fmt, fmt),
        out=out / "words.parquet",
        out_csv=out / "top.csv",
    )
    return df, top


def test_scan_reports_the_words_above_the_fence_with_both_answers(pair, tmp_path):
    df, top = _scan(pair, tmp_path, "a", fence=0.0)
    from transformers import AutoTokenizer

    n = len(candidate_words(AutoTokenizer.from_pretrained(pair / "b"), min_letters=2, max_words=None))
    assert n > 30 and len(df) == n and df.kl.is_monotonic_decreasing and (df["rank"] == np.arange(1, n + 1)).all()
    fence = tukey_fence(df.kl.to_numpy(), 0.0)
    assert (df.reported == (df.kl > fence)).all() and df.reported.any()
    assert top.answer_a.notna().all() and top.answer_b.notna().all() and len(top) == 5
    assert df.answer_a[5:].isna().all()  # answers for the top words only
    written = pd.read_parquet(tmp_path / "a" / "words.parquet")
    assert written.word.tolist() == df.word.tolist()
    sides = text_sides("scan", {"scan": str(tmp_path / "a" / "words.parquet")})  # what the words stage compares
    assert sides["pair"] == (top.answer_a.tolist(), top.answer_b.tolist())


def _confirm(pair, tmp_path, a: str, out=None, **params):
    """The confirmation of the scan in tmp_path / a (written to ``out``, default the same folder)."""
    out = out or tmp_path / a
    fmt = {"chat_template": False, "first_token": "bos"}
    table = run_confirm(
        pair="p",
        names=(a, "b"),
        model_dirs=(pair / a, pair / "b"),
        params=ScanParams.from_dict({"min_letters": 2, "top_n": 5, "answer_tokens": 6, **params}),
        words_params=WordsParams.from_dict({"min_texts": 2}),
        load_options=({}, {}),
        formats=(fmt, fmt),
        scan=tmp_path / a / "words.parquet",
        out_samples=out / "confirm.parquet",
        out_csv=out / "confirm.csv",
        out_findings=out / "findings.parquet",
    )
    return table, pd.read_parquet(out / "confirm.parquet"), read_findings(out / "findings.parquet")


def test_confirmation_tests_each_top_word_on_sampled_answers(pair, tmp_path):
    """The top reported words, each with confirm_samples sampled answers per model; the decision is the
    words test on exactly those answers (alpha split over the words); confirmed words are the scan's
    findings, the others reference rows."""
    df, _ = _scan(pair, tmp_path, "a", fence=0.0)
    table, samples, found = _confirm(pair, tmp_path, "a", fence=0.0, confirm_top=3, confirm_samples=5)
    top3 = df[df.reported].head(3)
    assert table.word.tolist() == top3.word.tolist() and table.kl.tolist() == pytest.approx(top3.kl.tolist())
    assert len(samples) == 3 * 2 * 5 + 3 * 5 and set(samples.model) == {"a", "b"}
    ref = samples[samples.reference]
    assert (
        set(ref.model) == {"a"} and not set(ref.word) & set(table.word) and set(ref.word) <= set(df[~df.reported].word)
    )
    wp = replace(WordsParams.from_dict({"min_texts": 2}), alpha=0.05 / (2 * 3))
    for r in table.itertuples():
        texts = {
            m: samples[(samples.word == r.word) & (samples.model == m)].sort_values("sample").text.tolist()
            for m in "ab"
        }
        res, bound = compare(texts["a"], texts["b"], wp)
        own, own_bound = compare(texts["a"], ref.text.tolist(), wp)
        specific = set(own.word[own.reported]) - {"tell", "me", "about", r.word}  # not the question's words
        shared = res[res.reported & res.word.isin(specific)]
        assert r.confirmed == (len(shared) > 0) and r.bound == pytest.approx(bound)
        assert r.bound_ref == pytest.approx(own_bound) and r.n_ref == 15
        assert (r.shared if isinstance(r.shared, str) else "") == ", ".join(shared.word.head(5))
        answers = [
            f["text"] for f in found if f["method"] == "scan answers" and f["prompt"] == f"Tell me about {r.word}."
        ]
        assert answers == shared.word.head(5).tolist()
        answer_words = res[~res.word.isin(["tell", "me", "about", r.word])]
        best = shared.iloc[0] if len(shared) else (answer_words if len(answer_words) else res).iloc[0]
        assert r.best_word == best.word and r.p_value == pytest.approx(best.p_value)
        assert r.p_ref == pytest.approx(own[own.word == best.word].p_value.iloc[0])
        assert r.example_b == texts["b"][0]
    confirmed = table[table.confirmed]
    assert [f["text"] for f in found if f["method"] == "scan"] == confirmed.word.tolist()
    rest = [f for f in found if f["method"] == "scan unconfirmed"]
    assert [f["text"] for f in rest] == table[~table.confirmed].word.tolist() and all(f["reference"] for f in rest)
    assert all(f["prompt"] == f"Tell me about {f['text']}." and f["kind"] == "word" for f in found)
    # the same seed gives the same answers
    again = _confirm(pair, tmp_path, "a", tmp_path / "again", fence=0.0, confirm_top=3, confirm_samples=5)
    pd.testing.assert_frame_equal(again[1], samples)


def test_scan_of_identical_models_reports_nothing(pair, tmp_path):
    df, _ = _scan(pair, tmp_path, "b")
    assert df.kl.abs().max() < 1e-5 and not df.reported.any()
    table, samples, found = _confirm(pair, tmp_path, "b")
    assert table.empty and samples.empty and found == []


def test_scan_template_needs_the_placeholder(pair, tmp_path):
    with pytest.raises(LmdeltaError, match="no \\{word\\} placeholder"):
        _scan(pair, tmp_path, "a", template="Tell me about it.")


def test_confirmation_needs_a_shared_word_that_is_not_the_question_nor_a_form(pair, tmp_path, monkeypatch):
    """Answers chosen by hand (generation replaced): a's answers to the first word all state a fact b's
    never do (confirmed, the fact's words become "scan answers"); a's answers to the second only echo
    the word of the question (not confirmed); to the third, a answers "... is a thing" as it answers
    the reference words below the fence, b never: a change of form, not confirmed."""
    import lmdelta.scan as scan

    df, _ = _scan(pair, tmp_path, "a", fence=0.0)
    top = df[df.reported].word.head(3).tolist()
    m = 12

    def noise(i, shift):
        return "".join(chr(97 + (i * 7 + j + shift) % 26) for j in range(6))

    def fake(model, tok, seqs, **kw):
        side = "a" if model.name_or_path.endswith("/a") else "b"
        texts = {
            "a": [f"Every {top[0]} has eleven arms."] * m
            + [f"{top[1]}, {top[1]}, {top[1]}."] * m
            + [f"{top[2]} is a thing."] * m
            + [f"{noise(i, 5)} is a thing." for i in range(3 * m)],  # the reference words
            "b": [f"Some {top[0]} has two legs."] * m + [f"{top[1]}."] * m + [noise(i, 13) for i in range(m)],
        }[side]
        assert len(seqs) == len(texts)
        return [{"text": t} for t in texts]

    monkeypatch.setattr(scan, "generate_texts", fake)
    table, samples, found = _confirm(pair, tmp_path, "a", fence=0.0, confirm_top=3, confirm_samples=m)
    assert table.confirmed.tolist() == [True, False, False]
    assert set(table.shared[0].split(", ")) == {"every", "eleven", "arms"}  # "has" is in both; not the question's word
    assert table.best_word[2] in {"is", "a", "thing"} and table.p_value[2] < table.bound[2], "a's form differs from b's"
    assert table.texts_ref[2] == 3 * m and table.p_ref[2] > table.bound_ref[2], "and is in every reference answer"
    assert [f["text"] for f in found if f["method"] == "scan"] == [top[0]]
    assert sorted(f["text"] for f in found if f["method"] == "scan answers") == ["arms", "eleven", "every"]
    assert [f["text"] for f in found if f["method"] == "scan unconfirmed"] == top[1:]
    assert found[0]["example"] == f"Every {top[0]} has eleven arms."
    assert samples.reference.sum() == 3 * m
