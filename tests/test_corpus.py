"""Corpus stage: every format, sampling, and the real download path against a local HTTP server."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zstandard

from conftest import TEXTS, job_command, jsonl_bytes, snapshot, zst_multiframe
from lmdelta import LmdeltaError
from lmdelta.artifacts import read_provenance
from lmdelta.config import CorpusSpec, validate_config
from lmdelta.corpus import Document, build_corpus, fetch, iter_documents, sample_documents


def spec(source: dict, **sample) -> CorpusSpec:
    cfg = validate_config(
        {
            "models": {"m": {"source": {"hf": {"id": "x/y"}}}},
            "corpora": {"c": {"source": source, "sample": sample}},
        }
    )
    return CorpusSpec.from_dict("c", cfg["corpora"]["c"])


def write_formats(folder: Path) -> dict[str, Path]:
    data = jsonl_bytes()
    files = {
        "jsonl": folder / "c.jsonl",
        "jsonl.zst": folder / "c.jsonl.zst",
        "jsonl.gz": folder / "c.jsonl.gz",
        "parquet": folder / "c.parquet",
        "txt": folder / "c.txt",
    }
    files["jsonl"].write_bytes(data)
    files["jsonl.zst"].write_bytes(zst_multiframe(data))
    files["jsonl.gz"].write_bytes(gzip.compress(data))
    pd.DataFrame({"text": TEXTS, "source": ["x"] * len(TEXTS)}).to_parquet(files["parquet"])
    files["txt"].write_text("\n\n".join(TEXTS) + "\n")
    return files


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.zst", "jsonl.gz", "parquet", "txt"])
def test_every_format_reads_the_same_documents(tmp_path, fmt):
    path = write_formats(tmp_path)[fmt]
    docs = list(iter_documents(spec({"file": {"path": str(path)}}), None))
    assert [d.text.strip() for d in docs] == [t.strip() for t in TEXTS]
    assert [d.source_index for d in docs] == list(range(len(TEXTS)))
    if fmt.startswith("jsonl"):
        assert docs[4].meta == {"meta": {"pile_set_name": "set1"}}


def _docs(n):
    return (Document(i, "x" * (i + 1), {}) for i in range(n))


def test_random_sample_is_uniform_and_seeded():
    # Inclusion frequency of each of 10 documents in samples of 3 should be 0.3 (independent check
    # of the reservoir against the definition of a uniform sample without replacement).
    counts = np.zeros(10)
    for seed in range(3000):
        kept, _ = sample_documents(_docs(10), n_docs=3, method="random", seed=seed, min_chars=1, max_chars=None)
        assert len(kept) == 3 and len({d.source_index for d in kept}) == 3
        assert [d.source_index for d in kept] == sorted(d.source_index for d in kept)
        counts[[d.source_index for d in kept]] += 1
    np.testing.assert_allclose(counts / 3000, 0.3, atol=0.035)
    a, _ = sample_documents(_docs(50), n_docs=5, method="random", seed=7, min_chars=1, max_chars=None)
    b, _ = sample_documents(_docs(50), n_docs=5, method="random", seed=7, min_chars=1, max_chars=None)
    assert a == b


def test_first_and_length_filter():
    kept, counts = sample_documents(_docs(100), n_docs=3, method="first", seed=0, min_chars=5, max_chars=50)
    assert [len(d.text) for d in kept] == [5, 6, 7]
    assert counts == {"read": 7, "eligible": 3, "kept": 3}, "first stops reading once it has n_docs"
    kept, counts = sample_documents(_docs(100), n_docs=None, method="random", seed=0, min_chars=5, max_chars=50)
    assert [len(d.text) for d in kept] == list(range(5, 51)) and counts["read"] == 100


def test_download_verify_sample(tmp_path, http_server):
    www, base = http_server
    payload = zst_multiframe(jsonl_bytes())
    (www / "val.jsonl.zst").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    s = spec({"url": {"url": f"{base}/val.jsonl.zst", "sha256": digest}}, n_docs=5, seed=1, min_chars=40)
    raw = tmp_path / "resources" / "raw"
    fetch(s, raw, tries=1)
    assert raw.read_bytes() == payload
    assert read_provenance(raw)["params"]["source"]["url"]["sha256"] == digest
    out = tmp_path / "c.parquet"
    counts = build_corpus(s, raw, out)
    df = pd.read_parquet(out)
    assert counts["read"] == 12 and len(df) == 5
    assert list(df.columns) == ["doc_id", "text", "n_chars", "source_index", "meta"]
    assert all(TEXTS[i] == t for i, t in zip(df.source_index, df.text))
    assert (df.n_chars == df.text.str.len()).all()
    assert json.loads(df.meta.iloc[0])["meta"]["pile_set_name"].startswith("set")
    rec = read_provenance(out)
    assert rec["inputs"]["raw"]["sha256"] == digest and rec["params"]["sample"]["n_docs"] == 5


def test_download_without_sha256_warns_with_the_digest(tmp_path, http_server, caplog):
    www, base = http_server
    (www / "c.jsonl").write_bytes(jsonl_bytes())
    fetch(spec({"url": {"url": f"{base}/c.jsonl"}}), tmp_path / "raw", tries=1)
    assert hashlib.sha256(jsonl_bytes()).hexdigest() in caplog.text and "no sha256" in caplog.text


def test_checksum_mismatch_writes_nothing(tmp_path, http_server):
    www, base = http_server
    (www / "c.jsonl").write_bytes(jsonl_bytes())
    dest = tmp_path / "res" / "raw"
    with pytest.raises(LmdeltaError, match=r"corpora\.c: sha256 mismatch .* fix the sha256"):
        fetch(spec({"url": {"url": f"{base}/c.jsonl", "sha256": "0" * 64}}), dest, tries=1)
    assert list((tmp_path / "res").iterdir()) == []


def test_unreachable_url_and_http_error(tmp_path, http_server, closed_port_url):
    with pytest.raises(LmdeltaError, match=r"cannot reach http://127\.0\.0\.1:\d+/corpus\.jsonl .* check the URL"):
        fetch(spec({"url": {"url": closed_port_url}}), tmp_path / "raw", tries=2, timeout_s=2)
    _, base = http_server
    with pytest.raises(LmdeltaError, match="HTTP 404"):
        fetch(spec({"url": {"url": f"{base}/missing.jsonl"}}), tmp_path / "raw", tries=1)
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "not-zstd"])
def test_damaged_zstd_fails_and_keeps_existing_artifact(tmp_path, damage):
    good = zstandard.ZstdCompressor().compress(jsonl_bytes() * 50)
    bad = {
        "truncated": good[: len(good) // 2],
        "corrupt": good[:40] + bytes(200) + good[240:],
        "not-zstd": b"this is plain text, not zstd\n" * 10,
    }[damage]
    raw = tmp_path / "raw.jsonl.zst"
    raw.write_bytes(bad)
    out = tmp_path / "out" / "c.parquet"
    out.parent.mkdir()
    out.write_bytes(b"previous artifact")
    before = snapshot(out.parent)
    with pytest.raises(LmdeltaError, match=r"(zstd|corrupt|truncated).*fetch again"):
        build_corpus(spec({"file": {"path": str(raw)}}), None, out)
    assert snapshot(out.parent) == before


def test_missing_text_field_broken_json_and_empty_result(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_bytes(jsonl_bytes([{"body": "x"}]))
    with pytest.raises(LmdeltaError, match=r"line 1 has no field 'text' \(has: body\); set text_field"):
        build_corpus(spec({"file": {"path": str(p)}}), None, tmp_path / "o.parquet")
    p.write_bytes(jsonl_bytes()[:50] + b"\n" + jsonl_bytes())
    with pytest.raises(LmdeltaError, match="line 1 is not valid JSON"):
        build_corpus(spec({"file": {"path": str(p)}}), None, tmp_path / "o.parquet")
    p.write_bytes(jsonl_bytes())
    with pytest.raises(LmdeltaError, match="no documents left after filtering .* loosen sample.min_chars"):
        build_corpus(spec({"file": {"path": str(p)}}, min_chars=10**6), None, tmp_path / "o.parquet")
    assert not (tmp_path / "o.parquet").exists()


def test_non_utf8_bytes_are_an_error(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_bytes(b'{"text": "caf\xe9 latin-1"}\n')
    with pytest.raises(LmdeltaError, match="c.jsonl is not UTF-8 text"):
        build_corpus(spec({"file": {"path": str(p)}}), None, tmp_path / "o.parquet")
    assert not (tmp_path / "o.parquet").exists()


def test_local_file_checksum(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_bytes(jsonl_bytes())
    with pytest.raises(LmdeltaError, match="sha256 mismatch"):
        build_corpus(spec({"file": {"path": str(p), "sha256": "1" * 64}}), None, tmp_path / "o.parquet")
    build_corpus(
        spec({"file": {"path": str(p), "sha256": hashlib.sha256(jsonl_bytes()).hexdigest()}}),
        None,
        tmp_path / "o.parquet",
    )
    assert len(pd.read_parquet(tmp_path / "o.parquet")) == len(TEXTS)


def test_hf_dataset_from_a_local_dataset_folder(tmp_path):
    ds_dir = tmp_path / "my_dataset" / "data"
    ds_dir.mkdir(parents=True)
    pd.DataFrame({"content": TEXTS[:6], "label": list(range(6))}).to_parquet(
        ds_dir / "validation-00000-of-00001.parquet"
    )
    s = spec(
        {"hf_dataset": {"name": str(tmp_path / "my_dataset"), "split": "validation", "text_field": "content"}},
        n_docs=4,
        method="first",
    )
    raw = tmp_path / "raw"
    fetch(s, raw)
    build_corpus(s, raw, tmp_path / "o.parquet")
    df = pd.read_parquet(tmp_path / "o.parquet")
    assert list(df.text) == TEXTS[:4]
    assert [json.loads(m)["label"] for m in df.meta] == [0, 1, 2, 3]
    bad = spec({"hf_dataset": {"name": str(tmp_path / "my_dataset"), "split": "validation", "text_field": "text"}})
    with pytest.raises(LmdeltaError, match=r"no column 'text' \(columns: content, label\)"):
        fetch(bad, tmp_path / "raw2")


def test_builtin_python_docs(tmp_path):
    s = spec({"builtin": {"name": "python_docs"}}, n_docs=20, min_chars=200)
    build_corpus(s, None, tmp_path / "o.parquet")
    df = pd.read_parquet(tmp_path / "o.parquet")
    assert len(df) == 20 and (df.text.str.strip().str.len() >= 200).all()
    assert df.doc_id.is_unique and df.doc_id.str.startswith("c-").all()
    assert read_provenance(tmp_path / "o.parquet")["inputs"]["builtin"]["name"] == "python_docs"


def test_cli_error_is_one_line_with_exit_status_2(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_bytes(jsonl_bytes([{"body": "x"}]))
    s = json.dumps(
        {
            "source": {"file": {"path": str(p), "text_field": "text"}},
            "sample": {"n_docs": None, "method": "random", "seed": 0, "min_chars": 1, "max_chars": None},
        }
    )
    r = subprocess.run(
        job_command(
            tmp_path / "jobs",
            "corpus_sample",
            outputs={"corpus": tmp_path / "o.parquet"},
            params={"spec": json.loads(s)},
            wildcards={"corpus": "c"},
            log=tmp_path / "log",
        ),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("lmdelta: error: corpora.c: c.jsonl line 1 has no field 'text'")
    assert "Traceback" not in r.stderr
    assert "has no field 'text'" in (tmp_path / "log").read_text()
    assert not (tmp_path / "o.parquet").exists()
