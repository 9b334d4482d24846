"""Issue 12, training: only finite checkpoints, NaN weights caught after the update, evaluate/predict refuse a
diverged checkpoint, and "lower --lr, then --resume" works (the change recorded in config.json's history)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from _helpers import synthetic_store, tiny_train_config
from maskgen.cli import app
from maskgen.errors import MaskgenError
from maskgen.train.finite import WeightsCheck, nonfinite
from maskgen.train.loop import train

runner = CliRunner()
TINY = ["--batch-size", "2", "--channels", "4", "--depth", "2", "--num-workers", "0", "--quiet", "--seed", "3"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return synthetic_store(tmp_path_factory.getbasetemp() / "train-tiny-store")  # shared with test_train_*.py


def _finite(path: Path) -> bool:
    ckpt = torch.load(path, weights_only=True)
    return not nonfinite({"model": ckpt["model"], "optimizer": ckpt["optimizer"]["state"]})



def _poison_third_update(monkeypatch, value: float):
    """Make the training step's third optimiser update write `value` into one weight (as a diverging update would);
    returns the real `optimise`, to put back."""
    import maskgen.train.step as step

    real = step.optimise
    calls = {"n": 0}

    def poisoned(model, *args, **kwargs):
        result = real(model, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            with torch.no_grad():
                weight = next(model.parameters())
                weight[(0,) * weight.dim()] = value
        return result

    monkeypatch.setattr(step, "optimise", poisoned)
    return real


def test_weights_check_and_nonfinite_report():
    model = torch.nn.Sequential(torch.nn.Conv3d(2, 3, 3), torch.nn.BatchNorm3d(3))
    check = WeightsCheck(model)
    assert check()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0, 0] = 3e38  # large but finite: no false alarm (a max, not a sum of squares)
        model[0].weight[0, 0, 0, 0, 1] = 3e38
    assert check()
    model[1].running_var[1] = float("nan")  # buffers count too
    assert not check()
    report = nonfinite({"model": model.state_dict(), "optimizer": {0: {"exp_avg": torch.tensor([1.0, float("inf")])}}})
    assert report.values == 2 and report.names == ("model.1.running_var", "optimizer.0.exp_avg")
    assert "2 of" in report.describe() and "in 2 tensors" in report.describe()


def test_nan_weights_are_caught_right_after_the_update(store, tmp_path, monkeypatch):
    """The update of step 3 makes a weight NaN (its loss was finite): the run stops at step 3, not one step later
    when the loss turns NaN, and last.pt (step 2) is finite."""
    _poison_third_update(monkeypatch, float("nan"))
    run = tmp_path / "run"
    with pytest.raises(MaskgenError, match=r"weights became non-finite after the update .* at step 3; .*step 2\) is "
                                           r"untouched and finite"):
        train(tiny_train_config(store, run), progress=False)
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 2 and _finite(run / "last.pt")


def test_a_checkpoint_is_never_written_with_non_finite_optimiser_state(store, tmp_path, monkeypatch):
    """Infinite Adam state with finite weights (an overflowed second moment): the checkpoint due at step 2 is refused."""
    import maskgen.train.step as step

    real = step.optimise

    def poisoned(model, optimizer, *args, **kwargs):
        value = real(model, optimizer, *args, **kwargs)
        state = optimizer.state[next(model.parameters())]
        state["exp_avg_sq"][(0,) * state["exp_avg_sq"].dim()] = float("inf")
        return value

    monkeypatch.setattr(step, "optimise", poisoned)
    run = tmp_path / "run"
    with pytest.raises(MaskgenError, match=r"(best|last).pt was not written: 1 of .* non-finite"):
        train(tiny_train_config(store, run), progress=False)
    assert not (run / "last.pt").exists() and not (run / "best.pt").exists()


def test_lr_1e6_stops_and_keeps_finite_checkpoints_that_evaluate(store, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--features", str(store), "--out", str(out), "--val-every", "1", "--steps", "12", *TINY]
    blown = runner.invoke(app, args + ["--lr", "1e6"])
    assert blown.exit_code == 1, blown.output
    assert "non-finite" in blown.stderr and "--resume" in blown.stderr and "--lr" in blown.stderr
    saved = [p for p in (out / "last.pt", out / "best.pt") if p.exists()]
    assert saved and all(_finite(p) for p in saved)
    assert torch.load(out / "last.pt", weights_only=True)["step"] < 12
    for name in ("last", "best"):
        result = runner.invoke(app, ["evaluate", str(out), "--checkpoint", name, "--split", "test", "--quiet"])
        assert result.exit_code == 0, result.output
    # --resume takes the lower --lr (it used to refuse any changed option); whether these weights, already pushed
    # by steps of 1e6, still train is another matter: the run either finishes or stops with the same advice
    again = runner.invoke(app, ["train", "--features", str(store), "--out", str(out), "--resume", "--lr", "1e-3",
                                "--quiet"])
    assert again.exit_code == 0 or "non-finite" in again.stderr, again.output
    assert json.loads((out / "config.json").read_text())["history"][0]["changes"]["lr"] == [1e6, 1e-3]


def test_resume_with_a_lower_lr_and_more_steps_continues_and_records_the_change(store, tmp_path, monkeypatch):
    """A bad update at step 3 stops the run; `--resume --lr 1e-4 --steps 6 --val-every 3` continues from last.pt
    (step 2) with the cosine recomputed over 6 steps, and config.json's history records the change."""
    import math

    import maskgen.train.step as step

    real = _poison_third_update(monkeypatch, float("inf"))
    out = tmp_path / "run"
    first = runner.invoke(app, ["train", "--features", str(store), "--out", str(out), "--steps", "4",
                                "--val-every", "2", "--lr", "1e-3", *TINY])
    assert first.exit_code == 1 and "at step 3" in first.stderr
    monkeypatch.setattr(step, "optimise", real)
    resumed = runner.invoke(app, ["train", "--features", str(store), "--out", str(out), "--resume", "--lr", "1e-4",
                                  "--steps", "6", "--val-every", "3", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["step"] == 6 and _finite(out / "last.pt")
    config = json.loads((out / "config.json").read_text())
    assert (config["lr"], config["steps"], config["val_every"]) == (1e-4, 6, 3)
    (change,) = config["history"]
    assert change["step"] == 2 and change["changes"] == {"steps": [4, 6], "lr": [1e-3, 1e-4], "val_every": [2, 3]}
    assert last["history"] == config["history"]
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "lr" in r}
    assert [s for s in sorted(lrs)] == [1, 2, 3, 4, 5, 6]
    assert lrs[2] == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * 1 / 4)))        # before: 1e-3 over 4 steps
    assert lrs[3] == pytest.approx(0.5e-4 * (1 + math.cos(math.pi * 2 / 6)))        # after: 1e-4 over 6 steps
    # what was trained cannot change, nor can the steps go down
    refused = runner.invoke(app, ["train", "--features", str(store), "--out", str(out), "--resume", "--channels", "8"])
    assert refused.exit_code == 1 and "channels: run has 4, given 8" in refused.stderr
    lower = runner.invoke(app, ["train", "--features", str(store), "--out", str(out), "--resume", "--steps", "5"])
    assert lower.exit_code == 1 and "--steps can only be raised (run has 6, given 5)" in lower.stderr


def test_evaluate_and_predict_refuse_a_non_finite_checkpoint(store, tmp_path):
    run = train(tiny_train_config(store, tmp_path / "run", steps=2, val_every=0), progress=False)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    key = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][key] = ckpt["model"][key].contiguous()
    ckpt["model"][key].view(-1)[:5] = float("nan")
    torch.save(ckpt, run / "last.pt")
    result = runner.invoke(app, ["evaluate", str(run), "--checkpoint", "last", "--split", "test"])
    assert result.exit_code == 1
    assert f"{run / 'last.pt'} holds non-finite weights (5 of" in result.stderr and key in result.stderr
    import nibabel as nib
    import numpy as np

    images = tmp_path / "images"
    images.mkdir()
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((24, 24, 24)).astype(np.float32), np.eye(4)),
             images / "case_0000.nii.gz")
    result = runner.invoke(app, ["predict", str(run), "--checkpoint", "last", "--input", str(images),
                                 "--out", str(tmp_path / "pred")])
    assert result.exit_code == 1 and "holds non-finite weights" in result.stderr
    resumed = runner.invoke(app, ["train", "--features", str(store), "--out", str(run), "--resume", "--quiet"])
    assert resumed.exit_code == 1 and "holds non-finite weights" in resumed.stderr
