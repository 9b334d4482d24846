"""Augmented views of a case (`maskgen extract --views K`): array names and the records kept in the store.

Besides the clean `image` / `features`, a train case may hold K intensity-augmented views: `image_view1` (the whole
volume through the paper's intensity transforms, min-max scaled) and `features_view1` (the extractor's features of
that augmented image), ... `image_viewK`, `features_viewK`, with the clean arrays' shapes, chunks, dtypes and
checksums. The case attribute `views` lists one record per view: `seed` (its random seed, a pure function of the
store's view seed, the case id and the view index), `transforms` ({transform name: MONAI random-state seed} of the
transforms that fired), `feature_mean` / `feature_std` (per channel), `feature_scale` (int8 stores). The root
attribute `views` holds the settings ({"count", "prob", "seed", "transforms", "splits"}), compared when a store is
reused. Training reads view v (0 = clean) through `FeatureStore.read_crop(..., view=v)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from maskgen.store.layout import FEATURES, IMAGE

VIEWS_ATTR = "views"
VIEW_SPLITS = ("train",)  # only training reads augmented views: val/test cases get none


def image_name(view: int) -> str:
    """The image array of view `view` (0: the clean `image`)."""
    return IMAGE if view == 0 else f"{IMAGE}_view{int(view)}"


def features_name(view: int) -> str:
    """The features array of view `view` (0: the clean `features`)."""
    return FEATURES if view == 0 else f"{FEATURES}_view{int(view)}"


def view_array_names(count: int) -> list[str]:
    """Array names of views 1..count, image then features of each."""
    return [n for v in range(1, int(count) + 1) for n in (image_name(v), features_name(v))]


@dataclass
class CaseView:
    """One augmented view, ready to write: image (1, Z, Y, X) float in [0, 1], features (C, Z, Y, X) (float16 or
    float32), their per-channel statistics and the view's record (seed, transforms)."""

    image: np.ndarray
    features: np.ndarray
    mean: list[float]
    std: list[float]
    record: dict[str, Any] = field(default_factory=dict)


def root_views_attr(count: int, prob: float, seed: int, transforms: tuple[str, ...]) -> dict[str, Any] | None:
    """The root attribute `views` of a store made with `count` views (None for 0: stores without views carry none,
    as stores made before views existed)."""
    if int(count) <= 0:
        return None
    return {"count": int(count), "prob": float(prob), "seed": int(seed), "transforms": list(transforms),
            "splits": list(VIEW_SPLITS)}


def store_view_count(root_attrs: dict[str, Any]) -> int:
    """Views per train case a store was made with (0 for stores without views)."""
    return int(((root_attrs or {}).get(VIEWS_ATTR) or {}).get("count", 0))
