"""Per-case Dice records and the paper's summary: mean and standard error over cases.

Conventions:
- Dice is computed for every foreground class 1..K of the label map (background is not scored) by
  `maskgen.train.dice.dice_per_class` (the same function validation uses). A class that is not scored is NaN:
  under `empty_class="ignore"` (default, the paper's code) every class absent from the reference, under "zero"
  (nnU-Net) only a class absent from both maps (a false positive on an absent class then scores 0).
- NaN values are left out of every mean. A case's Dice is the mean over its scored classes (NaN if none).
- Summaries are the mean over cases and its standard error, sample standard deviation (ddof=1) / sqrt(n), where n
  counts the cases with a finite value; with a single case the standard error is NaN ("not estimable").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np


def case_mean(dice: Sequence[float] | np.ndarray) -> float:
    """A case's Dice: the mean over its scored (finite) classes; NaN when no class is scored."""
    arr = np.asarray(dice, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan


@dataclass(frozen=True)
class Stat:
    """Mean and standard error over the finite values of a sample; n is how many were finite."""

    mean: float
    se: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {"mean": _json_float(self.mean), "se": _json_float(self.se), "n": self.n}

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """'67.5 (0.9)' as the paper prints Dice (x100); '-' when there is nothing to report."""
        if not math.isfinite(self.mean):
            return "-"
        se = f"{self.se * scale:.{digits}f}" if math.isfinite(self.se) else "-"
        return f"{self.mean * scale:.{digits}f} ({se})"


def mean_se(values: Iterable[float]) -> Stat:
    """Mean and standard error (ddof=1) of the finite values; NaN mean when none, NaN se when only one."""
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    n = int(arr.size)
    if n == 0:
        return Stat(math.nan, math.nan, 0)
    if n == 1:
        return Stat(float(arr[0]), math.nan, 1)
    return Stat(float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(n)), n)


@dataclass(frozen=True)
class CaseDice:
    """Dice of one case: one value per foreground class (NaN where the class is absent in both maps)."""

    case_id: str
    domain: str
    dice: tuple[float, ...]

    @property
    def mean(self) -> float:
        """Mean over the scored classes; NaN when no class is scored."""
        return case_mean(self.dice)

    def as_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "domain": self.domain,
            "mean": _json_float(self.mean),
            "dice": {name: _json_float(v) for name, v in zip(class_names, self.dice)},
        }


@dataclass(frozen=True)
class Summary:
    """Mean (s.e.) over cases: of the per-case mean Dice (`overall`) and of each class."""

    overall: Stat
    per_class: tuple[Stat, ...]

    def as_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        return {
            "overall": self.overall.as_dict(),
            "per_class": {name: s.as_dict() for name, s in zip(class_names, self.per_class)},
        }


def summarize_cases(cases: Sequence[CaseDice]) -> Summary:
    """Summary of a group of cases (all of them having the same number of classes)."""
    if not cases:
        raise ValueError("no cases to summarise")
    k = len(cases[0].dice)
    if any(len(c.dice) != k for c in cases):
        raise ValueError("cases have different numbers of classes")
    per_class = tuple(mean_se(c.dice[i] for c in cases) for i in range(k))
    return Summary(mean_se(c.mean for c in cases), per_class)


def summarize_by_domain(cases: Sequence[CaseDice]) -> tuple[Summary, dict[str, Summary]]:
    """(summary of all cases, {domain: summary of its cases}) with domains in first-seen order."""
    domains: dict[str, list[CaseDice]] = {}
    for c in cases:
        domains.setdefault(c.domain, []).append(c)
    return summarize_cases(cases), {d: summarize_cases(cs) for d, cs in domains.items()}


def _json_float(v: float) -> float | None:
    """JSON has no NaN: missing values are written as null."""
    return float(v) if v is not None and math.isfinite(v) else None


def from_json_float(v: float | None) -> float:
    return math.nan if v is None else float(v)
