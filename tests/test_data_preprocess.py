"""Preprocessing: RAS + resampling + normalisation in store order, and an exact way back to the original grid."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from maskgen.config import to_dict
from maskgen.data.cases import Case
from maskgen.data.nifti import save_nifti_atomic
from maskgen.data.pipeline import parse_pipeline
from maskgen.data.preprocess import (
    Geometry,
    label_to_original,
    normalize_intensity,
    preprocess_case,
    preprocess_image_file,
    resample_to_original,
)
from maskgen.errors import MaskgenError


def make_pipeline(spacing=(1.0, 1.0, 1.0), normalization="minmax", classes=("a", "b"), **extra):
    data = {"layout": "nnunet", "spacing": list(spacing), "crop_size": [8, 8, 8], "normalization": normalization,
            "classes": list(classes), **extra}
    return parse_pipeline(data)


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def phantom(shape) -> np.ndarray:
    """Ellipsoid (label 1) holding a box (label 2)."""
    x, y, z = np.indices(shape)
    cx, cy, cz = (np.array(shape) - 1) / 2
    lab = np.zeros(shape, np.uint8)
    lab[((x - cx) / (shape[0] * 0.35)) ** 2 + ((y - cy) / (shape[1] * 0.35)) ** 2 + ((z - cz) / (shape[2] * 0.35)) ** 2
        < 1] = 1
    lab[int(cx) - 2 : int(cx) + 3, int(cy) - 2 : int(cy) + 2, int(cz) - 1 : int(cz) + 2] = 2
    return lab


def save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def case_for(tmp_path, image, label, affine, label_affine=None, channel=None) -> Case:
    img = save(tmp_path / "img.nii.gz", image, affine)
    lab = save(tmp_path / "lab.nii.gz", label, affine if label_affine is None else label_affine)
    return Case("c1", img, lab, "d", "train", channel=channel)


def dice(a, b, k) -> float:
    return 2 * np.logical_and(a == k, b == k).sum() / ((a == k).sum() + (b == k).sum())


def test_oblique_anisotropic_lps_round_trip(tmp_path):
    shape = (22, 18, 12)
    affine = np.eye(4)
    affine[:3, :3] = rotation(0.15, 0.3, -0.25) @ np.diag([-0.9, -1.3, 2.5])  # oblique, L-P-S-ish, anisotropic
    affine[:3, 3] = [30.0, -20.0, 10.0]
    label = phantom(shape)
    image = (label * 100 + np.random.default_rng(0).normal(0, 5, shape)).astype(np.float32)
    case = case_for(tmp_path, image, label, affine)

    pre = preprocess_case(case, make_pipeline(spacing=(1.0, 1.0, 1.0)))
    g = pre.geometry
    assert g.original_shape == shape and g.original_orientation == ("L", "P", "S")
    assert np.allclose(g.original_affine_array, nib.load(case.image).affine)
    assert nib.aff2axcodes(g.resampled_affine_array) == ("R", "A", "S")
    assert np.allclose(np.linalg.norm(g.resampled_affine_array[:3, :3], axis=0), 1.0)
    assert pre.image.shape == (1, *g.resampled_shape_zyx) and pre.image.dtype == np.float32
    assert pre.label.shape == g.resampled_shape_zyx and pre.label.dtype == np.uint8
    assert pre.image.flags.c_contiguous and pre.label.flags.c_contiguous
    assert pre.image.min() == 0.0 and pre.image.max() == 1.0
    assert set(np.unique(pre.label)) == {0, 1, 2} and pre.spacing_zyx == (1.0, 1.0, 1.0)
    # the image and label stay registered: foreground is bright
    assert pre.image[0][pre.label == 1].mean() > 0.3 > pre.image[0][pre.label == 0].mean()

    back = label_to_original(pre.label, g)
    assert back.shape == shape and np.array_equal(back.affine, nib.load(case.image).affine)
    data = np.asanyarray(back.dataobj)
    assert data.dtype == np.uint8
    assert (data == label).mean() > 0.97 and dice(data, label, 1) > 0.95 and dice(data, label, 2) > 0.7
    save_nifti_atomic(back, tmp_path / "out" / "pred.nii.gz")
    reread = nib.load(tmp_path / "out" / "pred.nii.gz")
    assert np.allclose(reread.affine, back.affine, atol=1e-5) and nib.aff2axcodes(reread.affine) == ("L", "P", "S")
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp file left


def test_axis_aligned_flipped_grid_round_trips_exactly(tmp_path):
    shape = (16, 12, 10)
    affine = np.diag([-2.0, 2.0, -2.0, 1.0])  # L-A-I at the target spacing
    affine[:3, 3] = [15.0, -11.0, 9.0]
    label = phantom(shape)
    case = case_for(tmp_path, label.astype(np.float32) * 3.0, label, affine)
    pre = preprocess_case(case, make_pipeline(spacing=(2.0, 2.0, 2.0)))
    assert pre.geometry.resampled_shape_xyz == shape
    # RAS flip of x and z, then (x,y,z) -> (z,y,x)
    assert np.array_equal(pre.label, label[::-1, :, ::-1].transpose(2, 1, 0))
    back = label_to_original(pre.label, to_dict(pre.geometry))  # the form a store keeps
    assert np.array_equal(np.asanyarray(back.dataobj), label)


def test_geometry_survives_json_and_coerce():
    g = Geometry(((1.0, 0, 0, 0), (0, 1.0, 0, 0), (0, 0, 1.0, 0), (0, 0, 0, 1.0)), (4, 5, 6), ("R", "A", "S"),
                 ((2.0, 0, 0, 0), (0, 2.0, 0, 0), (0, 0, 2.0, 0), (0, 0, 0, 1.0)), (2, 3, 3))
    assert Geometry.coerce(json.loads(json.dumps(to_dict(g)))) == g
    with pytest.raises(MaskgenError, match="geometry"):
        Geometry.coerce({"original_shape": [1, 2, 3]})
    with pytest.raises(MaskgenError, match="does not match"):
        resample_to_original(np.zeros((1, 3, 3, 3)), g)


def test_4d_image_selects_the_case_channel(tmp_path):
    shape = (10, 9, 8)
    label = phantom(shape)
    image = np.stack([label * (c + 1.0) + (c == 2) * np.linspace(0, 1, 10)[:, None, None] for c in range(4)], axis=-1)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    pipeline = make_pipeline()
    pre = [preprocess_case(case_for(tmp_path, image.astype(np.float32), label, affine, channel=c), pipeline)
           for c in (0, 2)]
    expected0 = normalize_intensity(image[..., 0][None].astype(np.float32), pipeline)[0].transpose(2, 1, 0)
    assert np.allclose(pre[0].image[0], expected0, atol=1e-6)
    assert not np.allclose(pre[0].image, pre[1].image)
    with pytest.raises(MaskgenError, match="channel"):
        preprocess_case(case_for(tmp_path, image.astype(np.float32), label, affine, channel=None), pipeline)


def test_ct_window_and_minmax_normalisation():
    hu = np.array([-3000.0, -1024.0, 0.0, 512.0, 1024.0, 3000.0], dtype=np.float32).reshape(1, 1, 1, 6)
    ct = normalize_intensity(hu, make_pipeline(normalization="ct")).ravel()
    assert np.allclose(ct, [0.0, 0.0, 0.5, 0.75, 1.0, 1.0])
    mm = normalize_intensity(np.array([2.0, 4.0, 6.0], np.float32).reshape(1, 1, 1, 3), make_pipeline()).ravel()
    assert np.allclose(mm, [0.0, 0.5, 1.0])
    flat = normalize_intensity(np.full((1, 2, 2, 2), 7.0, np.float32), make_pipeline())
    assert np.isfinite(flat).all()


def test_label_map_and_binarize_apply(tmp_path):
    shape = (8, 8, 8)
    raw = np.zeros(shape, np.int16)
    raw[2:4, 2:4, 2:4] = 15
    raw[5:7, 5:7, 5:7] = 1
    affine = np.eye(4)
    topcow_like = make_pipeline(classes=[f"c{i}" for i in range(13)], label_map={"15": 13})
    pre = preprocess_case(case_for(tmp_path, raw.astype(np.float32), raw, affine), topcow_like)
    assert set(np.unique(pre.label)) == {0, 1, 13}
    zones = raw.copy()
    zones[zones == 15] = 2  # two prostate zones
    pre = preprocess_case(case_for(tmp_path, zones.astype(np.float32), zones, affine),
                          make_pipeline(classes=["prostate"], binarize_labels=True))
    assert set(np.unique(pre.label)) == {0, 1}


def test_preprocess_errors_name_the_file(tmp_path):
    shape = (8, 8, 8)
    label = phantom(shape)
    affine = np.eye(4)
    pipeline = make_pipeline()
    # truncated gzip
    good = save(tmp_path / "good.nii.gz", label.astype(np.float32), affine)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(MaskgenError, match="broken.nii.gz"):
        preprocess_image_file(broken, pipeline)
    # label on another grid
    with pytest.raises(MaskgenError, match="shape"):
        preprocess_case(case_for(tmp_path, label.astype(np.float32), label[:7], affine), pipeline)
    shifted = affine.copy()
    shifted[0, 3] = 3.0
    with pytest.raises(MaskgenError, match="not aligned"):
        preprocess_case(case_for(tmp_path, label.astype(np.float32), label, affine, label_affine=shifted), pipeline)
    # undeclared label value, NaN image
    with pytest.raises(MaskgenError, match="undeclared"):
        preprocess_case(case_for(tmp_path, label.astype(np.float32), label * 3, affine), pipeline)
    image = label.astype(np.float32)
    image[0, 0, 0] = np.nan
    with pytest.raises(MaskgenError, match="NaN"):
        preprocess_case(case_for(tmp_path, image, label, affine), pipeline)


def test_preprocess_image_file_without_label(tmp_path):
    path = save(tmp_path / "x.nii", np.arange(6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8), np.diag([2, 2, 2, 1.0]))
    pre = preprocess_image_file(path, make_pipeline(spacing=(1.0, 1.0, 1.0)))
    assert pre.label is None and pre.image.shape[0] == 1
    assert pre.geometry.resampled_shape_xyz[0] >= 11  # 6 voxels of 2 mm resampled to 1 mm
