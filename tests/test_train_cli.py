"""`maskgen train` command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _helpers import synthetic_store
from maskgen.cli import app

runner = CliRunner()
TINY = ["--steps", "2", "--batch-size", "2", "--channels", "4", "--depth", "2", "--val-every", "2",
        "--num-workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return synthetic_store(tmp_path_factory.getbasetemp() / "train-tiny-store")  # shared with test_train_*.py


def test_bad_store_path(tmp_path):
    result = runner.invoke(app, ["train", "--features", str(tmp_path / "nope.zarr")])
    assert result.exit_code == 1
    assert "nope.zarr does not exist" in result.stderr and "maskgen extract" in result.stderr


def test_not_a_store(tmp_path):
    result = runner.invoke(app, ["train", "--features", str(tmp_path)])
    assert result.exit_code == 1 and "not a maskgen feature store" in result.stderr


@pytest.mark.parametrize(
    "option,value,says",
    [("--mask-rate", "1.0", "is out of range: use a value in [0, 1)"), ("--mask-rate", "-0.1", "[0, 1)"),
     ("--lr", "inf", "must be a finite number > 0"), ("--lr", "nan", "> 0"), ("--lr", "0", "> 0"),
     ("--lr", "-1e-3", "> 0"), ("--weight-decay", "nan", "must be a finite number >= 0"),
     ("--weight-decay", "-1", ">= 0"), ("--fg-fraction", "2", "[0, 1]"), ("--steps", "0", ">= 1"),
     ("--inputs", "pixels", "'pixels' is not one of both, image, features")],
)
def test_bad_option_is_one_line_naming_the_flag_and_nothing_is_written(store, tmp_path, option, value, says):
    out = tmp_path / "r"
    result = runner.invoke(app, ["train", "--features", str(store), "--out", str(out)] + TINY + [option, value])
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert line.startswith(f"Error: {option} ") and says in line and "\n" not in line, line
    assert "_" not in line.split(" ")[1]  # the flag, not the config field
    assert not out.exists()


def test_sweep_checks_every_rate_before_anything_is_written(store, tmp_path):
    out = tmp_path / "sweep"
    result = runner.invoke(app, ["sweep", "--features", str(store), "--out", str(out), "--mask-rate", "0.5,1.0",
                                 "--inputs", "both", "--steps", "1"])
    assert result.exit_code == 1 and "--mask-rate 1.0 is out of range" in result.stderr
    assert not out.exists()


def test_error_messages_keep_bracketed_words():
    """Rich markup must not eat `[label_map]` / `[layout]` in messages (the handler prints them literally)."""
    import typer

    from maskgen.cli._common import handle_errors
    from maskgen.errors import MaskgenError

    mini = typer.Typer()

    @mini.command()
    @handle_errors
    def cmd() -> None:
        raise MaskgenError("raw value 7 is not in [label_map]; set by [layout] csv ([bold]x[/bold])")

    result = runner.invoke(mini, [])
    assert result.exit_code == 1
    assert "raw value 7 is not in [label_map]; set by [layout] csv ([bold]x[/bold])" in result.stderr


def test_resume_without_checkpoint(store, tmp_path):
    result = runner.invoke(app, ["train", "--features", str(store), "--out", str(tmp_path / "r"), "--resume"] + TINY)
    assert result.exit_code == 1 and "no checkpoint" in result.stderr


def test_bad_crop_size(store, tmp_path):
    result = runner.invoke(app, ["train", "--features", str(store), "--out", str(tmp_path / "r"),
                                 "--crop-size", "16,16,10"] + TINY)
    assert result.exit_code == 1 and "2**depth=4" in result.stderr
    assert "--crop-size 16,16,10 must have" in result.stderr and "e.g. --crop-size 16,16,8 or a smaller --depth" \
        in result.stderr


def test_train_then_refuse_then_resume(store, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--features", str(store), "--out", str(out), "--mask-rate", "0.75", "--crop-size", "16,16,32"]
    result = runner.invoke(app, args + TINY + ["--steps", "3", "--stop-at", "2"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(str(out))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["mask_rate"] == 0.75 and cfg["crop_zyx"] == [32, 16, 16] and cfg["steps"] == 3
    again = runner.invoke(app, args + TINY + ["--steps", "3"])
    assert again.exit_code == 1 and "not empty" in again.stderr
    conflict = runner.invoke(app, ["train", "--features", str(store), "--out", str(out), "--resume", "--mask-rate", "0.5"])
    assert conflict.exit_code == 1 and "mask_rate: run has 0.75, given 0.5" in conflict.stderr
    # resuming needs no repetition of the run's options; runtime options may change
    resumed = runner.invoke(app, ["train", "--features", str(store), "--out", str(out), "--resume", "--quiet",
                                  "--num-workers", "0"])
    assert resumed.exit_code == 0, resumed.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]


def test_default_run_folder(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--features", str(store), "--seed", "7"] + TINY)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "store-both-mr50-s7" / "last.pt").is_file()


def test_command_line_defaults_are_the_configs():
    """`maskgen train` without options trains TrainConfig's defaults (the paper's), not values of its own."""
    import dataclasses
    import inspect

    from maskgen.cli.train import _FIELDS
    from maskgen.train.config import TrainConfig

    command = next(c for c in app.registered_commands if c.name == "train").callback
    params = inspect.signature(command).parameters
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    differ = {n: (params[n].default.default, defaults[n]) for n in _FIELDS
              if params[n].default.default != defaults[n]}
    assert differ == {}


def test_single_input_trains_erm_by_default_and_refuses_a_mask_rate(store, tmp_path):
    """Issue 11.5: `--inputs image` is ERM (rate 0); an explicit non-zero rate with one input is refused."""
    out = tmp_path / "erm"
    result = runner.invoke(app, ["train", "--features", str(store), "--out", str(out), "--inputs", "image"] + TINY)
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["mask_rate"] == 0.0 and cfg["inputs"] == "image" and cfg["fg_fraction"] == 0.0 and cfg["unet"] == "public"
    bad = tmp_path / "bad"
    refused = runner.invoke(app, ["train", "--features", str(store), "--out", str(bad), "--inputs", "features",
                                  "--mask-rate", "0.5"] + TINY)
    assert refused.exit_code == 1 and not bad.exists()
    assert "--mask-rate 0.5 needs both inputs" in refused.stderr and "--inputs features" in refused.stderr
    assert "--dropout with --inputs image" in refused.stderr


def test_unwritable_out_is_one_line_naming_the_folder(store, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "run"  # cannot be created, even by root
    result = runner.invoke(app, ["train", "--features", str(store), "--out", str(out)] + TINY)
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith(f"Error: cannot write the run folder {out}") and "--out" in line


def test_a_crop_larger_than_every_volume_is_refused_at_once_naming_the_largest_useful_crop(store, tmp_path):
    """The store's volumes are 32^3: a 256^3 crop would be almost all padding (and minutes per CPU step)."""
    import time

    out = tmp_path / "r"
    t0 = time.perf_counter()
    result = runner.invoke(app, ["train", "--features", str(store), "--out", str(out), "--crop-size", "256,256,32"]
                           + TINY)
    assert time.perf_counter() - t0 < 60  # no training step was attempted (a generous bound for a busy machine)
    assert result.exit_code == 1 and not out.exists()
    assert "--crop-size 256,256,32 is larger than every train volume (the largest spans 32,32,32 voxels" \
        in result.stderr and "Use at most --crop-size 32,32,32" in result.stderr
    # a crop larger than the volumes but needed by the network (depth 5: 64 voxels) is padded and trains, as
    # nnU-Net pads a volume to its patch size
    padded = runner.invoke(app, ["train", "--features", str(store), "--out", str(out), *TINY, "--crop-size",
                                 "64,64,64", "--depth", "5", "--channels", "2", "--steps", "1", "--val-every", "0"])
    assert padded.exit_code == 0, padded.output
    assert json.loads((out / "config.json").read_text())["crop_zyx"] == [64, 64, 64]


def test_progress_output_keeps_bracketed_words(store, tmp_path):
    out = tmp_path / "[layout] run"
    result = runner.invoke(app, ["train", "--features", str(store), "--out", str(out)] + TINY[:-1])
    assert result.exit_code == 0, result.output
    assert f"maskgen train {out}:" in result.stderr and f"{out}" in result.stderr.splitlines()[-1]
