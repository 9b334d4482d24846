"""Simulated domain shifts for the robustness analysis (paper Appendix B.7): bias fields and gamma changes.

Each shift is split into `sample(rng) -> params` and a deterministic `apply(image, params)`. Images are
(1, Z, Y, X) float32 in [0, 1]; every output is rescaled to [0, 1] again, as the training pipeline ends with a
min-max rescale and the extractors expect that range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class BiasFieldShift:
    """Multiplicative smooth bias field exp(sum c_i P_i) with Legendre polynomials of `degree` (MONAI's
    `RandBiasField`), coefficients uniform in [-strength, strength]. `strength` 0 is the identity."""

    strength: float
    degree: int = 3

    def __post_init__(self) -> None:
        if not (math.isfinite(self.strength) and self.strength >= 0):
            raise ValueError(f"bias field strength must be a finite number >= 0, got {self.strength}")
        if self.degree < 1:
            raise ValueError(f"bias field degree must be >= 1, got {self.degree}")

    @property
    def identity(self) -> bool:
        return self.strength == 0

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"seed": int(rng.integers(0, 2**31 - 1))}

    def apply(self, image: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        from monai.transforms import RandBiasField

        image = np.asarray(image, dtype=np.float32)
        if self.identity:
            return image.copy()
        t = RandBiasField(degree=self.degree, coeff_range=(-self.strength, self.strength), prob=1.0)
        t.set_random_state(seed=int(params["seed"]))
        out = np.asarray(t(image), dtype=np.float32)
        return _rescale01(out)


@dataclass(frozen=True)
class GammaShift:
    """Deterministic contrast change x -> x ** gamma on the [0, 1] image (MONAI `AdjustContrast`);
    gamma 1 is the identity, < 1 brightens, > 1 darkens."""

    gamma: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.gamma) and self.gamma > 0):
            raise ValueError(f"gamma must be a finite number > 0, got {self.gamma}")

    @property
    def identity(self) -> bool:
        return self.gamma == 1

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        return {}

    def apply(self, image: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        from monai.transforms import AdjustContrast

        image = np.asarray(image, dtype=np.float32)
        if self.identity:
            return image.copy()
        out = np.asarray(AdjustContrast(gamma=self.gamma)(image), dtype=np.float32)
        return _rescale01(out)


def _rescale01(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros_like(x, dtype=np.float32)
    return ((x - lo) / (hi - lo)).astype(np.float32)
