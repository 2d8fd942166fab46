"""Check a ``snakemake --report`` HTML file the way a reader meets it: rendered in headless Chromium.

The report is one self-contained page: a JavaScript app with every result embedded as a data URI
(``var results``) and grouped by ``var categories``. The check reads both, then renders the page with
Chromium (Debian's ``chromium``) and fails on: a category that is missing or empty, a listed result
without embedded data, a figure whose data is not a PNG, a page that does not render its category
menu, a JavaScript error, or a link or image in the rendered page that points anywhere but inside the
page, a data URI or the web. ``--screenshot`` saves what Chromium shows.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from lmdelta import LmdeltaError

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]


def embedded(html: str, name: str) -> dict:
    """A ``var <name> = {...};`` object of the report."""
    m = re.search(rf'<script id="{name}">\s*var {name} = (.*?);\s*</script>', html, re.S)
    if not m:
        raise LmdeltaError(f"report: no embedded '{name}' object; is this a snakemake --report file?")
    return json.loads(m.group(1))


def find_chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def render(path: Path, chromium: str, *, screenshot: Path | None = None, budget_ms: int = 8000) -> tuple[str, str]:
    """(rendered DOM, Chromium's log) of the page; optionally a screenshot."""
    with tempfile.TemporaryDirectory() as profile:
        base = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}"]
        url = Path(path).resolve().as_uri()
        done = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=180)
        if screenshot is not None:
            subprocess.run(
                [*base, "--window-size=1400,1000", f"--screenshot={Path(screenshot).resolve()}", url],
                capture_output=True,
                text=True,
                timeout=180,
            )
    return done.stdout, done.stderr


def check_report(
    path: Path, *, expect: list[str] = (), chromium: str | None = None, screenshot: Path | None = None
) -> dict:
    """Problems found (raises LmdeltaError listing them) or a summary of what was checked."""
    html = Path(path).read_text(encoding="utf-8")
    results, categories = embedded(html, "results"), embedded(html, "categories")
    problems = []
    for cat in expect:
        if cat not in categories:
            problems.append(f"category {cat!r} is missing")
    listed = [f for sub in categories.values() for files in sub.values() for f in files]
    for cat, sub in categories.items():
        if not any(sub.values()):
            problems.append(f"category {cat!r} is empty")
    for f in listed:
        r = results.get(f)
        if r is None or not r.get("data_uri", "").startswith("data:"):
            problems.append(f"{f}: listed but not embedded")
            continue
        if f.endswith(".png"):
            data = base64.b64decode(r["data_uri"].split("base64,", 1)[1][:24] + "==")
            if not data.startswith(b"\x89PNG"):
                problems.append(f"{f}: embedded data is not a PNG")
    chromium = chromium or find_chromium()
    if chromium is None:
        raise LmdeltaError(
            "report: Chromium is not installed; install Debian's chromium package (apt-get install chromium)"
        )
    dom, log = render(path, chromium, screenshot=screenshot)
    body = re.sub(r"<script.*?</script>", "", dom[dom.find("<body") :], flags=re.S)
    text = " ".join(re.sub(r"<[^>]+>", " ", body).split())
    for cat in categories:
        if cat not in text:
            problems.append(f"the rendered page does not show category {cat!r}")
    for line in log.splitlines():
        if "CONSOLE" in line and re.search(r"Uncaught|Error", line):
            problems.append(f"JavaScript error: {line.strip()[:200]}")
    links = re.findall(r'(?:href|src)="([^"]*)"', body)
    for link in links:
        if not (link.startswith(("#", "data:", "http://", "https://", "javascript:")) or link == ""):
            problems.append(f"a link points outside the report: {link[:80]}")
    if problems:
        raise LmdeltaError(f"report {path}: " + "; ".join(problems))
    return {"categories": len(categories), "results": len(listed), "links": len(links), "rendered_chars": len(text)}
