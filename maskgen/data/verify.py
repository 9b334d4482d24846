"""`maskgen verify`: read every case of a dataset and report all problems at once, each naming the file and the fix.

Errors: unreadable / truncated / missing files, files without read permission, image-label shape or affine mismatch,
non-integer or undeclared label values, NaN/Inf voxels, missing labels, duplicate case ids, case ids unsafe as storage
keys. Warnings: empty foreground, constant images (max = min), unlabelled cases kept on purpose, case ids with unusual
characters. Each file is read once even when several cases share it (BraTS channels), on a few threads
(decompression releases the GIL). The report also says what the dataset gives (`VerifyReport.summary_lines`).
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from maskgen.data.cases import Case, case_id_is_portable, case_id_problem
from maskgen.data.labels import affine_mismatch, check_label
from maskgen.data.layout_registry import LAYOUT_SPECS
from maskgen.data.layouts import discover, layout_options
from maskgen.data.nifti import load_header, read_all_channels, spatial_shape
from maskgen.data.pipeline import Pipeline, split_rule
from maskgen.data.splits import SPLITS
from maskgen.errors import MaskgenError

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    case_id: str
    path: str  # the file concerned ("" when the problem is not about one file)
    severity: str  # "error" | "warning"
    message: str  # what is wrong and how to fix it


@dataclass
class VerifyReport:
    pipeline: Pipeline
    data_root: Path
    cases: list[Case]
    problems: list[Problem] = field(default_factory=list)
    left_out: list[Case] = field(default_factory=list)  # found by the layout, left out by the split rule / fold
    layout_lines: list[str] = field(default_factory=list)  # what the layout says about itself (channels, folds)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def counts(self) -> dict[tuple[str, str], int]:
        """Number of cases per (split, domain)."""
        return dict(Counter((c.split, c.domain) for c in self.cases))

    def subjects(self) -> dict[tuple[str, str], int]:
        """Number of subjects per (split, domain)."""
        unique = {(c.split, c.domain, c.subject_id) for c in self.cases}
        return dict(Counter((split, domain) for split, domain, _ in unique))

    def summary_lines(self) -> list[str]:
        """What the dataset gives, in words: classes, spacing and crop (and how they were chosen), the layout's own
        notes, the subject and split rules, and what is left for training."""
        p = self.pipeline
        spec = LAYOUT_SPECS[p.layout]
        rule = split_rule(p)
        if rule is not None:
            splits = "domain split by [splits]: " + "; ".join(
                f"{s} = {list(rule['domains'][s])}" for s in SPLITS) + f" (seed {rule['seed']})"
        else:
            splits = "the layout's own splits (folders / CSV / fold), no domain rule"
        train = [c for c in self.cases if c.split == "train"]
        lines = [
            f"pipeline: {p.description}" if p.description else f"pipeline: {p.name}",
            "classes: " + ", ".join(f"{i} {name}" for i, name in enumerate(p.classes, start=1)),
            f"spacing (x, y, z): {' x '.join(f'{v:g}' for v in p.spacing)} mm; crop (x, y, z): "
            f"{' x '.join(map(str, p.crop_size))} voxels",
            *self.layout_lines,
            f"subjects: {spec.subject_rule}; a subject never straddles splits",
            f"splits: {splits}",
            f"training: {len(train)} cases of {len({c.subject_id for c in train})} subjects, domains "
            + (", ".join(sorted({c.domain for c in train})) or "none"),
        ]
        if self.left_out:
            ids = sorted(c.case_id for c in self.left_out)
            lines.append(f"left out by the split rule / fold: {len(ids)} cases ({', '.join(ids[:8])}"
                         + (", ...)" if len(ids) > 8 else ")"))
        return lines


@dataclass
class _FileCheck:
    """What reading one file found: its grid, or the reason it could not be read, plus content findings."""

    shape: tuple[int, ...] | None = None
    affine: np.ndarray | None = None
    error: str | None = None
    nonfinite: dict[int, int] = field(default_factory=dict)  # image: channel -> NaN/Inf count
    constant: dict[int, float] = field(default_factory=dict)  # image: channel -> its only value (max == min)
    label_problems: list[str] = field(default_factory=list)  # label: value problems
    empty: bool = False  # label: no foreground after remapping


def _check_image_file(path: Path) -> _FileCheck:
    try:
        data, affine = read_all_channels(path)
    except MaskgenError as e:
        return _FileCheck(error=str(e))
    check = _FileCheck(shape=data.shape, affine=affine)
    if data.dtype.kind == "f":
        vols = [data] if data.ndim == 3 else [data[..., c] for c in range(data.shape[3])]
        for c, vol in enumerate(vols):
            bad = int(vol.size - np.count_nonzero(np.isfinite(vol)))
            if bad:
                check.nonfinite[c] = bad
    vols = [data] if data.ndim == 3 else [data[..., c] for c in range(data.shape[3])]
    for c, vol in enumerate(vols):
        if vol.size and c not in check.nonfinite and vol.min() == vol.max():
            check.constant[c] = float(vol.flat[0])
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        check.error = f"{path} has a degenerate affine (zero or non-finite voxel axes); fix its header"
    return check


def _check_label_file(path: Path, pipeline: Pipeline) -> _FileCheck:
    try:
        img = load_header(path)
        if len(spatial_shape(img)) != 3:
            return _FileCheck(error=f"label {path} has shape {tuple(img.shape)}; a label must be one 3D volume")
        data, affine = read_all_channels(path)
    except MaskgenError as e:
        return _FileCheck(error=str(e))
    check = _FileCheck(shape=data.shape, affine=affine)
    label, problems = check_label(data, pipeline)
    check.label_problems = problems
    check.empty = label is not None and not label.any()
    return check


def verify_cases(
    cases: Iterable[Case],
    pipeline: Pipeline,
    workers: int | None = None,
    on_file_done: Callable[[], None] | None = None,
) -> list[Problem]:
    """All problems of these cases (ids, files, contents), in case order."""
    cases = list(cases)
    problems: list[Problem] = []
    unlabeled_ok = bool(layout_options(pipeline).get("include_unlabeled", False))

    seen: dict[str, Case] = {}
    for case in cases:
        why = case_id_problem(case.case_id)
        if why:
            problems.append(Problem(case.case_id, str(case.image), ERROR,
                                    f"{why}: it cannot be a storage key; rename the file (or the CSV entry)"))
        elif not case_id_is_portable(case.case_id):
            problems.append(Problem(case.case_id, str(case.image), WARNING,
                                    f"case id {case.case_id!r} has characters other than letters, digits, '.', '_', "
                                    "'-'; it works, but portable names are safer"))
        if case.case_id in seen:
            problems.append(Problem(case.case_id, str(case.image), ERROR,
                                    f"case id {case.case_id!r} is used twice ({seen[case.case_id].image} and "
                                    f"{case.image}); rename one of them"))
        else:
            seen[case.case_id] = case

    image_paths = sorted({Path(c.image) for c in cases})
    label_paths = sorted({Path(c.label) for c in cases if c.label is not None and Path(c.label).exists()})
    jobs: list[tuple[str, Path]] = [("image", p) for p in image_paths] + [("label", p) for p in label_paths]

    def run(job: tuple[str, Path]) -> _FileCheck:
        kind, path = job
        result = _check_image_file(path) if kind == "image" else _check_label_file(path, pipeline)
        if on_file_done is not None:
            on_file_done()
        return result

    n = workers if workers is not None else min(4, os.cpu_count() or 1)
    if n > 1 and len(jobs) > 1:
        with ThreadPoolExecutor(max_workers=n) as pool:
            results = list(pool.map(run, jobs))
    else:
        results = [run(j) for j in jobs]
    checked = dict(zip(jobs, results))

    for case in cases:
        problems.extend(_case_problems(case, checked, unlabeled_ok))
    return problems


_Add = Callable[["Path | str", str, str], None]  # add(path, severity, message)


def _case_problems(case: Case, checked: dict[tuple[str, Path], _FileCheck], unlabeled_ok: bool) -> list[Problem]:
    out: list[Problem] = []

    def add(path: Path | str, severity: str, message: str) -> None:
        out.append(Problem(case.case_id, str(path), severity, message))

    img = checked[("image", Path(case.image))]
    image_shape = _image_problems(case, img, add)
    label_path = _label_presence_problems(case, unlabeled_ok, add)
    if label_path is not None:
        _label_problems(case, label_path, img, image_shape, checked[("label", label_path)], add)
    return out


def _image_problems(case: Case, img: _FileCheck, add: _Add) -> tuple | None:
    """Report the image's problems for this case; return its spatial shape when it is usable."""
    image_path = Path(case.image)
    if img.error:
        add(image_path, ERROR, img.error)
        return None
    assert img.shape is not None
    if len(img.shape) == 4 and case.channel is None:
        add(image_path, ERROR, f"image {image_path} is 4D with {img.shape[3]} volumes but the case names no "
            "channel; use a layout that selects channels (e.g. msd_brats) or split the file")
        return None
    if case.channel is not None and len(img.shape) == 4 and not 0 <= case.channel < img.shape[3]:
        add(image_path, ERROR, f"image {image_path} has {img.shape[3]} volumes, so channel {case.channel} "
            "does not exist; check the layout's channels")
        return None
    if case.channel not in (None, 0) and len(img.shape) == 3:
        add(image_path, ERROR, f"image {image_path} is 3D but the case asks for channel {case.channel}; "
            "check the layout's channels")
        return None
    channel = case.channel if len(img.shape) == 4 else 0
    bad = img.nonfinite.get(channel or 0, 0)
    where = f" (channel {case.channel})" if len(img.shape) == 4 else ""
    if bad:
        add(image_path, ERROR, f"image {image_path}{where} has {bad} NaN/Inf voxels; replace them (e.g. with "
            "the background value) and save the file again")
    if (channel or 0) in img.constant:
        add(image_path, WARNING, f"image {image_path}{where} is constant (every voxel is "
            f"{img.constant[channel or 0]:g}): normalisation turns it into zeros and it shows nothing to segment; "
            "check that it is the right file and export (`maskgen extract` refuses it unless --allow-constant)")
    return img.shape[:3]


def _label_presence_problems(case: Case, unlabeled_ok: bool, add: _Add) -> Path | None:
    """Report a case without a label (or with a missing label file); return the label path when there is one."""
    if case.label is None:
        if unlabeled_ok:
            add("", WARNING, "has no label (include_unlabeled = true): usable for predict only, not for training "
                "or scores")
        else:
            add("", ERROR, "has no label; add one, or set include_unlabeled = true in the pipeline's [layout] to keep "
                "label-free cases for prediction only")
        return None
    label_path = Path(case.label)
    if not label_path.exists():
        add(label_path, ERROR, f"label {label_path} is missing; put the label there (same grid as image "
            f"{Path(case.image).name}) or remove the image")
        return None
    return label_path


def _label_problems(case: Case, label_path: Path, img: _FileCheck, image_shape: tuple | None, lab: _FileCheck,
                    add: _Add) -> None:
    """The label's own problems and its agreement with the image's grid."""
    image_path = Path(case.image)
    if lab.error:
        add(label_path, ERROR, lab.error)
        return
    assert lab.shape is not None and lab.affine is not None
    if image_shape is not None:
        if tuple(lab.shape) != tuple(image_shape):
            add(label_path, ERROR, f"label {label_path} has shape {tuple(lab.shape)} but image {image_path} has "
                f"{tuple(image_shape)}; both must be on one voxel grid: resample the label onto the image (nearest)")
        elif img.affine is not None:
            mismatch = affine_mismatch(img.affine, lab.affine)
            if mismatch:
                add(label_path, ERROR, f"label {label_path} is not aligned with image {image_path} ({mismatch}); "
                    "if both come from one grid, copy the image's header into the label, otherwise resample it")
    for message in lab.label_problems:
        add(label_path, ERROR, f"{message} (in {label_path})")
    if lab.empty:
        add(label_path, WARNING, f"label {label_path} has no foreground: the case teaches only background and its "
            "Dice is undefined; check that it is the right file")


def verify_dataset(
    pipeline: Pipeline,
    data_root: str | Path | None = None,
    workers: int | None = None,
    on_file_done: Callable[[], None] | None = None,
    on_cases: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Discover the dataset's cases (tolerating bad ids, which it reports) and check every one."""
    found = discover(pipeline, data_root, strict=False)
    root, cases = found.root, found.cases
    spec = LAYOUT_SPECS[pipeline.layout]
    lines = spec.summary(root, layout_options(pipeline)) if spec.summary is not None else []
    if on_cases is not None:
        n_files = len({Path(c.image) for c in cases}) + len(
            {Path(c.label) for c in cases if c.label is not None and Path(c.label).exists()}
        )
        on_cases(n_files)
    problems = verify_cases(cases, pipeline, workers=workers, on_file_done=on_file_done)
    return VerifyReport(pipeline=pipeline, data_root=root, cases=cases, problems=problems, left_out=found.left_out,
                        layout_lines=lines)
