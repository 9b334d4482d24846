"""Layouts of the paper's public datasets, with file names exactly as their releases have them.

Each `_discover_*` returns cases with domain and subject set; the pipeline's `[splits]` then picks train/val/test.
  amos      AMOS22: imagesTr/amos_0001.nii.gz + labelsTr/amos_0001.nii.gz (and imagesVa/labelsVa); id <= 500 is CT
  msd_brats MSD Task01_BrainTumour: imagesTr/BRATS_001.nii.gz (4D: FLAIR, T1w, t1gd, T2w) + labelsTr/BRATS_001.nii.gz
  topcow    TopCoW 2024: imagesTr/topcow_{ct,mr}_001_0000.nii.gz + cow_seg_labelsTr/topcow_{ct,mr}_001.nii.gz
  hvsmr     HVSMR-2.0: cropped/pat0_cropped.nii.gz + cropped/pat0_cropped_seg.nii.gz, severity from a CSV you provide
  prostate  multi-site prostate: <SITE>/Case00.nii.gz + <SITE>/Case00_segmentation.nii.gz (casing varies by site)
  pandg     PanDG (and `pattern`): file paths described by patterns such as {center}/{phase}/images/{case}.nii.gz
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

from maskgen.data.cases import Case, LayoutSpec, find_nifti, nifti_files, nifti_stem, read_csv_rows
from maskgen.errors import MaskgenError


def _folder_pairs(root: Path, opts: dict[str, Any]) -> list[tuple[Path, Path | None]]:
    """(images_dir, labels_dir or None when unlabelled and allowed) for each configured folder pair that has images."""
    out = []
    for entry in opts["folders"]:
        if len(entry) != 2:
            raise MaskgenError(f"[layout] folders entry {list(entry)} must be [images_dir, labels_dir]")
        images, labels = root / entry[0], root / entry[1]
        if not nifti_files(images):
            continue
        if labels.is_dir():
            out.append((images, labels))
        elif opts["include_unlabeled"]:
            out.append((images, None))
    return out


# -------------------------------------------------------------------------------------------------------- AMOS
_AMOS = re.compile(r"^amos_(\d+)$")


def _discover_amos(root: Path, opts: dict[str, Any]) -> list[Case]:
    first_mri = int(opts["mri_first_id"])
    cases = []
    for images, labels in _folder_pairs(root, opts):
        for path in nifti_files(images):
            stem = nifti_stem(path.name) or ""
            m = _AMOS.match(stem)
            if not m:
                continue
            domain = "mri" if int(m.group(1)) >= first_mri else "ct"
            label = find_nifti(labels, stem) if labels else None
            cases.append(Case(case_id=stem, image=path, label=label, domain=domain, split=""))
    return cases


# ------------------------------------------------------------------------------------------------------- BraTS
def _discover_msd_brats(root: Path, opts: dict[str, Any]) -> list[Case]:
    channels = [str(c) for c in opts["channels"]]
    if not channels or len(set(channels)) != len(channels):
        raise MaskgenError(f"[layout] channels = {channels} must be distinct names, one per 4D volume in file order")
    images, labels = root / opts["images"], root / opts["labels"]
    cases = []
    for path in nifti_files(images):
        stem = nifti_stem(path.name) or ""
        label = find_nifti(labels, stem)
        for index, channel in enumerate(channels):
            cases.append(
                Case(
                    case_id=f"{stem}_{channel}",
                    image=path,
                    label=label,
                    domain=channel,
                    split="",
                    channel=index,
                    subject=stem,
                )
            )
    return cases


# ------------------------------------------------------------------------------------------------------ TopCoW
_TOPCOW = re.compile(r"^topcow_(ct|mr)_(\d+)_0000$")
_TOPCOW_DOMAIN = {"ct": "cta", "mr": "mra"}


def _discover_topcow(root: Path, opts: dict[str, Any]) -> list[Case]:
    images, labels = root / opts["images"], root / opts["labels"]
    cases = []
    for path in nifti_files(images):
        m = _TOPCOW.match(nifti_stem(path.name) or "")
        if not m:
            continue
        modality, number = m.groups()
        case_id = f"topcow_{modality}_{number}"
        cases.append(
            Case(
                case_id=case_id,
                image=path,
                label=find_nifti(labels, case_id),
                domain=_TOPCOW_DOMAIN[modality],
                split="",
                subject=number,
            )
        )
    return cases


# ------------------------------------------------------------------------------------------------------- HVSMR
_ID_COLUMNS = ("pat", "patient", "case", "subject", "id", "pat_id", "patient_id")
_SEVERITY_COLUMNS = ("severity", "category", "disease_severity", "chd_severity")


def _pat_key(text: str) -> str | None:
    m = re.search(r"(\d+)", text)
    return f"pat{int(m.group(1))}" if m else None


def read_severity(path: Path) -> dict[str, str]:
    """pat id -> severity from the HVSMR severity CSV (columns e.g. `pat,severity`; ids like pat12 or 12)."""
    if not path.is_file():
        raise MaskgenError(
            f"HVSMR severity file {path} does not exist. Create it from the HVSMR-2.0 metadata: a CSV with a header "
            "`pat,severity` and one row per patient, e.g. `pat0,mild`, `pat3,severe` (severity: mild, moderate or "
            "severe), or point [layout] severity_csv at your file"
        )
    rows = read_csv_rows(path, (), "HVSMR severity CSV")
    if not rows:
        raise MaskgenError(f"HVSMR severity CSV {path} has no rows")
    id_col = next((c for c in _ID_COLUMNS if c in rows[0]), None)
    sev_col = next((c for c in _SEVERITY_COLUMNS if c in rows[0]), None)
    if id_col is None or sev_col is None:
        raise MaskgenError(
            f"HVSMR severity CSV {path} needs a patient column ({'/'.join(_ID_COLUMNS)}) and a severity column "
            f"({'/'.join(_SEVERITY_COLUMNS)}); found {sorted(rows[0])}"
        )
    out: dict[str, str] = {}
    for i, row in enumerate(rows, start=2):
        key = _pat_key(row.get(id_col, ""))
        severity = row.get(sev_col, "").lower()
        if key is None or not severity:
            raise MaskgenError(f"HVSMR severity CSV {path}, line {i}: needs a patient id and a severity, got {row}")
        out[key] = severity
    return out


def _discover_hvsmr(root: Path, opts: dict[str, Any]) -> list[Case]:
    folder = root / opts["folder"]
    image_suffix, label_suffix = str(opts["image_suffix"]), str(opts["label_suffix"])
    pattern = re.compile(rf"^(pat\d+){re.escape(image_suffix)}$")
    found = []
    for path in nifti_files(folder):
        m = pattern.match(nifti_stem(path.name) or "")
        if m:
            found.append((m.group(1), path))
    if not found:
        return []
    severity = read_severity(root / opts["severity_csv"])
    missing = [pat for pat, _ in found if _pat_key(pat) not in severity]
    if missing:
        raise MaskgenError(
            f"HVSMR severity CSV {root / opts['severity_csv']} has no row for {', '.join(missing[:10])}"
            + ("" if len(missing) <= 10 else f" ... ({len(missing)} in all)")
            + "; add `pat,severity` rows for them"
        )
    return [
        Case(
            case_id=pat,
            image=path,
            label=find_nifti(folder, f"{pat}{label_suffix}"),
            domain=severity[_pat_key(pat) or pat],
            split="",
        )
        for pat, path in found
    ]


# ---------------------------------------------------------------------------------------------------- prostate
_PROSTATE_IMAGE = re.compile(r"^case\d+$", re.IGNORECASE)
_PROSTATE_LABEL = re.compile(r"^(case\d+)_segmentation$", re.IGNORECASE)


def _discover_prostate(root: Path, opts: dict[str, Any]) -> list[Case]:
    folders = {p.name.lower(): p for p in root.iterdir() if p.is_dir()} if root.is_dir() else {}
    cases = []
    for site in opts["sites"]:
        folder = folders.get(str(site).lower())
        if folder is None:
            continue
        files = nifti_files(folder)
        labels = {}
        for path in files:
            m = _PROSTATE_LABEL.match(nifti_stem(path.name) or "")
            if m:
                labels[m.group(1).lower()] = path
        for path in files:
            stem = nifti_stem(path.name) or ""
            if not _PROSTATE_IMAGE.match(stem):
                continue
            label = labels.get(stem.lower(), folder / f"{stem}_segmentation.nii.gz")
            cases.append(Case(case_id=f"{site}_{stem}", image=path, label=label, domain=str(site), split=""))
    return cases


# ----------------------------------------------------------------------------------------- patterns (PanDG)
def _fields(pattern: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]


def check_patterns(opts: dict[str, Any], where: str) -> None:
    """The pattern options name only fields that the image pattern captures, each once, including {case}."""
    image_fields = _fields(str(opts["image_pattern"]))
    if "case" not in image_fields:
        raise MaskgenError(f"{where}: image_pattern {opts['image_pattern']!r} must contain {{case}}")
    if len(set(image_fields)) != len(image_fields) or "" in image_fields:
        raise MaskgenError(f"{where}: image_pattern {opts['image_pattern']!r} must name each field once, e.g. {{case}}")
    for key in ("label_pattern", "domain", "case_id", "subject"):
        extra = set(_fields(str(opts[key]))) - set(image_fields)
        if extra:
            raise MaskgenError(
                f"{where}: {key} {opts[key]!r} uses {sorted(extra)}, which image_pattern does not capture"
            )


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for literal, field, _, _ in string.Formatter().parse(pattern):
        parts.append(re.escape(literal))
        if field is not None:
            parts.append(f"(?P<{field}>[^/]+?)")
    return re.compile("^" + "".join(parts) + "$")


def _discover_pattern(root: Path, opts: dict[str, Any]) -> list[Case]:
    image_pattern = str(opts["image_pattern"])
    regex = _pattern_regex(image_pattern)
    glob = "".join(
        literal + ("*" if field is not None else "") for literal, field, _, _ in string.Formatter().parse(image_pattern)
    )
    cases = []
    for path in sorted(root.glob(glob)):
        rel = path.relative_to(root).as_posix()
        m = regex.match(rel)
        if not m or not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        fields = m.groupdict()
        cases.append(
            Case(
                case_id=str(opts["case_id"]).format(**fields),
                image=path,
                label=root / str(opts["label_pattern"]).format(**fields),
                domain=str(opts["domain"]).format(**fields),
                split="",
                subject=str(opts["subject"]).format(**fields),
            )
        )
    return cases


_PATTERN_DEFAULTS = {
    "image_pattern": "{center}/{phase}/images/{case}.nii.gz",
    "label_pattern": "{center}/{phase}/labels/{case}.nii.gz",
    "domain": "{phase}",
    "case_id": "{center}_{phase}_{case}",
    "subject": "{center}_{case}",
}

SPECS: dict[str, LayoutSpec] = {
    "amos": LayoutSpec(
        discover=_discover_amos,
        defaults={
            "folders": (("imagesTr", "labelsTr"), ("imagesVa", "labelsVa")),
            "mri_first_id": 501,
            "include_unlabeled": False,
        },
        explicit_splits=False,
        expected="imagesTr/amos_0001.nii.gz + labelsTr/amos_0001.nii.gz, imagesVa/labelsVa (AMOS22 release); "
        "ids below mri_first_id (501) are CT ('ct'), the others MRI ('mri')",
    ),
    "msd_brats": LayoutSpec(
        discover=_discover_msd_brats,
        defaults={"images": "imagesTr", "labels": "labelsTr", "channels": ("flair", "t1w", "t1gd", "t2w")},
        explicit_splits=False,
        expected="imagesTr/BRATS_001.nii.gz (4D: FLAIR, T1w, t1gd, T2w) + labelsTr/BRATS_001.nii.gz "
        "(MSD Task01_BrainTumour); each (subject, channel) is a case BRATS_001_<channel> with domain <channel>",
        subject_rule="the BRATS id (a subject's channels share one split)",
    ),
    "topcow": LayoutSpec(
        discover=_discover_topcow,
        defaults={"images": "imagesTr", "labels": "cow_seg_labelsTr"},
        explicit_splits=False,
        expected="imagesTr/topcow_ct_001_0000.nii.gz, imagesTr/topcow_mr_001_0000.nii.gz + "
        "cow_seg_labelsTr/topcow_ct_001.nii.gz (TopCoW 2024 release); domains 'cta' and 'mra', subject = the number",
        subject_rule="the patient number (a patient's CTA and MRA share one split)",
    ),
    "hvsmr": LayoutSpec(
        discover=_discover_hvsmr,
        defaults={
            "folder": "cropped",
            "image_suffix": "_cropped",
            "label_suffix": "_cropped_seg",
            "severity_csv": "severity.csv",
        },
        explicit_splits=False,
        expected="cropped/pat0_cropped.nii.gz + cropped/pat0_cropped_seg.nii.gz (HVSMR-2.0) and severity.csv with "
        "columns pat,severity (mild / moderate / severe) from the dataset's metadata",
    ),
    "prostate": LayoutSpec(
        discover=_discover_prostate,
        defaults={"sites": ("RUNMC", "BMC", "I2CVB", "UCL", "BIDMC", "HK")},
        explicit_splits=False,
        expected="<SITE>/Case00.nii.gz + <SITE>/Case00_segmentation.nii.gz for sites RUNMC, BMC, I2CVB, UCL, BIDMC, HK "
        "(any casing); domain = site",
    ),
    "pandg": LayoutSpec(
        discover=_discover_pattern,
        defaults=dict(_PATTERN_DEFAULTS),
        explicit_splits=False,
        expected="<center>/<phase>/images/<case>.nii.gz + <center>/<phase>/labels/<case>.nii.gz with phase folders "
        "'venous' and 'out_of_phase' (or set [layout] image_pattern / label_pattern); domain = phase",
        subject_rule="the [layout] subject pattern (default {center}_{case}: a patient's phases share one split)",
    ),
    "pattern": LayoutSpec(
        discover=_discover_pattern,
        defaults=dict(_PATTERN_DEFAULTS),
        explicit_splits=False,
        expected="files matching [layout] image_pattern / label_pattern, e.g. {center}/{phase}/images/{case}.nii.gz",
        required=("image_pattern", "label_pattern"),
        subject_rule='the [layout] subject pattern (default {center}_{case})',
    ),
}
