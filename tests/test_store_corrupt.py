"""Damaged chunk files of complete cases stop `maskgen train` and `maskgen evaluate` with one line naming the case and
the array (and the repair), whatever the damage: truncated, missing, NaN or finite garbage, or a label beyond the
classes. Each test corrupts real chunk files of a real store (made by `run_extract`) and runs the real commands."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from _helpers import synthetic_store
from maskgen.cli import app
from maskgen.store.reader import FeatureStore

runner = CliRunner()
TINY = ["--steps", "2", "--batch-size", "2", "--channels", "4", "--depth", "2", "--val-every", "2", "--quiet",
        "--crop-size", "32,32,32"]  # whole-volume crops: every step reads every chunk of the cases it draws


def _chunk_files(store: Path, case: str, name: str) -> list[Path]:
    return sorted(p for p in (store / "cases" / case / name / "c").rglob("*") if p.is_file())


def _corrupt(store: Path, case: str, kind: str) -> str:
    """Damage one case; returns the array that is damaged."""
    import zarr

    # features are int8 by default: a NaN written through zarr goes into the float16 image instead
    name = "label" if kind.startswith("label") else "image" if kind == "nan-zarr" else "features"
    chunk = _chunk_files(store, case, name)[0]
    raw = chunk.read_bytes()
    if kind == "truncated":
        chunk.write_bytes(raw[: len(raw) // 2])
    elif kind == "missing":
        chunk.unlink()
    elif kind == "nan-bytes":  # NaN values in the chunk file, the old checksum kept
        chunk.write_bytes(np.full((len(raw) - 4) // 2, np.nan, np.float16).tobytes() + raw[-4:])
    elif kind == "garbage":  # finite values of exactly the right size
        chunk.write_bytes(np.random.default_rng(0).normal(size=len(raw) // 2).astype(np.float16).tobytes())
    elif kind == "nan-zarr":  # written through zarr: the checksum is valid, the value is not
        arr = zarr.open_array(str(store / "cases" / case / name), mode="r+")
        arr[0, 3:5, 4, 5] = np.nan
    elif kind == "label200":  # a label beyond the classes, checksum valid
        arr = zarr.open_array(str(store / "cases" / case / name), mode="r+")
        arr[5:9, 5:9, 5:9] = 200
    else:
        raise AssertionError(kind)
    return name


#: every kind of damage to chunk files; "nan-zarr" (a NaN written through zarr, so its chunk's checksum is valid) is
#: found by whole-case reads (evaluate, validation) and `cache verify`, not by each training crop (see FeatureStore._fetch)
FILE_KINDS = ["truncated", "missing", "nan-bytes", "garbage", "label200"]
KINDS = FILE_KINDS + ["nan-zarr"]


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return synthetic_store(tmp_path_factory.getbasetemp() / "train-tiny-store")  # shared with test_train_*.py


@pytest.fixture(scope="module")
def run_dir(clean, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corrupt-run") / "run"
    result = runner.invoke(app, ["train", "--features", str(clean), "--out", str(out), "--num-workers", "0"] + TINY)
    assert result.exit_code == 0, result.output
    return out


def _damaged_copy(clean: Path, tmp_path: Path, split: str, kind: str) -> tuple[Path, set[str], str]:
    store = tmp_path / "damaged.zarr"
    shutil.copytree(clean, store)
    cases = {c.case_id for c in FeatureStore(store).cases(split=split)}
    name = ""
    for case in cases:
        name = _corrupt(store, case, kind)
    return store, cases, name


def _one_line_naming_the_damage(result, store: Path, cases: set[str], array: str) -> None:
    assert result.exit_code == 1, result.output
    err = " ".join(result.stderr.split())
    assert len(result.stderr.strip().splitlines()) == 1 or err.count("Error:") == 1, result.stderr
    assert "Traceback" not in result.output and "out of bounds" not in result.output
    case = next((c for c in cases if f"case {c}, array {array} is damaged" in err), None)
    assert case is not None, err
    assert f"maskgen cache verify {store}" in err and f"maskgen extract --redo {case}" in err


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_train_stops_naming_the_damaged_case(clean, tmp_path, kind):
    store, cases, array = _damaged_copy(clean, tmp_path, "train", kind)
    # one loader worker process: the error travels from the worker to the training loop
    result = runner.invoke(app, ["train", "--features", str(store), "--out", str(tmp_path / "run"),
                                 "--num-workers", "1"] + TINY)
    _one_line_naming_the_damage(result, store, cases, array)


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_stops_naming_the_damaged_case(clean, run_dir, tmp_path, kind):
    store, cases, array = _damaged_copy(clean, tmp_path, "test", kind)
    result = runner.invoke(app, ["evaluate", str(run_dir), "--features", str(store), "--split", "test",
                                 "--checkpoint", "last", "--device", "cpu", "--quiet"])
    _one_line_naming_the_damage(result, store, cases, array)


def test_reader_never_fills_a_missing_chunk(clean, tmp_path):
    store, cases, _ = _damaged_copy(clean, tmp_path, "val", "missing")
    (case,) = cases
    from maskgen.store.integrity import CorruptStoreError
    from maskgen.store.tensorstore_backend import tensorstore_available

    for backend in ("zarr", "tensorstore") if tensorstore_available() else ("zarr",):
        s = FeatureStore(store, backend=backend)
        with pytest.raises(CorruptStoreError, match=f"case {case}, array features is damaged .*missing"):
            s.read_crop(case, (0, 0, 0), (8, 8, 8))
