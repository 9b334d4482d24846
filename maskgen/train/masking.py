"""View masking (paper 3.1): drop whole input channels of z = concat(image, features) at rate p."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

MASK_STREAM = 0x6D61736B  # spawn key of the masks' random stream ("mask"), apart from the crops' (step, slot) keys


def mask_generator(seed: int, step: int, slot: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """The random stream of the view mask of sample `slot` of training step `step`'s global batch: a pure function of
    (run seed, step, slot), so a run resumes exactly at any step without restoring a global RNG state, and the masks
    of a global batch do not depend on how its slots are split across data-parallel ranks."""
    value = np.random.SeedSequence(entropy=int(seed), spawn_key=(MASK_STREAM, int(step), int(slot)))
    state = value.generate_state(1, np.uint64)
    return torch.Generator(device=torch.device(device)).manual_seed(int(state[0]) & (2**63 - 1))


def step_view_mask(z: torch.Tensor, p: float, seed: int, step: int, slots: Sequence[int]) -> torch.Tensor:
    """`view_mask` of a training batch whose samples are the slots `slots` of step `step`'s global batch: sample i
    keeps each channel with probability 1 - p drawn from `mask_generator(seed, step, slots[i])` (on the CPU, so the
    masks are also the same on every device); survivors are scaled by 1/(1-p), as dropout3d does."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"view_mask: p={p} must be in [0, 1)")
    if z.dim() != 5 or z.shape[0] != len(slots):
        raise ValueError(f"step_view_mask: expected a (B={len(slots)}, C, Z, Y, X) tensor, got {tuple(z.shape)}")
    if p == 0.0:
        return z
    keep = torch.empty((len(slots), z.shape[1]), dtype=torch.float32)
    for row, slot in zip(keep, slots):
        row.bernoulli_(1.0 - p, generator=mask_generator(seed, step, slot))
    keep = keep.div_(1.0 - p).to(device=z.device, dtype=z.dtype, non_blocking=True)
    with torch.no_grad():
        return z * keep[:, :, None, None, None]


def view_mask(z: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero each channel of each sample independently with probability `p`; survivors are scaled by 1/(1-p).

    The official code's `F.dropout3d(z, p, training=True)` over all 1+d channels (the image channel too), without
    gradient tracking. With `generator` (on z's device) the same operation draws its Bernoulli mask from it, as
    dropout3d does (`bernoulli(1 - p) / (1 - p)` per (sample, channel), multiplied in); without, dropout3d itself
    draws from torch's global RNG. `z`: (B, C, Z, Y, X) on the training device. `p = 0` returns `z` unchanged.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"view_mask: p={p} must be in [0, 1)")
    if z.dim() != 5:
        raise ValueError(f"view_mask: expected a (B, C, Z, Y, X) tensor, got shape {tuple(z.shape)}")
    if p == 0.0:
        return z
    with torch.no_grad():
        if generator is None:
            return F.dropout3d(z, p=p, training=True)
        keep = torch.empty((z.shape[0], z.shape[1], 1, 1, 1), dtype=z.dtype, device=z.device)
        keep.bernoulli_(1.0 - p, generator=generator).div_(1.0 - p)
        return z * keep
