"""Smooth random fields: the one primitive behind label shapes, textures, bias fields and deformations.

A field is Gaussian white noise on a coarse grid, upsampled (trilinear) to the full grid, so its
smoothness is set by the coarse grid size. All randomness comes from an explicit `torch.Generator`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def smooth_field(
    shape_zyx: Sequence[int], grid: int | Sequence[int], generator: torch.Generator, channels: int = 1
) -> torch.Tensor:
    """A (channels, Z, Y, X) float32 field with unit-variance values on a `grid`-point coarse lattice."""
    shape = tuple(int(s) for s in shape_zyx)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape_zyx must be three positive sizes, got {shape_zyx}")
    coarse = (grid,) * 3 if isinstance(grid, int) else tuple(int(g) for g in grid)
    if len(coarse) != 3 or min(coarse) < 2:
        raise ValueError(f"grid must be >= 2 points per axis, got {grid}")
    low = torch.randn((1, channels, *coarse), generator=generator, dtype=torch.float32)
    return F.interpolate(low, size=shape, mode="trilinear", align_corners=True)[0]


def normalized_coordinates(shape_zyx: Sequence[int]) -> torch.Tensor:
    """(3, Z, Y, X) voxel-centre coordinates in [-1, 1], in (z, y, x) order."""
    axes = [torch.linspace(-1.0, 1.0, int(s)) if s > 1 else torch.zeros(1) for s in shape_zyx]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def minmax(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Rescale to [0, 1] (a constant tensor becomes zeros)."""
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo).clamp_min(eps)
