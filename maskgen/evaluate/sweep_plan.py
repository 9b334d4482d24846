"""The grid of a sweep (paper Figure 4 top and Table 5): which variants to train, named and labelled as the paper.

- method `maskgen`: for each `--inputs` mode and `--mask-rate`, one run per seed. View masking is only meaningful on
  the combined input, so `image` ("Image only", the ERM baseline) and `features` ("Reps. only") are trained once per
  seed at mask rate 0, whatever rates are asked for (the paper's baselines are unmasked; masking a single-source
  input would only blank whole samples); `both` gets every rate (rate 0 = naive concatenation).
- method `channel-dropout`: the generic-masking baseline of paper Table 5 (image-only input, channel dropout on the
  network's intermediate layers: `TrainConfig.dropout`), one run per `--dropout-rate` and seed.
Duplicate rates and seeds are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from maskgen.errors import MaskgenError

METHODS = ("maskgen", "channel-dropout")
INPUT_ORDER = ("image", "features", "both")


@dataclass(frozen=True)
class Variant:
    method: str        # "maskgen" | "channel-dropout"
    inputs: str        # "image" | "features" | "both"
    mask_rate: float
    dropout: float
    seed: int

    @property
    def key(self) -> str:
        """The variant without its seed (one row of the results table)."""
        if self.method == "channel-dropout":
            return f"chdrop-p{_pct(self.dropout)}"
        if self.inputs == "both":
            return f"both-mr{_pct(self.mask_rate)}"
        return self.inputs

    @property
    def name(self) -> str:
        return f"{self.key}-s{self.seed}"

    @property
    def label(self) -> str:
        """Method name as the paper's Figure 4 / Table 5 print it."""
        if self.method == "channel-dropout":
            return f"Channel dropout (p={self.dropout:g})"
        if self.inputs == "image":
            return "Image only"
        if self.inputs == "features":
            return "Reps. only"
        return f"MR={_pct(self.mask_rate, pad=False)}%"

    def train_changes(self) -> dict[str, Any]:
        changes: dict[str, Any] = {"inputs": self.inputs, "mask_rate": self.mask_rate, "seed": self.seed}
        if self.method == "channel-dropout":
            changes["dropout"] = self.dropout
        return changes


def _pct(rate: float, pad: bool = True) -> str:
    v = round(rate * 100)
    return f"{v:02d}" if pad else str(v)


def _unique(values: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def plan_variants(
    mask_rates: Sequence[float],
    inputs: Sequence[str],
    seeds: Sequence[int],
    methods: Sequence[str] = ("maskgen",),
    dropout_rates: Sequence[float] | None = None,
) -> tuple[list[Variant], list[str]]:
    """The deduplicated grid, in table order (image, features, both by rate, channel dropout), seeds innermost;
    and notes saying what was collapsed or skipped."""
    notes: list[str] = []
    for m in methods:
        if m not in METHODS:
            raise MaskgenError(f"--method {m!r} is not one of {', '.join(METHODS)}.")
    for i in inputs:
        if i not in INPUT_ORDER:
            raise MaskgenError(f"--inputs {i!r} is not one of {', '.join(INPUT_ORDER)}.")
    rates = _unique(float(r) for r in mask_rates)  # each rate is checked by TrainConfig (run_sweep, before training)
    seeds = _unique(int(s) for s in seeds)
    if not seeds:
        raise MaskgenError("--seeds is empty: give at least one seed.")
    keyed: list[tuple[Any, ...]] = []
    if "maskgen" in methods:
        if not inputs:
            raise MaskgenError("--inputs is empty: give at least one of image, features, both.")
        if not rates:
            raise MaskgenError("--mask-rate is empty: give at least one rate.")
        for mode in INPUT_ORDER:
            if mode not in inputs:
                continue
            if mode == "both":
                keyed += [("maskgen", "both", r, 0.0) for r in rates]
            else:
                keyed.append(("maskgen", mode, 0.0, 0.0))
                if any(r > 0 for r in rates):
                    shown = "Image only (ERM)" if mode == "image" else "Reps. only"
                    notes.append(f"--inputs {mode}: trained at mask rate 0 only ({shown}); view masking applies to the "
                                 "combined input (--inputs both)")
    if "channel-dropout" in methods:
        drates = _unique(float(p) for p in (dropout_rates if dropout_rates is not None else [r for r in rates if r > 0]))
        if not drates:
            raise MaskgenError("--method channel-dropout needs a dropout rate: pass --dropout-rate (e.g. 0.25) "
                               "or a non-zero --mask-rate.")
        for p in drates:
            if not 0.0 < p < 1.0:
                raise MaskgenError(f"--dropout-rate {p} must be in (0, 1).")
        keyed += [("channel-dropout", "image", 0.0, p) for p in drates]
    variants = [Variant(m, i, r, p, s) for (m, i, r, p) in keyed for s in seeds]
    return variants, notes
