"""Preprocessing one case: load (nibabel), reorient to RAS and resample to the pipeline spacing (MONAI), normalise.

Outputs are in store order: image (1, Z, Y, X) float32 in [0, 1], label (Z, Y, X) uint8. The `Geometry` records the
original grid (affine, shape, orientation) and the preprocessed one, so `label_to_original` maps a prediction back
onto the original voxel grid with the original affine (nearest neighbour, any orientation, oblique included).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from maskgen.data.cases import Case
from maskgen.data.intensity import normalize
from maskgen.data.labels import affine_mismatch, check_label
from maskgen.data.nifti import orientation, read_volume
from maskgen.data.pipeline import Pipeline
from maskgen.errors import MaskgenError

_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # nibabel's world convention (RAS+)


def _nested(affine: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in np.asarray(affine, dtype=np.float64))


@dataclass(frozen=True)
class Geometry:
    """Everything needed to map a prediction back exactly (store/JSON-safe via maskgen.config.to_dict)."""

    original_affine: tuple[tuple[float, ...], ...]  # 4x4 of the input file
    original_shape: tuple[int, int, int]  # spatial shape (x, y, z) of the input file
    original_orientation: tuple[str, str, str]  # e.g. ("L", "P", "S")
    resampled_affine: tuple[tuple[float, ...], ...]  # 4x4 of the preprocessed grid, XYZ index order
    resampled_shape_xyz: tuple[int, int, int]

    @classmethod
    def coerce(cls, value: Geometry | dict[str, Any]) -> Geometry:
        """A Geometry from itself or from its `to_dict` form (as stored in a feature store)."""
        if isinstance(value, Geometry):
            return value
        try:
            return cls(
                original_affine=_nested(np.asarray(value["original_affine"])),
                original_shape=tuple(int(v) for v in value["original_shape"]),  # type: ignore[arg-type]
                original_orientation=tuple(str(v) for v in value["original_orientation"]),  # type: ignore[arg-type]
                resampled_affine=_nested(np.asarray(value["resampled_affine"])),
                resampled_shape_xyz=tuple(int(v) for v in value["resampled_shape_xyz"]),  # type: ignore[arg-type]
            )
        except (KeyError, TypeError, ValueError) as e:
            raise MaskgenError(f"not a maskgen geometry record ({e}); the store or checkpoint may be damaged") from None

    @property
    def original_affine_array(self) -> np.ndarray:
        return np.asarray(self.original_affine, dtype=np.float64)

    @property
    def resampled_affine_array(self) -> np.ndarray:
        return np.asarray(self.resampled_affine, dtype=np.float64)

    @property
    def resampled_shape_zyx(self) -> tuple[int, int, int]:
        return tuple(reversed(self.resampled_shape_xyz))  # type: ignore[return-value]


@dataclass
class Preprocessed:
    image: np.ndarray  # (1, Z, Y, X) float32 in [0, 1]
    label: np.ndarray | None  # (Z, Y, X) uint8, values 0..K
    geometry: Geometry
    spacing_zyx: tuple[float, float, float]
    intensity: dict[str, Any] = field(default_factory=dict)  # the normalisation applied: rule, parameters, range


def normalize_intensity(image: np.ndarray, pipeline: Pipeline, domain: str | None = None) -> np.ndarray:
    """The image scaled to [0, 1] by the pipeline's rule for `domain` (see `maskgen.data.intensity`)."""
    return normalize(image, pipeline.intensity_rule(domain))[0]


def _resample(image_xyz: np.ndarray, label_xyz: np.ndarray | None, affine: np.ndarray, pipeline: Pipeline):
    """RAS reorientation + resampling of image (trilinear) and label (nearest) onto one grid with MONAI."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientationd, Spacingd

    keys = ["image"] + (["label"] if label_xyz is not None else [])
    aff = torch.as_tensor(affine, dtype=torch.float64)
    data = {"image": MetaTensor(torch.from_numpy(np.ascontiguousarray(image_xyz, dtype=np.float32)[None]), affine=aff)}
    if label_xyz is not None:
        data["label"] = MetaTensor(
            torch.from_numpy(np.ascontiguousarray(label_xyz, dtype=np.float32)[None]), affine=aff.clone()
        )
    modes = ["bilinear", "nearest"][: len(keys)]
    data = Orientationd(keys=keys, axcodes="RAS", labels=_RAS_LABELS)(data)
    data = Spacingd(keys=keys, pixdim=pipeline.spacing, mode=modes, padding_mode="border", dtype=np.float32)(data)
    image = data["image"]
    out_affine = np.asarray(image.affine.numpy(), dtype=np.float64)
    out_image = image.numpy()[0]
    out_label = data["label"].numpy()[0] if label_xyz is not None else None
    return out_image, out_label, out_affine


def _preprocess(
    image_path: Path, label_path: Path | None, channel: int | None, pipeline: Pipeline, what: str, domain: str | None
) -> Preprocessed:
    image, affine = read_volume(image_path, channel)
    image = np.asarray(image, dtype=np.float32)
    if not np.isfinite(image).all():
        bad = int((~np.isfinite(image)).sum())
        raise MaskgenError(f"{what}: image {image_path} has {bad} NaN/Inf voxels; fix or re-export it")
    label_xyz = None
    if label_path is not None:
        raw, label_affine = read_volume(label_path)
        if raw.shape != image.shape:
            raise MaskgenError(
                f"{what}: label {label_path} has shape {raw.shape} but image {image_path} has {image.shape}; "
                "they must be on the same voxel grid"
            )
        mismatch = affine_mismatch(affine, label_affine)
        if mismatch:
            raise MaskgenError(
                f"{what}: label {label_path} is not aligned with image {image_path} ({mismatch}); "
                "resample the label onto the image grid"
            )
        label_xyz, problems = check_label(raw, pipeline)
        if problems:
            raise MaskgenError(f"{what}: label {label_path}: {problems[0]}")
    out_image, out_label, out_affine = _resample(image, label_xyz, affine, pipeline)
    geometry = Geometry(
        original_affine=_nested(affine),
        original_shape=tuple(int(s) for s in image.shape),  # type: ignore[arg-type]
        original_orientation=orientation(affine),
        resampled_affine=_nested(out_affine),
        resampled_shape_xyz=tuple(int(s) for s in out_image.shape),  # type: ignore[arg-type]
    )
    scaled, intensity = normalize(out_image, pipeline.intensity_rule(domain))
    image_zyx = np.ascontiguousarray(scaled.transpose(2, 1, 0)[None])
    label_zyx = None
    if out_label is not None:
        label_zyx = np.ascontiguousarray(np.rint(out_label).astype(np.uint8).transpose(2, 1, 0))
    return Preprocessed(image=image_zyx, label=label_zyx, geometry=geometry, spacing_zyx=pipeline.spacing_zyx,
                        intensity=intensity)


def preprocess_case(case: Case, pipeline: Pipeline) -> Preprocessed:
    """Load, reorient to RAS, resample to the pipeline spacing, normalise by the rule of the case's domain; label
    checked and remapped to 0..K."""
    label = Path(case.label) if case.label is not None else None
    return _preprocess(Path(case.image), label, case.channel, pipeline, f"case {case.case_id}", case.domain)


def preprocess_image_file(
    path: str | Path, pipeline: Pipeline, channel: int | None = None, domain: str | None = None
) -> Preprocessed:
    """The same for an image without a label (for `maskgen predict`); `domain` picks the normalisation rule (None:
    the pipeline's default rule)."""
    return _preprocess(Path(path), None, channel, pipeline, f"image {path}", domain)


def resample_to_original(volume_czyx: np.ndarray, geometry: Geometry | dict, mode: str = "nearest") -> np.ndarray:
    """(C, Z, Y, X) on the preprocessed grid -> (C, X, Y, Z) on the original grid (MONAI SpatialResample).

    `mode`: "nearest" for labels, "bilinear" for probabilities / soft outputs.
    """
    import torch
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    g = Geometry.coerce(geometry)
    vol = np.asarray(volume_czyx)
    if vol.ndim != 4 or tuple(vol.shape[1:]) != g.resampled_shape_zyx:
        raise MaskgenError(
            f"prediction of shape {tuple(vol.shape)} does not match the preprocessed grid (C, "
            f"{', '.join(map(str, g.resampled_shape_zyx))}) recorded for this case"
        )
    xyz = np.ascontiguousarray(vol.transpose(0, 3, 2, 1), dtype=np.float32)
    src = MetaTensor(torch.from_numpy(xyz), affine=torch.as_tensor(g.resampled_affine_array))
    out = SpatialResample(mode=mode, padding_mode="border", dtype=np.float32)(
        src, dst_affine=torch.as_tensor(g.original_affine_array), spatial_size=g.original_shape
    )
    return np.asarray(out.numpy() if hasattr(out, "numpy") else out)


def label_to_original(label_zyx: np.ndarray, geometry: Geometry | dict) -> nib.Nifti1Image:
    """A preprocessed-grid label map (Z, Y, X) as a uint8 NIfTI on the original grid, with the original affine."""
    g = Geometry.coerce(geometry)
    lab = np.asarray(label_zyx)
    if lab.ndim != 3:
        raise MaskgenError(f"label map must be (Z, Y, X), got shape {lab.shape}")
    back = resample_to_original(lab[None].astype(np.float32), g, mode="nearest")[0]
    data = np.rint(back).clip(0, 255).astype(np.uint8)
    affine = g.original_affine_array
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_data_dtype(np.uint8)
    return img


__all__ = [
    "Geometry",
    "Preprocessed",
    "preprocess_case",
    "preprocess_image_file",
    "label_to_original",
    "resample_to_original",
    "normalize_intensity",
]
