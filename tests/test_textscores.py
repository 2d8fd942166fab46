"""Text-aligned scores: words tile the text, token groups, the straddle rule, and sums that equal the
document's surprisal for every family's tokenizer (real scores on every family: tests/test_families.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lmdelta import LmdeltaError
from lmdelta.textscores import align, join_words, text_scores, token_groups, word_spans

TEXTS = [
    "  Héllo wörld,\n\nthe café 🙂 costs 3.50€!  ok\ttab \u00a0nbsp end.\n",
    "x",
    " ",
    "a  b\n",
    "日本語のテキスト。 Done",
]


@pytest.mark.parametrize("text", [*TEXTS, "", "one", "  lead", "trail  ", "a\n\nb c"])
def test_words_tile_the_text(text):
    spans = word_spans(text)
    assert "".join(text[s:e] for s, e in spans) == text
    assert all(e > s for s, e in spans)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    # every word but the first starts with its spaces and holds exactly one run of non-space characters
    for s, e in spans:
        assert len(text[s:e].split()) <= 1


def test_word_rule_by_example():
    t = "  The cat\n\nsat. "
    assert [t[s:e] for s, e in word_spans(t)] == ["  The", " cat", "\n\nsat. "]
    assert word_spans("   ") == [(0, 3)]


def test_token_groups_merge_overlaps_and_empty_spans():
    # a dummy-prefix mark sharing the first space, a character split into three byte tokens, an empty span
    offsets = [(0, 1), (0, 1), (1, 2), (2, 3), (2, 3), (2, 3), (3, 3), (3, 5)]
    assert token_groups(offsets, 5) == [(0, 2, 0, 1), (2, 3, 1, 2), (3, 7, 2, 3), (7, 8, 3, 5)]
    # empty spans at the start join the first group
    assert token_groups([(0, 0), (0, 2)], 2) == [(0, 2, 0, 2)]
    assert token_groups([(0, 0)], 3) == [(0, 1, 0, 3)]


def _align(*args):
    return tuple(pd.DataFrame(cols) for cols in align(*args))


def test_straddling_token_counts_in_the_word_of_its_first_non_space_character():
    text = "end.\n\nThe"  # words "end." and "\n\nThe"
    offsets = [(0, 3), (3, 6), (6, 9)]  # "end", ".\n\n", "The"
    s = np.array([1.0, 2.0, 4.0])
    w, b = _align(text, offsets, s, np.ones(3, bool))
    assert w.text.tolist() == ["end.", "\n\nThe"]
    assert w.surprisal.tolist() == [3.0, 4.0]
    assert w.exact.tolist() == [False, False]  # ".\n\n" reaches into the second word
    np.testing.assert_allclose(b.surprisal, [1 / 3] * 3 + [2 / 3] * 3 + [4 / 3] * 3)
    # a token of spaces only counts in the word its first character is in: the next one
    w, _ = _align("a \n b", [(0, 1), (1, 3), (3, 5)], np.array([1.0, 2.0, 4.0]), np.ones(3, bool))
    assert w.text.tolist() == ["a", " \n b"] and w.surprisal.tolist() == [1.0, 6.0] and w.exact.all()


def test_uncovered_characters_go_with_the_group_after_them():
    w, b = _align("a b ", [(0, 1), (2, 3)], np.array([1.0, 4.0]), np.ones(2, bool))
    np.testing.assert_allclose(b.surprisal, [1.0, 4 / 3, 4 / 3, 4 / 3])  # " b " : the trailing space too
    assert w.surprisal.tolist() == [1.0, 4.0]


def test_unscored_tokens_count_zero_and_mark_their_units():
    w, b = _align("ab cd", [(0, 2), (2, 5)], np.array([0.0, 3.0]), np.array([False, True]))
    assert w.complete.tolist() == [False, True]
    assert b.complete.tolist() == [False, False, True, True, True]


@pytest.fixture(scope="module")
def family_tokenizers(tmp_path_factory):
    from transformers import AutoTokenizer

    from families import FAMILIES, build_tokenizer

    out = {}
    for name, fam in sorted(FAMILIES.items()):
        d = tmp_path_factory.mktemp(name.replace(".", "_"))
        build_tokenizer(fam, d, instruct=False)
        out[name] = AutoTokenizer.from_pretrained(d)
    return out


def _fake_scores(tok, doc_ids, texts, seed=0, skip_first=False):
    rng = np.random.default_rng(seed)
    rows = []
    for d, t in zip(doc_ids, texts):
        ids = tok(t, add_special_tokens=False).input_ids
        pos = np.arange(1 if skip_first else 0, len(ids))
        rows.append(
            pd.DataFrame(
                {"doc_id": d, "position": pos, "token_id": np.asarray(ids)[pos], "logprob": -rng.random(len(pos)) * 6}
            )
        )
    return {d: g for d, g in pd.concat(rows).groupby("doc_id", sort=False)}


def test_sums_equal_document_sums_and_families_join_on_words(family_tokenizers):
    doc_ids = [f"d{i}" for i in range(len(TEXTS))]
    tables = {}
    for name, tok in family_tokenizers.items():
        for skip_first in (False, True):
            tokens = _fake_scores(tok, doc_ids, TEXTS, skip_first=skip_first)
            words, bytes_ = text_scores(tok, doc_ids, TEXTS, tokens)
            for d, t in zip(doc_ids, TEXTS):
                total = -tokens[d].logprob.sum() if d in tokens else 0.0  # one token, not scored
                assert words[words.doc_id == d].surprisal.sum() == pytest.approx(total, abs=1e-9), name
                assert bytes_[bytes_.doc_id == d].surprisal.sum() == pytest.approx(total, abs=1e-9), name
                assert "".join(words[words.doc_id == d].text) == t
                assert (bytes_.doc_id == d).sum() == len(t.encode("utf-8"))
            assert words.complete.all() != skip_first
        tables[name] = words
    joined = join_words(tables)
    assert len(joined) == len(tables["gpt2"])
    assert "".join(joined.text) == "".join(TEXTS), "no character lost or doubled"
    assert {f"surprisal:{n}" for n in tables} <= set(joined.columns)


def test_scores_of_another_tokenizer_are_refused(family_tokenizers):
    toks = family_tokenizers
    tokens = _fake_scores(toks["gpt2"], ["d0"], TEXTS[:1])
    with pytest.raises(LmdeltaError, match="another tokenizer"):
        text_scores(toks["llama2"], ["d0"], TEXTS[:1], tokens)


def test_join_refuses_tables_of_different_texts(family_tokenizers):
    tok = family_tokenizers["gpt2"]
    a = text_scores(tok, ["d0"], ["one two"], _fake_scores(tok, ["d0"], ["one two"]))[0]
    b = text_scores(tok, ["d0"], ["one three"], _fake_scores(tok, ["d0"], ["one three"]))[0]
    with pytest.raises(LmdeltaError, match="different corpora"):
        join_words({"a": a, "b": b})


def test_join_stage_writes_the_table_and_its_figure(family_tokenizers, tmp_path):
    from lmdelta.artifacts import read_provenance, write_parquet
    from lmdelta.textscores import run_join

    paths = []
    for name in ("gpt2", "gemma3"):
        tok = family_tokenizers[name]
        words = text_scores(tok, ["d0", "d1"], TEXTS[:2], _fake_scores(tok, ["d0", "d1"], TEXTS[:2]))[0]
        paths.append(tmp_path / f"{name}.words.parquet")
        write_parquet(paths[-1], words)
    pairs = [{"pair": "x", "a": "gpt2", "b": "gemma3"}]
    out = run_join(paths, ["gpt2", "gemma3"], tmp_path / "w.parquet", tmp_path / "w.png", corpus_name="c", pairs=pairs)
    assert (tmp_path / "w.png").stat().st_size > 0
    assert pd.read_parquet(tmp_path / "w.parquet").equals(out)
    assert read_provenance(tmp_path / "w.parquet")["params"]["pairs"] == pairs
