"""The resume policy (`maskgen.train.resume`) and exact resume through the real training loop."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from _helpers import synthetic_store, tiny_train_config
from maskgen.config import to_dict
from maskgen.errors import MaskgenError
from maskgen.train.config import TrainConfig
from maskgen.train.loop import train
from maskgen.train.resume import RESUMABLE_FIELDS, continued_config, read_run_config, resume_config

@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return synthetic_store(tmp_path_factory.getbasetemp() / "train-tiny-store")  # shared with test_train_*.py


def test_resume_config_is_the_recorded_run_with_the_given_options(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    saved = TrainConfig(features="/s.zarr", out=str(run), mask_rate=0.75, steps=10, crop_zyx=(16, 16, 16), depth=2)
    (run / "config.json").write_text(json.dumps(to_dict(saved)))
    cfg = resume_config("/s.zarr", str(run), {"num_workers": 0})
    assert cfg == saved.replace(num_workers=0)
    assert read_run_config(run) == saved
    # without --out: the default folder of the given options
    monkey = tmp_path / "runs" / "s-both-mr75-s0"
    monkey.mkdir(parents=True)
    (monkey / "config.json").write_text(json.dumps(to_dict(saved.replace(out=""))))
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert resume_config("/s.zarr", None, {"mask_rate": 0.75}).steps == 10
    finally:
        os.chdir(cwd)


def test_continued_config_keeps_the_run_and_takes_only_resumable_changes(tmp_path):
    saved = TrainConfig(features="/a.zarr", out="r", crop_zyx=(16, 16, 16), depth=2, train_cases=("a",), steps=10)
    given = saved.replace(features="/b.zarr", num_workers=3, val_every=7, lr=1e-3, steps=12, crop_zyx=None,
                          train_cases=())
    cfg, changes = continued_config(saved, given, Path("r"))
    assert cfg == saved.replace(features="/b.zarr", num_workers=3, val_every=7, lr=1e-3, steps=12)
    assert changes == {"features": ("/a.zarr", "/b.zarr"), "steps": (10, 12), "lr": (2e-4, 1e-3),
                       "val_every": (1000, 7), "num_workers": (None, 3)}
    assert continued_config(saved, saved, Path("r")) == (saved, {})
    with pytest.raises(MaskgenError, match="mask_rate: run has 0.5, given 0.25; channels: run has 20, given 8"):
        continued_config(saved, given.replace(mask_rate=0.25, channels=8), Path("r"))
    with pytest.raises(MaskgenError, match=r"--steps can only be raised \(run has 10, given 9\)"):
        continued_config(saved, given.replace(steps=9), Path("r"))
    assert set(RESUMABLE_FIELDS) <= {f.name for f in dataclasses.fields(TrainConfig)}


def test_training_leaves_the_callers_random_state_alone(store, tmp_path):
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(7)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    train(tiny_train_config(store, tmp_path / "run", steps=2, val_every=0, dropout=0.25, inputs="image", mask_rate=0.0),
          progress=False)
    after = (torch.get_rng_state(), np.random.get_state()[1], random.getstate())
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2]


def test_channel_dropout_baseline_resumes_exactly(store, tmp_path):
    """nn.Dropout3d draws from torch's global RNG: its state is saved in last.pt and restored on resume."""
    kw = dict(inputs="image", mask_rate=0.0, dropout=0.25, val_every=0)
    one = train(tiny_train_config(store, tmp_path / "one", **kw), progress=False)
    two = tmp_path / "two"
    train(tiny_train_config(store, two, **kw), stop_at=2, progress=False)
    train(tiny_train_config(store, two, **kw), resume=True, progress=False)
    a = torch.load(one / "last.pt", weights_only=True)["model"]
    b = torch.load(two / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
