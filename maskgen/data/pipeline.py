"""Dataset pipelines: one declarative TOML file per dataset, read into a frozen `Pipeline`.

A pipeline says where the cases are (layout + `[layout]` options), which domain each case belongs to and which
cases form train / val / test (`[splits]`), the target spacing and crop size (x, y, z), the intensity normalisation,
the class names and whether flips / rot90 are allowed. The schema is documented in the header of every shipped
file under `pipelines/` and in docs/ARCHITECTURE.md (section "data").
"""

from __future__ import annotations

import importlib.resources
import math
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from maskgen.data import nnunet_v2
from maskgen.data.intensity import DEFAULT_CT_WINDOW, DEFAULT_PERCENTILES, NORMALIZATIONS, IntensityRule
from maskgen.data.layout_registry import LAYOUTS, check_layout_options
from maskgen.errors import MaskgenError

SPLITS = ("train", "val", "test")

_TOP_LEVEL_KEYS = {
    "name",
    "description",
    "layout",
    "spacing",
    "crop_size",
    "normalization",
    "ct_window",
    "percentiles",
    "classes",
    "allow_flips",
    "default_data_root",
    "label_map",
    "binarize_labels",
    "splits",
}


def freeze(value: Any) -> Any:
    """A hashable, JSON-round-trip-stable form: lists/tuples -> tuples, dicts -> sorted tuples of (key, value)."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


@dataclass(frozen=True)
class Pipeline:
    """One dataset's declaration (see the module docstring); built by `load_pipeline`."""

    name: str
    layout: str
    spacing: tuple[float, float, float]
    crop_size: tuple[int, int, int]
    normalization: str  # the rule of every domain that `normalization_by_domain` does not name
    ct_window: tuple[float, float] = DEFAULT_CT_WINDOW
    classes: tuple[str, ...] = ()
    allow_flips: bool = True
    options: tuple[tuple[str, Any], ...] = ()
    description: str = ""
    source: str = ""
    splits: tuple[tuple[str, Any], ...] = ()
    label_map: tuple[tuple[int, int], ...] = ()
    binarize_labels: bool = False
    default_data_root: str | None = None
    normalization_by_domain: tuple[tuple[str, str], ...] = ()  # (domain, rule) pairs of the [normalization] table
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES  # of the "percentile" rule

    def __post_init__(self) -> None:
        # Keep equality and hashing stable across to_dict/from_dict (JSON turns tuples into lists).
        object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))
        object.__setattr__(self, "crop_size", tuple(int(v) for v in self.crop_size))
        object.__setattr__(self, "ct_window", tuple(float(v) for v in self.ct_window))
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "options", freeze(dict(self.options)))
        object.__setattr__(self, "splits", freeze(dict(self.splits)))
        object.__setattr__(self, "label_map", tuple(sorted((int(a), int(b)) for a, b in self.label_map)))
        object.__setattr__(self, "normalization_by_domain",
                           tuple(sorted((str(d), str(r)) for d, r in self.normalization_by_domain)))
        object.__setattr__(self, "percentiles", tuple(float(v) for v in self.percentiles))

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return tuple(reversed(self.spacing))  # type: ignore[return-value]

    @property
    def crop_zyx(self) -> tuple[int, int, int]:
        return tuple(reversed(self.crop_size))  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        """Number of label values including background (K + 1)."""
        return len(self.classes) + 1

    def intensity_rule(self, domain: str | None = None) -> IntensityRule:
        """The normalisation rule of a domain (the default rule for None or an unlisted domain)."""
        by_domain = dict(self.normalization_by_domain)
        rule = self.normalization if domain is None else by_domain.get(domain, self.normalization)
        return IntensityRule(rule, window=self.ct_window, percentiles=self.percentiles)

    def normalization_spec(self) -> dict[str, Any]:
        """Every rule with its parameters (part of a store's fingerprint): default, per domain, window, percentiles."""
        return {
            "default": self.intensity_rule().describe(),
            "domains": {d: self.intensity_rule(d).describe() for d, _ in self.normalization_by_domain},
        }

    def describe_normalization(self) -> str:
        """`ct: ct [-1024, 1024]; mri: minmax; other domains: minmax` (or just the rule when there is one)."""
        spec = self.normalization_spec()
        if not spec["domains"]:
            return spec["default"]
        return "; ".join([f"{d}: {r}" for d, r in spec["domains"].items()] + [f"other domains: {spec['default']}"])

    def option(self, key: str, default: Any = None) -> Any:
        """A `[layout]` setting (frozen: lists are tuples, tables are tuples of (key, value) pairs)."""
        return dict(self.options).get(key, default)

    def split_option(self, key: str, default: Any = None) -> Any:
        """A `[splits]` setting (frozen like `option`)."""
        return dict(self.splits).get(key, default)


def available_pipelines() -> list[str]:
    """Names of the pipelines shipped with maskgen (usable as `--dataset NAME`)."""
    root = importlib.resources.files("maskgen.pipelines")
    return sorted(p.name[: -len(".toml")] for p in root.iterdir() if p.name.endswith(".toml"))


def pipeline_path(name_or_path: str | Path) -> Path:
    """The TOML file behind `--dataset`: an existing file path, or the name of a shipped pipeline."""
    text = str(name_or_path)
    candidate = Path(text).expanduser()
    looks_like_path = text.endswith(".toml") or "/" in text or "\\" in text
    if candidate.is_file():
        return candidate
    if candidate.is_dir():
        raise MaskgenError(f"{text} is a folder without {nnunet_v2.DATASET_JSON}: pass an nnU-Net v2 dataset folder "
                           "(with dataset.json), a pipeline .toml file, or one of: " + ", ".join(available_pipelines()))
    if looks_like_path:
        raise MaskgenError(f"pipeline file {text} does not exist; pass an existing .toml file, an nnU-Net v2 dataset "
                           f"folder, or one of: {', '.join(available_pipelines())}")
    shipped = importlib.resources.files("maskgen.pipelines") / f"{text}.toml"
    if not shipped.is_file():
        raise MaskgenError(
            f"unknown dataset {text!r}: shipped pipelines are {', '.join(available_pipelines())}; "
            "or pass --dataset path/to/pipeline.toml or path/to/Dataset123_Name (nnU-Net v2)"
        )
    return Path(str(shipped))


def load_pipeline(name_or_path: str | Path, fold: int | None = None) -> Pipeline:
    """Read and check a pipeline: `"amos"` (shipped with maskgen), `"path/to/file.toml"`, or an nnU-Net v2 dataset
    folder `"path/to/Dataset123_X"` (its pipeline derived from dataset.json and the images, see
    `maskgen.data.nnunet_v2`). `fold` (`--fold`) picks the nnU-Net fold of an nnunet_v2 layout."""
    if nnunet_v2.is_nnunet_v2_folder(name_or_path):
        folder = Path(name_or_path).expanduser().resolve()
        table = nnunet_v2.pipeline_table(folder, fold)
        return parse_pipeline(table, source=str(folder / nnunet_v2.DATASET_JSON), default_name=folder.name)
    path = pipeline_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise MaskgenError(f"cannot read pipeline file {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise MaskgenError(f"pipeline file {path} is not valid TOML: {e}") from None
    pipeline = parse_pipeline(data, source=str(path), default_name=path.name.removesuffix(".toml"))
    if fold is None:
        return pipeline
    if pipeline.layout != "nnunet_v2":
        raise MaskgenError(f"--fold {fold}: folds belong to nnU-Net v2 datasets (layout nnunet_v2); pipeline "
                           f"{pipeline.name!r} has layout {pipeline.layout!r}, whose splits come from its own rule")
    return replace(pipeline, options=freeze({**dict(pipeline.options), "fold": int(fold)}))


def parse_pipeline(data: dict[str, Any], source: str = "<memory>", default_name: str = "dataset") -> Pipeline:
    """Build a `Pipeline` from a parsed TOML table, with messages naming the file and the bad value."""

    def bad(msg: str) -> MaskgenError:
        return MaskgenError(f"pipeline {source}: {msg}")

    data = dict(data)
    layout, options = _parse_layout(data, bad)
    unknown = sorted(set(data) - _TOP_LEVEL_KEYS)
    if unknown:
        raise bad(f"unknown key(s) {unknown}; allowed: {sorted(_TOP_LEVEL_KEYS)}")
    classes = _parse_classes(data.get("classes"), bad)
    normalization, by_domain = _parse_normalization(data.get("normalization"), bad)
    splits = data.get("splits", {})
    if not isinstance(splits, dict):
        raise bad("[splits] must be a table")
    _check_splits(splits, bad)
    pipeline = Pipeline(
        name=_string(data, "name", default_name, bad, "a non-empty string", allow_empty=False),
        layout=layout,
        spacing=_triple(data, "spacing", float, bad, required=True),  # type: ignore[arg-type]
        crop_size=_triple(data, "crop_size", int, bad, required=True),  # type: ignore[arg-type]
        normalization=normalization,
        normalization_by_domain=by_domain,
        ct_window=_parse_pair(data, "ct_window", list(DEFAULT_CT_WINDOW), bad, "Hounsfield units"),
        percentiles=_parse_percentiles(data, bad),
        classes=classes,
        allow_flips=_flag(data, "allow_flips", True, bad),
        options=freeze(options),
        description=_string(data, "description", "", bad, "a string"),
        source=source,
        splits=freeze(splits),
        label_map=_parse_label_map(data.get("label_map", {}), len(classes), bad),
        binarize_labels=_parse_binarize(data, classes, bad),
        default_data_root=_parse_default_root(data.get("default_data_root"), bad),
    )
    check_layout_options(layout, dict(pipeline.options), f"pipeline {pipeline.source or pipeline.name} [layout]")
    return pipeline


def _parse_layout(data: dict[str, Any], bad) -> tuple[str, dict[str, Any]]:
    """(kind, options). TOML cannot hold both `layout = "kind"` and a `[layout]` table, so the layout is either a plain
    string (no options) or a table whose `kind` names it and whose other keys are the layout's options."""
    value = data.get("layout")
    options: dict[str, Any] = {}
    if isinstance(value, dict):
        options = dict(value)
        value = options.pop("kind", None)
        if value is None:
            raise bad("the [layout] table needs `kind = ...`, one of " + ", ".join(LAYOUTS))
        data["layout"] = value
    if value not in LAYOUTS:
        raise bad(f"layout kind {value!r} is not one of {', '.join(LAYOUTS)}")
    return value, options


def _string(data: dict[str, Any], key: str, default: str, bad, what: str, allow_empty: bool = True) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or (not allow_empty and not value):
        raise bad(f"{key} = {value!r} must be {what}")
    return value


def _flag(data: dict[str, Any], key: str, default: bool, bad) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise bad(f"{key} = {value!r} must be true or false")
    return value


def _parse_normalization(value: Any, bad) -> tuple[str, tuple[tuple[str, str], ...]]:
    """(default rule, ((domain, rule), ...)) from `normalization = "rule"` or a `[normalization]` table of
    domain = "rule" entries plus `default = "rule"` for the other domains (min-max when the table has no default)."""
    choices = ", ".join(NORMALIZATIONS)
    if isinstance(value, str):
        if value not in NORMALIZATIONS:
            raise bad(f"normalization = {value!r} must be one of {choices}")
        return value, ()
    if not isinstance(value, dict) or not value:
        raise bad(f"normalization = {value!r} must be one of {choices}, or a [normalization] table of "
                  'domain = "rule" entries, e.g. ct = "ct", mri = "minmax", default = "minmax"')
    for domain, rule in value.items():
        if rule not in NORMALIZATIONS:
            raise bad(f"[normalization] {domain} = {rule!r} must be one of {choices}")
    table = dict(value)
    default = table.pop("default", "minmax")
    return default, tuple(table.items())


def _parse_pair(data: dict[str, Any], key: str, default: list, bad, unit: str) -> tuple[float, float]:
    pair = data.get(key, default)
    if (
        not isinstance(pair, list)
        or len(pair) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pair)
        or not pair[0] < pair[1]
    ):
        raise bad(f"{key} = {pair!r} must be [low, high] with low < high ({unit})")
    return float(pair[0]), float(pair[1])


def _parse_percentiles(data: dict[str, Any], bad) -> tuple[float, float]:
    low, high = _parse_pair(data, "percentiles", list(DEFAULT_PERCENTILES), bad, "percent")
    if low < 0 or high > 100:
        raise bad(f"percentiles = {data['percentiles']!r} must lie within [0, 100]")
    return low, high


def _parse_classes(classes: Any, bad) -> tuple[str, ...]:
    if (
        not isinstance(classes, list)
        or not classes
        or not all(isinstance(c, str) and c.strip() for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise bad(f"classes = {classes!r} must be a non-empty list of distinct foreground names (label = index + 1)")
    if len(classes) > 254:
        raise bad(f"{len(classes)} classes do not fit uint8 labels (at most 254 foreground classes)")
    return tuple(classes)


def _parse_default_root(value: Any, bad) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise bad(f"default_data_root = {value!r} must be a non-empty string (a folder path)")
    return value


def _parse_binarize(data: dict[str, Any], classes: tuple[str, ...], bad) -> bool:
    binarize = _flag(data, "binarize_labels", False, bad)
    if binarize and len(classes) != 1:
        raise bad(f"binarize_labels = true needs exactly one class, got classes = {list(classes)!r}")
    return binarize


def _parse_label_map(table: Any, num_classes: int, bad) -> tuple[tuple[int, int], ...]:
    if not isinstance(table, dict):
        raise bad("label_map must be a table of \"raw value\" = new value, e.g. [label_map] \"15\" = 13")
    out: list[tuple[int, int]] = []
    for key, value in table.items():
        try:
            raw = int(key)
        except ValueError:
            raise bad(f"label_map key {key!r} is not an integer label value") from None
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= num_classes:
            raise bad(f"label_map \"{key}\" = {value!r} must map to 0..{num_classes} (0 = background)")
        out.append((raw, value))
    return tuple(out)


def _triple(data: dict, key: str, kind: type, bad, required: bool) -> tuple:
    value = data.get(key)
    if value is None and not required:
        return ()
    ok = (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        and all(v > 0 and math.isfinite(v) for v in value)
        and (kind is float or all(float(v).is_integer() for v in value))
    )
    if not ok:
        what = "positive numbers (mm)" if kind is float else "positive integers (voxels)"
        raise bad(f"{key} = {value!r} must be [x, y, z] of three {what}")
    return tuple(kind(v) for v in value)


_SPLIT_KEYS = {"train", "val", "test", "proportions", "seed"}


def _check_splits(splits: dict[str, Any], bad) -> None:
    unknown = sorted(set(splits) - _SPLIT_KEYS)
    if unknown:
        raise bad(f"unknown [splits] key(s) {unknown}; allowed: {sorted(_SPLIT_KEYS)}")
    for split in SPLITS:
        if split in splits:
            domains = splits[split]
            if not isinstance(domains, list) or not all(isinstance(d, str) and d for d in domains):
                raise bad(f"[splits] {split} = {domains!r} must be a list of domain names")
    if "seed" in splits and (not isinstance(splits["seed"], int) or isinstance(splits["seed"], bool)):
        raise bad(f"[splits] seed = {splits['seed']!r} must be an integer")
    proportions = splits.get("proportions", {})
    if not isinstance(proportions, dict):
        raise bad("[splits] proportions must be a table like { train = 340, val = 48, test = 96 }")
    for key, value in proportions.items():
        if key not in SPLITS:
            raise bad(f"[splits] proportions has unknown split {key!r}; use train, val, test")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or not math.isfinite(value):
            raise bad(f"[splits] proportions {key} = {value!r} must be a number >= 0")
    has_domains = any(s in splits for s in SPLITS)
    if ("proportions" in splits or "seed" in splits) and not has_domains:
        raise bad("[splits] proportions/seed need the domain lists train = [...], val = [...], test = [...]")
    if has_domains and "train" not in splits:
        raise bad("[splits] lists domains for val/test but not `train = [...]`")


def split_rule(pipeline: Pipeline) -> dict[str, Any] | None:
    """The domain-based split rule of `[splits]`, or None when the layout's own (explicit) splits apply."""
    splits = dict(pipeline.splits)
    if not any(s in splits for s in SPLITS):
        return None
    return {
        "domains": {s: tuple(splits.get(s, ())) for s in SPLITS},
        "proportions": {s: float(v) for s, v in dict(splits.get("proportions", ())).items()},
        "seed": int(splits.get("seed", 0)),
    }


__all__ = ["Pipeline", "load_pipeline", "available_pipelines", "parse_pipeline", "pipeline_path", "split_rule",
           "LAYOUTS", "SPLITS", "freeze"]
