"""Intensity normalisation per domain through the real `maskgen extract`: on a fake AMOS folder the CT case is
windowed and the MRI case min-max scaled (the paper's code), and `verify` / `cache info` say which rule each got."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from maskgen.cli import app

SHAPE = (20, 18, 12)
AFFINE = np.diag([1.0, 1.0, 1.5, 1.0])  # AMOS spacing: nothing is resampled


def save(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))


@pytest.fixture(scope="module")
def amos(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("amos")
    rng = np.random.default_rng(0)
    body = np.zeros(SHAPE, bool)
    body[3:17, 3:15, 2:10] = True
    ct = np.where(body, rng.uniform(-1024, 2000, SHAPE), -1024.0).astype(np.float32)
    ct[5, 5, 5], ct[6, 6, 6] = 0.0, 2000.0
    mri = np.where(body, rng.uniform(1, 1500, SHAPE), 0.0).astype(np.float32)
    label = np.zeros(SHAPE, np.uint8)
    label[6:12, 6:12, 4:8] = 1
    save(root / "imagesTr/amos_0001.nii.gz", ct)
    save(root / "labelsTr/amos_0001.nii.gz", label)
    save(root / "imagesVa/amos_0501.nii.gz", mri)
    save(root / "labelsVa/amos_0501.nii.gz", label)
    store = root.parent / "amos.zarr"
    result = CliRunner().invoke(app, ["extract", "--dataset", "amos", "--data-root", str(root), "--out", str(store),
                                      "--extractor", "mind"])
    assert result.exit_code == 0, result.output
    return {"root": root, "store": store, "ct": ct, "mri": mri}


def test_mri_is_min_max_scaled_and_ct_windowed_in_the_store(amos):
    from maskgen.store.reader import FeatureStore

    store = FeatureStore(amos["store"])
    mri = store.read_case("amos_0501")["image"][0]
    assert mri.min() == 0.0 and mri.max() == pytest.approx(1.0)
    assert int((mri == 0).sum()) == int((amos["mri"] == 0).sum())  # the air stays 0 (the CT window made it 0.5)
    ct = store.read_case("amos_0001")["image"][0]
    raw = amos["ct"].transpose(2, 1, 0)  # store order (z, y, x)
    np.testing.assert_allclose(ct, np.clip((raw + 1024) / 2048, 0, 1), atol=1e-3)  # the store keeps float16
    assert ct[5, 5, 5] == pytest.approx(0.5) and ct[6, 6, 6] == 1.0
    assert store.case("amos_0501").normalization == "minmax"
    assert store.case("amos_0001").normalization == "ct [-1024, 1024]"


def test_cache_info_and_verify_name_the_rule_of_each_domain(amos):
    info = CliRunner().invoke(app, ["cache", "info", str(amos["store"])])
    assert info.exit_code == 0, info.output
    assert "ct: ct [-1024, 1024] (1); mri: minmax (1)" in info.output
    verify = CliRunner().invoke(app, ["verify", "--dataset", "amos", "--data-root", str(amos["root"]), "--list"])
    assert verify.exit_code == 0, verify.output
    lines = verify.output.splitlines()
    assert any("amos_0501" in ln and "normalisation minmax" in ln for ln in lines), verify.output
    assert any("amos_0001" in ln and "normalisation ct [-1024, 1024]" in ln for ln in lines), verify.output


def test_the_rules_are_part_of_the_store_fingerprint(amos, tmp_path):
    text = Path(str(amos["root"].parent / "amos.zarr" / "zarr.json")).read_text()
    assert "ct: ct [-1024, 1024]; mri: minmax; other domains: minmax" in text
    shipped = (Path(__file__).resolve().parents[1] / "pipelines/amos.toml").read_text()
    changed = tmp_path / "amos.toml"
    changed.write_text(shipped.replace('mri = "minmax"', 'mri = "percentile"'))
    result = CliRunner().invoke(app, ["extract", "--dataset", str(changed), "--data-root", str(amos["root"]),
                                      "--out", str(amos["store"]), "--extractor", "mind"])
    assert result.exit_code == 1 and "intensity normalisation" in result.output + (result.stderr or "")
