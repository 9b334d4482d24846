"""`--online-features`: the store's own extractor, rebuilt frozen on the training device, run on every crop."""

from __future__ import annotations

from typing import Any

import torch

from maskgen.errors import MaskgenError
from maskgen.train.config import TrainConfig


def build_online_extractor(store: Any, cfg: TrainConfig, device: torch.device) -> Any:
    """The store's extractor (same features), frozen on `device`; an error if it cannot be rebuilt."""
    from maskgen.extract.registry import rebuild_extractor

    extractor = rebuild_extractor(store.extractor, weights=cfg.extractor_weights,
                                  extract_config=store.attrs.get("extract_config"), device=device,
                                  purpose=f"--online-features needs the extractor that made {store.path}")
    if extractor.out_channels != int(store.num_features):
        raise MaskgenError(f"extractor gives {extractor.out_channels} channels, the store {store.num_features}.")
    return extractor
