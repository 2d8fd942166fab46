"""Atomic writes and provenance records."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pandas as pd
import pytest

from lmdelta import LmdeltaError
from lmdelta.artifacts import Provenance, atomic_path, prov_path, read_provenance, write_json, write_parquet


def test_parquet_has_provenance_sidecar_bound_to_its_bytes(tmp_path):
    out = tmp_path / "t.parquet"
    prov = Provenance(stage="test", params={"window": 8, "log_base": "e"}, seed=3)
    (tmp_path / "input.txt").write_text("abc")
    prov.add_input("text", tmp_path / "input.txt")
    write_parquet(out, pd.DataFrame({"x": [1, 2, 3]}), prov)
    rec = read_provenance(out)
    assert rec["artifact_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert rec["stage"] == "test" and rec["params"] == {"window": 8, "log_base": "e"} and rec["seed"] == 3
    assert rec["inputs"]["text"]["sha256"] == hashlib.sha256(b"abc").hexdigest()
    for key in ("packages", "git_commit", "device", "wall_time_s", "schema_version", "started_utc"):
        assert key in rec
    assert rec["packages"]["pandas"] == pd.__version__


def test_same_table_gives_identical_bytes(tmp_path):
    df = pd.DataFrame({"doc_id": ["a", "b"], "v": [0.5, 1.5]})
    write_parquet(tmp_path / "a.parquet", df, Provenance(stage="t"))
    write_parquet(tmp_path / "b.parquet", df, Provenance(stage="t"))
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_failed_write_leaves_old_artifact_and_no_temp_files(tmp_path):
    out = tmp_path / "r.json"
    write_json(out, {"v": 1}, Provenance(stage="t"))
    before = out.read_bytes(), prov_path(out).read_bytes()
    with pytest.raises(RuntimeError, match="boom"), atomic_path(out, Provenance(stage="t")) as tmp:
        tmp.write_text('{"v": 2, "half')
        raise RuntimeError("boom")
    assert (out.read_bytes(), prov_path(out).read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.json.prov.json"]


def test_disk_full_while_writing_leaves_nothing_half_written(tmp_path, monkeypatch):
    out = tmp_path / "t.parquet"
    write_parquet(out, pd.DataFrame({"x": [1]}), Provenance(stage="t"))
    before = out.read_bytes()
    import pyarrow.parquet as pq

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    with pytest.raises(LmdeltaError, match="no space left on the device while writing .*t.parquet.*free space"):
        write_parquet(out, pd.DataFrame({"x": [2]}), Provenance(stage="t"))
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet", "t.parquet.prov.json"]


def test_stale_provenance_is_detected(tmp_path):
    out = tmp_path / "r.json"
    write_json(out, {"v": 1}, Provenance(stage="t"))
    out.write_text('{"v": 2}\n')  # changed behind lmdelta's back
    with pytest.raises(LmdeltaError, match="does not match the artifact"):
        read_provenance(out)
    assert read_provenance(out, verify=False)["stage"] == "t"


def test_folder_artifact_gets_provenance_inside(tmp_path):
    out = tmp_path / "model"
    with atomic_path(out, Provenance(stage="t")) as tmp:
        tmp.mkdir()
        (tmp / "w.bin").write_bytes(b"123")
    assert (out / "provenance.json").exists()
    (out / ".snakemake_timestamp").write_text("")  # added by Snakemake after the job; not part of the digest
    assert read_provenance(out)["stage"] == "t"


def test_provenance_command_prints_the_record(tmp_path):
    out = tmp_path / "r.json"
    write_json(out, {"v": 1}, Provenance(stage="demo-stage", params={"k": 1}))
    r = subprocess.run([sys.executable, "-m", "lmdelta", "provenance", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stage"] == "demo-stage"
    r = subprocess.run(
        [sys.executable, "-m", "lmdelta", "provenance", str(tmp_path / "nope.json")], capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no such artifact" in r.stderr
