"""nnU-Net v2 raw datasets as they are: `--dataset path/to/Dataset123_X` needs no pipeline file.

A folder with nnU-Net's `dataset.json` (`channel_names`, `labels`, `numTraining`, `file_ending`), `imagesTr/<case>_0000
<file_ending>` (one file per channel: _0000, _0001, ...), `labelsTr/<case><file_ending>` and optionally
`imagesTs`/`labelsTs` becomes a pipeline (`pipeline_table`) and its cases (layout `nnunet_v2`):
  classes      the `labels` other than background, by value (1..K, consecutive; region labels are refused)
  channels     each channel is its own case of a domain named after the channel (`<case>_<domain>`, or `<case>` for a
               single channel), the paper's BraTS protocol; the subject is the nnU-Net case, so a case's channels
               always share a split. Stacking channels as image channels is refused (the store and the UNet take one
               image channel; see `STACK_REFUSAL`).
  splits       train / val: fold `fold` of nnU-Net's `splits_final.json` (in the dataset folder, or
               $nnUNet_preprocessed/<dataset>/), else the split nnU-Net would make (KFold(5, shuffle, seed 12345)
               over the sorted case ids); test: imagesTs with labelsTs. A [splits] table or a domain CSV (pipeline
               file) replaces this by a domain split.
  spacing      nnU-Net's planner rule: the median voxel spacing of the training cases (for strongly anisotropic data,
               the 10th percentile along the coarse axis); headers only, in RAS (x, y, z) order
  crop         the median training shape at that spacing, rounded down to a multiple of 16, within 16..128 per axis
  normalisation  "ct" for channels named CT, min-max for every other channel (the paper's code)
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskgen.data.cases import Case, LayoutSpec
from maskgen.errors import MaskgenError

DATASET_JSON = "dataset.json"
SPLITS_FINAL = "splits_final.json"
PREPROCESSED_ENV = "nnUNet_preprocessed"
NNUNET_SEED = 12345  # nnU-Net's generate_crossval_split default
NNUNET_FOLDS = 5
ANISOTROPY_THRESHOLD = 3.0  # nnU-Net's planner
CROP_MULTIPLE, CROP_MIN, CROP_MAX = 16, 16, 128
FILE_ENDINGS = (".nii.gz", ".nii")
STACK_REFUSAL = (
    'channels = "stack" (each channel an image channel with its own features) is not supported: a store case holds '
    "one image channel and the UNet takes one image plus its features. Use channels = \"cases\" (the default: each "
    "channel becomes a case of its own domain, the paper's BraTS protocol), and pick the channels a split uses with "
    "[splits] (e.g. train = [\"t1\", \"t2\"], val = [\"flair\"], test = [\"flair\"])"
)
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class NnunetDataset:
    """What `dataset.json` says (checked)."""

    root: Path
    name: str
    channels: tuple[tuple[int, str], ...]  # (index, channel name) in index order
    labels: tuple[tuple[str, int], ...]  # (name, value) sorted by value, background included
    num_training: int
    file_ending: str

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(name for name, value in self.labels if value != 0)

    @property
    def domains(self) -> tuple[str, ...]:
        """One domain name per channel: the channel name in lower case ([a-z0-9_-]), made unique with the index."""
        names = [re.sub(r"[^a-z0-9_-]+", "_", n.strip().lower()).strip("_") or "channel" for _, n in self.channels]
        return tuple(n if names.count(n) == 1 else f"{n}_{i:04d}" for (i, _), n in zip(self.channels, names))


def is_nnunet_v2_folder(path: str | Path) -> bool:
    p = Path(path).expanduser()
    return p.is_dir() and (p / DATASET_JSON).is_file()


def read_dataset_json(root: str | Path) -> NnunetDataset:
    """Read and check `root/dataset.json`; every problem names the file and the key."""
    root = Path(root).expanduser().resolve()
    path = root / DATASET_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise MaskgenError(f"cannot read {path}: {e}") from None
    except ValueError as e:
        raise MaskgenError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise MaskgenError(f"{path} must hold a JSON object with channel_names, labels, numTraining, file_ending")

    def bad(msg: str) -> MaskgenError:
        return MaskgenError(f"{path}: {msg}")

    return NnunetDataset(root=root, name=root.name, channels=_channels(data, bad), labels=_labels(data, bad),
                         num_training=_num_training(data, bad), file_ending=_file_ending(data, bad))


def _channels(data: dict[str, Any], bad) -> tuple[tuple[int, str], ...]:
    channels = data.get("channel_names", data.get("modality"))  # "modality": the nnU-Net v1 key
    if not isinstance(channels, dict) or not channels:
        raise bad('needs "channel_names", e.g. {"0": "CT"} or {"0": "T1", "1": "FLAIR"}')
    try:
        out = sorted((int(k), str(v)) for k, v in channels.items())
    except ValueError:
        raise bad(f"channel_names keys must be channel numbers \"0\", \"1\", ...; got {sorted(channels)}") from None
    if [i for i, _ in out] != list(range(len(out))):
        raise bad(f"channel_names must number the channels 0..{len(out) - 1}; got {[i for i, _ in out]}")
    return tuple(out)


def _labels(data: dict[str, Any], bad) -> tuple[tuple[str, int], ...]:
    labels = data.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise bad('needs "labels", e.g. {"background": 0, "liver": 1}')
    regions = sorted(k for k, v in labels.items() if isinstance(v, (list, tuple)))
    if regions:
        raise bad(f"labels {regions} are nnU-Net regions (lists of values); maskgen trains one class per label value: "
                  "list each value under its own name")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):
        raise bad(f"labels values must be integers; got {labels}")
    out = sorted(((str(k), int(v)) for k, v in labels.items()), key=lambda kv: kv[1])
    values = [v for _, v in out]
    if values != list(range(len(values))):
        raise bad(f"labels must have the values 0 (background), 1, ..., K once each (as nnU-Net requires); got "
                  f"{values}")
    if len(values) < 2:
        raise bad("labels has no foreground class (only background)")
    return tuple(out)


def _num_training(data: dict[str, Any], bad) -> int:
    n = data.get("numTraining")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise bad(f"numTraining = {n!r} must be the number of training cases (an integer >= 1)")
    return n


def _file_ending(data: dict[str, Any], bad) -> str:
    ending = data.get("file_ending", ".nii.gz")
    if ending not in FILE_ENDINGS:
        raise bad(f"file_ending = {ending!r}: maskgen reads NIfTI ({', '.join(FILE_ENDINGS)}); convert the images, "
                  "e.g. with nnU-Net's SimpleITK reader or `nibabel`")
    return ending


# ------------------------------------------------------------------------------------------------ the files
def channel_files(folder: Path, ds: NnunetDataset) -> dict[str, dict[int, Path]]:
    """case id -> {channel index -> file} of `folder` (files `<case>_<4 digits><file_ending>`)."""
    out: dict[str, dict[int, Path]] = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.name.endswith(ds.file_ending):
            continue
        m = _CHANNEL_FILE.match(path.name[: -len(ds.file_ending)])
        if m:
            out.setdefault(m.group("case"), {})[int(m.group("channel"))] = path
    return out


def _check_channels(files: dict[str, dict[int, Path]], ds: NnunetDataset, folder: Path) -> None:
    wanted = {i for i, _ in ds.channels}
    problems = []
    for case, found in sorted(files.items()):
        missing = sorted(wanted - set(found))
        extra = sorted(set(found) - wanted)
        if missing:
            problems.append(f"{case} lacks " + ", ".join(f"{case}_{i:04d}{ds.file_ending}" for i in missing))
        if extra:
            problems.append(f"{case} has channel(s) {[f'{i:04d}' for i in extra]} that channel_names does not list")
    if problems:
        raise MaskgenError(f"{folder}: " + "; ".join(problems[:10]) + ("" if len(problems) <= 10 else
                           f"; ... ({len(problems)} in all)") + f". dataset.json lists channels "
                           f"{dict((f'{i:04d}', n) for i, n in ds.channels)}")


def training_cases(ds: NnunetDataset) -> dict[str, dict[int, Path]]:
    """The training cases (imagesTr), checked against dataset.json: every channel present, numTraining matches."""
    folder = ds.root / "imagesTr"
    files = channel_files(folder, ds)
    if not files:
        raise MaskgenError(f"{folder} has no images named <case>_0000{ds.file_ending} (nnU-Net v2 layout)")
    _check_channels(files, ds, folder)
    if len(files) != ds.num_training:
        raise MaskgenError(f"{ds.root / DATASET_JSON} says numTraining = {ds.num_training} but {folder} has "
                           f"{len(files)} cases; fix numTraining or the folder")
    return files


# ------------------------------------------------------------------------------------------------ the splits
def splits_file(ds: NnunetDataset, given: str = "") -> Path | None:
    """`given` (relative to the dataset folder), else splits_final.json in the dataset folder, else in
    $nnUNet_preprocessed/<dataset>/; None when there is none."""
    if given:
        path = Path(given).expanduser()
        path = path if path.is_absolute() else ds.root / path
        if not path.is_file():
            raise MaskgenError(f"splits file {path} (set by [layout] splits_json) does not exist")
        return path
    candidates = [ds.root / SPLITS_FINAL]
    if os.environ.get(PREPROCESSED_ENV):
        candidates.append(Path(os.environ[PREPROCESSED_ENV]) / ds.name / SPLITS_FINAL)
    return next((p for p in candidates if p.is_file()), None)


def default_folds(case_ids: list[str]) -> list[dict[str, list[str]]]:
    """The 5 folds nnU-Net makes when it finds no splits_final.json: KFold(5, shuffle=True, random_state=12345)
    over the sorted case ids (scikit-learn, as nnU-Net's `generate_crossval_split`)."""
    from sklearn.model_selection import KFold

    keys = np.sort(np.asarray(case_ids))
    if len(keys) < NNUNET_FOLDS:
        raise MaskgenError(f"{len(keys)} training cases are too few for nnU-Net's {NNUNET_FOLDS}-fold split; write a "
                           f"{SPLITS_FINAL} ([{{\"train\": [...], \"val\": [...]}}]) into the dataset folder")
    folds = KFold(n_splits=NNUNET_FOLDS, shuffle=True, random_state=NNUNET_SEED).split(keys)
    return [{"train": [str(k) for k in keys[tr]], "val": [str(k) for k in keys[va]]} for tr, va in folds]


def read_folds(path: Path) -> list[dict[str, list[str]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MaskgenError(f"cannot read {path}: {e}") from None
    ok = isinstance(data, list) and data and all(
        isinstance(f, dict) and isinstance(f.get("train"), list) and isinstance(f.get("val"), list) for f in data
    )
    if not ok:
        raise MaskgenError(f"{path} must be a list of folds [{{\"train\": [case ids], \"val\": [case ids]}}, ...] "
                           "(nnU-Net's splits_final.json)")
    return [{"train": [str(c) for c in f["train"]], "val": [str(c) for c in f["val"]]} for f in data]


def fold_splits(ds: NnunetDataset, case_ids: list[str], fold: int, given: str = "") -> tuple[dict[str, str], str]:
    """({case id: "train" | "val"} for the fold, a sentence saying where the split comes from)."""
    path = splits_file(ds, given)
    folds = read_folds(path) if path is not None else default_folds(case_ids)
    where = (f"{SPLITS_FINAL} {path}" if path is not None else
             f"nnU-Net's default split (no {SPLITS_FINAL}: KFold({NNUNET_FOLDS}, shuffle, seed {NNUNET_SEED}) over "
             "the sorted case ids)")
    if not 0 <= fold < len(folds):
        raise MaskgenError(f"--fold {fold} does not exist: {where} has folds 0..{len(folds) - 1}")
    chosen = folds[fold]
    unknown = sorted(set(chosen["train"] + chosen["val"]) - set(case_ids))
    if unknown:
        raise MaskgenError(f"fold {fold} of {where} names cases that imagesTr does not have: "
                           + ", ".join(unknown[:10]) + ("" if len(unknown) <= 10 else f" ... ({len(unknown)} in all)"))
    both = sorted(set(chosen["train"]) & set(chosen["val"]))
    if both:
        raise MaskgenError(f"fold {fold} of {where} puts cases in train and val: {', '.join(both[:10])}")
    split = {c: "train" for c in chosen["train"]}
    split.update({c: "val" for c in chosen["val"]})
    return split, f"fold {fold} of {where}"


# ------------------------------------------------------------------------------------------------ discovery
def _cases_of(ds: NnunetDataset, case: str, files: dict[int, Path], label: Path | None, split: str) -> list[Case]:
    single = len(ds.channels) == 1
    return [
        Case(case_id=case if single else f"{case}_{domain}", image=files[index], label=label, domain=domain,
             split=split, subject=case)
        for (index, _), domain in zip(ds.channels, ds.domains)
    ]


def _test_cases(ds: NnunetDataset, include_unlabeled: bool) -> list[Case]:
    images, labels = ds.root / "imagesTs", ds.root / "labelsTs"
    files = channel_files(images, ds)
    if not files or not (labels.is_dir() or include_unlabeled):
        return []
    _check_channels(files, ds, images)
    out = []
    for case, found in sorted(files.items()):
        label = labels / f"{case}{ds.file_ending}" if labels.is_dir() else None
        out.extend(_cases_of(ds, case, found, label, "test"))
    return out


def discover(root: Path, opts: dict[str, Any]) -> list[Case]:
    """Channel cases of the training folder (split by the fold; cases outside the fold get split "") and of a
    labelled test folder."""
    if opts["channels"] != "cases":
        raise MaskgenError(STACK_REFUSAL if opts["channels"] == "stack" else
                           f"[layout] channels = {opts['channels']!r} must be \"cases\"")
    ds = read_dataset_json(root)
    train = training_cases(ds)
    split, _ = fold_splits(ds, sorted(train), int(opts["fold"]), str(opts["splits_json"]))
    cases: list[Case] = []
    for case, found in sorted(train.items()):
        label = ds.root / "labelsTr" / f"{case}{ds.file_ending}"
        cases.extend(_cases_of(ds, case, found, label, split.get(case, "")))
    cases.extend(_test_cases(ds, bool(opts["include_unlabeled"])))
    if opts["csv"]:
        from maskgen.data.generic_layouts import apply_domain_csv

        cases = apply_domain_csv(cases, ds.root / str(opts["csv"]), None)
    return cases


def summary(root: Path, opts: dict[str, Any]) -> list[str]:
    """Lines for `maskgen verify`: channels and how they are used, and where the train/val split comes from."""
    ds = read_dataset_json(root)
    names = ", ".join(f"{i:04d} {n} -> {d}" for (i, n), d in zip(ds.channels, ds.domains))
    if len(ds.channels) == 1:
        channel_line = f"channels: 1 ({names}); the case id is the nnU-Net case id"
    else:
        channel_line = (f"channels: {len(ds.channels)} ({names}); each channel is its own case <case>_<domain> of a "
                        "domain named after the channel (not stacked as image channels: not supported)")
    _, where = fold_splits(ds, sorted(training_cases(ds)), int(opts["fold"]), str(opts["splits_json"]))
    return [f"nnU-Net v2 dataset {ds.name}: {DATASET_JSON} with {ds.num_training} training cases",
            channel_line, f"train / val: {where}; test: imagesTs with labelsTs (when present)"]


# ------------------------------------------------------------------------------------------------ planning
def _ras_spacing_and_shape(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(voxel spacing, shape) along the RAS axes x, y, z, from the header only."""
    from maskgen.data.nifti import load_header, spatial_shape

    img = load_header(path)
    affine = np.asarray(img.affine, dtype=np.float64)[:3, :3]
    sizes = np.sqrt((affine**2).sum(axis=0))
    shape = np.asarray(spatial_shape(img)[:3], dtype=np.float64)
    axis = np.abs(affine).argmax(axis=0)  # the RAS axis each voxel axis runs along
    if sorted(axis.tolist()) != [0, 1, 2]:  # oblique beyond 45 degrees: keep the file's order
        axis = np.arange(3)
    spacing, ras_shape = np.empty(3), np.empty(3)
    spacing[axis], ras_shape[axis] = sizes, shape
    return spacing, ras_shape


def target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> tuple[np.ndarray, str]:
    """nnU-Net's planner rule on (N, 3) spacings and shapes: the median spacing; when the coarsest axis is more than
    3x coarser than the others and has 3x fewer voxels, its 10th percentile instead."""
    target = np.percentile(spacings, 50, axis=0)
    size = np.percentile(shapes, 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(3) if i != worst]
    aniso_spacing = target[worst] > ANISOTROPY_THRESHOLD * max(target[i] for i in others)
    aniso_voxels = size[worst] * ANISOTROPY_THRESHOLD < min(size[i] for i in others)
    rule = f"median spacing of the {len(spacings)} training cases (nnU-Net's planner)"
    if aniso_spacing and aniso_voxels:
        coarse = float(np.percentile(spacings[:, worst], 10))
        finest_other = max(target[i] for i in others)
        target[worst] = coarse if coarse >= finest_other else finest_other + 1e-5
        rule += f"; anisotropic: axis {'xyz'[worst]} at the 10th percentile of its spacings"
    return target, rule


def crop_size(shapes: np.ndarray, spacings: np.ndarray, target: np.ndarray) -> tuple[list[int], str]:
    """The median training shape at the target spacing, rounded down to a multiple of 16, within 16..128 per axis."""
    median = np.percentile(shapes * spacings / target, 50, axis=0)
    crop = [int(min(CROP_MAX, max(CROP_MIN, (int(m) // CROP_MULTIPLE) * CROP_MULTIPLE))) for m in median]
    rule = (f"median shape at that spacing ({' x '.join(f'{m:.0f}' for m in median)}) rounded down to a multiple of "
            f"{CROP_MULTIPLE}, within {CROP_MIN}..{CROP_MAX} per axis")
    return crop, rule


def pipeline_table(root: str | Path, fold: int | None = None) -> dict[str, Any]:
    """The pipeline of an nnU-Net v2 folder as a parsed-TOML table (see the module docstring): read by
    `maskgen.data.pipeline.parse_pipeline` like a pipeline file."""
    ds = read_dataset_json(root)
    train = training_cases(ds)
    geometry = [_ras_spacing_and_shape(files[0]) for files in train.values()]
    spacings = np.array([g[0] for g in geometry])
    shapes = np.array([g[1] for g in geometry])
    spacing, spacing_rule = target_spacing(spacings, shapes)
    crop, crop_rule = crop_size(shapes, spacings, spacing)
    spacing = [round(float(s), 5) for s in spacing]
    rules = {d: ("ct" if name.strip().upper() == "CT" else "minmax") for (_, name), d in zip(ds.channels, ds.domains)}
    return {
        "name": ds.name,
        "description": (f"nnU-Net v2 dataset {ds.name} ({DATASET_JSON}); spacing (x, y, z) "
                        f"{' x '.join(f'{s:g}' for s in spacing)} mm: {spacing_rule}; crop (x, y, z) "
                        f"{' x '.join(map(str, crop))}: {crop_rule}"),
        "spacing": spacing,
        "crop_size": crop,
        "normalization": {**rules, "default": "minmax"},
        "classes": list(ds.classes),
        "allow_flips": True,  # nnU-Net mirrors along every axis by default
        "default_data_root": str(ds.root),
        "layout": {"kind": "nnunet_v2", "fold": 0 if fold is None else int(fold)},
    }


SPECS: dict[str, LayoutSpec] = {
    "nnunet_v2": LayoutSpec(
        discover=discover,
        defaults={"fold": 0, "splits_json": "", "channels": "cases", "csv": "", "include_unlabeled": False},
        explicit_splits=True,
        expected=f"an nnU-Net v2 raw dataset: {DATASET_JSON} + imagesTr/<case>_0000.nii.gz (one file per channel) + "
        "labelsTr/<case>.nii.gz [+ imagesTs/labelsTs]",
        subject_rule="the nnU-Net case id (a case's channels share one split)",
        summary=summary,
        unassigned="drop",
    ),
}

__all__ = ["NnunetDataset", "read_dataset_json", "is_nnunet_v2_folder", "pipeline_table", "default_folds",
           "target_spacing", "crop_size", "SPECS", "STACK_REFUSAL"]
