"""The embedded demo dataset, generated small (4 subjects at 4 mm) to stay fast."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

from _helpers import domains_rows, load_nifti
from maskgen.demo.dataset import DemoConfig, generate_demo_dataset, plan_splits
from maskgen.errors import MaskgenError

SMALL = DemoConfig(subjects=4, seed=0, spacing=4)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "demo-data"
    summary = generate_demo_dataset(root, SMALL)
    assert not summary.reused and summary.out_dir == root
    return root


def test_plan_splits():
    assert plan_splits(12) == ("train",) * 6 + ("val",) * 2 + ("test",) * 4
    assert plan_splits(4) == ("train", "train", "val", "test")
    for n in range(4, 40):
        counts = {s: plan_splits(n).count(s) for s in ("train", "val", "test")}
        assert counts["train"] >= 2 and counts["val"] >= 1 and counts["test"] >= 1 and sum(counts.values()) == n
    with pytest.raises(ValueError, match="got 3"):
        plan_splits(3)
    with pytest.raises(ValueError, match="got 3"):
        DemoConfig(subjects=3)
    with pytest.raises(ValueError, match="got 2.5"):
        DemoConfig(spacing=2.5)


def test_layout_and_splits(demo_root):
    rows = domains_rows(demo_root)
    assert [(r["case"], r["domain"], r["split"], r["subject"]) for r in rows] == [
        ("sub-000_t1", "t1", "train", "sub-000"),
        ("sub-001_t1", "t1", "train", "sub-001"),
        ("sub-002_t2", "t2", "val", "sub-002"),
        ("sub-002_flair", "flair", "val", "sub-002"),
        ("sub-003_t1", "t1", "test", "sub-003"),
        ("sub-003_t2", "t2", "test", "sub-003"),
        ("sub-003_flair", "flair", "test", "sub-003"),
    ]
    images = sorted(p.name for p in (demo_root / "imagesTr").iterdir())
    assert images == sorted(f"{r['case']}_0000.nii.gz" for r in rows)
    assert sorted(p.name for p in (demo_root / "labelsTr").iterdir()) == sorted(f"{r['case']}.nii.gz" for r in rows)
    assert not [p for p in demo_root.parent.iterdir() if p.name.startswith(".")], "staging folder left behind"

    meta = json.loads((demo_root / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "csf": 1, "grey_matter": 2, "white_matter": 3}
    assert meta["numTraining"] == 7 and meta["file_ending"] == ".nii.gz" and meta["channel_names"] == {"0": "MRI"}
    gen = meta["maskgen"]
    assert gen["generator"] == "maskgen.data.demo" and gen["seed"] == 0 and gen["config"]["subjects"] == 4
    assert gen["splits"] == {"train": ["sub-000", "sub-001"], "val": ["sub-002"], "test": ["sub-003"]}
    assert set(gen["subjects"]["sub-000"]["contrasts"]) == {"t1", "t2", "flair"}


def test_images_and_labels(demo_root):
    labels = {}
    for r in domains_rows(demo_root):
        image, img = load_nifti(demo_root / "imagesTr" / f"{r['case']}_0000.nii.gz")
        label, lab = load_nifti(demo_root / "labelsTr" / f"{r['case']}.nii.gz")
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert image.shape == label.shape and np.isfinite(image).all() and image.min() >= 0
        np.testing.assert_array_equal(img.affine, lab.affine)
        np.testing.assert_allclose(np.diag(img.affine)[:3], [4.0, 4.0, 4.0])
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert img.header.get_qform(coded=True)[1] == 1 and img.header.get_sform(coded=True)[1] == 1
        assert set(np.unique(label)) == {0, 1, 2, 3}
        counts = np.bincount(label.ravel(), minlength=4)
        assert counts[0] / label.size > 0.3
        brain = counts[1:] / counts[1:].sum()  # about 3% CSF at 4 mm (6% at 2 mm), 60% GM, 35% WM
        assert brain[0] > 0.01 and brain[1] > 0.4 and brain[2] > 0.2
        # cropped to the brain with a margin: no brain on the border
        assert not label[[0, -1]].any() and not label[:, [0, -1]].any() and not label[:, :, [0, -1]].any()
        labels.setdefault(r["subject"], []).append(label)
    for subject, maps in labels.items():  # one label map per subject, whatever the contrast
        assert all(np.array_equal(maps[0], m) for m in maps[1:]), subject
    a, b = labels["sub-000"][0], labels["sub-001"][0]
    assert a.shape != b.shape or (a != b).mean() > 0.05, "subjects should differ by their deformation"


def test_contrasts_have_their_own_tissue_ordering(demo_root):
    label = load_nifti(demo_root / "labelsTr/sub-003_t1.nii.gz")[0]
    means = {}
    for contrast in ("t1", "t2", "flair"):
        image = load_nifti(demo_root / f"imagesTr/sub-003_{contrast}_0000.nii.gz")[0]
        image = (image - image.min()) / (image.max() - image.min())
        means[contrast] = {k: float(image[label == v].mean()) for k, v in (("bg", 0), ("csf", 1), ("gm", 2), ("wm", 3))}
    t1, t2, flair = means["t1"], means["t2"], means["flair"]
    assert t1["bg"] < t1["csf"] < t1["gm"] < t1["wm"]
    assert t2["bg"] < t2["wm"] < t2["gm"] < t2["csf"]  # inverted: CSF bright, GM > WM
    assert flair["bg"] < flair["csf"] < flair["wm"] < flair["gm"]  # CSF dark, GM > WM
    for m in means.values():  # background is noise, not zero
        assert m["bg"] > 0


def test_reproducible_and_independent_of_subject_count(demo_root, tmp_path):
    again = generate_demo_dataset(tmp_path / "again", DemoConfig(subjects=5, seed=0, spacing=4))
    assert [r.split for r in again.records if r.subject == "sub-001"] == ["train"]
    for name in ("imagesTr/sub-000_t1_0000.nii.gz", "labelsTr/sub-001_t1.nii.gz"):
        assert (demo_root / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    other = generate_demo_dataset(tmp_path / "seed1", DemoConfig(subjects=4, seed=1, spacing=4))
    assert other.shapes != generate_demo_dataset(demo_root, SMALL).shapes


def test_reuse_replace_and_refuse(demo_root, tmp_path, monkeypatch):
    stamp = os.stat(demo_root / "domains.csv").st_mtime_ns
    summary = generate_demo_dataset(demo_root, SMALL)
    assert summary.reused and len(summary.records) == 7 and len(summary.shapes) == 4
    assert os.stat(demo_root / "domains.csv").st_mtime_ns == stamp

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(MaskgenError, match=r"mine exists and is not a maskgen demo dataset.*--overwrite"):
        generate_demo_dataset(foreign, SMALL)
    assert (foreign / "notes.txt").read_text() == "keep me"

    # An interrupted run leaves the previous folder untouched and no staging folder behind.
    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_demo_dataset(foreign, SMALL, overwrite=True, progress=interrupt)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]

    generate_demo_dataset(foreign, SMALL, overwrite=True)
    assert not (foreign / "notes.txt").exists() and len(domains_rows(foreign)) == 7
    monkeypatch.chdir(foreign)  # never the working folder, even with --overwrite
    with pytest.raises(MaskgenError, match="refusing"):
        generate_demo_dataset(".", SMALL, overwrite=True)
    assert len(domains_rows(foreign)) == 7


def test_demo_pipeline_finds_the_cases(demo_root):
    from maskgen.data.layouts import discover_cases
    from maskgen.data.pipeline import load_pipeline

    pipeline = load_pipeline("demo")
    assert pipeline.classes == ("csf", "grey_matter", "white_matter")
    cases = discover_cases(pipeline, demo_root)
    got = sorted((c.split, c.domain, c.case_id, c.subject) for c in cases)
    assert got == sorted((r["split"], r["domain"], r["case"], r["subject"]) for r in domains_rows(demo_root))
