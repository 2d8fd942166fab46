"""What the training loops share (the planted derive and soft prompts): the seeded batch order and
the learning-rate schedule."""

from __future__ import annotations

import numpy as np


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
