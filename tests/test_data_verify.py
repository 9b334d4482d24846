"""`maskgen verify`: a clean dataset passes; each bad input fails (or warns) with a message naming the case and file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from maskgen.cli import app
from maskgen.data.pipeline import load_pipeline
from maskgen.data.verify import ERROR, WARNING, verify_dataset

SHAPE = (10, 9, 8)
AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])


def label_volume() -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[3:7, 3:6, 2:6] = 1
    return lab


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A clean nnU-Net-style dataset with cases a, b (train) and c (val); single class (shipped `nnunet` pipeline)."""
    root = tmp_path / "ds"
    rng = np.random.default_rng(0)
    for case, folder in (("a", "Tr"), ("b", "Tr"), ("c", "Val")):
        save(root / f"images{folder}/{case}_0000.nii.gz", rng.normal(size=SHAPE).astype(np.float32))
        save(root / f"labels{folder}/{case}.nii.gz", label_volume())
    return root


def verify(root: Path, *extra: str, dataset: str = "nnunet"):
    result = CliRunner().invoke(app, ["verify", "--dataset", dataset, "--data-root", str(root), "--workers", "1",
                                      *extra])
    return result, result.output + (result.stderr or "")


def assert_fails_naming(root: Path, case: str, *needles: str) -> str:
    result, text = verify(root)
    assert result.exit_code == 1, text
    lines = [ln for ln in text.splitlines() if f"case {case}:" in ln]
    assert lines, f"no problem line names case {case}:\n{text}"
    for needle in needles:
        assert any(needle in ln for ln in lines), f"{needle!r} not in the lines of case {case}:\n{text}"
    return text


def test_clean_dataset_passes(dataset):
    result, text = verify(dataset, "--list")
    assert result.exit_code == 0, text
    assert "OK: 3 cases, 0 warning(s)" in text and "train" in text and "imagesVal" in text


@pytest.mark.parametrize("keep", [0.05, 0.6])  # cut inside the header / inside the voxel data
def test_truncated_image(dataset, keep):
    path = dataset / "imagesTr/a_0000.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    assert_fails_naming(dataset, "a", "a_0000.nii.gz", "truncated or corrupt", "re-download")


def test_unreadable_label(dataset):
    (dataset / "labelsTr/b.nii.gz").write_bytes(b"not a nifti at all")
    assert_fails_naming(dataset, "b", "labelsTr/b.nii.gz", "not a readable NIfTI")


def test_shape_mismatch(dataset):
    save(dataset / "labelsTr/a.nii.gz", label_volume()[:, :, :7])
    assert_fails_naming(dataset, "a", "labelsTr/a.nii.gz", "(10, 9, 7)", "resample the label")


def test_affine_mismatch(dataset):
    shifted = AFFINE.copy()
    shifted[:3, 3] = [4.0, 0.0, 0.0]
    save(dataset / "labelsTr/a.nii.gz", label_volume(), shifted)
    assert_fails_naming(dataset, "a", "not aligned", "labelsTr/a.nii.gz")


def test_small_affine_difference_is_tolerated(dataset):
    nudged = AFFINE.copy()
    nudged[:3, 3] = [1e-4, 0.0, -1e-4]  # float32 header round-off level
    save(dataset / "labelsTr/a.nii.gz", label_volume(), nudged)
    result, text = verify(dataset)
    assert result.exit_code == 0, text


def test_non_integer_label_values(dataset):
    save(dataset / "labelsTr/b.nii.gz", label_volume().astype(np.float32) * 0.5)
    assert_fails_naming(dataset, "b", "non-integer values [0.5]", "nearest-neighbour")


def test_whole_float_labels_are_accepted(dataset):
    save(dataset / "labelsTr/b.nii.gz", label_volume().astype(np.float64))
    result, text = verify(dataset)
    assert result.exit_code == 0, text


def test_undeclared_label_value_255(dataset):
    save(dataset / "labelsVal/c.nii.gz", label_volume() * 255)
    assert_fails_naming(dataset, "c", "undeclared values [255]", "0..1", "divide it by 255")


def test_nan_voxels(dataset):
    image = np.zeros(SHAPE, np.float32)
    image[1, 2, 3] = np.nan
    save(dataset / "imagesTr/b_0000.nii.gz", image)
    assert_fails_naming(dataset, "b", "1 NaN/Inf voxels", "b_0000.nii.gz")


def test_inf_voxels(dataset):
    image = np.zeros(SHAPE, np.float32)
    image[0, 0, :2] = np.inf
    save(dataset / "imagesVal/c_0000.nii.gz", image)
    assert_fails_naming(dataset, "c", "2 NaN/Inf voxels")


def test_empty_foreground_is_a_warning(dataset):
    save(dataset / "labelsTr/a.nii.gz", np.zeros(SHAPE, np.uint8))
    result, text = verify(dataset)
    assert result.exit_code == 0, text
    assert "warning case a:" in text and "no foreground" in text and "1 warning(s)" in text


def test_missing_label(dataset):
    (dataset / "labelsTr/b.nii.gz").unlink()
    assert_fails_naming(dataset, "b", "labelsTr/b.nii.gz is missing")


def _csv_dataset(root: Path, rows: list[tuple[str, str]]) -> None:
    lines = ["case,image,label,split"]
    for i, (case, split) in enumerate(rows):
        save(root / f"img{i}.nii.gz", np.ones(SHAPE, np.float32))
        save(root / f"lab{i}.nii.gz", label_volume())
        lines.append(f"{case},img{i}.nii.gz,lab{i}.nii.gz,{split}")
    (root / "dataset.csv").write_text("\n".join(lines) + "\n")


def test_duplicate_case_ids(tmp_path):
    _csv_dataset(tmp_path, [("p1", "train"), ("p1", "test"), ("p2", "val")])
    result, text = verify(tmp_path, dataset="csv")
    assert result.exit_code == 1, text
    assert "case p1:" in text and "used twice" in text and "img0.nii.gz" in text and "img1.nii.gz" in text


@pytest.mark.parametrize(
    "bad_id, needle",
    [("a/b", "path separator"), ("c\\d", "path separator"), ("x..y", "'..'"), (".hidden", "starts with a dot")],
)
def test_unsafe_case_ids(tmp_path, bad_id, needle):
    _csv_dataset(tmp_path, [(bad_id, "train"), ("ok", "val")])
    result, text = verify(tmp_path, dataset="csv")
    assert result.exit_code == 1, text
    lines = [ln for ln in text.splitlines() if ln.startswith(f"error case {bad_id}:")]
    assert lines and needle in lines[0] and "rename" in lines[0]


def test_all_problems_reported_at_once_and_json(dataset, tmp_path):
    (dataset / "labelsTr/a.nii.gz").unlink()
    save(dataset / "labelsTr/b.nii.gz", label_volume() * 7)
    report_path = tmp_path / "report.json"
    result, text = verify(dataset, "--json", str(report_path))
    assert result.exit_code == 1
    assert "case a:" in text and "case b:" in text and "2 error(s)" in text
    report = json.loads(report_path.read_text())
    assert report["ok"] is False and {p["case_id"] for p in report["problems"]} == {"a", "b"}
    assert len(report["cases"]) == 3


def test_structured_report_for_other_code(dataset):
    save(dataset / "labelsTr/a.nii.gz", np.zeros(SHAPE, np.uint8))
    save(dataset / "labelsVal/c.nii.gz", label_volume() * 2)
    report = verify_dataset(load_pipeline("nnunet"), dataset, workers=2)
    assert [(p.case_id, p.severity) for p in report.problems] == [("a", WARNING), ("c", ERROR)]
    assert report.problems[1].path.endswith("labelsVal/c.nii.gz") and not report.ok
    assert report.counts() == {("train", "default"): 2, ("val", "default"): 1}


def brats_folder(root: Path, seed: int) -> tuple[dict[int, np.ndarray], str, str]:
    """Five 4D BraTS cases; (images by number, a training subject, a held-out subject)."""
    rng = np.random.default_rng(seed)
    images = {}
    for i in range(1, 6):
        images[i] = rng.normal(size=(*SHAPE, 4)).astype(np.float32)
        save(root / f"imagesTr/BRATS_{i:03d}.nii.gz", images[i])
        save(root / f"labelsTr/BRATS_{i:03d}.nii.gz", label_volume() * 3)
    cases = verify_dataset(load_pipeline("brats"), root).cases
    train = sorted({c.subject_id for c in cases if c.split == "train"})[0]
    held_out = sorted({c.subject_id for c in cases if c.split != "train"})[0]
    return images, train, held_out


def test_brats_4d_nan_is_reported_for_the_channel_case_that_uses_it(tmp_path):
    images, train, held_out = brats_folder(tmp_path, seed=1)
    for subject, channel in ((train, 2), (held_out, 1)):  # t1gd of a training subject; unused t1w of a test one
        i = int(subject.split("_")[1])
        images[i][0, 0, 0, channel] = np.nan
        save(tmp_path / f"imagesTr/{subject}.nii.gz", images[i])
    result, text = verify(tmp_path, dataset="brats")
    assert result.exit_code == 1, text
    errors = [ln for ln in text.splitlines() if ln.startswith("error")]
    assert len(errors) == 1 and f"case {train}_t1gd:" in errors[0] and "(channel 2)" in errors[0]


def test_demo_layout_verifies(tmp_path):
    rows = ["case,domain,split,subject"]
    for i, contrast, split in ((0, "t1", "train"), (1, "t2", "val"), (1, "flair", "test")):
        case = f"sub-{i:03d}_{contrast}"
        save(tmp_path / f"imagesTr/{case}_0000.nii.gz", np.ones(SHAPE, np.float32))
        lab = label_volume()
        lab[1:3, 1:3, 1:3] = 3
        save(tmp_path / f"labelsTr/{case}.nii.gz", lab)
        rows.append(f"{case},{contrast},{split},sub-{i:03d}")
    (tmp_path / "domains.csv").write_text("\n".join(rows) + "\n")
    result, text = verify(tmp_path, dataset="demo")
    assert result.exit_code == 0, text
    assert "flair" in text and "OK: 3 cases" in text


def test_missing_data_root_says_how_to_pass_it(tmp_path, monkeypatch):
    monkeypatch.delenv("MASKGEN_DATA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["verify", "--dataset", "demo"])
    text = result.output + (result.stderr or "")
    assert result.exit_code == 1 and "maskgen demo-data" in text and "--data-root" in text
    result = CliRunner().invoke(app, ["verify", "--dataset", "amos"])
    text = result.output + (result.stderr or "")
    assert result.exit_code == 1 and "MASKGEN_DATA_ROOT" in text and "Traceback" not in text


def test_empty_case_id(dataset):
    save(dataset / "imagesTr/_0000.nii.gz", np.ones(SHAPE, np.float32))
    save(dataset / "labelsTr/.nii.gz", label_volume())
    result, text = verify(dataset)
    assert result.exit_code == 1, text
    assert any(ln.startswith("error case :") and "empty" in ln for ln in text.splitlines()), text


def test_constant_image_is_a_warning(dataset):
    save(dataset / "imagesTr/b_0000.nii.gz", np.full(SHAPE, 7.0, np.float32))
    result, text = verify(dataset)
    assert result.exit_code == 0, text
    lines = [ln for ln in text.splitlines() if ln.startswith("warning case b:")]
    assert lines and "b_0000.nii.gz is constant (every voxel is 7)" in lines[0], text
    assert "unless --allow-constant" in " ".join(text.split())  # the option that lets `maskgen extract` take it anyway
    assert "1 warning(s)" in text


def test_constant_channel_of_a_4d_image_warns_only_its_case(tmp_path):
    images, train, held_out = brats_folder(tmp_path, seed=2)
    for subject in (train, held_out):  # blank FLAIR (channel 0): unused for a training subject, used when held out
        i = int(subject.split("_")[1])
        images[i][..., 0] = 0.0
        save(tmp_path / f"imagesTr/{subject}.nii.gz", images[i])
    report = verify_dataset(load_pipeline("brats"), tmp_path, workers=1)
    constant = [p for p in report.warnings if "constant" in p.message]
    assert [p.case_id for p in constant] == [f"{held_out}_flair"] and "(channel 0)" in constant[0].message
    assert report.ok


def _unreadable_message(path: Path) -> str:
    """verify's problem for `path` after read permission is taken away."""
    from maskgen.data.verify import verify_cases
    from maskgen.data.cases import Case

    case = Case(case_id="p", image=path, label=None, domain="d", split="train")
    problems = verify_cases([case], load_pipeline("nnunet"), workers=1)
    return next(p.message for p in problems if p.severity == ERROR)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file; see the test that drops to another user")
def test_file_without_read_permission_says_so(tmp_path):
    path = save(tmp_path / "scan_0000.nii.gz", np.ones(SHAPE, np.float32))
    path.chmod(0)
    try:
        message = _unreadable_message(path)
    finally:
        path.chmod(0o644)
    assert "permission denied" in message and "not a readable NIfTI" not in message and "chmod" in message


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user (the chmod test covers non-root)")
def test_file_without_read_permission_says_so_for_another_user():
    """As root, chmod does not block reads: a forked child becomes `nobody` and meets the kernel's EACCES."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="maskgen-perm-"))
    try:
        folder.chmod(0o755)
        path = save(folder / "scan_0000.nii.gz", np.ones(SHAPE, np.float32))
        path.chmod(0)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: drop root, try to read, report the message through the pipe
            try:
                os.setgid(65534)
                os.setuid(65534)
                message = _unreadable_message(path)
            except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
                message = f"child failed: {type(e).__name__}: {e}"
            os.write(write_end, message.encode())
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as f:
            message = f.read().decode()
        os.waitpid(pid, 0)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if message.startswith("child failed: PermissionError: [Errno 1]"):
        pytest.skip("this container forbids setuid")
    assert "permission denied" in message and "not a readable NIfTI" not in message and "chmod" in message, message
