"""Per-case, per-class segmentation metrics and an nnU-Net-style `summary.json`.

For every case and foreground class (label value 1..K):
- `TP`, `FP`, `FN`, `TN` voxel counts, `n_pred` = TP + FP, `n_ref` = TP + FN;
- `Dice` = `maskgen.train.dice.dice_per_class` (the run's `empty_class` convention) and `IoU` = TP / (TP + FP + FN)
  with the same convention (NaN where Dice is NaN);
- optionally `HD95` (95th percentile Hausdorff distance, mm) and `NSD` (normalised surface Dice at a tolerance of
  `nsd_tolerance_mm`), both MONAI (`compute_hausdorff_distance`, `compute_surface_dice`) with the store's voxel
  spacing, so distances are in millimetres on the store's resampled grid. HD95 is NaN where the prediction or the
  reference is empty (not defined); NSD is 0 where exactly one of them is empty, NaN where both are, and follows
  the `empty_class` convention where the reference is empty.

`summary.json` keeps nnU-Net v2's layout (`metric_per_case[i]["metrics"][label][metric]`, `mean[label][metric]`,
`foreground_mean[metric]`) so tools written for nnU-Net read it, and adds `case_id` / `domain` per case,
`mean_by_domain`, `foreground_mean_by_domain`, `labels` (label value -> class name) and the settings used. Means are
over the cases with a finite value (NaN cases skipped, as nnU-Net's `nanmean`); the foreground mean is the mean over
classes of the class means; missing values are written as null.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from maskgen.errors import OptionError

METRICS = ("dice", "hd95", "nsd")
COUNTS = ("TP", "FP", "FN", "TN", "n_pred", "n_ref")
DEFAULT_NSD_TOLERANCE_MM = 2.0


def parse_metrics(text: str | Sequence[str]) -> tuple[str, ...]:
    """`dice,hd95,nsd` -> ("dice", "hd95", "nsd"); Dice is always computed. OptionError naming a bad entry."""
    names = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    for n in names:
        if n not in METRICS:
            raise OptionError("metrics", n, f"is not one of {', '.join(METRICS)} (e.g. dice,hd95,nsd)")
    return tuple(m for m in METRICS if m in names or m == "dice")


def check_tolerance(tolerance_mm: float) -> float:
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise OptionError("nsd_tolerance", tolerance_mm, "must be a finite distance >= 0 in mm")
    return float(tolerance_mm)


@dataclass(frozen=True)
class CaseMetrics:
    """All metrics of one case: `values[label][metric]` with labels "1".."K" (nnU-Net's keys)."""

    case_id: str
    domain: str
    values: dict[str, dict[str, float]]

    def dice(self) -> tuple[float, ...]:
        return tuple(self.values[k]["Dice"] for k in sorted(self.values, key=int))


def case_metrics(pred: np.ndarray, ref: np.ndarray, num_foreground: int, empty_class: str = "ignore",
                 metrics: Sequence[str] = ("dice",), spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
                 nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> dict[str, dict[str, float]]:
    """{label: {metric: value}} for labels "1".."K" of two (Z, Y, X) integer label maps (see the module docstring)."""
    from maskgen.train.dice import dice_per_class

    pred, ref = np.asarray(pred), np.asarray(ref)
    dice = dice_per_class(pred, ref, num_foreground, empty_class)
    out: dict[str, dict[str, float]] = {}
    for c in range(1, num_foreground + 1):
        p, r = pred == c, ref == c
        tp, fp, fn = int(np.count_nonzero(p & r)), int(np.count_nonzero(p & ~r)), int(np.count_nonzero(~p & r))
        row: dict[str, float] = {"Dice": float(dice[c - 1]),
                                 "IoU": math.nan if math.isnan(dice[c - 1]) else tp / (tp + fp + fn),
                                 "TP": tp, "FP": fp, "FN": fn, "TN": int(p.size - tp - fp - fn),
                                 "n_pred": tp + fp, "n_ref": tp + fn}
        if "hd95" in metrics:
            row["HD95"] = _hd95(p, r, spacing_zyx)
        if "nsd" in metrics:
            row["NSD"] = _nsd(p, r, spacing_zyx, nsd_tolerance_mm, empty_class)
        out[str(c)] = row
    return out


def _binary(mask: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(mask))[None, None]


def _hd95(p: np.ndarray, r: np.ndarray, spacing: Sequence[float]) -> float:
    from monai.metrics import compute_hausdorff_distance

    if not p.any() or not r.any():
        return math.nan  # not defined without both surfaces
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI 1.5+ deprecation inside its own helpers
        d = compute_hausdorff_distance(_binary(p), _binary(r), include_background=True, percentile=95,
                                       spacing=[float(s) for s in spacing])
    return float(d[0, 0])


def _nsd(p: np.ndarray, r: np.ndarray, spacing: Sequence[float], tolerance: float, empty_class: str) -> float:
    from monai.metrics import compute_surface_dice

    has_p, has_r = bool(p.any()), bool(r.any())
    if not has_r:
        return 0.0 if has_p and empty_class == "zero" else math.nan
    if not has_p:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        d = compute_surface_dice(_binary(p), _binary(r), [float(tolerance)], include_background=True,
                                 spacing=[float(s) for s in spacing])
    return float(d[0, 0])


def _mean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan


def aggregate(cases: Sequence[CaseMetrics]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """(mean[label][metric] over cases, foreground_mean[metric] over the class means)."""
    if not cases:
        return {}, {}
    labels = sorted(cases[0].values, key=int)
    names = list(cases[0].values[labels[0]])
    mean = {k: {m: _mean([c.values[k][m] for c in cases]) for m in names} for k in labels}
    foreground = {m: _mean([mean[k][m] for k in labels]) for m in names}
    return mean, foreground


def summary_document(cases: Sequence[CaseMetrics], classes: Sequence[str], settings: dict[str, Any]) -> dict[str, Any]:
    """The `summary.json` document (nnU-Net v2 keys plus maskgen's; JSON-safe: NaN -> null)."""
    mean, foreground = aggregate(cases)
    domains: dict[str, list[CaseMetrics]] = {}
    for c in cases:
        domains.setdefault(c.domain, []).append(c)
    by_domain = {d: aggregate(cs) for d, cs in domains.items()}
    doc = {
        **settings,
        "labels": {str(i + 1): name for i, name in enumerate(classes)},
        "metric_per_case": [{"case_id": c.case_id, "domain": c.domain, "metrics": c.values} for c in cases],
        "mean": mean,
        "foreground_mean": foreground,
        "mean_by_domain": {d: m for d, (m, _) in by_domain.items()},
        "foreground_mean_by_domain": {d: f for d, (_, f) in by_domain.items()},
    }
    return _json_safe(doc)


def _json_safe(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def distance_table(cases: Sequence[CaseMetrics], classes: Sequence[str],
                   metrics: Sequence[str]) -> tuple[list[str], list[list[str]]] | None:
    """Rows: each class then the foreground mean; columns: mean HD95 (mm) and/or mean NSD over cases (None when
    neither was computed)."""
    shown = [(m, name) for m, name in (("hd95", "HD95"), ("nsd", "NSD")) if m in metrics]
    if not shown or not cases:
        return None
    mean, foreground = aggregate(cases)
    header = ["class"] + [("HD95 (mm)" if m == "hd95" else "NSD") for m, _ in shown]
    rows = [[cls] + [_fmt(mean[str(i + 1)][name], m) for m, name in shown] for i, cls in enumerate(classes)]
    rows.append(["foreground mean"] + [_fmt(foreground[name], m) for m, name in shown])
    return header, rows


def _fmt(v: float, metric: str) -> str:
    if not math.isfinite(v):
        return "-"
    return f"{v:.2f}" if metric == "hd95" else f"{v * 100:.1f}"
