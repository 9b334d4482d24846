"""progress.png: training loss, validation Dice and learning rate against step (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from typing import Any, Sequence

from maskgen.atomic import atomic_path


def plot_progress(records: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "") -> None:
    from matplotlib.figure import Figure  # no pyplot: renders with Agg, leaves the global backend alone

    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_dice" in r]
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    ax_loss, ax_dice, ax_lr = fig.subplots(1, 3)
    if train:
        steps = [r["step"] for r in train]
        ax_loss.plot(steps, [r["loss"] for r in train], lw=0.6, color="0.6", label="step")
        window = max(1, len(train) // 50)
        if window > 1:
            import numpy as np

            smooth = np.convolve([r["loss"] for r in train], np.ones(window) / window, mode="valid")
            ax_loss.plot(steps[window - 1 :], smooth, lw=1.5, color="C0", label=f"mean of {window}")
            ax_loss.legend(loc="upper right", fontsize=8)
        ax_lr.plot(steps, [r["lr"] for r in train], color="C2")
    if val:
        ax_dice.plot([r["step"] for r in val], [r["val_dice"] for r in val], marker="o", color="C1")
        ax_dice.set_ylim(0, 1)
    for ax, label in ((ax_loss, "Dice + CE loss"), (ax_dice, "val mean foreground Dice"), (ax_lr, "learning rate")):
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
