"""Validation during training (`maskgen.train.validate`): Dice means, and the Validator on a store in memory."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch

from maskgen.train.validate import Validator, summarize


def test_summary_means_over_scored_classes_then_cases():
    out = summarize({"a": np.array([1.0, np.nan, 0.5]), "b": np.array([0.0, np.nan, np.nan])})
    assert out["val_cases"] == 2
    assert out["val_dice"] == (0.75 + 0.0) / 2
    assert out["val_dice_per_class"] == [0.5, None, 0.5]
    assert summarize({}) == {}


class _Store:
    """Two val cases whose label is the image thresholded; counts whole-case reads."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.data, self.reads = {}, 0
        for cid in ("v0", "v1"):
            image = rng.random((1, 16, 16, 16)).astype(np.float32)
            self.data[cid] = {"image": image, "features": np.zeros((2, 16, 16, 16), np.float32),
                              "label": (image[0] > 0.5).astype(np.uint8)}

    def cases(self, split=None):
        return [SimpleNamespace(case_id=c, has_label=True, feature_mean=None, feature_std=None) for c in self.data]

    def case(self, case_id):
        return SimpleNamespace(case_id=case_id, feature_scale=None)

    def read_case(self, case_id, dtype=np.float32, features=True):
        self.reads += 1
        data = self.data[case_id]
        return {**data, "features": data["features"] if features else None}


class _Threshold(torch.nn.Module):
    """A 'network' that segments the image channel perfectly: logits of (background, foreground)."""

    def forward(self, z):
        return torch.cat([0.5 - z[:, :1], z[:, :1] - 0.5], 1) * 100


def test_validator_scores_every_val_case_and_caches_within_its_budget():
    cfg = SimpleNamespace(inputs="image", feature_norm="crop", crop_zyx=(16, 16, 16), val_overlap=0.0, batch_size=1,
                          empty_class="ignore")
    store = _Store()
    model = _Threshold().train()
    result = Validator(store, cfg, torch.device("cpu"), num_classes=2)(model)
    assert result["val_cases"] == 2 and math.isclose(result["val_dice"], 1.0) and model.training
    cached = Validator(store, cfg, torch.device("cpu"), 2)
    reads = store.reads
    cached(model), cached(model)
    assert store.reads - reads == 2                     # read once, then from memory
    uncached = Validator(store, cfg, torch.device("cpu"), 2, cache_bytes=0)
    uncached(model), uncached(model)
    assert store.reads - reads == 2 + 4                 # over budget: read at every validation
