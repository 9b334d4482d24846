"""Random anatomy for the demo dataset: a smooth elastic deformation plus an affine change of the template.

``RandomAnatomy(template).sample(rng) -> AnatomyParams`` draws the random parameters; ``apply(params)`` is
deterministic and returns the template's tissue maps warped onto a fixed output grid (template world space,
RAS, the template's spacing) that covers the brain with a margin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from maskgen.demo.template import Template


def check_range(name: str, value: tuple[float, float], lo: float, hi: float) -> tuple[float, float]:
    if len(value) != 2 or not (lo <= value[0] <= value[1] <= hi):
        raise ValueError(f"{name} must be (min, max) with {lo} <= min <= max <= {hi}, got {value!r}")
    return (float(value[0]), float(value[1]))


def upsample_control_grid(control: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Cubic-spline interpolation of a coarse grid (..., cx, cy, cz) whose corners sit on the corners of a
    fine grid of ``shape``: a smooth field (..., *shape), computed separably (three small matrix products)."""
    from scipy.interpolate import make_interp_spline

    out = np.asarray(control, dtype=np.float64)
    spatial0 = out.ndim - 3
    for axis, n_fine in enumerate(shape):
        n_coarse = out.shape[spatial0 + axis]
        if n_coarse == 1:
            weights = np.ones((n_fine, 1))
        else:
            spline = make_interp_spline(np.arange(n_coarse), np.eye(n_coarse), k=min(3, n_coarse - 1))
            weights = spline(np.linspace(0.0, n_coarse - 1, n_fine))  # (n_fine, n_coarse)
        out = np.moveaxis(np.tensordot(out, weights, axes=([spatial0 + axis], [1])), -1, spatial0 + axis)
    return out.astype(np.float32)


def rotation_matrix(degrees: tuple[float, float, float]) -> np.ndarray:
    """Rotation about x, then y, then z (angles in degrees)."""
    ax, ay, az = np.deg2rad(np.asarray(degrees, dtype=float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class AnatomyParams:
    """One subject's geometry: subject world point y maps to template point c + R S (y - c) + t + u(y)."""

    rotation_deg: tuple[float, float, float]
    scale: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    displacement_mm: np.ndarray = field(repr=False, compare=False)  # (3, cx, cy, cz) control-point offsets

    def summary(self) -> dict:
        """JSON-safe description (the control grid summarised by its largest displacement)."""
        return {
            "rotation_deg": [round(v, 3) for v in self.rotation_deg],
            "scale": [round(v, 4) for v in self.scale],
            "translation_mm": [round(v, 3) for v in self.translation_mm],
            "control_grid": list(self.displacement_mm.shape[1:]),
            "max_displacement_mm": round(float(np.abs(self.displacement_mm).max()), 3),
        }


@dataclass(frozen=True, eq=False)
class WarpedTissues:
    """Tissue maps of one subject on a RAS grid, arrays (x, y, z) float32; csf + gm + wm == mask."""

    t1: np.ndarray
    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    mask: np.ndarray
    affine: np.ndarray

    def crop(self, lo: np.ndarray, hi: np.ndarray) -> "WarpedTissues":
        """Sub-block [lo, hi) in voxel indices, with its affine moved accordingly."""
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        affine = self.affine.copy()
        affine[:3, 3] = self.affine[:3, :3] @ np.asarray(lo, dtype=float) + self.affine[:3, 3]
        return WarpedTissues(
            t1=self.t1[sl], csf=self.csf[sl], gm=self.gm[sl], wm=self.wm[sl], mask=self.mask[sl], affine=affine
        )


class RandomAnatomy:
    """Random smooth deformation + affine change of the template (sample/apply split)."""

    def __init__(
        self,
        template: Template,
        margin_mm: float = 24.0,
        max_rotation_deg: float = 10.0,
        scale_range: tuple[float, float] = (0.9, 1.1),
        anisotropy: float = 0.05,
        max_translation_mm: float = 6.0,
        elastic_std_mm: float = 3.0,
        control_spacing_mm: float = 32.0,
    ) -> None:
        if margin_mm < 0:
            raise ValueError(f"margin_mm must be >= 0, got {margin_mm!r}")
        if not 0 <= max_rotation_deg <= 45:
            raise ValueError(f"max_rotation_deg must be in [0, 45], got {max_rotation_deg!r}")
        self.scale_range = check_range("scale_range", scale_range, 0.5, 2.0)
        if not 0 <= anisotropy <= 0.3:
            raise ValueError(f"anisotropy must be in [0, 0.3], got {anisotropy!r}")
        if max_translation_mm < 0:
            raise ValueError(f"max_translation_mm must be >= 0, got {max_translation_mm!r}")
        if elastic_std_mm < 0:
            raise ValueError(f"elastic_std_mm must be >= 0, got {elastic_std_mm!r}")
        if control_spacing_mm < 4 * template.spacing:
            raise ValueError(
                f"control_spacing_mm must be >= 4 voxels ({4 * template.spacing} mm), got {control_spacing_mm!r}"
            )
        self.template = template
        self.max_rotation_deg = float(max_rotation_deg)
        self.anisotropy = float(anisotropy)
        self.max_translation_mm = float(max_translation_mm)
        self.elastic_std_mm = float(elastic_std_mm)

        # Output grid: the template's brain box grown by the margin, same spacing and axes (RAS).
        lo, hi = template.brain_bbox_world()
        s = float(template.spacing)
        n_margin = int(np.ceil(margin_mm / s))
        self.grid_shape = tuple(int(v) for v in np.round((hi - lo) / s).astype(int) + 1 + 2 * n_margin)
        self.grid_affine = np.diag([s, s, s, 1.0])
        self.grid_affine[:3, 3] = lo - n_margin * s
        extent = (np.asarray(self.grid_shape) - 1) * s
        self.control_shape = tuple(int(v) for v in np.ceil(extent / control_spacing_mm).astype(int) + 1)
        from scipy import ndimage

        idx_centre = np.asarray(ndimage.center_of_mass(template.mask))
        self.centre = template.affine[:3, :3] @ idx_centre + template.affine[:3, 3]

    def sample(self, rng: np.random.Generator) -> AnatomyParams:
        rotation = rng.uniform(-self.max_rotation_deg, self.max_rotation_deg, size=3)
        scale = rng.uniform(*self.scale_range) * np.exp(rng.uniform(-self.anisotropy, self.anisotropy, size=3))
        translation = rng.uniform(-self.max_translation_mm, self.max_translation_mm, size=3)
        displacement = rng.normal(0.0, self.elastic_std_mm, size=(3, *self.control_shape))
        displacement = np.clip(displacement, -3 * self.elastic_std_mm, 3 * self.elastic_std_mm)
        return AnatomyParams(
            rotation_deg=tuple(float(v) for v in rotation),
            scale=tuple(float(v) for v in scale),
            translation_mm=tuple(float(v) for v in translation),
            displacement_mm=displacement.astype(np.float32),
        )

    def apply(self, params: AnatomyParams) -> WarpedTissues:
        from scipy import ndimage

        if params.displacement_mm.shape != (3, *self.control_shape):
            raise ValueError(
                f"displacement control grid {params.displacement_mm.shape} does not match {(3, *self.control_shape)}"
            )
        t = self.template
        m = rotation_matrix(params.rotation_deg) @ np.diag(params.scale)
        g3, g0 = self.grid_affine[:3, :3], self.grid_affine[:3, 3]
        tinv = np.linalg.inv(t.affine)
        ti3, ti0 = tinv[:3, :3], tinv[:3, 3]
        c = self.centre
        a = ti3 @ m @ g3
        b = ti3 @ (m @ g0 + c - m @ c + np.asarray(params.translation_mm)) + ti0

        shape = self.grid_shape
        u = upsample_control_grid(params.displacement_mm, shape)  # (3, X, Y, Z) mm
        coords = np.einsum("ij,jxyz->ixyz", ti3.astype(np.float32), u)
        axes = [np.arange(n, dtype=np.float32) for n in shape]
        for i in range(3):
            coords[i] += b[i]
            for j in range(3):
                if a[i, j] != 0.0:
                    coords[i] += (a[i, j] * axes[j]).reshape([-1 if k == j else 1 for k in range(3)])

        def warp(arr: np.ndarray) -> np.ndarray:
            return ndimage.map_coordinates(arr, coords, order=1, mode="constant", cval=0.0, output=np.float32)

        mask = np.clip(warp(t.mask), 0.0, 1.0)
        gm = np.clip(warp(t.gm), 0.0, 1.0)
        wm = np.clip(warp(t.wm), 0.0, 1.0)
        csf = np.clip(mask - gm - wm, 0.0, 1.0)
        return WarpedTissues(t1=warp(t.t1), csf=csf, gm=gm, wm=wm, mask=mask, affine=self.grid_affine.copy())
