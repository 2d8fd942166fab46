"""Atomic artifact writes and provenance records.

Every artifact gets a provenance record. For a file ``X`` it is the sidecar ``X.prov.json``; for a
folder it is ``provenance.json`` inside. Keeping provenance out of the artifact keeps tabular
artifacts byte-identical between runs (wall times and dates live only in the sidecar). The record
carries the sha256 of the artifact it describes, so a sidecar left over from another run is detected.

Writes are atomic: data goes to a temporary name in the same folder and is renamed into place after
it is complete and flushed. A killed job leaves at most a ``.tmp-*`` file, never a file with the
final name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lmdelta import LmdeltaError, __version__

#: Bumped when the layout of provenance records changes.
PROVENANCE_SCHEMA_VERSION = 1
PROV_SUFFIX = ".prov.json"
DIR_PROV_NAME = "provenance.json"
_TRACKED_PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "accelerate",
    "datasets",
    "numpy",
    "pandas",
    "pyarrow",
    "zstandard",
    "gguf",
    "bitsandbytes",
    "peft",
    "snakemake",
)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_tree(folder: str | os.PathLike, exclude: tuple[str, ...] = (DIR_PROV_NAME,)) -> str:
    """One digest over every file of a folder: relative paths and contents, in sorted order.

    Hidden files (Snakemake's ``.snakemake_timestamp``) and ``exclude`` are left out.
    """
    folder = Path(folder)
    h = hashlib.sha256()
    files = (q for q in folder.rglob("*") if q.is_file() and q.name not in exclude and not q.name.startswith("."))
    for p in sorted(files):
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        h.update(sha256_file(p).encode() + b"\n")
    return h.hexdigest()


def prov_path(artifact: str | os.PathLike) -> Path:
    artifact = Path(artifact)
    if artifact.is_dir():
        return artifact / DIR_PROV_NAME
    return artifact.with_name(artifact.name + PROV_SUFFIX)


def _package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"lmdelta": __version__, "python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _device() -> str:
    """What the computation ran on, without importing torch just to ask."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return f"cpu:{platform.machine()}"


def input_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """How an input is identified in provenance: a model folder by its fingerprint, a file by sha256."""
    path = Path(path)
    if path.is_dir():
        fp = path / "fingerprint.json"
        if fp.exists():
            return {"path": str(path), "fingerprint": json.loads(fp.read_text())["digest"]}
        return {"path": str(path), "sha256_tree": sha256_tree(path)}
    if path.exists():
        return {"path": str(path), "sha256": sha256_file(path)}
    return {"path": str(path), "missing": True}


@dataclass
class Provenance:
    """Collects what a stage did; ``record()`` turns it into the JSON written beside the artifact."""

    stage: str
    params: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    started: float = field(default_factory=time.time)
    #: Seconds spent by earlier jobs whose outputs this artifact joins (the shards of a gather).
    prior_time_s: float = 0.0

    def add_input(self, name: str, path: str | os.PathLike) -> None:
        self.inputs[name] = input_fingerprint(path)

    def record(self, artifact_sha256: str) -> dict[str, Any]:
        now = time.time()
        return {
            "schema_version": PROVENANCE_SCHEMA_VERSION,
            "stage": self.stage,
            "params": self.params,
            "inputs": self.inputs,
            "seed": self.seed,
            "artifact_sha256": artifact_sha256,
            "packages": _package_versions(),
            "git_commit": _git_commit(),
            "device": _device(),
            "host": socket.gethostname(),
            "started_utc": datetime.fromtimestamp(self.started, UTC).isoformat(),
            "wall_time_s": round(now - self.started, 3),
            "compute_time_s": round(now - self.started + self.prior_time_s, 3),
        }


def _json_dump(obj: Any, fh) -> None:
    json.dump(obj, fh, indent=2, sort_keys=False, default=str, allow_nan=True)
    fh.write("\n")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, prov: Provenance | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; on success move it into place with its provenance.

    The caller writes a file (or creates a folder) at the yielded path. On an exception the
    temporary is removed and ``final`` is left as it was.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent)) / final.name
    except OSError as e:
        _raise_if_full(e, final)
        raise
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to {tmp}")
        if tmp.is_dir():
            if prov is not None:
                digest = sha256_tree(tmp)
                with open(tmp / DIR_PROV_NAME, "w") as fh:
                    _json_dump(prov.record(digest), fh)
            _fsync_tree(tmp)
            if final.exists():
                shutil.rmtree(final) if final.is_dir() else final.unlink()
            os.replace(tmp, final)
        else:
            _fsync_file(tmp)
            if prov is not None:
                write_json(prov_path(final), prov.record(sha256_file(tmp)))
            os.replace(tmp, final)
    except OSError as e:
        _raise_if_full(e, final)
        raise
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def _raise_if_full(e: OSError, final: Path) -> None:
    """A full disk or quota is the user's to fix: one line naming the artifact (it is left as it was)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        raise LmdeltaError(
            f"no space left on the device while writing {final} ({os.strerror(e.errno)}); "
            f"free space there (or move results/ and resources/ to a larger disk) and rerun: "
            f"the previous {final.name}, if any, is untouched"
        ) from None


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            _fsync_file(p)


def write_json(path: str | os.PathLike, obj: Any, prov: Provenance | None = None) -> None:
    with atomic_path(path, prov) as tmp, open(tmp, "w") as fh:
        _json_dump(obj, fh)


def write_parquet(path: str | os.PathLike, table, prov: Provenance | None = None) -> None:
    """Write a pandas DataFrame or pyarrow Table. Deterministic bytes for the same data."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    # pandas metadata holds nothing run-specific, but drop it so the file depends on data alone.
    # One chunk per column: the bytes must not depend on how the table was assembled (a gather of shards).
    table = table.replace_schema_metadata(None).combine_chunks()
    with atomic_path(path, prov) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_csv(path: str | os.PathLike, df, prov: Provenance | None = None) -> None:
    """Write a pandas DataFrame as CSV (no index), full float precision."""
    with atomic_path(path, prov) as tmp:
        df.to_csv(tmp, index=False)


def iter_jsonl(lines, *, where: str) -> Iterator[tuple[int, Any]]:
    """(line number, record) for each non-blank JSON line; a broken line raises one ``LmdeltaError``
    line naming ``where`` (e.g. the file) and the line."""
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise LmdeltaError(f"{where} line {lineno} is not valid JSON ({e.msg}); fix or remove that line") from None


def read_provenance(artifact: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """The provenance record of an artifact; with ``verify``, check it still describes the artifact."""
    artifact = Path(artifact)
    if not artifact.exists():
        raise LmdeltaError(f"{artifact}: no such artifact; check the path (results/... or resources/...)")
    pp = prov_path(artifact)
    if not pp.exists():
        raise LmdeltaError(
            f"{artifact}: no provenance record ({pp.name}); it was not written by lmdelta or is incomplete"
        )
    record = json.loads(pp.read_text())
    if verify:
        actual = sha256_tree(artifact) if artifact.is_dir() else sha256_file(artifact)
        if actual != record.get("artifact_sha256"):
            raise LmdeltaError(
                f"{artifact}: provenance record does not match the artifact (sha256 differs); rerun the rule that makes it"
            )
    return record


def write_jsonl(path: str | Path, records: list[dict], prov=None) -> None:
    with atomic_path(path, prov) as tmp, open(tmp, "w") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(path: str | Path, where: str | None = None) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [rec for _, rec in iter_jsonl(fh, where=where or str(path))]
