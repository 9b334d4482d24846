"""Random appearance: render a label map as an image of a random, imaging-like contrast.

Per label: a random mean intensity, white noise and a smooth texture of random amplitude; then partial-volume
blur, resolution loss (thick slices), a multiplicative bias field, acquisition noise, a gamma curve and a
random contrast inversion. Output is (1, Z, Y, X) float32 in [0, 1], as extractors expect.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import AdjustContrast, GaussianSmooth

from maskgen.pretrain.config import SynthConfig
from maskgen.pretrain.fields import minmax, smooth_field


@dataclass(frozen=True)
class AppearanceParams:
    means: tuple[float, ...]            # per label, in [0, 1]
    stds: tuple[float, ...]             # per label, within-label white noise
    texture_amps: tuple[float, ...]     # per label, amplitude of the smooth texture
    texture_grids: tuple[int, int]      # coarse grids of the two texture fields (fine and coarse)
    blur_sigma: tuple[float, float, float]
    resolution_factors: tuple[float, float, float]   # 1 = no resolution loss on that axis
    bias_strength: float
    bias_grid: int
    noise_std: float
    gamma: float
    invert: bool
    seed: int


class RandomAppearance:
    """`sample(rng, num_labels) -> AppearanceParams`; `apply(labels, params) -> (1, Z, Y, X)` image."""

    def __init__(self, config: SynthConfig | None = None) -> None:
        self.config = config if config is not None else SynthConfig()

    def sample(self, rng: np.random.Generator, num_labels: int) -> AppearanceParams:
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        c = self.config
        means = rng.random(num_labels)
        if rng.random() < c.p_zero_background:
            means[0] = 0.0
        factors = np.ones(3)
        if rng.random() < c.p_resolution_loss:
            if rng.random() < 0.7:   # thick slices along one axis
                factors[rng.integers(0, 3)] = rng.uniform(*c.resolution_factor)
            else:                    # isotropic low resolution
                factors[:] = rng.uniform(*c.resolution_factor)
        return AppearanceParams(
            means=tuple(float(v) for v in means),
            stds=tuple(float(v) for v in rng.uniform(*c.within_label_std, size=num_labels)),
            texture_amps=tuple(float(v) for v in rng.uniform(*c.texture_amplitude, size=num_labels)),
            texture_grids=(int(rng.integers(6, 13)), int(rng.integers(3, 6))),
            blur_sigma=tuple(float(v) for v in rng.uniform(*c.blur_sigma, size=3)),
            resolution_factors=tuple(float(v) for v in factors),
            bias_strength=float(rng.uniform(*c.bias_strength)),
            bias_grid=int(rng.integers(2, 5)),
            noise_std=float(rng.uniform(*c.noise_std)),
            gamma=float(np.exp(rng.uniform(*c.log_gamma))),
            invert=bool(rng.random() < c.p_invert),
            seed=int(rng.integers(0, 2**62)),
        )

    def apply(self, labels: torch.Tensor, params: AppearanceParams) -> torch.Tensor:
        if labels.ndim != 3 or torch.is_floating_point(labels):
            raise ValueError(f"expected an integer (Z, Y, X) label map, got {labels.dtype} {tuple(labels.shape)}")
        k = len(params.means)
        if int(labels.max()) >= k:
            raise ValueError(f"label map has value {int(labels.max())} but the parameters cover {k} labels")
        shape = tuple(labels.shape)
        g = torch.Generator().manual_seed(params.seed)
        means = torch.tensor(params.means, dtype=torch.float32)
        stds = torch.tensor(params.stds, dtype=torch.float32)
        amps = torch.tensor(params.texture_amps, dtype=torch.float32)
        texture = smooth_field(shape, params.texture_grids[0], g)[0] + 0.5 * smooth_field(shape, params.texture_grids[1], g)[0]
        white = torch.randn(shape, generator=g)
        image = means[labels] + amps[labels] * texture + stds[labels] * white
        image = image[None]                                                        # (1, Z, Y, X)
        if max(params.blur_sigma) > 0:
            image = torch.as_tensor(GaussianSmooth(sigma=list(params.blur_sigma))(image))
        if max(params.resolution_factors) > 1.0:
            low = [max(2, int(round(s / f))) for s, f in zip(shape, params.resolution_factors)]
            image = F.interpolate(image[None], size=low, mode="area")
            image = F.interpolate(image, size=shape, mode="trilinear", align_corners=False)[0]
        image = minmax(image)
        bias = torch.exp(params.bias_strength * smooth_field(shape, params.bias_grid, g))
        image = image * bias
        image = minmax(image) + params.noise_std * torch.randn((1, *shape), generator=g)
        image = minmax(image)
        image = torch.as_tensor(AdjustContrast(gamma=params.gamma)(image))
        image = image.clamp(0.0, 1.0)
        if params.invert:
            image = 1.0 - image
        return image.contiguous().to(torch.float32)
