"""The one learning-rate schedule of training and pretraining (`maskgen.train.schedule`)."""

from __future__ import annotations

import hashlib
import math

import pytest

from maskgen.pretrain.config import PretrainConfig
from maskgen.pretrain.loop import lr_at as pretrain_lr_at
from maskgen.train.config import TrainConfig
from maskgen.train.schedule import cosine_lr, lr_at


def test_training_cosine_from_base_to_zero():
    cfg = TrainConfig(features="s.zarr", steps=100, lr=2e-4)
    lrs = [lr_at(s, cfg) for s in range(101)]
    assert lrs[0] == 2e-4 and lrs[100] == pytest.approx(0.0, abs=1e-20)
    assert lrs[50] == pytest.approx(1e-4)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    for s in (1, 37, 80):  # the paper's per-step cosine, lr0 * (1 + cos(pi s / N)) / 2
        assert lrs[s] == pytest.approx(1e-4 * (1 + math.cos(math.pi * s / 100)), rel=1e-12)
    with pytest.raises(ValueError):
        lr_at(101, cfg)
    with pytest.raises(ValueError):
        lr_at(-1, cfg)


def test_warmup_then_cosine_to_min_lr():
    lrs = [cosine_lr(s, 100, 1e-3, min_lr=1e-5, warmup_steps=10) for s in range(120)]
    assert lrs[:10] == pytest.approx([1e-4 * (s + 1) for s in range(10)])
    assert lrs[10] == 1e-3 and lrs[100] == pytest.approx(1e-5) and lrs[119] == pytest.approx(1e-5)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def _digest(values: list[float]) -> str:
    return hashlib.sha256(",".join(v.hex() for v in values).encode()).hexdigest()


@pytest.mark.parametrize(
    "settings,digest",
    [
        # the shipped extractor's command (maskgen/extract/weights/README.md)
        (dict(steps=2000, lr=1e-3, min_lr=1e-5, warmup_steps=100),
         "7b7d80cb07b61fa7b718c06daa95f65e4dbd7b07d8d93f084923bb39b1e7182a"),
        (dict(steps=6, lr=1e-3, min_lr=1e-5, warmup_steps=2),
         "b06f515383bd8e898b6974d3728f8f2ecbab486df919aa5fb658faef4531ff5f"),
        (dict(steps=50, lr=3e-4, min_lr=0.0, warmup_steps=0),
         "33558bab636f86122d56c43d548c532466194c0924f60ae826673776b646c4ae"),
    ],
)
def test_pretraining_lr_is_bit_for_bit_what_made_the_shipped_weights(tmp_path, settings, digest):
    """Digests of every step's lr (float.hex) recorded with pretrain's own schedule before it was shared: existing
    pretrained weights reproduce bit for bit from their recorded command only if these stay identical."""
    cfg = PretrainConfig(out=tmp_path / "w.pt", **settings)
    assert _digest([pretrain_lr_at(s, cfg) for s in range(cfg.steps + 1)]) == digest
