"""Learning-rate schedule: per-step cosine from the base rate to 0 (paper C.1), a pure function of the step."""

from __future__ import annotations

import math


def lr_at(step: int, cfg) -> float:
    """Learning rate for the update made at `step` (0-based) of a `cfg.steps`-step run with base rate `cfg.lr`.

    lr = lr0 * (1 + cos(pi * step / steps)) / 2: lr0 at step 0, decreasing to 0 at step == steps.
    """
    if step < 0 or step > cfg.steps:
        raise ValueError(f"lr_at: step {step} outside [0, {cfg.steps}]")
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * step / cfg.steps))


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
