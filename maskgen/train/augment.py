"""The paper's augmentation pipeline (C.2), split TorchIO-style into `sample(rng) -> params` and `apply(data, params)`.

Spatial transforms (axis flip, rot90 in the in-plane (y, x) axes where the pipeline allows them, and the random affine:
rotation ±pi/4, scale ±0.2, shear ±0.2, zero padding) are sampled once per crop and applied identically to the image,
every feature channel (bilinear) and the label (nearest). Intensity transforms (low-resolution simulation, Gaussian
noise, bias field, Gibbs ringing, contrast, smoothing, sharpening) touch the image only; a final min-max rescale maps
the image to [0, 1]. Each transform fires with probability `prob` (paper: 0.33).

Application uses MONAI dictionary transforms with keys `image`, `features`, `label`. Intensity transforms are the
paper's MONAI `Rand*d` transforms at probability 1 with a sampled random-state seed, so a crop replays exactly from its
parameters. The spatial transforms are composed into one 4x4 matrix (MONAI convention: output voxel coordinates,
centred, -> input coordinates) and applied in a single resampling with MONAI `Affined`; flips and quarter turns alone
are exact copies (`Flipd`, `Rotate90d`). `maskgen.train.spatial_device` applies the same parameters batched on the
training device. Order: intensity, spatial, rescale (the paper flips before the intensity transforms; flips commute
with them in distribution).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from maskgen.data.intensity_aug import (  # noqa: F401 - re-exported
    INTENSITY_NAMES,
    IntensityParams,
    apply_intensity,
    intensity_from_draws,
    intensity_transforms,
)

ROT90_AXES = (1, 2)  # spatial (y, x): the paper's spatial_axes=(0, 1) in (x, y, z) order
ROTATE_RANGE = np.pi / 4
SHEAR_RANGE = 0.2
SCALE_RANGE = 0.2


@dataclass(frozen=True)
class SpatialParams:
    """One sampled spatial transform. `matrix()` composes flip, quarter turn and affine (in that order)."""

    flip_axis: int | None = None                           # spatial axis 0/1/2 (z/y/x) or None
    rot90_k: int = 0                                       # quarter turns in the (y, x) plane
    affine: bool = False                                   # whether the random affine fired
    rotate: tuple[float, float, float] = (0.0, 0.0, 0.0)   # radians, MONAI rotate_params
    shear: tuple[float, float, float] = (0.0, 0.0, 0.0)    # MONAI shear_params (first three coefficients)
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)    # MONAI scale_params

    @property
    def identity(self) -> bool:
        return self.flip_axis is None and self.rot90_k % 4 == 0 and not self.affine

    def needs_resampling(self, shape_zyx: tuple[int, ...]) -> bool:
        """True when the transform cannot be done by exact flips/quarter turns of the array."""
        odd_turn = self.rot90_k % 2 == 1 and shape_zyx[ROT90_AXES[0]] != shape_zyx[ROT90_AXES[1]]
        return self.affine or odd_turn

    def matrix(self) -> np.ndarray:
        """4x4 float64 matrix mapping centred output voxel coordinates (z, y, x) to input coordinates."""
        from monai.transforms.utils import create_rotate, create_scale, create_shear

        m = np.eye(4)
        if self.flip_axis is not None:
            m[self.flip_axis, self.flip_axis] = -1.0
        k = self.rot90_k % 4
        if k:
            a, b = ROT90_AXES
            turn = np.eye(4)
            turn[a, a], turn[a, b], turn[b, a], turn[b, b] = 0.0, 1.0, -1.0, 0.0  # same direction as torch.rot90
            m = m @ np.linalg.matrix_power(turn, k)
        if self.affine:
            aff = np.asarray(create_rotate(3, self.rotate), dtype=np.float64)
            aff = aff @ np.asarray(create_shear(3, self.shear), dtype=np.float64)
            aff = aff @ np.asarray(create_scale(3, self.scale), dtype=np.float64)
            m = m @ aff
        return m


@dataclass(frozen=True)
class AugParams:
    spatial: SpatialParams
    intensity: IntensityParams


class Augmenter:
    """Samples and applies the paper's augmentations. Construct once per worker; `apply` is deterministic."""

    def __init__(self, prob: float = 0.33, allow_flips: bool = True, spatial: bool = True, intensity: bool = True):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"Augmenter: prob={prob} must be in [0, 1]")
        self.prob = float(prob)
        self.allow_flips = bool(allow_flips)
        self.spatial = bool(spatial)
        self.intensity = bool(intensity)
        self._intensity_transforms = intensity_transforms() if self.intensity else None

    # -- sampling ------------------------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator) -> AugParams:
        """Draw every parameter from `rng`; the number of draws does not depend on the outcomes."""
        p = self.prob
        u = rng.random(3)
        flip_axis = int(rng.integers(3))
        k = int(rng.integers(1, 4))
        rotate = tuple(float(v) for v in rng.uniform(-ROTATE_RANGE, ROTATE_RANGE, 3))
        shear = tuple(float(v) for v in rng.uniform(-SHEAR_RANGE, SHEAR_RANGE, 3))
        scale = tuple(float(1.0 + v) for v in rng.uniform(-SCALE_RANGE, SCALE_RANGE, 3))
        fires = rng.random(len(INTENSITY_NAMES))
        seeds = rng.integers(0, 2**31 - 1, len(INTENSITY_NAMES))
        if self.spatial:
            flips = self.allow_flips
            spatial = SpatialParams(
                flip_axis=flip_axis if flips and u[0] < p else None,
                rot90_k=k if flips and u[1] < p else 0,
                affine=bool(u[2] < p),
                rotate=rotate if u[2] < p else (0.0, 0.0, 0.0),
                shear=shear if u[2] < p else (0.0, 0.0, 0.0),
                scale=scale if u[2] < p else (1.0, 1.0, 1.0),
            )
        else:
            spatial = SpatialParams()
        if self.intensity:
            intensity = intensity_from_draws(fires, seeds, p)
        else:
            intensity = IntensityParams()
        return AugParams(spatial, intensity)

    # -- application ---------------------------------------------------------------------------------------------
    def apply(self, data: dict[str, Any], params: AugParams, spatial: bool = True) -> dict[str, Any]:
        """Intensity (image), then spatial (all keys, unless `spatial=False`: done later on the device), then rescale.

        `data`: `image` (1, Z, Y, X) float, optional `features` (C, Z, Y, X) float, optional `label` (1, Z, Y, X).
        Returns plain float32 tensors (label keeps its dtype).
        """
        data = self.apply_intensity(data, params.intensity)
        if spatial:
            data = apply_spatial(data, params.spatial)
            data = rescale_image(data)
        return data

    def apply_intensity(self, data: dict[str, Any], params: IntensityParams) -> dict[str, Any]:
        if not params.any:
            return data
        if self._intensity_transforms is None:
            raise ValueError("this Augmenter was built with intensity=False")
        out = apply_intensity(data, params, self._intensity_transforms)
        out["image"] = _plain(out["image"]).float()
        return out


def apply_spatial(data: dict[str, Any], params: SpatialParams) -> dict[str, Any]:
    """One spatial transform on every present key (image/features bilinear, label nearest), with MONAI, on the CPU."""
    if params.identity:
        return data
    from monai.transforms import Affined, Flipd, Rotate90d

    keys = [k for k in ("image", "features", "label") if k in data and data[k] is not None]
    shape = tuple(_plain(data[keys[0]]).shape[1:])
    out = dict(data)
    label_dtype = _plain(data["label"]).dtype if "label" in keys else None
    if params.needs_resampling(shape):
        modes = ["nearest" if k == "label" else "bilinear" for k in keys]
        transform = Affined(
            keys=keys, affine=params.matrix(), mode=modes, padding_mode="zeros", dtype=np.float32, align_corners=False
        )
        out = transform(out)
    else:
        if params.flip_axis is not None:
            out = Flipd(keys=keys, spatial_axis=params.flip_axis)(out)
        if params.rot90_k % 4:
            out = Rotate90d(keys=keys, k=params.rot90_k % 4, spatial_axes=ROT90_AXES)(out)
    for k in keys:
        out[k] = _plain(out[k])
        out[k] = out[k].to(label_dtype) if k == "label" else out[k].float()
        out[k] = out[k].contiguous()
    return out


def rescale_image(data: dict[str, Any]) -> dict[str, Any]:
    """The paper's final `ScaleIntensityd(keys="image")`: min-max to [0, 1] (a constant crop becomes 0)."""
    from monai.transforms import ScaleIntensityd

    out = ScaleIntensityd(keys="image", minv=0.0, maxv=1.0)(dict(data))
    out["image"] = _plain(out["image"]).float()
    return out


def _plain(x: Any) -> torch.Tensor:
    """A plain torch tensor (MONAI returns MetaTensors)."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if hasattr(x, "as_tensor"):
        return x.as_tensor()
    return x
