"""Dice per foreground class of two label maps: the one implementation behind validation (train) and evaluation.

Two conventions for a class that is absent from the reference (`empty_class`):
- "ignore" (default; the paper's public code, MONAI `DiceMetric(ignore_empty=True)`): the class has no Dice (NaN) in
  that case, even if it was predicted, so a false positive on a missing organ does not count;
- "zero" (nnU-Net): a class predicted but absent from the reference scores 0; only a class absent from both the
  prediction and the reference is NaN.
In both, a class present in the reference scores 2|P∩R| / (|P| + |R|) (0 when it is not predicted), and NaN values
are left out of every mean (a case's Dice is the mean of its scored classes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from maskgen.errors import OptionError

EMPTY_CLASS_CONVENTIONS = ("ignore", "zero")
EMPTY_CLASS_TEXT = {
    "ignore": "a class absent from the reference is not scored (NaN) even if predicted (MONAI ignore_empty=True, "
              "the paper's code)",
    "zero": "a class absent from the reference scores 0 if predicted and is not scored (NaN) if also absent from the "
            "prediction (nnU-Net)",
}


def check_empty_class(empty_class: str) -> str:
    """`empty_class` if it names a convention; an OptionError naming the field (`--empty-class` on the CLI)."""
    if empty_class not in EMPTY_CLASS_CONVENTIONS:
        raise OptionError("empty_class", empty_class, f"is not one of {', '.join(EMPTY_CLASS_CONVENTIONS)} (ignore: "
                                                      "the paper's MONAI convention; zero: nnU-Net's)")
    return empty_class


def dice_per_class(pred: Any, ref: Any, num_foreground: int, empty_class: str = "ignore") -> np.ndarray:
    """Dice of each foreground class 1..num_foreground between two integer label maps of the same shape.

    `pred`, `ref`: numpy arrays or torch tensors. Returns float64 (num_foreground,), NaN where the class is not
    scored under `empty_class` (see the module docstring). MONAI's `compute_dice` on one boolean channel per
    class, so memory stays at two boolean volumes whatever the number of classes.
    """
    import torch
    from monai.metrics import compute_dice

    check_empty_class(empty_class)
    if num_foreground < 1:
        raise ValueError(f"num_foreground must be >= 1, got {num_foreground}")
    p, r = _tensor(pred), _tensor(ref)
    if p.shape != r.shape:
        raise ValueError(f"prediction shape {tuple(p.shape)} differs from reference shape {tuple(r.shape)}")
    out = np.full(num_foreground, np.nan, dtype=np.float64)
    for c in range(1, num_foreground + 1):
        pc = (p == c)[None, None]
        rc = (r == c)[None, None]
        if not bool(rc.any()) and (empty_class == "ignore" or not bool(pc.any())):
            continue  # not scored
        out[c - 1] = float(compute_dice(pc, rc, include_background=True, ignore_empty=empty_class == "ignore")[0, 0])
    return out


def _tensor(x: Any) -> Any:
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x)))
