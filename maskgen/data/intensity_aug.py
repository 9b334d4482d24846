"""The paper's intensity augmentation (C.2): low-resolution simulation, Gaussian noise, bias field, Gibbs ringing,
contrast, smoothing, sharpening, each a MONAI `Rand*d` transform on the key `image`.

Split TorchIO-style: parameters are, per transform, None (not applied) or the MONAI random-state seed it runs with
(at probability 1), so an augmentation replays exactly from its parameters. Used per crop by training
(`maskgen.train.augment.Augmenter`) and per volume by `maskgen extract --views K` (`view_params`,
`augment_volume`: the stored augmented views whose features carry the augmentation's effect).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

INTENSITY_NAMES = ("low_resolution", "gaussian_noise", "bias_field", "gibbs", "contrast", "smooth", "sharpen")


@dataclass(frozen=True)
class IntensityParams:
    """Per intensity transform (INTENSITY_NAMES order): None = not applied, else the MONAI random-state seed."""

    seeds: tuple[int | None, ...] = (None,) * len(INTENSITY_NAMES)

    @property
    def applied(self) -> tuple[str, ...]:
        return tuple(n for n, s in zip(INTENSITY_NAMES, self.seeds) if s is not None)

    @property
    def any(self) -> bool:
        return any(s is not None for s in self.seeds)

    def to_record(self) -> dict[str, Any]:
        """JSON form kept in a store's case record: {transform name: MONAI seed} of the transforms that fired."""
        return {n: int(s) for n, s in zip(INTENSITY_NAMES, self.seeds) if s is not None}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "IntensityParams":
        unknown = sorted(set(record) - set(INTENSITY_NAMES))
        if unknown:
            raise ValueError(f"unknown intensity transform(s) {unknown}; known: {', '.join(INTENSITY_NAMES)}")
        return cls(tuple(None if record.get(n) is None else int(record[n]) for n in INTENSITY_NAMES))


def intensity_from_draws(fires: np.ndarray, seeds: np.ndarray, prob: float) -> IntensityParams:
    """Transform i fires when fires[i] < prob (uniform draws), with MONAI seed seeds[i]."""
    return IntensityParams(tuple(int(s) if f < prob else None for f, s in zip(fires, seeds)))


def intensity_transforms() -> list:
    """The paper's MONAI intensity transforms (C.2) at probability 1: whether each fires is sampled separately."""
    from monai.transforms import (
        RandAdjustContrastd,
        RandBiasFieldd,
        RandGaussianNoised,
        RandGaussianSharpend,
        RandGaussianSmoothd,
        RandGibbsNoised,
        RandSimulateLowResolutiond,
    )

    return [
        RandSimulateLowResolutiond(keys="image", prob=1.0, zoom_range=(0.25, 1.0)),
        RandGaussianNoised(keys="image", prob=1.0),
        RandBiasFieldd(keys="image", prob=1.0, coeff_range=(0.0, 0.1)),
        RandGibbsNoised(keys="image", prob=1.0, alpha=(0.0, 0.33)),
        RandAdjustContrastd(keys="image", prob=1.0),
        RandGaussianSmoothd(keys="image", prob=1.0, sigma_x=(0.0, 0.1), sigma_y=(0.0, 0.1), sigma_z=(0.0, 0.1)),
        RandGaussianSharpend(keys="image", prob=1.0),
    ]


def apply_intensity(data: dict[str, Any], params: IntensityParams, transforms: list | None = None) -> dict[str, Any]:
    """The transforms of `params`, in INTENSITY_NAMES order, on `data["image"]` (other keys untouched); `transforms`:
    a list from `intensity_transforms()` to reuse (built here when None). Returns `data` itself when none fires."""
    if not params.any:
        return data
    transforms = transforms if transforms is not None else intensity_transforms()
    out = dict(data)
    for transform, seed in zip(transforms, params.seeds):
        if seed is None:
            continue
        transform.set_random_state(seed=seed)
        out = transform(out)
    image = out["image"]
    out["image"] = image.as_tensor() if hasattr(image, "as_tensor") else image
    return out


# -- stored views (maskgen extract --views K) -------------------------------------------------------------------
def view_seed(seed: int, case_id: str, view: int) -> int:
    """The random seed of augmented view `view` (1..K) of a case: a pure function of (store seed, case id, view)."""
    digest = hashlib.sha256(f"maskgen-view:{int(seed)}:{case_id}:{int(view)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def view_params(seed: int, prob: float) -> IntensityParams:
    """The intensity transforms of one stored view: each fires with `prob` (the paper's draw), redrawn until at
    least one fires (a view where none fires would be the clean one). Deterministic in `seed`."""
    if not 0.0 < prob <= 1.0:
        raise ValueError(f"view_params: prob={prob} must be in (0, 1]")
    rng = np.random.default_rng(int(seed))
    while True:
        fires = rng.random(len(INTENSITY_NAMES))
        seeds = rng.integers(0, 2**31 - 1, len(INTENSITY_NAMES))
        params = intensity_from_draws(fires, seeds, prob)
        if params.any:
            return params


def augment_volume(image: np.ndarray, params: IntensityParams) -> np.ndarray:
    """A whole (1, Z, Y, X) image through the transforms of `params`, then min-max scaled to [0, 1] (the paper's
    final ScaleIntensity; a constant result becomes 0). float32."""
    import torch

    with torch.no_grad():
        out = apply_intensity({"image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))}, params)
        x = torch.as_tensor(out["image"]).float()
        lo, hi = x.min(), x.max()
        x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    return np.ascontiguousarray(x.numpy(), dtype=np.float32)
