"""Runs people can watch (issue 14): progress lines off a terminal, progress.png, `--device cuda` without CUDA."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _helpers import synthetic_store
from maskgen.cli import app
from maskgen.errors import MaskgenError
from maskgen.progress import Progress, duration, log_interval
from maskgen.train.plots import TRAIN_PANELS, progress_figure

runner = CliRunner()
TINY = ["--steps", "4", "--batch-size", "2", "--channels", "4", "--depth", "2", "--val-every", "2",
        "--num-workers", "0"]
LINE = re.compile(r"^train step (\d+)/4 \(\d+%\)  loss \d+\.\d{4}  lr \d\.\d\de-\d\d  [\d.]+ crops/s  "
                  r"elapsed \d:\d\d:\d\d  ETA (\d+:\d\d:\d\d|-:--:--)$")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return synthetic_store(tmp_path_factory.getbasetemp() / "train-tiny-store")  # shared with test_train_*.py


# ---------------------------------------------------------------------------------------------- progress lines
def _console(buf: io.StringIO):
    from rich.console import Console

    return Console(file=buf, width=200, force_terminal=False)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_lines_at_a_steady_rate_plus_the_first_and_the_last(monkeypatch):
    monkeypatch.delenv("MASKGEN_PROGRESS", raising=False)
    buf, clock = io.StringIO(), Clock()
    with Progress("train", 100, describe=lambda f: f"loss {f['loss']:.2f}", interval=10, console=_console(buf),
                  clock=clock) as bar:
        for step in range(1, 101):
            clock.t = step * 1.0  # one step per second
            bar.update(step, loss=1.0 / step)
    lines = buf.getvalue().splitlines()
    steps = [int(re.match(r"train step (\d+)/100", line).group(1)) for line in lines]
    assert steps == [1, 11, 21, 31, 41, 51, 61, 71, 81, 91, 100]   # first, every 10 s, last
    assert lines[1] == "train step 11/100 (11%)  loss 0.09  elapsed 0:00:11  ETA 0:01:29"
    assert lines[-1].endswith("ETA 0:00:00") and "(100%)" in lines[-1]


def test_an_interrupted_loop_still_prints_its_last_step_and_quiet_prints_nothing(monkeypatch):
    monkeypatch.delenv("MASKGEN_PROGRESS", raising=False)
    buf, clock = io.StringIO(), Clock()
    with pytest.raises(KeyboardInterrupt):
        with Progress("pretrain", 50, completed=10, interval=30, console=_console(buf), clock=clock) as bar:
            for step in range(11, 20):
                clock.t += 2
                bar.update(step)
            raise KeyboardInterrupt
    steps = [int(re.match(r"pretrain step (\d+)/50", line).group(1)) for line in buf.getvalue().splitlines()]
    assert steps == [11, 19]
    quiet = io.StringIO()
    with Progress("train", 5, enabled=False, interval=1, console=_console(quiet)) as bar:
        bar.update(5)
        bar.print("hello")
    assert quiet.getvalue() == ""


def test_rates_per_minute_and_the_mode_and_interval_settings(monkeypatch):
    buf, clock = io.StringIO(), Clock()
    monkeypatch.setenv("MASKGEN_PROGRESS", "lines")
    with Progress("extract", 4, unit="case", rate="min", interval=1, console=_console(buf), clock=clock) as bar:
        clock.t = 30.0
        bar.update(advance=1)
        clock.t = 60.0
        bar.update(advance=1)
    assert buf.getvalue().splitlines() == [  # the rate (and ETA) from the first update on, not the start-up
        "extract case 1/4 (25%)  elapsed 0:00:30  ETA -:--:--",
        "extract case 2/4 (50%)  2.0 cases/min  elapsed 0:01:00  ETA 0:01:00"]
    live = io.StringIO()
    monkeypatch.setenv("MASKGEN_PROGRESS", "bar")
    assert Progress("x", 3, console=_console(live)).live
    monkeypatch.setenv("MASKGEN_PROGRESS", "fancy")
    with pytest.raises(MaskgenError, match="MASKGEN_PROGRESS='fancy' must be 'bar' or 'lines'"):
        Progress("x", 3, console=_console(live))
    monkeypatch.delenv("MASKGEN_PROGRESS")
    assert not Progress("x", 3, console=_console(live)).live  # not a terminal: lines
    monkeypatch.setenv("MASKGEN_LOG_INTERVAL", "5")
    assert log_interval() == 5.0 and log_interval(2) == 2.0
    monkeypatch.setenv("MASKGEN_LOG_INTERVAL", "soon")
    with pytest.raises(MaskgenError, match="MASKGEN_LOG_INTERVAL='soon' is not a number"):
        log_interval()
    with pytest.raises(MaskgenError, match="--log-interval 0 must be a positive"):
        log_interval(0)
    assert duration(3723) == "1:02:03" and duration(float("nan")) == "-:--:--"


def test_train_off_a_terminal_prints_plain_lines(store, tmp_path, monkeypatch):
    """A real run under CliRunner (stdout and stderr are not terminals): step lines, not a bar drawn at the end;
    with a long interval only the first and the last step, with a tiny one every step."""
    monkeypatch.delenv("MASKGEN_PROGRESS", raising=False)
    monkeypatch.delenv("MASKGEN_LOG_INTERVAL", raising=False)
    for interval, expected in (("1000", [1, 4]), ("0.000001", [1, 2, 3, 4])):
        out = tmp_path / f"run-{interval}"
        result = runner.invoke(app, ["train", "--features", str(store), "--out", str(out), *TINY,
                                     "--log-interval", interval])
        assert result.exit_code == 0, result.output
        lines = [line for line in result.stderr.splitlines() if line.startswith("train step")]
        assert all(LINE.match(line) for line in lines), lines
        assert [int(LINE.match(line).group(1)) for line in lines] == expected
        assert "step 2: val Dice" in result.stderr and "step 4: val Dice" in result.stderr
        assert "\x1b[" not in result.stderr and "━" not in result.stderr  # no bar, no escape codes
    result = runner.invoke(app, ["train", "--features", str(store), "--out", str(tmp_path / "bad"), *TINY,
                                 "--log-interval", "-1"])
    assert result.exit_code == 1 and "--log-interval -1 must be a positive" in result.stderr
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------------------------------------- progress.png
def _records():
    records = [{"step": s, "loss": 2.0 / s, "lr": 2e-4 * (1 - s / 300)} for s in range(1, 300)]
    return records + [{"step": s, "val_dice": d} for s, d in ((100, 0.61), (200, 0.64), (299, 0.66))]


def test_progress_figure_shares_the_step_axis_fits_the_dice_axis_and_writes_lr_ticks_readably():
    fig = progress_figure(_records(), TRAIN_PANELS, title="run")
    loss_ax, dice_ax, lr_ax = fig.axes[:3]
    assert loss_ax.get_shared_x_axes().joined(loss_ax, dice_ax) and loss_ax.get_shared_x_axes().joined(loss_ax, lr_ax)
    assert dice_ax.get_xlim() == loss_ax.get_xlim() == lr_ax.get_xlim()
    lo, hi = dice_ax.get_ylim()
    assert 0.61 - 0.03 <= lo < 0.61 and 0.66 < hi <= 0.66 + 0.03   # fitted, not 0..1
    fig.canvas.draw()
    labels = [t.get_text() for t in lr_ax.get_yticklabels() if t.get_text()]
    assert labels and all(re.fullmatch(r"0|-?\d\.\de-0\d", t) for t in labels), labels
    assert lr_ax.yaxis.get_offset_text().get_text() == ""         # no separate "1e-4" multiplier to look up
    # one validation only: a small window around it; no validation yet: the whole [0, 1]
    one = progress_figure(_records()[:-2], TRAIN_PANELS).axes[1].get_ylim()
    assert one[0] == pytest.approx(0.59) and one[1] == pytest.approx(0.63)
    none = progress_figure(_records()[:299], TRAIN_PANELS).axes[1].get_ylim()
    assert none == (0.0, 1.0)


def test_a_perfect_dice_stays_within_zero_and_one():
    records = [{"step": 1, "val_dice": 0.99}, {"step": 2, "val_dice": 1.0}]
    lo, hi = progress_figure(records, TRAIN_PANELS).axes[1].get_ylim()
    assert hi == 1.0 and 0.95 < lo < 0.99


# ---------------------------------------------------------------------------------------------- --device cuda
def test_device_cuda_without_cuda_fails_before_the_run_folder_is_touched(store, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "new-run"
    result = runner.invoke(app, ["train", "--features", str(store), "--out", str(out), *TINY, "--device", "cuda"])
    assert result.exit_code == 1
    message = result.stderr.strip()
    assert "\n" not in message and "--device cuda" in message and "no CUDA device" in message, message
    assert not out.exists()
    # an existing run continued with --device cuda: its folder stays exactly as it was
    done = tmp_path / "done"
    assert runner.invoke(app, ["train", "--features", str(store), "--out", str(done), *TINY, "--quiet",
                               "--stop-at", "2"]).exit_code == 0
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in done.iterdir()}
    result = runner.invoke(app, ["train", "--features", str(store), "--out", str(done), "--resume",
                                 "--device", "cuda"])
    assert result.exit_code == 1 and "no CUDA device" in result.stderr
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in done.iterdir()} == before
    assert json.loads((done / "config.json").read_text())["device"] == "auto"
