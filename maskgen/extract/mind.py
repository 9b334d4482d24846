"""MIND-SSC: the modality-independent neighbourhood descriptor with self-similarity context.

Heinrich et al., "MIND: Modality independent neighbourhood descriptor for multi-modal deformable registration"
(MedIA 2012) and "Towards realtime multimodal fusion for image-guided interventions using self-similarity context"
(MICCAI 2013). For the six face neighbours of a voxel at distance `dilation`, every pair of neighbours that are not
opposite each other (12 pairs) gives one channel: the patch distance D = box-filtered squared difference of the two
shifted images. With V = the mean of the 12 distances at the voxel (the local variance estimate), the descriptor is
exp(-D / V) divided by its maximum over the 12 channels. Training-free, intensity-affine invariant, torch only.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F

from maskgen.extract.base import Extractor

#: The six face neighbours (z, y, x) of a voxel, in units of `dilation`.
SIX_NEIGHBOURHOOD = ((-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1))
#: The 12 non-opposite pairs (squared distance 2), as index pairs into SIX_NEIGHBOURHOOD.
SSC_PAIRS = tuple(
    (i, j)
    for i, j in itertools.combinations(range(6), 2)
    if sum((a - b) ** 2 for a, b in zip(SIX_NEIGHBOURHOOD[i], SIX_NEIGHBOURHOOD[j])) == 2
)
assert len(SSC_PAIRS) == 12


def _shift(padded: torch.Tensor, offset: tuple[int, int, int], pad: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """The image moved by `offset` voxels (value at x is I(x + offset)), from a copy padded by `pad` on all sides."""
    (dz, dy, dx), (z, y, x) = offset, shape
    return padded[..., pad + dz : pad + dz + z, pad + dy : pad + dy + y, pad + dx : pad + dx + x]


def box_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)^3 box of a (B, C, Z, Y, X) tensor, replicate borders; separable running sums.

    Equal to `avg_pool3d(pad(x, r, "replicate"), 2r+1, stride=1)` and about 4x faster on the CPU.
    """
    if radius == 0:
        return x
    k = 2 * radius + 1
    out = F.pad(x, (radius,) * 6, mode="replicate")
    for dim in (2, 3, 4):
        n = out.shape[dim] - 2 * radius
        acc = out.narrow(dim, 0, n).clone()
        for i in range(1, k):
            acc += out.narrow(dim, i, n)
        out = acc
    return out.div_(k**3)


def mind_ssc(
    image: torch.Tensor,
    radius: int = 2,
    dilation: int = 2,
    variance_floor: float = 1e-3,
) -> torch.Tensor:
    """MIND-SSC of (B, 1, Z, Y, X) images -> (B, 12, Z, Y, X) in (0, 1], same dtype and device.

    `radius`: half-size of the box filter that turns squared differences into patch distances.
    `dilation`: distance (voxels) of the six neighbours from the centre.
    `variance_floor`: V is clamped to [floor, 1/floor] times its mean over the image, so flat regions (air) give a
    finite descriptor; a relative clamp keeps the result invariant to affine intensity changes.
    Borders use replicate padding, so any size works (odd sizes included).
    """
    if image.ndim != 5 or image.shape[1] != 1:
        raise ValueError(f"mind_ssc: expected (B, 1, Z, Y, X), got {tuple(image.shape)}")
    if radius < 0 or dilation < 1:
        raise ValueError(f"mind_ssc: need radius >= 0 and dilation >= 1, got radius={radius}, dilation={dilation}")
    if not 0 < variance_floor < 1:
        raise ValueError(f"mind_ssc: variance_floor must be in (0, 1), got {variance_floor}")
    shape = tuple(image.shape[2:])
    padded = F.pad(image, (dilation,) * 6, mode="replicate")
    shifted = [_shift(padded, tuple(dilation * o for o in off), dilation, shape) for off in SIX_NEIGHBOURHOOD]
    sq = torch.cat([(shifted[i] - shifted[j]).square() for i, j in SSC_PAIRS], dim=1)
    del padded, shifted
    dist = box_filter(sq, radius)
    del sq
    variance = dist.mean(dim=1, keepdim=True)
    scale = variance.mean(dim=(1, 2, 3, 4), keepdim=True)
    tiny = torch.finfo(dist.dtype).tiny
    variance = torch.maximum(torch.minimum(variance, scale / variance_floor), scale * variance_floor).clamp_min(tiny)
    # exp(-D/V) / max_c exp(-D/V) == exp(-(D - min_c D) / V); the subtraction keeps it stable.
    dist = dist.sub_(dist.amin(dim=1, keepdim=True))  # dist is a fresh tensor: in place is safe
    return dist.div_(variance).neg_().exp_()


class MindSSC(Extractor):
    """MIND-SSC as a frozen extractor: 12 channels, any input size, no weights."""

    name = "mind"
    kind = "mind"
    layer = "ssc"
    out_channels = len(SSC_PAIRS)
    size_multiple = 1
    min_size = 1
    supports_autocast = False  # squared differences of nearby intensities need float32

    def __init__(self, radius: int = 2, dilation: int = 2, variance_floor: float = 1e-3) -> None:
        super().__init__()
        if not isinstance(radius, int) or radius < 0:
            raise ValueError(f"MindSSC: radius must be an integer >= 0, got {radius!r}")
        if not isinstance(dilation, int) or dilation < 1:
            raise ValueError(f"MindSSC: dilation must be an integer >= 1, got {dilation!r}")
        if not 0 < variance_floor < 1:
            raise ValueError(f"MindSSC: variance_floor must be in (0, 1), got {variance_floor!r}")
        self.radius, self.dilation, self.variance_floor = radius, dilation, variance_floor
        self.freeze()

    def arch(self) -> dict[str, Any]:
        return {
            "type": "MIND-SSC",
            "radius": self.radius,
            "dilation": self.dilation,
            "variance_floor": self.variance_floor,
            "padding": "replicate",
        }

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return mind_ssc(x.float(), self.radius, self.dilation, self.variance_floor)
