"""`progress.png` of a pretraining run, drawn from its metrics.jsonl records (written atomically)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from maskgen.atomic import atomic_path


def plot_progress(records: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Contrastive loss, positive/negative cosine and learning rate against step."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(steps, [r["loss"] for r in records], lw=1)
    axes[0].set_title("contrastive loss")
    axes[1].plot(steps, [r["pos_cos"] for r in records], lw=1, label="same voxel, other view")
    axes[1].plot(steps, [r["neg_cos"] for r in records], lw=1, label="other labels")
    axes[1].set_title("cosine similarity")
    axes[1].set_ylim(-1.05, 1.05)
    axes[1].legend(loc="lower left", fontsize=8)
    axes[2].plot(steps, [r["lr"] for r in records], lw=1)
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=80)
    finally:
        plt.close(fig)
    return path
