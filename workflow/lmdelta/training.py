"""What the training loops share (the planted derive and soft prompts): the seeded batch order, the
learning-rate schedule and checkpoints a killed run resumes from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lmdelta.artifacts import atomic_path


def batch_indices(n: int, batch: int, step: int, seed: int) -> list[int]:
    """Indices of the examples of ``step``: a seeded permutation per epoch, read in order."""
    out = []
    pos = step * batch
    while len(out) < batch:
        epoch, offset = divmod(pos, n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        take = min(batch - len(out), n - offset)
        out.extend(int(i) for i in perm[offset : offset + take])
        pos += take
    return out


def warmup_lr(step: int, lr: float, warmup_steps: int) -> float:
    """The learning rate of ``step`` (0-based): linear warm-up over ``warmup_steps``, then constant."""
    return lr * min(1.0, (step + 1) / max(1, warmup_steps))


def save_checkpoint(folder: Path, tensors: dict[str, Any], optimizer, state: dict[str, Any], *, weights: str) -> None:
    """The trained tensors (safetensors file ``weights``), the optimizer state and ``state`` (JSON: the
    step and whatever the loop needs to go on), each written atomically; ``state.json`` last, so a
    checkpoint counts only once it names its step."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / weights) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    with atomic_path(folder / "optimizer.pt") as tmp:
        torch.save(optimizer.state_dict(), tmp)
    with atomic_path(folder / "state.json") as tmp:
        tmp.write_text(json.dumps(state))


def load_checkpoint(folder: Path, optimizer, *, weights: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(tensors, state) of the last checkpoint in ``folder``, the optimizer state loaded into
    ``optimizer``; None when there is none."""
    import torch
    from safetensors.torch import load_file

    if not (folder / "state.json").exists():
        return None
    state = json.loads((folder / "state.json").read_text())
    tensors = load_file(str(folder / weights))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    return tensors, state
