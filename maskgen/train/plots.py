"""progress.png of training and pretraining runs: panels of metrics.jsonl values against step (matplotlib, Agg).

`plot_panels` draws any list of `Panel`s (the one plotting routine); `plot_progress` is the training run's figure
(loss, validation Dice, learning rate); `maskgen.pretrain.plots` declares the pretraining run's panels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from maskgen.atomic import atomic_path


@dataclass(frozen=True)
class Panel:
    """One axis: the `keys` of the records that have them, against `step`."""

    title: str
    keys: tuple[tuple[str, str], ...]         # (record key, legend label; "" = no legend)
    ylim: tuple[float, float] | None = None
    smooth: bool = False                      # also draw a running mean (window: 1/50 of the points)
    marker: str | None = None


TRAIN_PANELS = (
    Panel("Dice + CE loss", (("loss", "step"),), smooth=True),
    Panel("val mean foreground Dice", (("val_dice", ""),), ylim=(0.0, 1.0), marker="o"),
    Panel("learning rate", (("lr", ""),)),
)


def plot_progress(records: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """A training run's progress.png."""
    return plot_panels(records, path, TRAIN_PANELS, title)


def plot_panels(records: Sequence[dict[str, Any]], path: str | os.PathLike, panels: Sequence[Panel],
                title: str = "") -> Path:
    """Draw `panels` side by side from `records` and write the PNG atomically; returns `path`."""
    from matplotlib.figure import Figure  # no pyplot: renders with Agg, leaves the global backend alone

    fig = Figure(figsize=(4 * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        _draw(ax, panel, records)
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    return Path(path)


def _draw(ax: Any, panel: Panel, records: Sequence[dict[str, Any]]) -> None:
    legend = False
    for i, (key, label) in enumerate(panel.keys):
        rows = [r for r in records if r.get(key) is not None]
        if not rows:
            continue
        steps, values = [r["step"] for r in rows], [r[key] for r in rows]
        color = "0.6" if panel.smooth else f"C{i}"
        ax.plot(steps, values, lw=0.6 if panel.smooth else 1.2, color=color, marker=panel.marker, label=label or None)
        legend |= bool(label)
        window = max(1, len(rows) // 50)
        if panel.smooth and window > 1:
            import numpy as np

            mean = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1:], mean, lw=1.5, color="C0", label=f"mean of {window}")
    if panel.ylim:
        ax.set_ylim(*panel.ylim)
    if legend:
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("step")
    ax.set_title(panel.title, fontsize=10)
    ax.grid(alpha=0.3)
