"""View masking (paper 3.1): drop whole input channels of z = concat(image, features) at rate p."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def view_mask(z: torch.Tensor, p: float) -> torch.Tensor:
    """Zero each channel of each sample independently with probability `p`; survivors are scaled by 1/(1-p).

    Exactly the official code's `F.dropout3d(z, p, training=True)` over all 1+d channels (the image channel too),
    without gradient tracking. `z`: (B, C, Z, Y, X) on the training device. `p = 0` returns `z` unchanged.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"view_mask: p={p} must be in [0, 1)")
    if z.dim() != 5:
        raise ValueError(f"view_mask: expected a (B, C, Z, Y, X) tensor, got shape {tuple(z.shape)}")
    if p == 0.0:
        return z
    with torch.no_grad():
        return F.dropout3d(z, p=p, training=True)
