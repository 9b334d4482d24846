"""A tiny synthetic dataset for fast tests of every stage: smooth random label blobs in two (or more) contrasts.

``make_synthetic_dataset(out_dir)`` writes, in well under a second, the same nnU-Net-style layout as the demo
dataset (``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``, ``domains.csv``, ``dataset.json``, 1 mm
isotropic RAS) plus ``out_dir/pipeline.toml`` so that ``--dataset out_dir/pipeline.toml`` works with no
``--data-root``. Splits by subject: train = first contrast of the first half of the subjects, val = the other
contrasts of one subject, test = every contrast of the remaining subjects. ``synthetic_volume`` gives the same
data as arrays, without files::

    from maskgen.demo.synthetic import make_synthetic_dataset, synthetic_volume
    pipeline_toml = make_synthetic_dataset(tmp_path / "data") / "pipeline.toml"
    image, label = synthetic_volume(32, n_classes=2, seed=0)   # (1, Z, Y, X) float32 in [0, 1], (Z, Y, X) uint8
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from maskgen.demo import writer as dw
from maskgen.errors import MaskgenError

GENERATOR = "maskgen.demo.synthetic"  # recorded in dataset.json
PIPELINE_TOML = "pipeline.toml"
_NAME = re.compile(r"^[A-Za-z0-9]+$")


def _check(size: int, n_classes: int) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 8 <= size <= 256:
        raise ValueError(f"size must be an integer in 8..256 (voxels per side), got {size!r}")
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or not 1 <= n_classes <= 8:
        raise ValueError(f"n_classes must be an integer in 1..8 (foreground classes), got {n_classes!r}")


def synthetic_labels(size: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, size) uint8 label map: 0 background and one or two smooth blobs per class 1..K, every class
    present (blobs painted in class order; a draw that hides a class is redrawn)."""
    from scipy import ndimage

    _check(size, n_classes)
    grid = np.stack(np.meshgrid(*[np.arange(size, dtype=np.float32)] * 3, indexing="ij"))
    min_voxels = max(8, size**3 // 100)  # >= 1% of the volume per class
    for _ in range(50):
        label = np.zeros((size,) * 3, dtype=np.uint8)
        wobble = ndimage.gaussian_filter(rng.standard_normal((size,) * 3).astype(np.float32), size / 10.0)
        wobble /= max(float(np.abs(wobble).max()), 1e-6)
        for k in range(1, n_classes + 1):
            for _ in range(int(rng.integers(1, 3))):
                centre = rng.uniform(0.25, 0.75, size=3) * (size - 1)
                radii = rng.uniform(0.14, 0.26, size=3) * size
                d = np.sqrt((((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0))
                label[d + 0.3 * wobble < 1.0] = k
        counts = np.bincount(label.ravel(), minlength=n_classes + 1)
        if counts.min() >= min_voxels:
            return label
    raise RuntimeError(f"could not place {n_classes} visible classes in a {size}^3 volume; use fewer classes")


def contrast_levels(n_classes: int, contrast: int) -> np.ndarray:
    """Intensity of each label value (background first) in contrast number ``contrast``: contrast 0 is
    increasing with the label, contrast 1 reversed, further contrasts a fixed permutation each."""
    levels = np.linspace(0.1, 0.9, n_classes + 1, dtype=np.float32)
    if contrast == 0:
        return levels
    if contrast == 1:
        return levels[::-1].copy()
    return levels[np.random.default_rng(contrast).permutation(n_classes + 1)]


def render(
    label: np.ndarray, n_classes: int, contrast: int, rng: np.random.Generator, noise_std: float = 0.05
) -> np.ndarray:
    """Raw image (same shape as ``label``, float32): per-label intensity (jittered), slight partial-volume blur,
    Gaussian noise."""
    from scipy import ndimage

    levels = contrast_levels(n_classes, contrast)
    levels = levels + rng.uniform(-0.03, 0.03, size=levels.shape).astype(np.float32)
    image = ndimage.gaussian_filter(levels[label], 0.6)
    image += np.float32(noise_std) * rng.standard_normal(label.shape, dtype=np.float32)
    return image.astype(np.float32)


def _minmax(image: np.ndarray) -> np.ndarray:
    lo, hi = float(image.min()), float(image.max())
    return ((image - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def _subject_rng(seed: int, subject: int) -> np.random.Generator:
    return np.random.default_rng([seed, subject])


def _contrast_rng(seed: int, subject: int, contrast: int) -> np.random.Generator:
    return np.random.default_rng([seed, subject, contrast + 1])


def synthetic_volume(
    size: int = 32, n_classes: int = 2, seed: int = 0, contrast: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Arrays for tests that skip files: image (1, Z, Y, X) float32 min-max scaled to [0, 1] and label (Z, Y, X)
    uint8 in 0..n_classes. Same data as subject 0 of ``make_synthetic_dataset(seed=seed)`` in that contrast."""
    label = synthetic_labels(size, n_classes, _subject_rng(seed, 0))
    image = _minmax(render(label, n_classes, contrast, _contrast_rng(seed, 0, contrast)))
    # (x, y, z) -> store order (z, y, x)
    return np.ascontiguousarray(image.transpose(2, 1, 0))[None], np.ascontiguousarray(label.transpose(2, 1, 0))


def synthetic_splits(n_subjects: int) -> tuple[str, ...]:
    """First half train, then one val subject, the rest test (>= 1 each)."""
    if n_subjects < 3:
        raise ValueError(f"n_cases must be >= 3 subjects (1 train, 1 val, 1 test), got {n_subjects}")
    n_train = n_subjects // 2
    return ("train",) * n_train + ("val",) + ("test",) * (n_subjects - n_train - 1)


def synthetic_crop(size: int) -> int:
    """Training crop side for a volume side: 16 up to 63 voxels, then half the side (multiple of 16)."""
    return min(size, max(16, (size // 2) // 16 * 16))


def make_synthetic_dataset(
    out_dir: str | Path,
    n_cases: int = 6,
    size: int = 32,
    n_classes: int = 2,
    seed: int = 0,
    contrasts: Sequence[str] = ("a", "b"),
) -> Path:
    """Write the synthetic dataset into ``out_dir`` (replaced if it is an earlier synthetic dataset; refused if it
    holds anything else) and return ``out_dir``. ``n_cases`` is the number of subjects; each gives one case per
    contrast that its split uses (``sub-000_a``, ...). The pipeline is ``out_dir/pipeline.toml``."""
    contrasts = _check_dataset_args(size, n_classes, seed, contrasts)
    splits = synthetic_splits(n_cases)
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        entry = dw.read_maskgen_key(out_dir)
        if entry is None or entry.get("generator") != GENERATOR:
            raise MaskgenError(
                f"{out_dir} exists and is not empty: pass an empty or new folder to make_synthetic_dataset"
            )

    targets = {"train": contrasts[:1], "val": contrasts[1:] or contrasts[:1], "test": contrasts}
    classes = [f"class{k}" for k in range(1, n_classes + 1)]
    affine = np.eye(4)
    affine[:3, 3] = -(size - 1) / 2.0  # 1 mm RAS grid centred on the origin
    records: list[dw.CaseRecord] = []
    with dw.staged_directory(out_dir) as staging:
        for index, split in enumerate(splits):
            subject = f"sub-{index:03d}"
            label = synthetic_labels(size, n_classes, _subject_rng(seed, index))
            for name in targets[split]:
                c = contrasts.index(name)
                image = render(label, n_classes, c, _contrast_rng(seed, index, c))
                case = f"{subject}_{name}"
                dw.write_case(staging, case, image, label, affine)
                records.append(dw.CaseRecord(case=case, domain=name, split=split, subject=subject))
        dw.write_domains_csv(staging, records)
        meta = {
            "generator": GENERATOR,
            "seed": int(seed),
            "n_subjects": int(n_cases),
            "size": int(size),
            "n_classes": int(n_classes),
            "contrasts": list(contrasts),
            "num_cases": len(records),
        }
        dw.write_json(
            staging / dw.DATASET_JSON,
            dw.dataset_json("maskgen-synthetic", "random label blobs in several contrasts (tests)", classes,
                            len(records), meta, channel_name="synthetic"),
        )
        (staging / PIPELINE_TOML).write_text(pipeline_toml(out_dir, size, classes, contrasts), encoding="utf-8")
    return out_dir


def _check_dataset_args(size: int, n_classes: int, seed: int, contrasts: Sequence[str]) -> tuple[str, ...]:
    """The contrasts as a tuple, after checking every argument (ValueError naming the bad value)."""
    _check(size, n_classes)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    contrasts = tuple(contrasts)
    if not contrasts or any(not isinstance(c, str) or not _NAME.match(c) for c in contrasts):
        raise ValueError(f"contrasts must be non-empty alphanumeric names, got {contrasts!r}")
    if len(set(contrasts)) != len(contrasts):
        raise ValueError(f"contrast names must be unique, got {contrasts!r}")
    return contrasts


def pipeline_toml(out_dir: Path, size: int, classes: Sequence[str], contrasts: Sequence[str]) -> str:
    """The `pipeline.toml` written beside the data: nnunet layout with the domain CSV, 1 mm, min-max."""
    crop = synthetic_crop(size)
    return (
        "# Written by maskgen.demo.synthetic.make_synthetic_dataset (schema: pipelines/nnunet.toml).\n"
        'name = "synthetic"\n'
        f"description = {json.dumps(f'Synthetic blobs, {len(classes)} classes, contrasts {list(contrasts)}')}\n"
        "spacing = [1.0, 1.0, 1.0]\n"
        f"crop_size = [{crop}, {crop}, {crop}]\n"
        'normalization = "minmax"\n'
        f"classes = {json.dumps(list(classes))}\n"
        "allow_flips = true\n"
        f"default_data_root = {json.dumps(str(out_dir))}\n"
        "\n[layout]\n"
        'kind = "nnunet"\n'
        f'csv = "{dw.DOMAINS_CSV}"\n'
    )
