"""`maskgen extract` re-runs against a changed dataset and a hostile disk (issue 12): stale inputs are re-extracted,
listing changes are re-read without re-extraction, --redo, a full disk or an unwritable --out at the start is one
line, unfinished case folders are removed, constant images need --allow-constant."""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from maskgen.cli import app
from maskgen.demo.synthetic import make_synthetic_dataset
from maskgen.store import meta
from maskgen.store.reader import FeatureStore

runner = CliRunner()
IDS = ["sub-000_a", "sub-001_b", "sub-002_a", "sub-002_b"]


@pytest.fixture()
def data(tmp_path):
    """A fresh synthetic dataset (4 cases) and its store, extracted once."""
    root = make_synthetic_dataset(tmp_path / "syn", n_cases=3, size=16)
    out = tmp_path / "s.zarr"
    res = _extract(root, out)
    assert res.exit_code == 0, res.output
    return root, out


def _extract(root, out, *extra):
    return runner.invoke(app, ["extract", "--dataset", str(root / "pipeline.toml"), "--out", str(out),
                               "--extractor", "mind", *extra])


def _chunk_mtimes(out, case_id):
    folder = out / "cases" / case_id
    found = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and "c" in p.relative_to(folder).parts}
    assert found, f"no chunk files under {folder}"
    return found


def _rewrite_image(root, case_id, transform):
    path = root / "imagesTr" / f"{case_id}_0000.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(transform(np.asarray(img.dataobj, dtype=np.float32)), img.affine, img.header), path)
    return path


def test_a_changed_image_is_reextracted_a_touched_one_is_not(data):
    root, out = data
    before = {cid: _chunk_mtimes(out, cid) for cid in IDS}
    old = FeatureStore(out).read_case("sub-001_b")["image"]
    path = _rewrite_image(root, "sub-001_b", lambda a: a[::-1].copy())  # same size, other content
    res = _extract(root, out)
    assert res.exit_code == 0, res.output
    assert f"re-extracting case sub-001_b: the image file {path} changed since it was extracted" in res.stderr
    assert "1 case(s) written (1 re-extracted: inputs changed), 3 skipped" in res.stdout
    new = FeatureStore(out).read_case("sub-001_b")["image"]
    np.testing.assert_allclose(new, old[:, :, :, ::-1], atol=1e-3)  # NIfTI axis 0 is x, the store's last axis
    assert all(_chunk_mtimes(out, cid) == before[cid] for cid in IDS if cid != "sub-001_b")
    # touched (new mtime, same bytes): not re-extracted, and the record's mtime follows, so the next run reads nothing
    recorded = meta.read_case_attrs(out, "sub-002_a")["inputs"]["image"]
    image = pathlib.Path(recorded["path"])
    os.utime(image, ns=(recorded["mtime_ns"] + 10**9, recorded["mtime_ns"] + 10**9))
    res = _extract(root, out)
    assert res.exit_code == 0 and "0 case(s) written, 4 skipped" in res.stdout and "re-extracting" not in res.stderr
    assert meta.read_case_attrs(out, "sub-002_a")["inputs"]["image"]["mtime_ns"] == recorded["mtime_ns"] + 10**9


def test_a_changed_label_map_reextracts_the_labelled_cases(data):
    root, out = data
    toml = root / "pipeline.toml"
    toml.write_text(toml.read_text() + '\n[label_map]\n"2" = 1\n')
    res = _extract(root, out)
    assert res.exit_code == 0, res.output
    assert res.stderr.count("[label_map] changed ([] -> [[2, 1]])") == 4  # escaped: the brackets survive rich
    assert "4 case(s) written (4 re-extracted: inputs changed)" in res.stdout
    assert set(np.unique(FeatureStore(out).read_case("sub-002_a")["label"])) <= {0, 1}


def test_split_and_domain_changes_are_reread_without_reextraction(tmp_path):
    root = make_synthetic_dataset(tmp_path / "syn", n_cases=3, size=16)
    toml = root / "pipeline.toml"
    toml.write_text(toml.read_text().replace('normalization = "minmax"\n', "").replace(
        "[layout]", '[normalization]\ndefault = "minmax"\nc = "percentile"\n\n[layout]'))
    out = tmp_path / "s.zarr"
    assert _extract(root, out).exit_code == 0
    before = {cid: _chunk_mtimes(out, cid) for cid in IDS}
    csv = root / "domains.csv"
    csv.write_text(csv.read_text().replace("sub-002_a,a,test", "sub-002_a,d,val").replace(
        "sub-002_b,b,test", "sub-002_b,b,val").replace("sub-001_b,b,val", "sub-001_b,c,val"))
    res = _extract(root, out)
    assert res.exit_code == 0, res.output
    # sub-001_b moved to domain c, whose intensity rule differs: its arrays depend on that, so it is re-extracted
    assert "re-extracting case sub-001_b: the intensity normalisation changed" in res.stderr
    assert "1 case(s) written (1 re-extracted: inputs changed), 3 skipped (already complete; 2 with domain/split " \
           "updated)" in res.stdout
    assert _chunk_mtimes(out, "sub-002_a") == before["sub-002_a"] and _chunk_mtimes(out, "sub-002_b") == before[
        "sub-002_b"]
    store = FeatureStore(out)
    assert store.used_consolidated
    assert [(c.case_id, c.domain) for c in store.cases(split="val")] == [("sub-001_b", "c"), ("sub-002_a", "d"),
                                                                         ("sub-002_b", "b")]
    assert store.cases(split="test") == []


def test_redo_reextracts_named_cases(data):
    root, out = data
    before = {cid: _chunk_mtimes(out, cid) for cid in IDS}
    res = _extract(root, out, "--redo", "sub-000_a,sub-002_b")
    assert res.exit_code == 0, res.output
    assert "2 case(s) written, 2 skipped" in res.stdout
    assert _chunk_mtimes(out, "sub-001_b") == before["sub-001_b"]
    assert _chunk_mtimes(out, "sub-000_a") != before["sub-000_a"]
    res = _extract(root, out, "--redo", "sub-000_a,nope")
    assert res.exit_code == 1 and "--redo nope: no such case in synthetic" in res.stderr


def test_unfinished_case_folders_are_removed(data):
    """A case folder never marked complete (killed or failed run), also of a case no longer in the dataset."""
    root, out = data
    for name in ("sub-001_b", "gone_case"):
        (out / "cases" / name / "features" / "c").mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "cases" / "sub-000_a" / "zarr.json", out / "cases" / "gone_case" / "zarr.json")
    meta_file = out / "cases" / "gone_case" / "zarr.json"
    meta_file.write_text(meta_file.read_text().replace('"complete": true', '"complete": false'))
    shutil.rmtree(out / "cases" / "sub-001_b" / "image")
    doc = out / "cases" / "sub-001_b" / "zarr.json"
    doc.write_text(doc.read_text().replace('"complete": true', '"complete": false'))
    res = _extract(root, out)
    assert res.exit_code == 0, res.output
    assert "removed 2 unfinished case folder(s)" in res.stderr
    assert not (out / "cases" / "gone_case").exists()
    assert meta.case_state(out, "sub-001_b") == "complete"


def _enospc_under(monkeypatch, folder, err=errno.ENOSPC):
    """Every directory or file created under `folder` fails as on a full (or forbidden) disk: the OS boundary of
    zarr's LocalStore (Path.mkdir, Path.open for writing)."""
    real_mkdir, real_open = pathlib.Path.mkdir, pathlib.Path.open
    inside = str(folder)

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(inside) and not self.exists():
            raise OSError(err, os.strerror(err), str(self))
        return real_mkdir(self, *args, **kwargs)

    def open_(self, mode="r", *args, **kwargs):
        if str(self).startswith(inside) and any(c in mode for c in "wxa+"):
            raise OSError(err, os.strerror(err), str(self))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    monkeypatch.setattr(pathlib.Path, "open", open_)


@pytest.mark.parametrize("err,needle", [(errno.ENOSPC, "disk full (No space left on device) while writing"),
                                        (errno.EACCES, "cannot write to --out")])
def test_full_or_forbidden_disk_at_start_is_one_line(tmp_path, monkeypatch, err, needle):
    root = make_synthetic_dataset(tmp_path / "syn", n_cases=3, size=16)
    out = tmp_path / "full" / "s.zarr"
    _enospc_under(monkeypatch, tmp_path / "full", err)
    res = _extract(root, out)
    assert res.exit_code == 1 and res.exception is None or isinstance(res.exception, SystemExit), res.exception
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and str(out) in lines[0], res.stderr


def test_out_inside_a_file_is_one_line(tmp_path):
    root = make_synthetic_dataset(tmp_path / "syn", n_cases=3, size=16)
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    res = _extract(root, blocker / "s.zarr")
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == 1 and len(lines) == 1, res.stderr
    assert f"cannot create the store {blocker / 's.zarr'}" in lines[0] and "not a folder" in lines[0]


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
                            "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs user namespaces to mount a small tmpfs")
def test_a_really_full_filesystem_at_start(tmp_path):
    """A real 256 KB tmpfs (in a user + mount namespace, no root needed), filled before `maskgen extract` starts."""
    root = make_synthetic_dataset(tmp_path / "syn", n_cases=3, size=16)
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (f"mount -t tmpfs -o size=256k tmpfs {disk} && (cat /dev/zero > {disk}/filler 2>/dev/null; true) && "
              f"exec {sys.executable} -m maskgen extract --dataset {root / 'pipeline.toml'} --out {disk}/s.zarr "
              "--extractor mind")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert "disk full (No space left on device) while writing" in lines[0] and f"{disk}/s.zarr" in lines[0]


def test_a_constant_image_needs_allow_constant(tmp_path):
    root = make_synthetic_dataset(tmp_path / "syn", n_cases=3, size=16)
    path = _rewrite_image(root, "sub-002_b", lambda a: np.full_like(a, 7.0))
    out = tmp_path / "s.zarr"
    res = _extract(root, out)
    assert res.exit_code == 1
    assert f"sub-002_b: the image {path} is constant after preprocessing (every voxel 0" in res.stderr
    assert "--allow-constant" in res.stderr and "3 case(s) written" in res.stdout
    res = _extract(root, out, "--allow-constant")
    assert res.exit_code == 0 and "1 case(s) written, 3 skipped" in res.stdout


@pytest.mark.parametrize("name", ["c", "image", "cases"])
def test_store_names_below_the_case_level_are_valid_case_ids(tmp_path, name):
    """The issue lists `c` among the store's own names: chunk folders (`c/`) and array names live inside a case
    group (`cases/<id>/features/c/0/0/0`), so a case called `c` (or `image`, `cases`) collides with nothing: it is
    verified, written and read back by both reader backends exactly as under its old name (`zarr.json` and the
    other names a case group could collide with are refused: test_store_rw.py)."""
    root = make_synthetic_dataset(tmp_path / "syn", n_cases=3, size=16)
    ref = tmp_path / "ref.zarr"
    assert _extract(root, ref).exit_code == 0
    old = "sub-000_a"
    (root / "imagesTr" / f"{old}_0000.nii.gz").rename(root / "imagesTr" / f"{name}_0000.nii.gz")
    (root / "labelsTr" / f"{old}.nii.gz").rename(root / "labelsTr" / f"{name}.nii.gz")
    csv = root / "domains.csv"
    csv.write_text(csv.read_text().replace(f"{old},", f"{name},"))
    res = runner.invoke(app, ["verify", "--dataset", str(root / "pipeline.toml")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "s.zarr"
    res = _extract(root, out)
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["cache", "verify", str(out)])
    assert res.exit_code == 0, res.output
    expected = FeatureStore(ref, backend="zarr").read_case(old)
    for backend in ("zarr", "tensorstore"):
        if backend == "tensorstore":
            pytest.importorskip("tensorstore")
        store = FeatureStore(out, backend=backend)
        assert sorted(c.case_id for c in store.cases()) == sorted([name, *IDS[1:]])
        got = store.read_case(name)
        for key in ("image", "features", "label"):
            np.testing.assert_array_equal(got[key], expected[key])


def test_extract_refuses_a_reserved_case_id_before_writing(tmp_path):
    """A case id `zarr.json` used to pass `verify` and crash `extract`: now `extract` stops with one line naming
    it before the store exists (and `verify` refuses it: test_store_rw.py)."""
    root = make_synthetic_dataset(tmp_path / "syn", n_cases=3, size=16)
    old = "sub-001_b"
    (root / "imagesTr" / f"{old}_0000.nii.gz").rename(root / "imagesTr" / "ZARR.json_0000.nii.gz")
    (root / "labelsTr" / f"{old}.nii.gz").rename(root / "labelsTr" / "ZARR.json.nii.gz")
    csv = root / "domains.csv"
    csv.write_text(csv.read_text().replace(f"{old},", "ZARR.json,"))
    out = tmp_path / "s.zarr"
    res = _extract(root, out)
    text = " ".join(res.stderr.split())
    assert res.exit_code == 1 and res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "case id 'ZARR.json' is a name the feature store uses itself" in text and "Rename the files" in text
    assert len(res.stderr.strip().splitlines()) == 1 and not out.exists()


def test_a_changed_label_file_is_reextracted(data):
    root, out = data
    path = root / "labelsTr" / "sub-002_a.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine, img.header), path)
    res = _extract(root, out)
    assert res.exit_code == 0, res.output
    assert f"re-extracting case sub-002_a: the label file {path} changed since it was extracted" in " ".join(
        res.stderr.split())
    assert "1 case(s) written (1 re-extracted: inputs changed), 3 skipped" in res.stdout
    assert not FeatureStore(out).read_case("sub-002_a")["label"].any()
