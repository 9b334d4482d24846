"""The embedded offline demo dataset: MNI152 anatomy, randomly deformed into subjects, in three MR contrasts.

``generate_demo_dataset(out_dir, DemoConfig(subjects=12, seed=0))`` writes an nnU-Net-style folder
(``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``, ``domains.csv``, ``dataset.json``) read by the
``demo`` pipeline. Labels: 0 background, 1 CSF, 2 grey matter, 3 white matter. Splits are by subject:
train subjects give only their source-contrast case (``t1``), validation subjects only the other contrasts
(``t2``, ``flair``: validate on held-out contrasts), test subjects all contrasts. Every random number of a
subject comes from one generator seeded by (seed, subject index), so the folder is reproducible from the seed
and a subject's images do not depend on how many subjects are made.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maskgen.config import to_dict
from maskgen.demo import writer as dw
from maskgen.demo.contrast import DEFAULT_CONTRASTS, ContrastSpec, MRContrast
from maskgen.demo.deform import RandomAnatomy, WarpedTissues
from maskgen.demo.template import MASK_THRESHOLD, TEMPLATE_FILES, TISSUES, load_template
from maskgen.errors import MaskgenError

GENERATOR = "maskgen.data.demo"  # recorded in dataset.json (its former module path; kept so folders stay valid)
FORMAT_VERSION = 1  # bump whenever the generated images change for the same config
DEFAULT_OUT = "cache/demo-data"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DemoConfig:
    """Everything that determines the demo dataset (saved in its dataset.json)."""

    subjects: int = 12
    seed: int = 0
    spacing: int = 2  # mm, isotropic; an integer factor of the template's 1 mm grid
    grid_margin_mm: float = 32.0  # room around the template brain for the deformation
    crop_margin_mm: float = 10.0  # background kept around each subject's brain
    max_rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    anisotropy: float = 0.05
    max_translation_mm: float = 6.0
    elastic_std_mm: float = 3.0
    control_spacing_mm: float = 32.0
    contrasts: tuple[ContrastSpec, ...] = DEFAULT_CONTRASTS  # the first is the source (training) domain

    def __post_init__(self) -> None:
        if isinstance(self.subjects, bool) or not isinstance(self.subjects, int) or self.subjects < 4:
            raise ValueError(f"subjects must be an integer >= 4 (2 train, 1 val, 1 test), got {self.subjects!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if isinstance(self.spacing, bool) or not isinstance(self.spacing, int) or not 1 <= self.spacing <= 8:
            raise ValueError(f"spacing must be an integer number of mm in 1..8, got {self.spacing!r}")
        if self.crop_margin_mm < 0 or self.grid_margin_mm < self.crop_margin_mm:
            raise ValueError(
                f"need 0 <= crop_margin_mm <= grid_margin_mm, got {self.crop_margin_mm!r} and {self.grid_margin_mm!r}"
            )
        if len(self.contrasts) < 2:
            raise ValueError(f"need a source contrast and at least one target contrast, got {len(self.contrasts)}")
        names = [c.name for c in self.contrasts]
        if len(set(names)) != len(names):
            raise ValueError(f"contrast names must be unique, got {names}")

    @property
    def source_contrast(self) -> str:
        return self.contrasts[0].name


@dataclass(frozen=True)
class DemoSummary:
    """What was written (or found up to date)."""

    out_dir: Path
    records: tuple[dw.CaseRecord, ...]
    shapes: tuple[tuple[int, int, int], ...]  # per subject, (x, y, z)
    spacing: int
    seconds: float
    reused: bool = False
    subjects_per_split: dict[str, int] = field(default_factory=dict)


def plan_splits(n_subjects: int) -> tuple[str, ...]:
    """Split of each subject: about half train, a sixth val, the rest test (>= 2 / 1 / 1)."""
    if n_subjects < 4:
        raise ValueError(f"need at least 4 subjects (2 train, 1 val, 1 test), got {n_subjects}")
    n_val = max(1, round(n_subjects / 6))
    n_train = max(2, n_subjects // 2)
    n_test = n_subjects - n_train - n_val
    return ("train",) * n_train + ("val",) * n_val + ("test",) * n_test


def contrasts_for_split(config: DemoConfig, split: str) -> tuple[str, ...]:
    names = tuple(c.name for c in config.contrasts)
    return {"train": names[:1], "val": names[1:], "test": names}[split]


def subject_id(index: int) -> str:
    return f"sub-{index:03d}"


def tissue_labels(tissues: WarpedTissues) -> np.ndarray:
    """0 background, 1 CSF, 2 GM, 3 WM: the largest tissue fraction inside the (soft) brain mask >= 0.5."""
    dominant = np.argmax(np.stack([tissues.csf, tissues.gm, tissues.wm]), axis=0).astype(np.uint8) + 1
    return np.where(tissues.mask >= 0.5, dominant, 0).astype(np.uint8)


def crop_to_brain(tissues: WarpedTissues, label: np.ndarray, margin_vox: int) -> tuple[WarpedTissues, np.ndarray]:
    idx = np.argwhere(label > 0)
    lo = np.maximum(idx.min(0) - margin_vox, 0)
    hi = np.minimum(idx.max(0) + margin_vox + 1, label.shape)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    return tissues.crop(lo, hi), label[sl]


def _config_dict(config: DemoConfig) -> dict:
    return json.loads(json.dumps(to_dict(config)))


def is_demo_folder(path: Path) -> bool:
    entry = dw.read_maskgen_key(path)
    return entry is not None and entry.get("generator") == GENERATOR


def _up_to_date(path: Path, config: DemoConfig) -> list[dw.CaseRecord] | None:
    """The folder's cases if it is a complete demo dataset made with exactly this config, else None."""
    entry = dw.read_maskgen_key(path)
    if not entry or entry.get("generator") != GENERATOR or entry.get("format_version") != FORMAT_VERSION:
        return None
    if entry.get("config") != _config_dict(config):
        return None
    try:
        records = dw.read_domains_csv(path)
    except (OSError, KeyError):
        return None
    if len(records) != entry.get("num_cases"):
        return None
    for r in records:
        if not dw.image_path(path, r.case).is_file() or not dw.label_path(path, r.case).is_file():
            return None
    return records


def _check_replaceable(out_dir: Path, overwrite: bool) -> None:
    resolved = out_dir.resolve()
    cwd = Path.cwd().resolve()
    if resolved == Path(resolved.anchor) or resolved == Path.home().resolve() or resolved in (cwd, *cwd.parents):
        raise MaskgenError(f"refusing to write the demo dataset over {out_dir} (a root, home or working folder): "
                           "choose a dedicated --out folder such as cache/demo-data.")
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        return
    if is_demo_folder(out_dir) or overwrite:
        return
    raise MaskgenError(
        f"{out_dir} exists and is not a maskgen demo dataset (no dataset.json with a 'maskgen' demo entry): "
        "choose another --out folder, or pass --overwrite to replace it (its contents will be deleted)."
    )


def generate_demo_dataset(
    out_dir: str | Path = DEFAULT_OUT,
    config: DemoConfig | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> DemoSummary:
    """Write the demo dataset to ``out_dir`` (atomically), or reuse it if it is already complete with the same
    config and ``overwrite`` is False. ``progress(done, total)`` is called after each subject."""
    config = config or DemoConfig()
    out_dir = Path(out_dir)
    start = time.perf_counter()
    splits = plan_splits(config.subjects)
    per_split = dict(Counter(splits))
    _check_replaceable(out_dir, overwrite)
    if not overwrite:
        records = _up_to_date(out_dir, config)
        if records is not None:
            entry = dw.read_maskgen_key(out_dir) or {}
            shapes = tuple(tuple(s["shape_xyz"]) for s in entry.get("subjects", {}).values())
            return DemoSummary(out_dir, tuple(records), shapes, config.spacing, time.perf_counter() - start,
                               reused=True, subjects_per_split=per_split)

    maker = _SubjectMaker(config)
    records: list[dw.CaseRecord] = []
    subjects_meta: dict[str, dict] = {}
    with dw.staged_directory(out_dir) as staging:
        for index, split in enumerate(splits):
            subject_records, subjects_meta[subject_id(index)] = maker.write(staging, index, split)
            records.extend(subject_records)
            if progress is not None:
                progress(index + 1, len(splits))
        dw.write_domains_csv(staging, records)
        _write_dataset_json(staging, config, records, subjects_meta)
    shapes = tuple(tuple(m["shape_xyz"]) for m in subjects_meta.values())
    return DemoSummary(out_dir, tuple(records), shapes, config.spacing, time.perf_counter() - start,
                       reused=False, subjects_per_split=per_split)


class _SubjectMaker:
    """Renders and writes one subject at a time: random anatomy, its label, one image per contrast of its split."""

    def __init__(self, config: DemoConfig) -> None:
        self.config = config
        self.template = load_template(config.spacing)
        self.anatomy = RandomAnatomy(
            self.template,
            margin_mm=config.grid_margin_mm,
            max_rotation_deg=config.max_rotation_deg,
            scale_range=config.scale_range,
            anisotropy=config.anisotropy,
            max_translation_mm=config.max_translation_mm,
            elastic_std_mm=config.elastic_std_mm,
            control_spacing_mm=config.control_spacing_mm,
        )
        self.renderers = {spec.name: MRContrast(spec) for spec in config.contrasts}
        self.margin_vox = int(np.ceil(config.crop_margin_mm / config.spacing))

    def write(self, staging: Path, index: int, split: str) -> tuple[list[dw.CaseRecord], dict]:
        """Write subject ``index``'s cases into ``staging``; returns their records and the subject's metadata."""
        config, sid = self.config, subject_id(index)
        rng = np.random.default_rng([config.seed, index])
        anatomy_params = self.anatomy.sample(rng)
        # all contrasts are sampled for every subject so that a subject never depends on its split
        contrast_params = {name: r.sample(rng) for name, r in self.renderers.items()}
        tissues = self.anatomy.apply(anatomy_params)
        label = tissue_labels(tissues)
        if not label.any():
            raise MaskgenError(f"{sid}: the random deformation moved the brain out of the output grid: "
                               "lower max_translation_mm / scale_range or raise grid_margin_mm in DemoConfig.")
        tissues, label = crop_to_brain(tissues, label, self.margin_vox)
        records = []
        for contrast in contrasts_for_split(config, split):
            image = self.renderers[contrast].apply(tissues, contrast_params[contrast], self.template.t1_tissue_means,
                                                   float(config.spacing))
            case = f"{sid}_{contrast}"
            dw.write_case(staging, case, image, label, tissues.affine)
            records.append(dw.CaseRecord(case=case, domain=contrast, split=split, subject=sid))
        meta = {
            "split": split,
            "shape_xyz": [int(n) for n in label.shape],
            "label_voxels": [int(v) for v in np.bincount(label.ravel(), minlength=4)],
            "anatomy": anatomy_params.summary(),
            "contrasts": {name: to_dict(p) for name, p in contrast_params.items()},
        }
        return records, meta


def _write_dataset_json(staging: Path, config: DemoConfig, records: list[dw.CaseRecord],
                        subjects_meta: dict[str, dict]) -> None:
    names = [c.name for c in config.contrasts]
    meta = {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "maskgen_version": _maskgen_version(),
        "seed": config.seed,
        "config": _config_dict(config),
        "num_cases": len(records),
        "spacing_mm": [config.spacing] * 3,
        "source_domain": config.source_contrast,
        "template": {
            "name": "MNI ICBM152 2009a nonlinear symmetric (nilearn, BSD-3)",
            "files": sorted(TEMPLATE_FILES.values()),
            "brain_mask": f"T1 template > {MASK_THRESHOLD} of its maximum, holes filled",
        },
        "splits": {s: [sid for sid, m in subjects_meta.items() if m["split"] == s] for s in SPLITS},
        "subjects": subjects_meta,
    }
    description = (
        "maskgen offline demo: MNI152 2009a anatomy under random elastic + affine deformations, "
        f"{config.subjects} subjects, contrasts {', '.join(names)}; train on {config.source_contrast}, "
        "validate and test on the other contrasts."
    )
    dw.write_json(staging / dw.DATASET_JSON,
                  dw.dataset_json("maskgen-demo", description, TISSUES, len(records), meta,
                                  extra={"licence": "BSD-3-Clause (template: nilearn / MNI ICBM152)"}))


def _maskgen_version() -> str:
    from maskgen import __version__

    return __version__
