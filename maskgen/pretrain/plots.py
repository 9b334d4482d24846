"""`progress.png` of a pretraining run, drawn from its metrics.jsonl records by the shared `plot_panels`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from maskgen.train.plots import Panel, plot_panels

PRETRAIN_PANELS = (
    Panel("contrastive loss", (("loss", ""),)),
    Panel("cosine similarity", (("pos_cos", "same voxel, other view"), ("neg_cos", "other labels")), ylim=(-1.05, 1.05)),
    Panel("learning rate", (("lr", ""),), sci=True),
)


def plot_progress(records: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Contrastive loss, positive/negative cosine and learning rate against step."""
    return plot_panels(records, path, PRETRAIN_PANELS, title)
