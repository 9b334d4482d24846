"""The learning-rate schedule of training and pretraining: a pure function of the step (nanoGPT's `get_lr`).

Linear warm-up over `warmup_steps`, then a cosine from `lr` to `min_lr` at `steps`. Training uses it without
warm-up and with `min_lr = 0` (paper C.1: per-step cosine from 2e-4 to 0); pretraining with both (its weights are
reproduced bit for bit from their recorded command: keep the arithmetic of `cosine_lr` as it is).
"""

from __future__ import annotations

import math
from typing import Any


def cosine_lr(step: int, steps: int, lr: float, min_lr: float = 0.0, warmup_steps: int = 0) -> float:
    """Learning rate of the update made at (0-based) `step` of a `steps`-step run.

    step < warmup_steps: lr * (step + 1) / warmup_steps; then min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2 with
    t = (step - warmup_steps) / (steps - warmup_steps), clipped to 1 (so `min_lr` at and after `steps`).
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * t))


def lr_at(step: int, cfg: Any) -> float:
    """Training: lr of `step` for a TrainConfig-like `cfg` (`lr`, `steps`): lr at step 0, 0 at step == steps.

    On `--resume` with a changed `--lr` or `--steps`, the remaining steps follow this rule with the new values
    (the cosine is recomputed over the new total; see `maskgen.train.resume`).
    """
    if step < 0 or step > cfg.steps:
        raise ValueError(f"lr_at: step {step} outside [0, {cfg.steps}]")
    return cosine_lr(step, cfg.steps, cfg.lr)


def set_lr(optimizer: Any, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
