"""The tiny synthetic dataset generator used by every stage's fast tests."""

from __future__ import annotations

import json
import tomllib

import nibabel as nib
import numpy as np
import pytest

from _helpers import domains_rows, load_nifti
from maskgen.demo.synthetic import make_synthetic_dataset, synthetic_labels, synthetic_volume
from maskgen.errors import MaskgenError


def test_layout_splits_and_pipeline(tmp_path):
    root = make_synthetic_dataset(tmp_path / "syn")
    assert root == (tmp_path / "syn").absolute()
    rows = domains_rows(root)
    assert [r["case"] for r in rows] == [
        "sub-000_a", "sub-001_a", "sub-002_a", "sub-003_b", "sub-004_a", "sub-004_b", "sub-005_a", "sub-005_b",
    ]
    assert {(r["split"], r["domain"]) for r in rows} == {("train", "a"), ("val", "b"), ("test", "a"), ("test", "b")}
    subjects = {}
    for r in rows:
        assert r["case"].startswith(r["subject"] + "_")
        subjects.setdefault(r["subject"], set()).add(r["split"])
    assert all(len(s) == 1 for s in subjects.values()), "a subject straddles splits"
    for r in rows:
        image, img = load_nifti(root / "imagesTr" / f"{r['case']}_0000.nii.gz")
        label, lab = load_nifti(root / "labelsTr" / f"{r['case']}.nii.gz")
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert image.shape == label.shape == (32, 32, 32)
        np.testing.assert_allclose(img.affine[:3, :3], np.eye(3))
        np.testing.assert_allclose(img.affine, lab.affine)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert set(np.unique(label)) == {0, 1, 2}
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "class1": 1, "class2": 2}
    assert meta["numTraining"] == len(rows) == 8
    assert meta["maskgen"]["seed"] == 0

    toml = tomllib.loads((root / "pipeline.toml").read_text())
    assert toml["name"] == "synthetic"
    assert toml["layout"] == {"kind": "nnunet", "csv": "domains.csv"}
    assert toml["spacing"] == [1.0, 1.0, 1.0] and toml["crop_size"] == [16, 16, 16]
    assert toml["normalization"] == "minmax" and toml["allow_flips"] is True
    assert toml["classes"] == ["class1", "class2"]
    assert toml["default_data_root"] == str(root)


def test_pipeline_file_is_read_by_the_real_loader(tmp_path):
    from maskgen.data.layouts import discover_cases
    from maskgen.data.pipeline import load_pipeline

    root = make_synthetic_dataset(tmp_path / "syn", n_cases=4, size=24, n_classes=3, contrasts=("ct", "mr", "pet"))
    pipeline = load_pipeline(str(root / "pipeline.toml"))
    assert pipeline.num_classes == 4 and pipeline.crop_size == (16, 16, 16)
    cases = discover_cases(pipeline, None)  # default_data_root: no --data-root needed
    got = {(c.case_id, c.split, c.domain, c.subject) for c in cases}
    assert got == {
        ("sub-000_ct", "train", "ct", "sub-000"),
        ("sub-001_ct", "train", "ct", "sub-001"),
        ("sub-002_mr", "val", "mr", "sub-002"),
        ("sub-002_pet", "val", "pet", "sub-002"),
        ("sub-003_ct", "test", "ct", "sub-003"),
        ("sub-003_mr", "test", "mr", "sub-003"),
        ("sub-003_pet", "test", "pet", "sub-003"),
    }


def test_deterministic_from_seed(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", seed=3)
    b = make_synthetic_dataset(tmp_path / "b", seed=3)
    c = make_synthetic_dataset(tmp_path / "c", seed=4)
    for name in ("imagesTr/sub-004_b_0000.nii.gz", "labelsTr/sub-000_a.nii.gz"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert not np.array_equal(load_nifti(a / name)[0], load_nifti(c / name)[0])


def test_contrasts_differ_per_label(tmp_path):
    root = make_synthetic_dataset(tmp_path / "syn", n_classes=3)
    label = load_nifti(root / "labelsTr/sub-004_a.nii.gz")[0]
    means = {}
    for contrast in ("a", "b"):
        image = load_nifti(root / f"imagesTr/sub-004_{contrast}_0000.nii.gz")[0]
        means[contrast] = [float(image[label == k].mean()) for k in range(4)]
    assert np.all(np.diff(means["a"]) > 0.1)  # contrast a: brighter with the label value
    assert np.all(np.diff(means["b"]) < -0.1)  # contrast b: reversed


def test_volume_helper_matches_files(tmp_path):
    image, label = synthetic_volume(32, n_classes=2, seed=5)
    assert image.shape == (1, 32, 32, 32) and image.dtype == np.float32
    assert label.shape == (32, 32, 32) and label.dtype == np.uint8
    assert image.min() == 0.0 and image.max() == 1.0
    assert set(np.unique(label)) == {0, 1, 2}
    root = make_synthetic_dataset(tmp_path / "syn", seed=5)
    file_label = load_nifti(root / "labelsTr/sub-000_a.nii.gz")[0]
    file_image = load_nifti(root / "imagesTr/sub-000_a_0000.nii.gz")[0]
    np.testing.assert_array_equal(label, file_label.transpose(2, 1, 0))  # store order (z, y, x)
    scaled = (file_image - file_image.min()) / (file_image.max() - file_image.min())
    np.testing.assert_allclose(image[0], scaled.transpose(2, 1, 0), atol=1e-6)
    assert not np.array_equal(synthetic_volume(32, 2, seed=6)[1], label)


@pytest.mark.parametrize("n_classes", [1, 4])
def test_every_class_is_present(n_classes):
    for seed in range(5):
        label = synthetic_labels(24, n_classes, np.random.default_rng(seed))
        counts = np.bincount(label.ravel(), minlength=n_classes + 1)
        assert len(counts) == n_classes + 1 and counts.min() >= 24**3 // 100


def test_rewrite_and_refusals(tmp_path):
    root = make_synthetic_dataset(tmp_path / "syn", n_cases=8)
    make_synthetic_dataset(root, n_cases=3)  # an earlier synthetic dataset is replaced, no stale cases left
    assert len(list((root / "imagesTr").iterdir())) == len(domains_rows(root)) == 4
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(MaskgenError, match="not empty"):
        make_synthetic_dataset(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="n_cases must be >= 3"):
        make_synthetic_dataset(tmp_path / "x", n_cases=2)
    with pytest.raises(ValueError, match="'a b'"):
        make_synthetic_dataset(tmp_path / "x", contrasts=("a b", "c"))
    with pytest.raises(ValueError, match="size must be"):
        synthetic_volume(4)
    assert not (tmp_path / "x").exists()
