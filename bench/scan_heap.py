"""The vocabulary scan's allocations: mmap'd above 4 MB (every job's default, lmdelta.job) against
served from the heap up to 64 MB (what scan_job sets), in one run on the same words.

Each setting runs in a fresh process (malloc's threshold is per process): the scan of the first
``--words`` candidate words of the pair, with wall time, user and system CPU time and minor page
faults. Prints the ratios heap / mmap.

    python bench/scan_heap.py [--a resources/models/smollm2-cocoa] [--b resources/models/smollm2] [--words 512]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, resource, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, {workflow!r})
from lmdelta.job import fixed_mmap_threshold
fixed_mmap_threshold({threshold})
import torch
torch.set_num_threads({threads})
from lmdelta.scan import ScanParams, run_scan
fmt = {{"chat_template": True, "first_token": "<|endoftext|>"}}
out = Path(tempfile.mkdtemp())
t, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
run_scan(pair="bench", names=("a", "b"), model_dirs=({a!r}, {b!r}), params=ScanParams.from_dict({{"max_words": {words}}}),
         load_options=({{"dtype": "float32"}}, {{"dtype": "float32"}}), formats=(fmt, fmt),
         out=out / "w.parquet", out_csv=out / "t.csv", out_findings=out / "f.parquet")
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"wall_s": time.perf_counter() - t, "user_s": r1.ru_utime - r0.ru_utime, "sys_s": r1.ru_stime - r0.ru_stime,
                  "minor_faults": r1.ru_minflt - r0.ru_minflt, "peak_mb": r1.ru_maxrss / 1024}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", default=str(ROOT / "resources/models/smollm2-cocoa"))
    ap.add_argument("--b", default=str(ROOT / "resources/models/smollm2"))
    ap.add_argument("--words", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    results = {}
    for name, mb in (("mmap above 4 MB", 4), ("heap up to 64 MB", 64)):
        code = CHILD.format(
            workflow=str(ROOT / "workflow"),
            threshold=mb << 20,
            threads=args.threads,
            a=args.a,
            b=args.b,
            words=args.words,
        )
        with tempfile.TemporaryDirectory() as tmp:
            run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp, check=True)
        results[name] = json.loads(run.stdout.strip().splitlines()[-1])
        r = results[name]
        print(
            f"{name:18s} wall {r['wall_s']:7.1f} s  user {r['user_s']:7.1f} s  sys {r['sys_s']:5.1f} s  "
            f"minor faults {r['minor_faults']:>10,}  peak {r['peak_mb']:.0f} MB"
        )
    m, h = results["mmap above 4 MB"], results["heap up to 64 MB"]
    print(
        f"heap / mmap: wall {h['wall_s'] / m['wall_s']:.2f}x, minor faults {h['minor_faults'] / m['minor_faults']:.2f}x, "
        f"peak memory {h['peak_mb'] / m['peak_mb']:.2f}x ({args.words} words)"
    )


if __name__ == "__main__":
    main()
