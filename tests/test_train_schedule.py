"""Cosine learning-rate schedule and TrainConfig checks."""

from __future__ import annotations

import math

import pytest

from maskgen.train.config import TrainConfig
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
