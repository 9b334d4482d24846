"""`--online-features`: the store's own extractor, rebuilt frozen on the training device, run on every crop."""

from __future__ import annotations

from typing import Any

import torch

from maskgen.errors import MaskgenError
from maskgen.train.config import TrainConfig


def build_online_extractor(store: Any, cfg: TrainConfig, device: torch.device) -> Any:
    """The store's extractor (same name, layer, weights), frozen on `device`; an error if it cannot be rebuilt."""
    from maskgen.extract.registry import build_extractor

    fp = dict(store.extractor)
    name = str(fp.get("name", ""))
    try:
        if name == "mind":
            extractor = build_extractor("mind", device=device, allow_download=False)
        else:
            kind = "anatomix" if name == "anatomix" else "auto"
            extractor = build_extractor(
                kind, weights=cfg.extractor_weights, layer=str(fp.get("layer", "final")), device=device,
                allow_download=False,
            )
    except MaskgenError as e:
        raise MaskgenError(
            f"--online-features needs the extractor that made {store.path} ({name}, layer {fp.get('layer')}): {e}"
        ) from None
    got = extractor.fingerprint()
    diffs = [k for k in ("name", "layer", "weights_sha256", "out_channels", "arch") if k in fp and fp[k] != got.get(k)]
    if diffs:
        raise MaskgenError(
            f"--online-features: the extractor found ({got.get('name')}, weights sha256 "
            f"{str(got.get('weights_sha256'))[:12]}) differs from the one that made {store.path} in "
            f"{', '.join(diffs)} (store: {fp.get('name')}, weights sha256 {str(fp.get('weights_sha256'))[:12]}); "
            "pass the same weights with --extractor-weights."
        )
    if extractor.out_channels != int(store.num_features):
        raise MaskgenError(f"extractor gives {extractor.out_channels} channels, the store {store.num_features}.")
    return extractor
