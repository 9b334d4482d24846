"""`maskgen extract --views K`: K intensity-augmented views of each train case, with the features of each.

In the public code features are computed online from each crop after intensity augmentation, so the feature channels
carry the augmentation's effect; features cached from the clean volume do not. A view is the whole preprocessed
volume through the paper's intensity transforms (C.2; `maskgen.data.intensity_aug`, each firing with `VIEW_PROB`,
at least one per view), min-max scaled to [0, 1], then through the frozen extractor; image and features are stored
as `image_viewK` / `features_viewK` (`maskgen.store.views`). Training draws one view per crop
(`maskgen.train.loader`) and adds only the spatial augmentation. Each view is seeded per (store seed, case, view).
"""

from __future__ import annotations

from typing import Any

from maskgen.data.intensity_aug import INTENSITY_NAMES, augment_volume, view_params, view_seed
from maskgen.store.views import VIEW_SPLITS, CaseView, root_views_attr

#: Probability that each intensity transform fires in a view (the paper's augmentation probability, C.2).
VIEW_PROB = 0.33
#: Seed of every store's views (a view's seed is a function of it, the case id and the view index).
VIEW_SEED = 0


def views_attr(count: int) -> dict[str, Any] | None:
    """The store's root `views` attribute for `count` views per train case (None for 0)."""
    return root_views_attr(count, VIEW_PROB, VIEW_SEED, INTENSITY_NAMES)


def wants_views(case: Any, count: int) -> bool:
    """Whether `case` gets augmented views: only train cases (validation and test images are never augmented)."""
    return count > 0 and getattr(case, "split", None) in VIEW_SPLITS


def extract_views(extractor: Any, image: Any, case_id: str, count: int, device: str = "cpu",
                  dtype: str = "float16") -> list[CaseView]:
    """Views 1..count of a case: seeded intensity augmentation of the (1, Z, Y, X) image, then the extractor."""
    from maskgen.errors import MaskgenError
    from maskgen.extract.inference import FLOAT16_MAX, extract_tensor, store_features

    views = []
    for k in range(1, int(count) + 1):
        seed = view_seed(VIEW_SEED, case_id, k)
        params = view_params(seed, VIEW_PROB)
        augmented = augment_volume(image, params)
        feats = store_features(extract_tensor(extractor, augmented, device=device), dtype)
        if dtype == "float16" and FLOAT16_MAX < feats.absmax < float("inf"):
            raise MaskgenError(f"case {case_id}: features of augmented view {k} reach {feats.absmax:.3g}, beyond "
                               f"what float16 holds ({FLOAT16_MAX:g}); use --dtype int8 for this extractor")
        views.append(CaseView(augmented, feats.values, feats.mean, feats.std,
                              {"seed": seed, "transforms": params.to_record()}))
    return views
