"""The generic layouts: nnU-Net-style folders (`nnunet`) and a CSV list of files (`csv`).

  nnunet  imagesTr/<case>_0000.nii.gz + labelsTr/<case>.nii.gz (also imagesVal/labelsVal, imagesTs/labelsTs), splits
          from the folders; an optional domain CSV (case,domain[,split][,subject]) sets domains and may override splits
  csv     a CSV with columns image,label,split[,domain][,case][,subject], paths relative to the CSV's folder
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from maskgen.data.cases import Case, LayoutSpec, find_nifti, nifti_files, nifti_stem, normalize_split, read_csv_rows
from maskgen.errors import MaskgenError

NNUNET_CHANNEL = re.compile(r"_(\d{4})$")


def preview(items: list[str], n: int = 10) -> str:
    """The first `n` items joined by commas, with the total when there are more."""
    return ", ".join(items[:n]) + ("" if len(items) <= n else f", ... ({len(items)} in all)")


# ------------------------------------------------------------------------------------------------ nnU-Net style
def _discover_nnunet(root: Path, opts: dict[str, Any]) -> list[Case]:
    modality = str(opts["modality"])
    cases: list[Case] = []
    for entry in opts["folders"]:
        if len(entry) != 3:
            raise MaskgenError(f"[layout] folders entry {list(entry)} must be [images_dir, labels_dir, split]")
        images_dir, labels_dir, split = root / entry[0], root / entry[1], normalize_split(entry[2], "[layout] folders")
        files = nifti_files(images_dir)
        if not files:
            continue
        has_labels = labels_dir.is_dir()
        if not has_labels and not opts["include_unlabeled"]:
            if split == "train":
                raise MaskgenError(f"{images_dir} has images but {labels_dir} does not exist; put the labels there")
            continue  # e.g. nnU-Net's unlabelled imagesTs
        matched = 0
        for path in files:
            stem = nifti_stem(path.name) or ""
            if modality:
                m = NNUNET_CHANNEL.search(stem)
                if not m or m.group(1) != modality:
                    continue
                case_id = stem[: m.start()]
            else:
                case_id = stem
            matched += 1
            label = find_nifti(labels_dir, case_id) if has_labels else None
            cases.append(Case(case_id=case_id, image=path, label=label, domain=opts["default_domain"], split=split))
        if matched == 0:
            raise MaskgenError(
                f"{images_dir} has NIfTI files but none named <case>_{modality}.nii.gz (e.g. {files[0].name}); "
                f"rename them nnU-Net style or set [layout] modality = \"\" for files named <case>.nii.gz"
            )
    csv_name = str(opts["csv"])
    if csv_name:
        cases = apply_domain_csv(cases, root / csv_name, opts["default_domain"])
    return cases


def apply_domain_csv(cases: list[Case], path: Path, default_domain: str | None) -> list[Case]:
    """Domains (and optionally splits and subjects) from a CSV with columns case,domain[,split][,subject]; cases the
    CSV does not list get `default_domain` (None: keep their own)."""
    if not path.is_file():
        raise MaskgenError(f"domain CSV {path} does not exist (set by [layout] csv); create it or remove the setting")
    rows = read_csv_rows(path, ("case", "domain"), "domain CSV")
    by_id: dict[str, dict[str, str]] = {}
    errors = []
    for i, row in enumerate(rows, start=2):
        case_id = row.get("case", "")
        if not case_id:
            errors.append(f"line {i} has an empty case")
        elif case_id in by_id:
            errors.append(f"line {i} repeats case {case_id!r}")
        else:
            by_id[case_id] = row
    known = {c.case_id for c in cases}
    unknown = sorted(set(by_id) - known)
    if unknown:
        errors.append(f"case(s) with no image file: {preview(unknown)}")
    out = []
    for case in cases:
        row = by_id.get(case.case_id)
        if row is None:
            out.append(case if default_domain is None else replace(case, domain=default_domain))
            continue
        split = case.split
        if row.get("split"):
            try:
                split = normalize_split(row["split"], f"domain CSV {path}, case {case.case_id}")
            except MaskgenError as e:
                errors.append(str(e))
        domain = row.get("domain") or (case.domain if default_domain is None else default_domain)
        subject = row.get("subject") or (case.subject if default_domain is None else None)
        out.append(replace(case, domain=domain, split=split, subject=subject))
    if errors:
        raise MaskgenError(f"domain CSV {path}: " + "; ".join(errors))
    return out


# --------------------------------------------------------------------------------------------------- CSV list
def _discover_csv(root: Path, opts: dict[str, Any]) -> list[Case]:
    path = root if root.is_file() else root / str(opts["csv"])
    if not path.is_file():
        raise MaskgenError(
            f"case list {path} does not exist; write a CSV with columns image,label,split[,domain] there, "
            "or pass the CSV file itself as --data-root"
        )
    rows = read_csv_rows(path, ("image", "label", "split"), "case list")
    base = path.parent
    cases, errors = [], []
    for i, row in enumerate(rows, start=2):
        if not row.get("image"):
            errors.append(f"line {i} has an empty image")
            continue
        image = _rel(base, row["image"])
        label = _rel(base, row["label"]) if row.get("label") else None
        case_id = row.get("case") or _case_id_from_name(image.name)
        try:
            split = normalize_split(row["split"], f"case list {path}, line {i}")
        except MaskgenError as e:
            errors.append(str(e))
            continue
        cases.append(
            Case(
                case_id=case_id,
                image=image,
                label=label,
                domain=row.get("domain") or opts["default_domain"],
                split=split,
                subject=row.get("subject") or None,
            )
        )
    if errors:
        raise MaskgenError(f"case list {path}: " + "; ".join(errors))
    return cases


def _rel(base: Path, text: str) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else (base / p)


def _case_id_from_name(name: str) -> str:
    stem = nifti_stem(name) or name
    return NNUNET_CHANNEL.sub("", stem)


SPECS: dict[str, LayoutSpec] = {
    "nnunet": LayoutSpec(
        discover=_discover_nnunet,
        defaults={
            "folders": (
                ("imagesTr", "labelsTr", "train"),
                ("imagesVal", "labelsVal", "val"),
                ("imagesTs", "labelsTs", "test"),
            ),
            "modality": "0000",
            "csv": "",
            "default_domain": "default",
            "include_unlabeled": False,
        },
        explicit_splits=True,
        expected="imagesTr/<case>_0000.nii.gz + labelsTr/<case>.nii.gz (also imagesVal/labelsVal, "
        "imagesTs/labelsTs), optional CSV case,domain[,split][,subject]",
        subject_rule="the domain CSV's subject column, else the case id",
    ),
    "csv": LayoutSpec(
        discover=_discover_csv,
        defaults={"csv": "dataset.csv", "default_domain": "default", "include_unlabeled": False},
        explicit_splits=True,
        expected="a CSV (default <data-root>/dataset.csv, or the CSV itself as --data-root) with columns "
        "image,label,split[,domain][,case][,subject]; relative paths are relative to the CSV's folder",
        subject_rule="the CSV's subject column, else the case id",
    ),
}
