"""`store_info` / `verify_store` and the `maskgen cache info|verify` commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from maskgen.cli import app
from maskgen.data.pipeline import Pipeline
from maskgen.store import writer
from maskgen.store.inspect import store_info, verify_store
from maskgen.store.layout import StoreLayout
from maskgen.store.reader import FeatureStore

runner = CliRunner()
PIPE = Pipeline(name="toy", layout="nnunet", spacing=(1.0, 1.0, 1.0), crop_size=(8, 8, 8), normalization="ct",
                classes=("a", "b"))
FP = {"name": "toy", "layer": "final", "weights_sha256": "ab" * 32, "out_channels": 2, "arch": {}}
SPLITS = {"c0": ("train", "ct"), "c1": ("train", "ct"), "c2": ("val", "mr"), "c3": ("test", "mr")}


@pytest.fixture()
def store(tmp_path):
    path = tmp_path / "s.zarr"
    layout = StoreLayout(dtype="float16", chunks_zyx=(8, 8, 8))
    writer.prepare_store(path, writer.root_attributes(PIPE, FP, layout))
    rng = np.random.default_rng(0)
    for cid, (split, domain) in SPLITS.items():
        shape = (12, 10, 9)
        writer.write_case(path, cid, image=rng.random((1, *shape)).astype(np.float32),
                          features=rng.normal(size=(2, *shape)).astype(np.float32),
                          label=rng.integers(0, 3, shape).astype(np.uint8),
                          attrs={"split": split, "domain": domain}, layout=layout)
    writer.consolidate(path)
    return path


def test_info_counts_cases_and_size(store):
    (store / "cases" / "c9").mkdir()  # an interrupted case
    info = store_info(store)
    assert info.cases == 4 and info.by_split == {"test": 1, "train": 2, "val": 1}
    assert info.by_domain == {"ct": 2, "mr": 2}
    assert info.by_split_domain[("train", "ct")] == 2 and info.by_split_domain[("test", "mr")] == 1
    assert info.incomplete == ("c9",)
    assert info.voxels == 4 * 12 * 10 * 9
    assert info.size_bytes > 4 * 12 * 10 * 9 * (2 * 2 + 2 + 1)  # features + image + label, plus metadata
    assert info.bytes_per_voxel == info.size_bytes / info.voxels
    assert info.extractor["name"] == "toy" and info.num_features == 2 and info.layout["dtype"] == "float16"
    result = runner.invoke(app, ["cache", "info", str(store)])
    assert result.exit_code == 0, result.output
    for needle in ("toy", "2 channels", "abababababababab", "bytes/voxel", "4 complete case(s)", "1 incomplete",
                   "c9", "train", "mr"):
        assert needle in result.stdout, result.stdout


def test_verify_healthy_store(store):
    report = verify_store(store)
    assert report.ok and report.checked == 4 and report.problems == ()
    result = runner.invoke(app, ["cache", "verify", str(store)])
    assert result.exit_code == 0 and "OK: 4 complete case(s)" in result.stdout


def _chunk_files(store, case, name):
    return sorted(p for p in (store / "cases" / case / name / "c").rglob("*") if p.is_file())


def test_verify_names_each_broken_case(store):
    import zarr

    # damage to chunk files: c0 a missing chunk, c1 NaN bytes (checksum kept), c2 a truncated chunk, c3 finite
    # garbage of the right size
    _chunk_files(store, "c0", "features")[-1].unlink()
    chunk = _chunk_files(store, "c1", "features")[0]
    raw = chunk.read_bytes()
    chunk.write_bytes(np.full((len(raw) - 4) // 2, np.nan, np.float16).tobytes() + raw[-4:])
    chunk = _chunk_files(store, "c2", "image")[0]
    chunk.write_bytes(chunk.read_bytes()[:100])
    chunk = _chunk_files(store, "c3", "features")[0]
    garbage = np.random.default_rng(1).normal(size=len(chunk.read_bytes()) // 2).astype(np.float16)
    chunk.write_bytes(garbage.tobytes())
    # values written through zarr itself (checksums valid): a NaN feature in c2, a label beyond the classes in c3
    feats = zarr.open_array(str(store / "cases" / "c2" / "features"), mode="r+")
    feats[1, 3, 4, 5] = np.nan
    label = zarr.open_array(str(store / "cases" / "c3" / "label"), mode="r+")
    label[0, 0, 0] = 7
    report = verify_store(store)
    problems = {cid: " | ".join(p for c, p in report.problems if c == cid) for cid, _ in report.problems}
    assert set(problems) == {"c0", "c1", "c2", "c3"}
    assert "features is missing 1 of" in problems["c0"]
    assert "features chunk c/0/0/0/0 cannot be read (ValueError: Stored and computed checksum do not match" \
        in problems["c1"]
    assert "image chunk c/0/0/0/0 cannot be read" in problems["c2"]
    assert "features has 1 non-finite value(s)" in problems["c2"]
    assert "features chunk c/0/0/0/0 cannot be read (ValueError: Stored and computed checksum" in problems["c3"]
    assert "label has value 7 but the pipeline has 2 classes" in problems["c3"]
    assert report.unchecksummed == ()
    result = runner.invoke(app, ["cache", "verify", str(store)])
    assert result.exit_code == 1
    assert "4 of 4 case(s)" in result.stderr and "- c2: features has 1 non-finite" in result.stderr
    assert "maskgen extract --redo c0" in " ".join(result.stderr.split())


def test_verify_without_checksums_reports_them_and_still_finds_nan(tmp_path):
    """A store made before checksums existed: verify says overwritten chunks are undetectable there."""
    path = tmp_path / "old.zarr"
    layout = StoreLayout(dtype="float16", chunks_zyx=(8, 8, 8), checksum="none")
    writer.prepare_store(path, writer.root_attributes(PIPE, FP, layout))
    shape = (12, 10, 9)
    rng = np.random.default_rng(0)
    writer.write_case(path, "c0", image=rng.random((1, *shape)).astype(np.float32),
                      features=rng.normal(size=(2, *shape)).astype(np.float32),
                      label=rng.integers(0, 3, shape).astype(np.uint8), attrs={"split": "train"}, layout=layout)
    chunk = _chunk_files(path, "c0", "features")[0]
    chunk.write_bytes(np.full(len(chunk.read_bytes()) // 2, np.inf, np.float16).tobytes())
    report = verify_store(path)
    assert report.unchecksummed == ("c0",)
    assert any("features has" in p and "non-finite" in p for _, p in report.problems)
    result = runner.invoke(app, ["cache", "verify", str(path)])
    assert result.exit_code == 1 and "without checksums" in " ".join(result.stdout.split())


def test_verify_checks_shapes_and_stats(store):
    meta = store / "cases" / "c0" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["feature_mean"] = [0.0]
    doc["attributes"]["shape_zyx"] = [12, 10, 10]
    meta.write_text(json.dumps(doc))
    writer.consolidate(store)
    problems = [p for cid, p in verify_store(store).problems if cid == "c0"]
    assert any("feature_mean must hold 2 finite values" in p for p in problems)
    assert any("image has shape (1, 12, 10, 9), expected (1, 12, 10, 10)" in p for p in problems)


def test_cache_commands_on_a_non_store(tmp_path):
    result = runner.invoke(app, ["cache", "info", str(tmp_path)])
    assert result.exit_code == 1 and "not a maskgen feature store" in result.stderr
    result = runner.invoke(app, ["cache", "verify", str(tmp_path / "missing.zarr")])
    assert result.exit_code == 1 and "does not exist" in result.stderr


def test_reader_sees_the_same_cases_as_info(store):
    assert [c.case_id for c in FeatureStore(store).cases()] == sorted(SPLITS)
