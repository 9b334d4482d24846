"""Random spatial transform of a label map: rotation, anisotropic scaling, flips and a smooth elastic warp.

Applied to the label map before rendering, so both renderings of a pair share the geometry and every
voxel keeps its correspondence across the two views (what the voxel-wise contrastive loss needs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from maskgen.pretrain.config import SynthConfig
from maskgen.pretrain.fields import smooth_field


@dataclass(frozen=True)
class SpatialParams:
    angles_rad: tuple[float, float, float]
    scales: tuple[float, float, float]
    flips: tuple[bool, bool, bool]
    elastic_strength: float
    elastic_grid: int
    seed: int


def _rotation(angles: tuple[float, float, float]) -> torch.Tensor:
    a, b, c = angles
    rx = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = torch.tensor([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = torch.tensor([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return (rz @ ry @ rx).to(torch.float32)


class RandomSpatial:
    """`sample(rng) -> SpatialParams`; `apply(volume, params)` resamples (nearest for integer volumes)."""

    def __init__(self, config: SynthConfig | None = None) -> None:
        self.config = config if config is not None else SynthConfig()

    def sample(self, rng: np.random.Generator) -> SpatialParams:
        c = self.config
        angles = rng.uniform(-c.rotation_deg, c.rotation_deg, size=3) * math.pi / 180.0
        scales = np.exp(rng.uniform(np.log(c.scale[0]), np.log(c.scale[1]), size=3))
        flips = rng.random(3) < 0.5
        return SpatialParams(
            angles_rad=tuple(float(v) for v in angles),
            scales=tuple(float(v) for v in scales),
            flips=tuple(bool(v) for v in flips),
            elastic_strength=float(rng.uniform(*c.elastic_strength)),
            elastic_grid=int(rng.integers(3, 6)),
            seed=int(rng.integers(0, 2**62)),
        )

    def grid(self, shape_zyx: tuple[int, int, int], params: SpatialParams) -> torch.Tensor:
        """The (1, Z, Y, X, 3) sampling grid of `F.grid_sample` (x, y, z order in the last axis)."""
        matrix = _rotation(params.angles_rad) / torch.tensor(params.scales, dtype=torch.float32)
        flip = torch.tensor([-1.0 if f else 1.0 for f in params.flips])
        matrix = matrix * flip.view(1, 3)
        theta = torch.cat([matrix, torch.zeros(3, 1)], dim=1).unsqueeze(0)
        grid = F.affine_grid(theta, [1, 1, *shape_zyx], align_corners=False)
        if params.elastic_strength > 0:
            g = torch.Generator().manual_seed(params.seed)
            disp = smooth_field(shape_zyx, params.elastic_grid, g, channels=3) * params.elastic_strength
            grid = grid + disp.permute(1, 2, 3, 0).unsqueeze(0)
        return grid

    def apply(self, volume: torch.Tensor, params: SpatialParams) -> torch.Tensor:
        """Resample a (Z, Y, X) volume; integer volumes (labels) use nearest, float volumes trilinear."""
        if volume.ndim != 3:
            raise ValueError(f"expected a (Z, Y, X) volume, got shape {tuple(volume.shape)}")
        grid = self.grid(tuple(volume.shape), params)
        is_int = not torch.is_floating_point(volume)
        src = volume.to(torch.float32)[None, None]
        out = F.grid_sample(src, grid, mode="nearest" if is_int else "bilinear", padding_mode="reflection",
                            align_corners=False)[0, 0]
        return out.round().to(volume.dtype) if is_int else out
