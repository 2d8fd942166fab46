"""Downloads over http(s): streamed to disk, sha256 checked while streaming, written atomically.

Used for corpus URLs and GGUF model URLs. A download whose sha256 does not match never gets its
final name. Without a sha256 the digest is logged so the user can pin it.
"""

from __future__ import annotations

import hashlib
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from lmdelta import LmdeltaError
from lmdelta.artifacts import Provenance, atomic_path

log = logging.getLogger(__name__)
USER_AGENT = "lmdelta (+https://github.com/lmdelta)"


def download(
    url: str,
    dest: str | Path,
    sha256: str | None,
    *,
    what: str,
    timeout_s: float = 60.0,
    tries: int = 3,
    prov: Provenance | None = None,
) -> str:
    """Download ``url`` to ``dest``; return the sha256 of what was written.

    ``what`` names the thing in error messages (``corpora.pile_val``). Connection problems are retried
    ``tries`` times with growing pauses; an HTTP error status is not.
    """
    last: Exception | None = None
    for attempt in range(1, tries + 1):
        try:
            return _download_once(url, dest, sha256, what=what, timeout_s=timeout_s, prov=prov)
        except urllib.error.HTTPError as e:
            raise LmdeltaError(
                f"{what}: download of {url} failed with HTTP {e.code} {e.reason}; check the URL"
            ) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            last = e
            if attempt < tries:
                pause = 2.0 ** (attempt - 1)
                log.warning(
                    "%s: download attempt %d/%d failed (%s); retrying in %.0f s", what, attempt, tries, e, pause
                )
                time.sleep(pause)
    reason = getattr(last, "reason", last)
    raise LmdeltaError(
        f"{what}: cannot reach {url} ({reason}) after {tries} tries; check the URL and the network, or point the source at a local file"
    )


def _download_once(url, dest, sha256, *, what, timeout_s, prov) -> str:
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    h = hashlib.sha256()
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        total = resp.headers.get("Content-Length")
        with atomic_path(dest, prov) as tmp:
            with (
                open(tmp, "wb") as out,
                tqdm(
                    total=int(total) if total else None,
                    unit="B",
                    unit_scale=True,
                    desc=f"download {Path(dest).parent.name}",
                    mininterval=1.0,
                ) as bar,
            ):
                while block := resp.read(1 << 20):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
            if total is not None and tmp.stat().st_size != int(total):
                raise ConnectionError(f"connection closed after {tmp.stat().st_size} of {total} bytes")
            digest = h.hexdigest()
            check_sha256(digest, sha256, what=what, name=url)
    return digest


def check_sha256(actual: str, expected: str | None, *, what: str, name: str) -> None:
    """Raise on a mismatch; warn, with the digest to pin, when nothing was expected."""
    if expected is None:
        log.warning(
            "%s: no sha256 given for %s; its sha256 is %s (add it to the config to verify it)", what, name, actual
        )
    elif actual != expected:
        raise LmdeltaError(
            f"{what}: sha256 mismatch for {name} (expected {expected[:12]}..., got {actual[:12]}...); "
            "the file is corrupt or changed upstream: fix the sha256 in the config or the source"
        )
