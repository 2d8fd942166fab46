"""Corpus stage: fetch (URL or Hugging Face dataset) -> verify -> read as a stream -> sample.

Output table ``results/corpus/<name>.parquet``: doc_id, text, n_chars, source_index, meta (JSON of
the record's other fields). Reading is a stream over documents, zstd decompressed frame by frame,
and sampling is a reservoir, so memory grows with ``n_docs``, not with the size of the corpus.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmdelta import LmdeltaError
from lmdelta.artifacts import Provenance, iter_jsonl, sha256_file, write_parquet
from lmdelta.config import CorpusSpec, infer_format
from lmdelta.download import check_sha256, download

log = logging.getLogger(__name__)

BUILTINS = ("python_docs",)


@dataclass(frozen=True)
class Document:
    source_index: int  # position of the document in its source, counting every document read
    text: str
    meta: dict[str, Any]


# ----------------------------------------------------------------------------------------------
# Fetching: remote sources become one local file under resources/corpus/<name>/raw


def fetch(spec: CorpusSpec, dest: str | Path, *, timeout_s: float = 60.0, tries: int = 3) -> None:
    """Bring a remote corpus (url or hf_dataset) to ``dest``, verified."""
    kind = spec.source_kind
    src = spec.source[kind]
    prov = Provenance(stage="corpus_fetch", params={"name": spec.name, "source": spec.source})
    if kind == "url":
        digest = download(
            src["url"],
            dest,
            src.get("sha256"),
            what=f"corpora.{spec.name}",
            timeout_s=timeout_s,
            tries=tries,
            prov=prov,
        )
        log.info(
            "corpora.%s: fetched %s -> %s (%d bytes, sha256 %s)",
            spec.name,
            src["url"],
            dest,
            Path(dest).stat().st_size,
            digest,
        )
    elif kind == "hf_dataset":
        table = _load_hf_dataset(spec.name, src)
        write_parquet(dest, table, prov)
        log.info(
            "corpora.%s: dataset %s split %s -> %s (%d rows)",
            spec.name,
            src["name"],
            src["split"],
            dest,
            table.num_rows,
        )
    else:
        raise LmdeltaError(f"corpora.{spec.name}: source {kind} is read in place and needs no fetch")


def _load_hf_dataset(name: str, src: dict[str, Any]):
    import datasets

    where = f"corpora.{name}.source.hf_dataset"
    try:
        ds = datasets.load_dataset(src["name"], src.get("config"), split=src["split"], revision=src.get("revision"))
    except (FileNotFoundError, ValueError, ConnectionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LmdeltaError(
            f"{where}: cannot load dataset {src['name']!r} split {src['split']!r} ({first}); check name, config and split"
        ) from None
    field = src["text_field"]
    if field not in ds.column_names:
        raise LmdeltaError(f"{where}: no column {field!r} (columns: {', '.join(ds.column_names)}); set text_field")
    return ds.data.table if hasattr(ds.data, "table") else ds.with_format("arrow")[:]


# ----------------------------------------------------------------------------------------------
# Reading: every source becomes a stream of Documents


class _ZstdFrames(io.RawIOBase):
    """Decompress a zstd file frame by frame and fail on truncation.

    ``zstandard``'s stream reader returns a short, silent EOF on a truncated file; here each frame
    must reach its end, else the read raises.
    """

    def __init__(self, fh):
        import zstandard

        self._zstd = zstandard
        self._fh = fh
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._buf = b""
        self._in_frame = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            chunk = self._fh.read(1 << 20)
            if not chunk:
                if self._in_frame:
                    raise self._zstd.ZstdError("truncated: the last frame ends early")
                return 0
            self._feed(chunk)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def _feed(self, chunk: bytes) -> None:
        while chunk:
            self._in_frame = True
            self._buf += self._obj.decompress(chunk)
            if not self._obj.eof:
                return
            chunk = self._obj.unused_data
            self._obj = self._dctx.decompressobj()
            self._in_frame = False


def _open_text(path: Path, fmt: str):
    raw = open(path, "rb")
    if fmt.endswith(".zst"):
        raw = io.BufferedReader(_ZstdFrames(raw), buffer_size=1 << 20)
    elif fmt.endswith(".gz"):
        raw = gzip.open(raw)
    return io.TextIOWrapper(raw, encoding="utf-8", errors="strict")


def iter_file_documents(path: str | Path, fmt: str, text_field: str, *, what: str) -> Iterator[Document]:
    """Stream documents from a local file. Errors name the file, the record and the fix."""
    path = Path(path)
    if fmt == "parquet":
        yield from _iter_parquet(path, text_field, what=what)
        return
    try:
        with _open_text(path, fmt) as fh:
            if fmt == "txt":
                yield from _iter_paragraphs(fh)
            else:
                yield from _iter_jsonl(fh, text_field, what=what, path=path)
    except UnicodeDecodeError:
        raise LmdeltaError(
            f"{what}: {path.name} is not UTF-8 text (or is compressed but format says {fmt}); fix format:"
        ) from None
    except (EOFError, gzip.BadGzipFile, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise LmdeltaError(f"{what}: file {path} does not exist; fix the path") from None
        raise LmdeltaError(f"{what}: {path.name} is corrupt or truncated ({e}); delete it and fetch again") from None
    except Exception as e:
        if type(e).__name__ == "ZstdError":
            raise LmdeltaError(
                f"{what}: {path.name} is not a complete zstd stream ({e}); the download is corrupt or truncated: delete it and fetch again"
            ) from None
        raise


def _iter_jsonl(fh, text_field: str, *, what: str, path: Path) -> Iterator[Document]:
    index = 0
    for lineno, record in iter_jsonl(fh, where=f"{what}: {path.name}"):
        if not isinstance(record, dict) or text_field not in record:
            keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
            raise LmdeltaError(
                f"{what}: {path.name} line {lineno} has no field {text_field!r} (has: {keys}); set text_field: to the field holding the text"
            )
        text = record.pop(text_field)
        if not isinstance(text, str):
            raise LmdeltaError(
                f"{what}: {path.name} line {lineno}: field {text_field!r} is {type(text).__name__}, not text; set text_field: to a text field"
            )
        yield Document(index, text, record)
        index += 1


def _iter_paragraphs(lines) -> Iterator[Document]:
    block: list[str] = []
    index = 0
    for line in lines:
        if line.strip():
            block.append(line.rstrip("\n"))
        elif block:
            yield Document(index, "\n".join(block), {})
            index, block = index + 1, []
    if block:
        yield Document(index, "\n".join(block), {})


def _iter_parquet(path: Path, text_field: str, *, what: str) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise LmdeltaError(
            f"{what}: {path.name} is not a readable parquet file ({e}); delete it and fetch again"
        ) from None
    names = pf.schema_arrow.names
    if text_field not in names:
        raise LmdeltaError(
            f"{what}: {path.name} has no column {text_field!r} (columns: {', '.join(names)}); set text_field:"
        )
    index = 0
    for batch in pf.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            text = row.pop(text_field)
            yield Document(index, text if isinstance(text, str) else "", row)
            index += 1


def iter_builtin_documents(name: str) -> Iterator[Document]:
    """Offline corpora that ship with Python itself; nothing third-party is committed."""
    if name != "python_docs":
        raise LmdeltaError(f"builtin corpus {name!r} is unknown; use one of {', '.join(BUILTINS)}")
    from pydoc_data.topics import topics

    index = 0
    for topic in sorted(topics):
        for para in _iter_paragraphs(io.StringIO(topics[topic])):
            yield Document(index, para.text, {"topic": topic})
            index += 1


def iter_documents(spec: CorpusSpec, raw_path: str | Path | None) -> Iterator[Document]:
    """All documents of a corpus source, in source order. ``raw_path`` is the fetched file, if any."""
    kind = spec.source_kind
    src = spec.source[kind]
    what = f"corpora.{spec.name}"
    if kind == "builtin":
        return iter_builtin_documents(src["name"])
    if kind == "hf_dataset":
        return iter_file_documents(raw_path, "parquet", src["text_field"], what=what)
    fmt = infer_format(src, where=f"{what}.source.{kind}")
    if kind == "file":
        path = Path(src["path"])
        if not path.is_file():
            raise LmdeltaError(f"{what}: file {path} does not exist; fix source.file.path")
        if src.get("sha256"):
            check_sha256(sha256_file(path), src["sha256"], what=what, name=str(path))
        return iter_file_documents(path, fmt, src["text_field"], what=what)
    return iter_file_documents(raw_path, fmt, src["text_field"], what=what)


# ----------------------------------------------------------------------------------------------
# Sampling


def sample_documents(
    docs: Iterator[Document],
    *,
    n_docs: int | None,
    method: str,
    seed: int,
    min_chars: int,
    max_chars: int | None,
) -> tuple[list[Document], dict[str, int]]:
    """Filter by length, then keep ``n_docs`` (all when None): the first ones, or a seeded reservoir.

    Returns the kept documents in source order and counts (read, eligible, kept).
    """
    rng = np.random.default_rng(seed)
    kept: list[Document] = []
    n_read = n_eligible = 0
    for doc in docs:
        n_read += 1
        n = len(doc.text.strip())
        if n < min_chars or (max_chars is not None and n > max_chars):
            continue
        n_eligible += 1
        if n_docs is None or len(kept) < n_docs:
            kept.append(doc)
            if method == "first" and n_docs is not None and len(kept) == n_docs:
                break
        elif method == "random":
            j = int(rng.integers(0, n_eligible))  # Algorithm R: replace with probability n_docs / n_eligible
            if j < n_docs:
                kept[j] = doc
    kept.sort(key=lambda d: d.source_index)
    return kept, {"read": n_read, "eligible": n_eligible, "kept": len(kept)}


def build_corpus(spec: CorpusSpec, raw_path: str | Path | None, out: str | Path) -> dict[str, int]:
    """Read, filter and sample a corpus into ``out`` (parquet) with provenance; return the counts."""
    import pandas as pd
    from tqdm import tqdm

    s = spec.sample
    prov = Provenance(stage="corpus", params={"name": spec.name, "source": spec.source, "sample": s}, seed=s["seed"])
    if raw_path is not None:
        prov.add_input("raw", raw_path)
    elif spec.source_kind == "file":
        prov.add_input("file", spec.source["file"]["path"])
    elif spec.source_kind == "builtin":
        import platform

        # The builtin texts ship with Python, so its version identifies them.
        prov.inputs["builtin"] = {"name": spec.source["builtin"]["name"], "python": platform.python_version()}
    docs = tqdm(iter_documents(spec, raw_path), desc=f"read {spec.name}", unit=" docs", mininterval=1.0)
    kept, counts = sample_documents(
        docs, n_docs=s["n_docs"], method=s["method"], seed=s["seed"], min_chars=s["min_chars"], max_chars=s["max_chars"]
    )
    if not kept:
        raise LmdeltaError(
            f"corpora.{spec.name}: no documents left after filtering ({counts['read']} read, none within "
            f"min_chars={s['min_chars']} max_chars={s['max_chars']}); loosen sample.min_chars/max_chars or check the source"
        )
    if s["n_docs"] is not None and len(kept) < s["n_docs"]:
        log.warning("corpora.%s: asked for %d documents, only %d are eligible", spec.name, s["n_docs"], len(kept))
    prov.params["counts"] = counts
    df = pd.DataFrame(
        {
            "doc_id": [f"{spec.name}-{d.source_index}" for d in kept],
            "text": [d.text for d in kept],
            "n_chars": np.array([len(d.text) for d in kept], dtype=np.int32),
            "source_index": np.array([d.source_index for d in kept], dtype=np.int64),
            "meta": [json.dumps(d.meta, sort_keys=True, ensure_ascii=False, default=str) for d in kept],
        }
    )
    write_parquet(out, df, prov)
    log.info(
        "corpora.%s: %d read, %d eligible, %d kept -> %s",
        spec.name,
        counts["read"],
        counts["eligible"],
        counts["kept"],
        out,
    )
    return counts


# ---- jobs (lmdelta.job) -------------------------------------------------------------------------------


def fetch_job(job) -> None:
    """spec: {"source"}; output: ``raw``."""
    fetch(CorpusSpec.from_dict(job.wildcards["corpus"], job.spec), job.out("raw"))


def sample_job(job) -> None:
    """spec: the corpus entry; input ``raw`` for a remote source; output: ``corpus``."""
    spec = CorpusSpec.from_dict(job.wildcards["corpus"], job.spec)
    build_corpus(spec, job.path("raw") if "raw" in job.inputs else None, job.out("corpus"))
