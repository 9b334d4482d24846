"""progress.png of training and pretraining runs: panels of metrics.jsonl values against step (matplotlib, Agg).

`progress_figure` draws any list of `Panel`s side by side on one shared step axis (the one plotting routine),
`plot_panels` writes it as a PNG; `plot_progress` is the training run's figure (loss; validation Dice on an axis
fitted to its values; learning rate with tick labels such as 1.5e-04); `maskgen.pretrain.plots` declares the
pretraining run's panels.
"""

from __future__ import annotations

import math
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
    ylim: tuple[float, float] | None = None   # fixed y range
    smooth: bool = False                      # also draw a running mean (window: 1/50 of the points)
    marker: str | None = None
    fit: tuple[float, float] | None = None    # y range fitted to the values (+- a margin), within these bounds
    sci: bool = False                         # y tick labels in scientific notation (1.5e-04)


TRAIN_PANELS = (
    Panel("Dice + CE loss", (("loss", "step"),), smooth=True),
    Panel("val mean foreground Dice", (("val_dice", ""),), marker="o", fit=(0.0, 1.0)),
    Panel("learning rate", (("lr", ""),), sci=True),
)
FIT_MARGIN = 0.1        # of the values' range, at least FIT_MIN_MARGIN
FIT_MIN_MARGIN = 0.02


def plot_progress(records: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """A training run's progress.png."""
    return plot_panels(records, path, TRAIN_PANELS, title)


def plot_panels(records: Sequence[dict[str, Any]], path: str | os.PathLike, panels: Sequence[Panel],
                title: str = "") -> Path:
    """Draw `panels` side by side from `records` and write the PNG atomically; returns `path`."""
    fig = progress_figure(records, panels, title)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    return Path(path)


def progress_figure(records: Sequence[dict[str, Any]], panels: Sequence[Panel], title: str = "") -> Any:
    """The matplotlib Figure of `panels` side by side, sharing the step axis (Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: renders with Agg, leaves the global backend alone

    if not panels:
        raise ValueError("no panels to draw")
    fig = Figure(figsize=(4 * len(panels), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False, sharex=True)[0]
    for ax, panel in zip(axes, panels):
        _draw(ax, panel, records)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


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
    elif panel.fit:
        _fit_ylim(ax, [r[k] for k, _ in panel.keys for r in records if r.get(k) is not None], panel.fit)
    if panel.sci:
        from matplotlib.ticker import FuncFormatter

        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: "0" if v == 0 else f"{v:.1e}"))
    if legend:
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("step")
    ax.set_title(panel.title, fontsize=10)
    ax.grid(alpha=0.3)


def _fit_ylim(ax: Any, values: list[float], bounds: tuple[float, float]) -> None:
    """y range = the finite values' range +- FIT_MARGIN of it (at least FIT_MIN_MARGIN), clipped to `bounds`."""
    finite = [float(v) for v in values if math.isfinite(float(v))]
    if not finite:
        ax.set_ylim(*bounds)
        return
    lo, hi = min(finite), max(finite)
    margin = max(FIT_MARGIN * (hi - lo), FIT_MIN_MARGIN)
    ax.set_ylim(max(bounds[0], lo - margin), min(bounds[1], hi + margin))
