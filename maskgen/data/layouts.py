"""Finding a dataset's cases: data-root resolution, the layout registry, and the generic nnU-Net and CSV layouts.

`discover_cases(pipeline, data_root)` runs the pipeline's layout over the data folder, then assigns splits (from the
layout itself, or from the domain rule in `[splits]`, see `maskgen.data.splits`). The public datasets' layouts live
in `maskgen.data.public_layouts`.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from maskgen.data import public_layouts
from maskgen.data.cases import (
    Case,
    LayoutSpec,
    case_id_problem,
    find_nifti,
    nifti_files,
    nifti_stem,
    normalize_split,
    read_csv_rows,
)
from maskgen.data.pipeline import Pipeline, split_rule
from maskgen.data.splits import SPLITS, assign_splits
from maskgen.errors import MaskgenError

ENV_DATA_ROOT = "MASKGEN_DATA_ROOT"
_NNUNET_CHANNEL = re.compile(r"_(\d{4})$")


# --------------------------------------------------------------------------------------------------- data root
def resolve_data_root(data_root: str | Path | None, pipeline: Pipeline) -> Path:
    """The dataset folder: `--data-root` > $MASKGEN_DATA_ROOT > the pipeline's `default_data_root` (relative paths are
    relative to the current directory). Raises a MaskgenError saying how to pass it when none is given or it is
    missing."""
    if data_root is not None and str(data_root) != "":
        source = "--data-root"
        raw = str(data_root)
    elif os.environ.get(ENV_DATA_ROOT):
        source = f"${ENV_DATA_ROOT}"
        raw = os.environ[ENV_DATA_ROOT]
    elif pipeline.default_data_root:
        source = f"default_data_root of pipeline {pipeline.name!r}"
        raw = pipeline.default_data_root
    else:
        spec = LAYOUT_SPECS[pipeline.layout]
        raise MaskgenError(
            f"no data folder given for dataset {pipeline.name!r}: pass --data-root DIR or set {ENV_DATA_ROOT}=DIR "
            f"(expected layout: {spec.expected})"
        )
    root = Path(raw).expanduser()
    if not root.exists():
        hint = pipeline.option("missing_data_hint") or ""
        raise MaskgenError(
            f"data folder {raw} ({source}) does not exist; "
            + (f"{hint}; " if hint else "")
            + f"pass --data-root DIR or set {ENV_DATA_ROOT}=DIR"
        )
    return root.resolve()


# ------------------------------------------------------------------------------------------------- discovery
def discover_cases(pipeline: Pipeline, data_root: str | Path | None = None, strict: bool = True) -> list[Case]:
    """All cases of the dataset, with domain and split, sorted by split (train, val, test) then case id.

    `data_root`: `--data-root` (None: $MASKGEN_DATA_ROOT or the pipeline default). With `strict`, duplicate case ids
    and ids unsafe as storage keys raise (all listed at once); `maskgen verify` passes strict=False and reports them.
    """
    root = resolve_data_root(data_root, pipeline)
    spec = LAYOUT_SPECS[pipeline.layout]
    options = layout_options(pipeline)
    cases = spec.discover(root, options)
    rule = split_rule(pipeline)
    if rule is not None:
        cases = assign_splits(cases, rule)
    elif not spec.explicit_splits:
        raise MaskgenError(
            f"pipeline {pipeline.source or pipeline.name}: layout {pipeline.layout!r} needs a [splits] table "
            "(train = [domains...], val = [...], test = [...])"
        )
    unassigned = [c.case_id for c in cases if c.split not in SPLITS]
    if unassigned:
        raise MaskgenError(f"cases without a train/val/test split: {_preview(unassigned)}; give them one in the CSV")
    if not cases:
        raise MaskgenError(
            f"no cases found for dataset {pipeline.name!r} in {root}. Expected layout: {spec.expected}"
            + ("" if rule is None else f"; [splits] uses domains {_rule_domains(rule)}")
        )
    order = {s: i for i, s in enumerate(SPLITS)}
    cases.sort(key=lambda c: (order[c.split], c.case_id))
    if strict:
        problems = id_problems(cases)
        if problems:
            raise MaskgenError(
                f"dataset {pipeline.name!r} in {root} has unusable case ids: "
                + "; ".join(problems[:20])
                + ("" if len(problems) <= 20 else f"; ... and {len(problems) - 20} more")
                + ". Rename the files (or fix the CSV), then run `maskgen verify`."
            )
    return cases


def id_problems(cases: list[Case]) -> list[str]:
    """Duplicate or unsafe case ids, one sentence each."""
    out = []
    seen: dict[str, Case] = {}
    for case in cases:
        problem = case_id_problem(case.case_id)
        if problem:
            out.append(f"{problem} ({case.image})")
        if case.case_id in seen:
            out.append(f"case id {case.case_id!r} is used twice ({seen[case.case_id].image} and {case.image})")
        else:
            seen[case.case_id] = case
    return out


def layout_options(pipeline: Pipeline) -> dict[str, Any]:
    """The layout's defaults overridden by the pipeline's `[layout]` table."""
    spec = LAYOUT_SPECS[pipeline.layout]
    return {**spec.defaults, **dict(pipeline.options)}


def check_layout_options(pipeline: Pipeline) -> None:
    """Reject unknown `[layout]` keys and values of the wrong type (called by `load_pipeline`)."""
    spec = LAYOUT_SPECS[pipeline.layout]
    where = f"pipeline {pipeline.source or pipeline.name} [layout]"
    given = dict(pipeline.options)
    allowed = set(spec.defaults) | {"missing_data_hint"}
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise MaskgenError(
            f"{where}: unknown key(s) {unknown} for layout {pipeline.layout!r}; allowed: {sorted(allowed)}"
        )
    for key in spec.required:
        if not given.get(key):
            raise MaskgenError(f"{where}: layout {pipeline.layout!r} needs `{key} = ...`")
    for key, value in given.items():
        default = spec.defaults.get(key, "")
        expected = type(default)
        if expected is tuple and isinstance(value, tuple):
            continue
        if expected is int and isinstance(value, int) and not isinstance(value, bool):
            continue
        if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
            continue
        kind = {tuple: "a list", bool: "true or false", int: "an integer", str: "a string"}.get(expected, str(expected))
        raise MaskgenError(f"{where}: {key} = {value!r} must be {kind}")
    if pipeline.layout in ("pandg", "pattern"):
        public_layouts.check_patterns({**spec.defaults, **given}, where)


def _rule_domains(rule: dict[str, Any]) -> str:
    return ", ".join(f"{s}={list(rule['domains'][s])}" for s in SPLITS)


def _preview(items: list[str], n: int = 10) -> str:
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
                m = _NNUNET_CHANNEL.search(stem)
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
        cases = _apply_domain_csv(cases, root / csv_name, opts["default_domain"])
    return cases


def _apply_domain_csv(cases: list[Case], path: Path, default_domain: str) -> list[Case]:
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
        errors.append(f"case(s) with no image file: {_preview(unknown)}")
    out = []
    for case in cases:
        row = by_id.get(case.case_id)
        if row is None:
            out.append(replace(case, domain=default_domain))
            continue
        split = case.split
        if row.get("split"):
            try:
                split = normalize_split(row["split"], f"domain CSV {path}, case {case.case_id}")
            except MaskgenError as e:
                errors.append(str(e))
        out.append(
            replace(case, domain=row.get("domain") or default_domain, split=split, subject=row.get("subject") or None)
        )
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
    return _NNUNET_CHANNEL.sub("", stem)


LAYOUT_SPECS: dict[str, LayoutSpec] = {
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
    ),
    "csv": LayoutSpec(
        discover=_discover_csv,
        defaults={"csv": "dataset.csv", "default_domain": "default", "include_unlabeled": False},
        explicit_splits=True,
        expected="a CSV (default <data-root>/dataset.csv, or the CSV itself as --data-root) with columns "
        "image,label,split[,domain][,case][,subject]; relative paths are relative to the CSV's folder",
    ),
    **public_layouts.SPECS,
}
