"""View masking (paper 3.1): drop whole input channels of z = concat(image, features) at rate p."""

from __future__ import annotations

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
        keep = torch.empty((z.shape[0], z.shape[1], 1, 1, 1), dtype=z.dtype, device=z.device)
        keep.bernoulli_(1.0 - p, generator=generator).div_(1.0 - p)
        return z * keep
