"""MR contrasts of the demo dataset, rendered from warped tissue maps (sample/apply split).

A ``ContrastSpec`` holds ranges; ``MRContrast(spec).sample(rng)`` draws one subject's ``ContrastParams``;
``apply(tissues, params, ...)`` is deterministic (the voxel-wise random fields come from ``params.seed``):

1. signal: the warped template T1 intensities (``tissue_means=None``, the real source contrast), or the
   partial-volume mix of per-tissue intensities plus the template's sub-tissue detail (the part of the T1 that
   the tissue fractions do not explain, e.g. deep grey nuclei), scaled by ``detail_weight`` (negative: inverted);
2. within-tissue texture: multiplicative smooth noise;
3. resolution: in-plane Gaussian blur and thick slices (Gaussian slice profile, resampled at the slice
   thickness along ``slice_axis`` and linearly interpolated back);
4. a smooth multiplicative bias field (log-field from a 4x4x4 cubic control grid);
5. scanner gain and Rician noise (magnitude of complex Gaussian noise, so the background is not zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maskgen.demo.deform import WarpedTissues, check_range, upsample_control_grid

Range = tuple[float, float]
AXES = ("x", "y", "z")


@dataclass(frozen=True)
class ContrastSpec:
    """Ranges of one contrast's random parameters (each sampled uniformly per subject)."""

    name: str
    tissue_means: tuple[Range, Range, Range] | None  # CSF, GM, WM intensity ranges; None: template T1
    detail_weight: Range = (0.0, 0.0)
    texture_std: Range = (0.02, 0.04)
    bias_std: Range = (0.05, 0.15)
    noise_std: Range = (0.015, 0.03)  # relative to the brightest tissue
    blur_fwhm_mm: Range = (0.0, 0.0)  # in-plane
    slice_thickness_mm: Range = (0.0, 0.0)  # 0 or <= the spacing: no thick slices
    slice_axis: str = "z"
    gain: Range = (500.0, 1500.0)

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"contrast name must be a non-empty identifier (letters, digits, _), got {self.name!r}")
        if self.tissue_means is not None:
            if len(self.tissue_means) != 3:
                raise ValueError(f"{self.name}: tissue_means needs 3 ranges (CSF, GM, WM), got {self.tissue_means!r}")
            object.__setattr__(
                self, "tissue_means", tuple(check_range(f"{self.name}: tissue_means", r, 0.0, 1.0)
                                            for r in self.tissue_means)
            )
        for name, lo, hi in (
            ("detail_weight", -2.0, 2.0),
            ("texture_std", 0.0, 0.5),
            ("bias_std", 0.0, 1.0),
            ("noise_std", 0.0, 0.5),
            ("blur_fwhm_mm", 0.0, 20.0),
            ("slice_thickness_mm", 0.0, 20.0),
            ("gain", 1e-3, 1e6),
        ):
            object.__setattr__(self, name, check_range(f"{self.name}: {name}", getattr(self, name), lo, hi))
        if self.slice_axis not in AXES:
            raise ValueError(f"{self.name}: slice_axis must be one of {AXES}, got {self.slice_axis!r}")


@dataclass(frozen=True)
class ContrastParams:
    """One subject's draw of a contrast; ``seed`` seeds its texture, bias field and noise."""

    contrast: str
    tissue_means: tuple[float, float, float] | None
    detail_weight: float
    texture_std: float
    bias_std: float
    noise_std: float
    blur_fwhm_mm: float
    slice_thickness_mm: float
    slice_axis: str
    gain: float
    seed: int


# The three demo contrasts. Intensities are relative (the brightest tissue near 1) before the gain.
T1 = ContrastSpec(
    name="t1", tissue_means=None, texture_std=(0.02, 0.04), bias_std=(0.04, 0.12), noise_std=(0.015, 0.03),
    blur_fwhm_mm=(0.0, 1.0), slice_thickness_mm=(0.0, 0.0), gain=(600.0, 1200.0),
)
T2 = ContrastSpec(
    name="t2", tissue_means=((0.85, 1.0), (0.45, 0.55), (0.28, 0.36)), detail_weight=(-0.6, -0.3),
    texture_std=(0.03, 0.06), bias_std=(0.08, 0.20), noise_std=(0.02, 0.04),
    blur_fwhm_mm=(1.0, 2.0), slice_thickness_mm=(3.0, 4.5), slice_axis="z", gain=(800.0, 2500.0),
)
FLAIR = ContrastSpec(
    name="flair", tissue_means=((0.05, 0.15), (0.58, 0.68), (0.38, 0.46)), detail_weight=(-0.5, -0.2),
    texture_std=(0.04, 0.07), bias_std=(0.10, 0.22), noise_std=(0.025, 0.045),
    blur_fwhm_mm=(1.5, 2.5), slice_thickness_mm=(4.5, 6.0), slice_axis="z", gain=(300.0, 900.0),
)
DEFAULT_CONTRASTS: tuple[ContrastSpec, ...] = (T1, T2, FLAIR)

_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


class MRContrast:
    """Render one MR contrast from tissue maps (sample/apply split)."""

    def __init__(self, spec: ContrastSpec) -> None:
        if not isinstance(spec, ContrastSpec):
            raise TypeError(f"MRContrast needs a ContrastSpec, got {type(spec).__name__}")
        self.spec = spec

    def sample(self, rng: np.random.Generator) -> ContrastParams:
        s = self.spec
        u = lambda r: float(rng.uniform(*r))  # noqa: E731
        means = None if s.tissue_means is None else tuple(u(r) for r in s.tissue_means)
        return ContrastParams(
            contrast=s.name,
            tissue_means=means,
            detail_weight=u(s.detail_weight),
            texture_std=u(s.texture_std),
            bias_std=u(s.bias_std),
            noise_std=u(s.noise_std),
            blur_fwhm_mm=u(s.blur_fwhm_mm),
            slice_thickness_mm=u(s.slice_thickness_mm),
            slice_axis=s.slice_axis,
            gain=u(s.gain),
            seed=int(rng.integers(0, 2**31 - 1)),
        )

    def apply(
        self,
        tissues: WarpedTissues,
        params: ContrastParams,
        t1_tissue_means: tuple[float, float, float],
        spacing: float,
    ) -> np.ndarray:
        """The rendered image, float32 (x, y, z), in arbitrary scanner units (about 0 .. gain)."""
        from scipy import ndimage

        rng = np.random.default_rng(params.seed)
        shape = tissues.mask.shape
        fractions = (tissues.csf, tissues.gm, tissues.wm)
        if params.tissue_means is None:
            signal = tissues.t1.astype(np.float32, copy=True)
            reference = max(t1_tissue_means)
        else:
            signal = sum(np.float32(mu) * p for mu, p in zip(params.tissue_means, fractions))
            explained = sum(np.float32(mu) * p for mu, p in zip(t1_tissue_means, fractions))
            signal = signal + np.float32(params.detail_weight) * (tissues.t1 - explained)
            reference = max(params.tissue_means)

        if params.texture_std > 0:
            texture = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 0.8)
            texture /= max(float(texture.std()), 1e-6)
            signal *= 1.0 + np.float32(params.texture_std) * texture
        np.clip(signal, 0.0, None, out=signal)

        signal = self._resolution(signal, params, spacing)

        log_bias = upsample_control_grid(rng.standard_normal((4, 4, 4)), shape)
        log_bias -= log_bias.mean()
        log_bias /= max(float(log_bias.std()), 1e-6)
        signal *= np.exp(np.float32(params.bias_std) * log_bias)

        signal *= np.float32(params.gain)
        sigma = np.float32(params.noise_std * params.gain * reference)
        real = signal + sigma * rng.standard_normal(shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(shape, dtype=np.float32)
        return np.sqrt(real * real + imag * imag).astype(np.float32)

    @staticmethod
    def _resolution(signal: np.ndarray, params: ContrastParams, spacing: float) -> np.ndarray:
        from scipy import ndimage

        axis = AXES.index(params.slice_axis)
        sigma = [params.blur_fwhm_mm * _FWHM_TO_SIGMA / spacing] * 3
        thick = params.slice_thickness_mm > spacing
        if thick:  # slice profile: Gaussian with the slice thickness as FWHM (replaces the in-plane blur there)
            sigma[axis] = params.slice_thickness_mm * _FWHM_TO_SIGMA / spacing
        if max(sigma) > 0.05:
            signal = ndimage.gaussian_filter(signal, sigma, mode="nearest")
        if thick:  # sample one slice every `thickness` mm, then interpolate back to the grid linearly
            n = signal.shape[axis]
            step = params.slice_thickness_mm / spacing
            positions = np.unique(np.round(np.append(np.arange(0.0, n - 1, step), n - 1)).astype(int))
            if len(positions) < 2:
                return signal.astype(np.float32, copy=False)
            slices = np.take(signal, positions, axis=axis)
            index = np.arange(n)
            k = np.clip(np.searchsorted(positions, index, side="right") - 1, 0, len(positions) - 2)
            w = ((index - positions[k]) / (positions[k + 1] - positions[k])).astype(np.float32)
            shape_w = [1, 1, 1]
            shape_w[axis] = n
            w = w.reshape(shape_w)
            signal = np.take(slices, k, axis=axis) * (1 - w) + np.take(slices, k + 1, axis=axis) * w
        return signal.astype(np.float32, copy=False)
