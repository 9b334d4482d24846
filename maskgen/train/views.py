"""Which stored view a training crop reads (`maskgen extract --views K`, `maskgen train --views`).

In the public code the features of a crop are computed after its intensity augmentation. With K augmented views in
the store (`maskgen.store.views`), each crop reads one view's image and features: the clean view (0) when none of
the paper's intensity transforms fires for that crop (probability (1 - p)^7 at `--aug-prob` p), else view
1 + u, u uniform in 0..K-1. The intensity transforms then do not run on the crop (its image must stay the one its
features were computed from: for the clean view too); only the spatial augmentation is applied on top. The draw
comes from the crop's random stream (`maskgen.train.sampling.sample_rng`) after the augmentation's own draws, so a
run replays exactly; runs without views draw nothing more and replay as before.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from maskgen.errors import MaskgenError, OptionError
from maskgen.train.augment import AugParams, IntensityParams


def choose_view(params: AugParams, rng: np.random.Generator, views: int) -> tuple[AugParams, int]:
    """(params without intensity transforms, the view to read) for a crop whose sampled augmentation is `params`;
    `views` = 0 leaves `params` as they are and reads the clean view."""
    if views <= 0:
        return params, 0
    u = int(rng.integers(views))  # drawn whatever the outcome: the stream stays aligned
    view = 1 + u if params.intensity.any else 0
    return AugParams(params.spatial, IntensityParams()), view


def resolve_views(views: int | None, store: Any, train_cases: tuple[str, ...], reads_cached_features: bool) -> int:
    """The views a run draws from: `--views auto` (None) = every view the store has when the run reads cached
    features, else 0; an explicit count must not exceed what each train case holds (MaskgenError/OptionError)."""
    have = int(store.view_count)
    if views is None:
        views = have if reads_cached_features else 0
    if views > have:
        raise OptionError("views", views, f"asks for more augmented views than {store.path} has ({have} per train "
                          f"case); use {{views}} {have} or fewer (auto: all of them), or re-extract the store with "
                          f"`maskgen extract --views {views} --overwrite`.")
    if views:
        short = sorted(c for c in train_cases if store.case(c).num_views < views)
        if short:
            raise MaskgenError(f"train case(s) {', '.join(short[:5])} of {store.path} hold fewer than {views} augmented "
                               "views (their split changed after extraction?); re-extract them with `maskgen extract "
                               f"--redo {','.join(short[:5])}` or train with --views 0.")
    return views
