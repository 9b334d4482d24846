"""metrics.jsonl (`maskgen.train.metrics_log`) and progress.png (`maskgen.train.plots`), shared by train and pretrain."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maskgen.train.metrics_log import MetricsLog, read_metrics
from maskgen.train.plots import TRAIN_PANELS, Panel, plot_panels, plot_progress


def test_metrics_log_appends_skips_a_torn_line_and_truncates_for_resume(tmp_path):
    log = MetricsLog(tmp_path / "run" / "metrics.jsonl")
    assert log.read() == [] and log.truncate_after(3) == []
    assert not log.path.exists()
    for step in (1, 2, 3, 4):
        log.append({"step": step, "loss": 1.0 / step})
    log.append({"step": 4, "val_dice": 0.5})
    with open(log.path, "a") as f:
        f.write('{"step": 5, "loss"')  # a run killed while writing
    assert [r["step"] for r in log.read()] == [1, 2, 3, 4, 4]
    kept = log.truncate_after(2)
    assert [r["step"] for r in kept] == [1, 2] and read_metrics(log.path) == kept
    assert log.path.read_text().endswith("\n") and len(log.path.read_text().splitlines()) == 2
    log.append({"step": 3, "loss": 0.1})
    assert json.loads(log.path.read_text().splitlines()[-1]) == {"loss": 0.1, "step": 3}


def _png(path) -> np.ndarray:
    from matplotlib.image import imread

    return imread(path)


def test_training_progress_plot_draws_loss_dice_and_lr(tmp_path):
    records = [{"step": s, "loss": 1.0 / s, "lr": 1e-3 * (1 - s / 200)} for s in range(1, 200)]
    records += [{"step": s, "val_dice": s / 200} for s in (50, 100, 150)]
    out = plot_progress(records, tmp_path / "progress.png", title="run")
    img = _png(out)
    assert img.shape[1] == 100 * 4 * len(TRAIN_PANELS) and img.shape[0] == 360
    # the curves are drawn: the loss panel differs from the one of a flat loss
    flat = plot_progress([{**r, "loss": 1.0} if "loss" in r else r for r in records], tmp_path / "flat.png")
    assert not np.array_equal(img, _png(flat))
    # no record at all still gives a figure (a run that has not logged yet)
    assert _png(plot_progress([], tmp_path / "empty.png")).shape == img.shape


def test_panels_are_declared_by_the_caller(tmp_path):
    panels = (Panel("cosine", (("pos", "pos"), ("neg", "neg")), ylim=(-1, 1)), Panel("lr", (("lr", ""),)))
    records = [{"step": s, "pos": 0.5, "neg": float("nan") if s == 3 else -0.1, "lr": 0.1} for s in range(1, 6)]
    img = _png(plot_panels(records, tmp_path / "p.png", panels))
    assert img.shape[1] == 100 * 4 * 2
    with pytest.raises(ValueError):
        plot_panels(records, tmp_path / "none.png", ())
