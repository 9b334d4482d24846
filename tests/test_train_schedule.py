"""Cosine learning-rate schedule and TrainConfig checks."""

from __future__ import annotations

import math

import pytest

from maskgen.errors import MaskgenError
from maskgen.train.config import TrainConfig, default_run_name, parse_crop_size
from maskgen.train.schedule import lr_at


def test_cosine_from_base_to_zero():
    cfg = TrainConfig(features="s.zarr", steps=100, lr=2e-4)
    lrs = [lr_at(s, cfg) for s in range(101)]
    assert lrs[0] == pytest.approx(2e-4) and lrs[100] == pytest.approx(0.0, abs=1e-20)
    assert lrs[50] == pytest.approx(1e-4)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lr_at(37, cfg) == lr_at(37, cfg) == pytest.approx(1e-4 * (1 + math.cos(math.pi * 0.37)))
    with pytest.raises(ValueError):
        lr_at(101, cfg)


def test_paper_defaults():
    cfg = TrainConfig(features="s.zarr")
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.channels, cfg.depth) == (2e-4, 1e-4, 4, 20, 5)
    assert (cfg.aug_prob, cfg.fg_fraction, cfg.inputs, cfg.feature_norm) == (0.33, 1 / 3, "both", "crop")


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5])
def test_bad_mask_rate_names_value(rate):
    with pytest.raises(MaskgenError, match=f"--mask-rate {rate}"):
        TrainConfig(features="s.zarr", mask_rate=rate)


def test_other_checks_name_values():
    with pytest.raises(MaskgenError, match="--inputs 'pixels'"):
        TrainConfig(features="s.zarr", inputs="pixels")
    with pytest.raises(MaskgenError, match="x,y,z\\)=16,16,10 .*2\\*\\*depth=4"):
        TrainConfig(features="s.zarr", crop_zyx=(10, 16, 16), depth=2)
    with pytest.raises(MaskgenError, match="--crop-size '1,2'"):
        parse_crop_size("1,2")
    assert parse_crop_size("64,48,32") == (32, 48, 64)


def test_default_run_name():
    assert default_run_name("cache/amos.zarr", "both", 0.75, 0) == "amos-both-mr75-s0"
    assert default_run_name("/x/demo.zarr/", "image", 0.0, 3) == "demo-image-mr0-s3"
