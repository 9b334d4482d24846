"""maskgen.demo.writer: generated datasets are written nnU-Net style and swapped into place only when complete."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from _helpers import load_nifti
from maskgen.demo import writer as dw


def test_staged_directory_replaces_the_target_only_on_success(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    (target / "old.txt").write_text("previous")
    with pytest.raises(RuntimeError, match="killed"):
        with dw.staged_directory(target) as staging:
            (staging / "new.txt").write_text("half")
            raise RuntimeError("killed half way")
    assert (target / "old.txt").read_text() == "previous" and not (target / "new.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["data"], "the staging folder was left behind"

    with dw.staged_directory(target) as staging:
        (staging / "new.txt").write_text("complete")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o755)


def test_stale_leftovers_of_killed_runs_are_removed(tmp_path):
    stale = tmp_path / ".data.tmp-abc"
    fresh = tmp_path / ".data.tmp-def"
    for folder in (stale, fresh):
        folder.mkdir()
    old = time.time() - dw.STALE_STAGING_S - 10
    os.utime(stale, (old, old))
    with dw.staged_directory(tmp_path / "data"):
        pass
    assert not stale.exists() and fresh.exists()  # a fresh one may belong to a run still going


def test_case_files_domains_csv_and_dataset_json(tmp_path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    image = np.random.default_rng(0).random((4, 5, 6))
    label = (image > 0.5).astype(np.int64)
    dw.write_case(tmp_path, "sub-000_t1", image, label, affine)
    data, img = load_nifti(dw.image_path(tmp_path, "sub-000_t1"))
    lab, _ = load_nifti(dw.label_path(tmp_path, "sub-000_t1"))
    assert data.dtype == np.float32 and lab.dtype == np.uint8
    np.testing.assert_array_equal(lab, label)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    with pytest.raises(ValueError, match="sub-001"):
        dw.write_case(tmp_path, "sub-001", image, label[:3], affine)

    records = [dw.CaseRecord("sub-000_t1", "t1", "train", "sub-000")]
    dw.write_domains_csv(tmp_path, records)
    assert dw.read_domains_csv(tmp_path) == records

    meta = dw.dataset_json("x", "d", ["csf", "gm"], 1, {"generator": "g"})
    assert meta["labels"] == {"background": 0, "csf": 1, "gm": 2} and meta["channel_names"] == {"0": "MRI"}
    dw.write_json(tmp_path / dw.DATASET_JSON, meta)
    assert dw.read_maskgen_key(tmp_path) == {"generator": "g"}
    (tmp_path / dw.DATASET_JSON).write_text(json.dumps({"maskgen": [1]}))
    assert dw.read_maskgen_key(tmp_path) is None
    (tmp_path / dw.DATASET_JSON).write_text("{not json")
    assert dw.read_maskgen_key(tmp_path) is None
