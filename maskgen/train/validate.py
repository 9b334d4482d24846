"""Validation during training: mean foreground Dice over the val split's full volumes (sliding window).

With several data-parallel processes each rank predicts its share of the val cases (`Dist.shard`) and the per-case
Dice are gathered (`Dist.gather`): every rank gets the numbers one process would compute over all cases.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

from maskgen.train.config import TrainConfig
from maskgen.train.dice import dice_per_class
from maskgen.train.inference import predict_volume, read_for_inference
from maskgen.train.inputs import uses_features

VAL_CACHE_BYTES = 2 * 1024**3  # val volumes kept in memory between validations, at most


class Validator:
    """Mean foreground Dice over the val split's full volumes (sliding window, Gaussian blending)."""

    def __init__(self, store: Any, cfg: TrainConfig, device: torch.device, num_classes: int,
                 cache_bytes: int = VAL_CACHE_BYTES, dist: Any = None):
        from maskgen.train.distributed import Dist

        self.store, self.cfg, self.device, self.num_classes = store, cfg, device, num_classes
        self.dist = dist or Dist()
        self.cases = [c for c in store.cases(split="val") if c.has_label]
        self.cache_bytes = int(cache_bytes)
        self._cache: dict[str, dict[str, Any]] = {}
        self._cached_bytes = 0

    def _read(self, case_id: str) -> dict[str, Any]:
        data = self._cache.get(case_id)
        if data is None:
            data = read_for_inference(self.store, case_id, uses_features(self.cfg.inputs))
            size = sum(v.nbytes for v in data.values() if isinstance(v, np.ndarray))
            if self._cached_bytes + size <= self.cache_bytes:
                self._cache[case_id] = data
                self._cached_bytes += size
        return data

    def __call__(self, model: torch.nn.Module) -> dict[str, Any]:
        """{"val_dice", "val_dice_per_class", "val_cases", "val_empty_class"} ({} without val cases), Dice with the
        run's `empty_class` convention (`maskgen.train.dice`); the model is left in train mode."""
        model.eval()
        per_case = {}
        try:
            for info in self.dist.shard(self.cases):
                data = self._read(info.case_id)
                stats = (info.feature_mean, info.feature_std) if self.cfg.feature_norm == "volume" else None
                probs = predict_volume(
                    model, data["image"], data["features"], self.cfg, self.device, self.cfg.val_overlap, stats
                )
                per_case[info.case_id] = dice_per_class(probs.argmax(0), data["label"], self.num_classes - 1,
                                                        self.cfg.empty_class)
        finally:
            model.train()
        gathered = {k: v for part in self.dist.gather(per_case) for k, v in part.items()}
        result = summarize({c.case_id: gathered[c.case_id] for c in self.cases})
        return {**result, "val_empty_class": self.cfg.empty_class} if result else result


def summarize(per_case: dict[str, np.ndarray]) -> dict[str, Any]:
    """Mean over cases of each case's mean over its scored classes; per-class means (None where never scored)."""
    if not per_case:
        return {}
    matrix = np.stack(list(per_case.values()))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class never scored: NaN, reported as None
        case_means = np.nanmean(matrix, axis=1)
        class_means = np.nanmean(matrix, axis=0)
    return {
        "val_dice": float(np.nanmean(case_means)),
        "val_dice_per_class": [None if math.isnan(v) else float(v) for v in class_means],
        "val_cases": len(per_case),
    }

