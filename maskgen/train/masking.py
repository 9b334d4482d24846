"""View masking (paper 3.1): drop whole input channels of z = concat(image, features) at rate p."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

MASK_STREAM = 0x6D61736B  # spawn key of the masks' random stream ("mask"), apart from the crops' (step, slot) keys


def mask_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The random stream of the view masks of training step `step`: a pure function of (run seed, step), so a run
    resumes exactly at any step without restoring a global RNG state."""
    value = np.random.SeedSequence(entropy=int(seed), spawn_key=(MASK_STREAM, int(step))).generate_state(1, np.uint64)
    return torch.Generator(device=torch.device(device)).manual_seed(int(value[0]) & (2**63 - 1))


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
        return z * _keep(z.shape[0], z, p, generator)


def step_view_mask(
    z: torch.Tensor, p: float, seed: int, step: int, slots: Sequence[int], global_batch: int
) -> torch.Tensor:
    """`view_mask` of the samples `slots` of step `step`'s global batch of `global_batch` samples (data-parallel
    ranks each hold a share, `maskgen.train.loader.rank_slots`): the masks of the whole global batch are drawn from
    `mask_generator(seed, step)` and each sample takes its slot's row, so every sample's mask is the same however the
    global batch is split (one process: slots 0..B-1 of B, exactly `view_mask(z, p, mask_generator(seed, step))`)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"view_mask: p={p} must be in [0, 1)")
    if z.dim() != 5 or z.shape[0] != len(slots):
        raise ValueError(f"step_view_mask: expected a (B={len(slots)}, C, Z, Y, X) tensor, got {tuple(z.shape)}")
    if p == 0.0:
        return z
    with torch.no_grad():
        keep = _keep(global_batch, z, p, mask_generator(seed, step, z.device))
        return z * keep[torch.as_tensor(list(slots), device=z.device)]


def _keep(rows: int, z: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """(rows, C, 1, 1, 1) of 0 or 1/(1-p), each kept with probability 1 - p, drawn from `generator` (dropout3d's
    mask)."""
    keep = torch.empty((rows, z.shape[1], 1, 1, 1), dtype=z.dtype, device=z.device)
    return keep.bernoulli_(1.0 - p, generator=generator).div_(1.0 - p)
