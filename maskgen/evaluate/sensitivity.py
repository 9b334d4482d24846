"""One-channel removal (paper Figure 4, bottom): how much validation Dice changes when one input channel is zeroed.

For each network input channel (the image, each feature channel) the channel is set to 0 after the inputs are
assembled (normalised) and before the UNet, which is what view masking does to a dropped channel in training
(no rescaling of the others: that is the dropout convention at inference). Delta Dice = Dice with the channel
removed - Dice with the full input, per case; reported as mean (s.e.) over cases. With `--inputs both` two group
rows are added: all feature channels removed at once, and the image removed (the same as its channel row).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from maskgen.evaluate.metrics import Stat, case_mean, mean_se


class ZeroChannels:
    """Callable model wrapper: zero the given input channels, then run the model."""

    def __init__(self, model: Any, channels: Sequence[int]):
        self.model = model
        self.channels = list(channels)

    def __call__(self, z: Any) -> Any:
        z = z.clone()
        z[:, self.channels] = 0
        return self.model(z)


@dataclass
class SensitivityRow:
    name: str
    channels: tuple[int, ...]
    dice: Stat
    delta: Stat

    def as_dict(self) -> dict[str, Any]:
        return {"channel": self.name, "input_channels": list(self.channels), "dice": self.dice.as_dict(),
                "delta": self.delta.as_dict()}


@dataclass
class SensitivityResult:
    split: str
    full: Stat
    rows: list[SensitivityRow]        # one per input channel, in input order
    groups: list[SensitivityRow]      # image vs all features (inputs "both" only)
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {**self.settings, "split": self.split, "full": self.full.as_dict(),
                "channels": [r.as_dict() for r in self.rows], "groups": [g.as_dict() for g in self.groups]}


def channel_sensitivity(
    run_dir: str | Path,
    split: str = "val",
    checkpoint: str = "best",
    overlap: float = 0.5,
    device: str = "auto",
    features: str | Path | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    empty_class: str = "ignore",
) -> SensitivityResult:
    from maskgen.evaluate.runs import _check_overlap, labelled_cases, open_run
    from maskgen.train.dice import check_empty_class, dice_per_class

    _check_overlap(overlap)
    check_empty_class(empty_class)
    run = open_run(run_dir, checkpoint, device, features)
    infos = labelled_cases(run.store, split)
    names = run.input_names
    variants: list[tuple[str, tuple[int, ...]]] = [(n, (i,)) for i, n in enumerate(names)]
    groups: list[tuple[str, tuple[int, ...]]] = []
    if run.cfg.inputs == "both":
        groups = [("image", (0,)), ("all features", tuple(range(1, len(names))))]
    t0 = time.perf_counter()
    full_scores: list[float] = []
    removed: dict[tuple[int, ...], list[float]] = {ch: [] for _, ch in variants + groups}
    for k, info in enumerate(infos):
        data = run.store.read_case(info.case_id)
        stats = run.stats(info)

        def score(model: Any = None) -> float:
            pred = run.segment(data["image"], data["features"], stats, overlap, model=model)
            d = dice_per_class(pred, data["label"], run.num_foreground, empty_class)
            return case_mean(d)

        full_scores.append(score())
        for ch in removed:
            removed[ch].append(score(ZeroChannels(run.model, ch)))
        if progress is not None:
            progress(k + 1, len(infos), info.case_id)

    def row(name: str, ch: tuple[int, ...]) -> SensitivityRow:
        vals = np.asarray(removed[ch])
        return SensitivityRow(name, ch, mean_se(vals), mean_se(vals - np.asarray(full_scores)))

    settings = {"run": str(Path(run_dir)), "checkpoint": checkpoint, "step": run.step, "overlap": overlap,
                "inputs": run.cfg.inputs, "mask_rate": run.cfg.mask_rate, "cases": len(infos),
                "empty_class": empty_class,
                "seconds": round(time.perf_counter() - t0, 3)}
    return SensitivityResult(split, mean_se(full_scores), [row(n, c) for n, c in variants],
                             [row(n, c) for n, c in groups], settings)


def write_sensitivity(result: SensitivityResult, out_dir: Path, title: str = "") -> dict[str, Path]:
    """`sensitivity-<split>.{json,csv,md,png}` in `out_dir`; returns the paths."""
    from maskgen.atomic import write_text_atomic
    from maskgen.config import write_json_atomic
    from maskgen.evaluate.report import SE_BARS, grouped_bar_plot, markdown_table, write_csv

    stem = out_dir / f"sensitivity-{result.split}"
    paths = {ext: stem.with_suffix(f".{ext}") for ext in ("json", "csv", "md", "png")}
    write_json_atomic(paths["json"], result.as_dict())
    write_csv(paths["csv"], [
        {"channel": r.name, "dice": r.dice.mean, "dice_se": r.dice.se, "delta_dice": r.delta.mean,
         "delta_dice_se": r.delta.se, "cases": r.delta.n} for r in result.rows
    ], ["channel", "dice", "dice_se", "delta_dice", "delta_dice_se", "cases"])
    header, rows = sensitivity_table(result)
    text = (f"# One-channel removal ({result.split} split)\n\nFull input: Dice {result.full.format()} over "
            f"{result.full.n} cases. Delta = Dice with the channel zeroed - Dice with the full input (x100).\n\n"
            + markdown_table(header, rows))
    if result.groups:
        text += "\n" + markdown_table(["removed", "Dice", "Delta Dice"],
                                      [[g.name, g.dice.format(), _signed(g.delta)] for g in result.groups])
    write_text_atomic(paths["md"], text)
    names = [r.name for r in result.rows] + [f"[{g.name}]" for g in result.groups if g.name != "image"]
    deltas = [r.delta for r in result.rows] + [g.delta for g in result.groups if g.name != "image"]
    grouped_bar_plot(paths["png"], names, ["Delta Dice"], [[d.mean for d in deltas]], [[d.se for d in deltas]],
                     ylabel="Delta Dice (x100)", title=title or f"One-channel removal ({result.split})",
                     zero_line=True, note=SE_BARS)
    return paths


def _signed(s: Stat) -> str:
    from maskgen.evaluate.report import fmt

    if not np.isfinite(s.mean):
        return "-"
    se = fmt(s.se) if np.isfinite(s.se) else "-"
    return f"{fmt(s.mean, signed=True)} ({se})"


def sensitivity_table(result: SensitivityResult) -> tuple[list[str], list[list[str]]]:
    header = ["channel", "Dice", "Delta Dice"]
    return header, [[r.name, r.dice.format(), _signed(r.delta)] for r in result.rows]
