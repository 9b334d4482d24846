"""Writing generated datasets as nnU-Net-style folders (shared by the demo and the synthetic generators).

Layout: ``imagesTr/<case>_0000.nii.gz`` (float32), ``labelsTr/<case>.nii.gz`` (uint8), ``domains.csv``
(columns case, domain, split, subject) and ``dataset.json`` (nnU-Net v2 keys plus a ``maskgen`` key).
``staged_directory`` builds a folder beside its target and swaps it into place only when complete, so an
interrupted run leaves the previous folder (or nothing) and is simply re-done.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DOMAINS_CSV = "domains.csv"
DATASET_JSON = "dataset.json"
DOMAINS_COLUMNS = ("case", "domain", "split", "subject")
STALE_STAGING_S = 3600.0  # leftovers of killed runs older than this are removed


@dataclass(frozen=True)
class CaseRecord:
    """One written case: its id, domain (contrast), split and the subject it was made from."""

    case: str
    domain: str
    split: str
    subject: str


def image_path(root: Path, case: str) -> Path:
    return Path(root) / "imagesTr" / f"{case}_0000.nii.gz"


def label_path(root: Path, case: str) -> Path:
    return Path(root) / "labelsTr" / f"{case}.nii.gz"


def write_nifti(path: Path, array_xyz: np.ndarray, affine: np.ndarray, dtype: type) -> None:
    """Save (x, y, z) data with a RAS affine as both qform and sform (code 1, scanner), units mm."""
    import nibabel as nib

    data = np.asarray(array_xyz).astype(dtype, copy=False)
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=float))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    if np.issubdtype(data.dtype, np.integer):
        img.header.set_slope_inter(1.0, 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def write_case(root: Path, case: str, image_xyz: np.ndarray, label_xyz: np.ndarray, affine: np.ndarray) -> None:
    """Image (float32) and label (uint8) of one case, on the same grid."""
    if image_xyz.shape != label_xyz.shape:
        raise ValueError(f"{case}: image shape {image_xyz.shape} != label shape {label_xyz.shape}")
    write_nifti(image_path(root, case), image_xyz, affine, np.float32)
    write_nifti(label_path(root, case), label_xyz, affine, np.uint8)


def write_domains_csv(root: Path, records: Sequence[CaseRecord]) -> Path:
    path = Path(root) / DOMAINS_CSV
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(DOMAINS_COLUMNS)
        for r in records:
            writer.writerow([r.case, r.domain, r.split, r.subject])
    return path


def read_domains_csv(root: Path) -> list[CaseRecord]:
    with open(Path(root) / DOMAINS_CSV, newline="") as f:
        return [CaseRecord(row["case"], row["domain"], row["split"], row["subject"]) for row in csv.DictReader(f)]


def dataset_json(
    name: str,
    description: str,
    class_names: Sequence[str],
    num_training: int,
    maskgen: dict[str, Any],
    channel_name: str = "MRI",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """nnU-Net v2 style description (channel_names, labels, numTraining, file_ending) plus ``maskgen``."""
    labels = {"background": 0, **{c: i + 1 for i, c in enumerate(class_names)}}
    out = {
        "name": name,
        "description": description,
        "channel_names": {"0": channel_name},
        "labels": labels,
        "numTraining": int(num_training),
        "file_ending": ".nii.gz",
        **(extra or {}),
        "maskgen": maskgen,
    }
    return out


def write_json(path: Path, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def read_maskgen_key(root: Path) -> dict[str, Any] | None:
    """The ``maskgen`` entry of ``root/dataset.json``, or None if absent or unreadable."""
    try:
        with open(Path(root) / DATASET_JSON) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    entry = data.get("maskgen") if isinstance(data, dict) else None
    return entry if isinstance(entry, dict) else None


def _remove_stale_staging(target: Path) -> None:
    now = time.time()
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        for leftover in target.parent.glob(pattern):
            with contextlib.suppress(OSError):
                if leftover.is_dir() and now - leftover.stat().st_mtime > STALE_STAGING_S:
                    shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """Yield an empty folder beside ``target``; on success it replaces ``target`` (renames), on error it is
    removed. The caller decides beforehand whether replacing an existing ``target`` is allowed."""
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(staging, 0o755)  # mkdtemp makes it private; the dataset is an ordinary folder
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if target.exists() or target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "previous")
    try:
        os.replace(staging, target)
    except BaseException:
        if old is not None:
            os.replace(old / "previous", target)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
