"""A dataset case (one image, its label, domain and split) and the small helpers that layouts share."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from maskgen.errors import MaskgenError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_SPLIT_ALIASES = {
    "train": "train", "training": "train", "tr": "train",
    "val": "val", "valid": "val", "validation": "val", "va": "val",
    "test": "test", "testing": "test", "ts": "test",
}
_PORTABLE_ID = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class Case:
    """One training/evaluation sample. `label` is the expected label path (it may be missing: `verify` says so),
    or None for a case that has no label by design. `channel` selects a volume of a 4D image (BraTS)."""

    case_id: str
    image: Path
    label: Path | None
    domain: str
    split: str  # "train" | "val" | "test" ("" while a layout has not assigned one)
    channel: int | None = None
    subject: str | None = None  # cases of one subject never straddle splits; defaults to case_id

    @property
    def subject_id(self) -> str:
        return self.subject if self.subject is not None else self.case_id


@dataclass(frozen=True)
class LayoutSpec:
    """How one layout kind finds cases. `discover(root, options)` returns cases with domain, subject and (for layouts
    with explicit splits) split set; `defaults` lists every option the `[layout]` table may set; `summary(root,
    options)` adds what `maskgen verify` should say about the layout (channels, where splits come from)."""

    discover: Callable[[Path, dict[str, Any]], list[Case]]
    defaults: dict[str, Any]
    explicit_splits: bool
    expected: str  # one line describing the folder layout, for error messages
    required: tuple[str, ...] = ()
    subject_rule: str = "the case id"  # what a case's subject is (splits never share a subject), for `verify`
    summary: Callable[[Path, dict[str, Any]], list[str]] | None = None  # extra lines for `verify`
    unassigned: str = "error"  # cases the layout leaves without a split: "error" (say so) or "drop" (left out)


def nifti_stem(name: str) -> str | None:
    """`"amos_0001.nii.gz"` -> `"amos_0001"`; None when the name is not a NIfTI file."""
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def nifti_files(folder: Path) -> list[Path]:
    """NIfTI files directly in `folder`, sorted, skipping hidden files (e.g. macOS `._name.nii.gz` in MSD tarballs)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and nifti_stem(p.name))


def find_nifti(folder: Path, stem: str) -> Path:
    """`folder/stem.nii.gz` or `folder/stem.nii`, whichever exists (the .nii.gz path when neither does)."""
    for suffix in NIFTI_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    return folder / f"{stem}.nii.gz"


def normalize_split(value: str, where: str) -> str:
    """'train'/'val'/'test' (also 'training', 'validation', 'testing', any case); error names `where`."""
    split = _SPLIT_ALIASES.get(str(value).strip().lower())
    if split is None:
        raise MaskgenError(f"{where}: split {value!r} is not one of train, val, test")
    return split


#: Names a case group would collide with in the feature store (`cases/<id>`): the Zarr v3 group metadata `zarr.json`
#: of `cases/`, the Zarr v2 metadata names, maskgen's own `.maskgen` folder. Compared case-insensitively (macOS,
#: Windows). Other store names (`c`, `image`, ...) live one level deeper, inside a case, and cannot collide.
RESERVED_CASE_IDS = ("zarr.json", ".zattrs", ".zgroup", ".zarray", ".zmetadata", ".maskgen")


def case_id_problem(case_id: str) -> str | None:
    """Why `case_id` cannot be a storage key (Zarr group name, file name), or None when it is safe."""
    if not case_id or not case_id.strip():
        return "the case id is empty"
    if case_id.casefold() in RESERVED_CASE_IDS:
        return (f"case id {case_id!r} is a name the feature store uses itself (reserved: "
                f"{', '.join(RESERVED_CASE_IDS)})")
    if "/" in case_id or "\\" in case_id:
        return f"case id {case_id!r} contains a path separator"
    if ".." in case_id:
        return f"case id {case_id!r} contains '..'"
    if case_id.startswith("."):
        return f"case id {case_id!r} starts with a dot (hidden file)"
    if case_id.startswith("__"):
        return f"case id {case_id!r} starts with '__' (reserved by Zarr)"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in case_id) or case_id != case_id.strip():
        return f"case id {case_id!r} contains control characters or leading/trailing spaces"
    return None


def case_id_is_portable(case_id: str) -> bool:
    """Only letters, digits, '.', '_' and '-' (recommended for Zarr keys on every file system)."""
    return bool(_PORTABLE_ID.match(case_id))


def read_csv_rows(path: Path, required: tuple[str, ...], what: str) -> list[dict[str, str]]:
    """Rows of a CSV with a header; column names are matched case-insensitively and trimmed.

    Raises a MaskgenError naming the file when it cannot be read or lacks a required column.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise MaskgenError(
                    f"{what} {path} lacks column(s) {missing}; found {header or 'no header'}. "
                    f"The first line must name the columns, e.g. {','.join(required)}"
                )
            rows = []
            for row in reader:
                clean = {
                    (k or "").strip().lower(): (v or "").strip() for k, v in row.items() if k is not None
                }
                if any(clean.values()):
                    rows.append(clean)
            return rows
    except OSError as e:
        raise MaskgenError(f"cannot read {what} {path}: {e}") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise MaskgenError(f"{what} {path} is not a readable CSV file: {e}") from None
