"""Foreground locations per case: voxel coordinates of each label class, sampled once and cached in the store.

The cache is one `.npz` per case under the store's `.maskgen/fg/` prefix, written through the store's zarr Store
(a whole-object write: a temporary file renamed on a local disk, one PUT on an object store), so DataLoader workers
may compute it concurrently: each computes the same result and the last write wins. `delete_case` removes it.
"""

from __future__ import annotations

import io as _io
from typing import Any

import numpy as np

from maskgen.store.kv import StoreIO
from maskgen.store.meta import fg_key


def sample_locations(label: np.ndarray, num_classes: int, max_per_class: int, seed: int) -> dict[int, np.ndarray]:
    """Up to `max_per_class` coordinates (N, 3) zyx int32 of each class 1..K of `label`, sorted by voxel index."""
    rng = np.random.default_rng(seed)
    locs: dict[int, np.ndarray] = {}
    for k in range(1, num_classes):
        idx = np.flatnonzero(label == k)
        if idx.size > max_per_class:
            idx = np.sort(rng.choice(idx, size=max_per_class, replace=False))
        locs[k] = np.stack(np.unravel_index(idx, label.shape), axis=1).astype(np.int32).reshape(-1, 3)
    return locs


def load(io: StoreIO, case_id: str, max_per_class: int, seed: int, num_classes: int) -> dict[int, np.ndarray] | None:
    """The cached locations made with these settings, or None (absent, other settings or unreadable)."""
    raw = io.get(fg_key(case_id))
    if raw is None:
        return None
    try:
        with np.load(_io.BytesIO(raw)) as z:
            if (int(z["max_per_class"]), int(z["seed"]), int(z["num_classes"])) != (max_per_class, seed, num_classes):
                return None
            return {k: z[f"class_{k}"] for k in range(1, num_classes)}
    except (OSError, KeyError, ValueError, EOFError):
        return None


def save(io: StoreIO, case_id: str, locs: dict[int, np.ndarray], max_per_class: int, seed: int,
         num_classes: int) -> None:
    """Cache the locations; a store that cannot be written (read-only) is left as it is."""
    buf = _io.BytesIO()
    np.savez(buf, max_per_class=max_per_class, seed=seed, num_classes=num_classes,
             **{f"class_{k}": v for k, v in locs.items()})
    try:
        io.writable().set(fg_key(case_id), buf.getvalue())
    except (OSError, ValueError, PermissionError):
        return  # the locations are still returned, just not cached


def cached_locations(io: StoreIO, case_id: str, read_label: Any, num_classes: int, max_per_class: int,
                     seed: int) -> dict[int, np.ndarray]:
    """The cached locations, else `read_label()` sampled with `sample_locations` and cached."""
    cached = load(io, case_id, max_per_class, seed, num_classes)
    if cached is not None:
        return cached
    locs = sample_locations(read_label(), num_classes, max_per_class, seed)
    save(io, case_id, locs, max_per_class, seed, num_classes)
    return locs
