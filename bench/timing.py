"""What the throughput benches share: waiting for the device before reading the clock, and the
profiler table of one run."""

from __future__ import annotations

import torch


def sync(device: str) -> None:
    """Wait for the device's queued work (a GPU runs ahead of the host), so the clock reads its end."""
    if device == "cuda":
        torch.cuda.synchronize()


def print_profile(device: str, fn, rows: int = 15) -> None:
    """Run ``fn`` under torch.profiler and print its top operators: by device time on a GPU, else by
    CPU time."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        fn()
    key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=rows))
