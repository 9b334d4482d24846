"""Intensity normalisation to [0, 1], one rule per imaging domain.

Rules (the paper's code windows CT and min-max scales everything else):
  ct          clip to the CT window (Hounsfield units, default [-1024, 1024]), then scale the window to [0, 1]
  minmax      scale the volume's own [min, max] to [0, 1]
  percentile  clip to the p_low / p_high percentiles (default 0.5 / 99.5) of the foreground-ish voxels (those above the
              volume's minimum, i.e. not the background plateau), then scale that range to [0, 1]: robust to a few
              very bright voxels in real MRI; the background stays 0
A pipeline names the rule of each domain (`[normalization]` table, see `maskgen.data.pipeline`); `IntensityRule` is the
rule one case gets, `normalize` applies it and returns the record kept with the case in the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

NORMALIZATIONS = ("ct", "minmax", "percentile")
DEFAULT_CT_WINDOW = (-1024.0, 1024.0)
DEFAULT_PERCENTILES = (0.5, 99.5)
_MIN_FOREGROUND_FRACTION = 0.01  # fewer voxels above the minimum than this: percentiles of the whole volume


@dataclass(frozen=True)
class IntensityRule:
    """One normalisation rule with its parameters (`window` for ct, `percentiles` for percentile)."""

    rule: str
    window: tuple[float, float] | None = None
    percentiles: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.rule not in NORMALIZATIONS:
            raise ValueError(f"normalisation rule {self.rule!r} is not one of {', '.join(NORMALIZATIONS)}")
        if self.rule == "ct" and self.window is None:
            object.__setattr__(self, "window", DEFAULT_CT_WINDOW)
        if self.rule == "percentile" and self.percentiles is None:
            object.__setattr__(self, "percentiles", DEFAULT_PERCENTILES)
        if self.rule != "ct":
            object.__setattr__(self, "window", None)
        if self.rule != "percentile":
            object.__setattr__(self, "percentiles", None)

    def describe(self) -> str:
        """`ct [-1024, 1024]`, `minmax` or `percentile [0.5, 99.5]`."""
        params = self.window if self.rule == "ct" else self.percentiles
        return self.rule if params is None else f"{self.rule} [{params[0]:g}, {params[1]:g}]"

    def to_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule}
        if self.window is not None:
            out["window"] = [float(v) for v in self.window]
        if self.percentiles is not None:
            out["percentiles"] = [float(v) for v in self.percentiles]
        return out


def describe_record(record: Any) -> str:
    """`describe()` of the rule in a case's stored record (`normalize`'s second value); "" when there is none."""
    if not isinstance(record, dict) or record.get("rule") not in NORMALIZATIONS:
        return ""
    window, percentiles = record.get("window"), record.get("percentiles")
    return IntensityRule(record["rule"], window=None if window is None else tuple(window),
                         percentiles=None if percentiles is None else tuple(percentiles)).describe()


def input_range(image: np.ndarray, rule: IntensityRule) -> tuple[float, float]:
    """The input values that the rule maps to 0 and 1 for this image."""
    if rule.rule == "ct":
        assert rule.window is not None
        return float(rule.window[0]), float(rule.window[1])
    lo, hi = float(np.min(image)), float(np.max(image))
    if rule.rule == "minmax":
        return lo, hi
    assert rule.percentiles is not None
    values = np.asarray(image).ravel()
    foreground = values[values > lo]
    if foreground.size < _MIN_FOREGROUND_FRACTION * values.size:
        foreground = values
    p_lo, p_hi = np.percentile(foreground, rule.percentiles)
    return float(p_lo), float(p_hi)  # the background plateau (<= p_lo) maps to 0


def normalize(image: np.ndarray, rule: IntensityRule) -> tuple[np.ndarray, dict[str, Any]]:
    """(image clipped to the rule's range and scaled to [0, 1] as float32, record {rule, params, range}).

    A constant image (range of zero width) becomes all zeros; `maskgen verify` warns about such images.
    """
    from monai.transforms import ScaleIntensityRange

    lo, hi = input_range(image, rule)
    record = {**rule.to_record(), "range": [lo, hi]}
    if not hi > lo:
        return np.zeros(np.shape(image), dtype=np.float32), record
    out = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True, dtype=np.float32)(image)
    return np.asarray(out.numpy() if hasattr(out, "numpy") else out, dtype=np.float32), record
