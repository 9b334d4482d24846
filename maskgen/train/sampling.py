"""Where training crops come from: a train case, and a crop start that is uniform or centred on foreground."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

FG_MAX_PER_CLASS = 10000  # foreground voxels kept per class and case (nnU-Net keeps 10k as well)
FG_SEED = 0


@dataclass(frozen=True)
class CropChoice:
    case_id: str
    start_zyx: tuple[int, int, int]
    foreground_class: int  # 0 = uniform crop


def sample_rng(seed: int, step: int, slot: int) -> np.random.Generator:
    """The random stream of sample `slot` of training step `step`: a pure function of (run seed, step, slot).

    Every crop, its foreground choice and its augmentation parameters come from this stream, so a run replays
    exactly, resumes exactly at any step, and gives the same batches whatever the number of loader workers.
    """
    return np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=(int(step), int(slot))))


def start_range(shape: int, crop: int) -> tuple[int, int]:
    """Inclusive range of crop starts along one axis: inside the volume, or covering it when the crop is larger."""
    return (min(0, shape - crop), max(0, shape - crop))


class CropSampler:
    """Uniform crops, or with probability `fg_fraction` a crop centred on a voxel of a random foreground class
    present in the case (nnU-Net-style oversampling), from the store's cached foreground locations."""

    def __init__(
        self,
        store: Any,
        case_ids: Sequence[str],
        crop_zyx: Sequence[int],
        fg_fraction: float,
        cache_cases: int = 64,
    ):
        if not case_ids:
            raise ValueError("CropSampler: no cases to sample from")
        if not 0.0 <= fg_fraction <= 1.0:
            raise ValueError(f"CropSampler: fg_fraction={fg_fraction} must be in [0, 1]")
        self.store = store
        self.case_ids = list(case_ids)
        self.crop = tuple(int(c) for c in crop_zyx)
        self.fg_fraction = float(fg_fraction)
        self.cache_cases = int(cache_cases)
        self._shapes = {c.case_id: tuple(c.shape_zyx) for c in store.cases() if c.case_id in set(self.case_ids)}
        missing = [c for c in self.case_ids if c not in self._shapes]
        if missing:
            raise ValueError(f"CropSampler: cases not in the store: {missing[:5]}")
        self._fg: OrderedDict[str, dict[int, np.ndarray]] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fg"] = OrderedDict()
        return state

    def foreground(self, case_id: str) -> dict[int, np.ndarray]:
        """Cached foreground locations of a case (a small per-process LRU over the store's on-disk cache)."""
        locs = self._fg.get(case_id)
        if locs is None:
            locs = self.store.foreground_locations(case_id, max_per_class=FG_MAX_PER_CLASS, seed=FG_SEED)
            self._fg[case_id] = locs
            while len(self._fg) > self.cache_cases:
                self._fg.popitem(last=False)
        else:
            self._fg.move_to_end(case_id)
        return locs

    def sample(self, rng: np.random.Generator) -> CropChoice:
        """Draws a fixed number of values from `rng` before the optional foreground lookup."""
        case_id = self.case_ids[int(rng.integers(len(self.case_ids)))]
        shape = self._shapes[case_id]
        want_fg = rng.random() < self.fg_fraction
        uniform = [int(rng.integers(lo, hi + 1)) for lo, hi in (start_range(s, c) for s, c in zip(shape, self.crop))]
        u_class, u_voxel = rng.random(2)
        if want_fg:
            locs = self.foreground(case_id)
            present = sorted(k for k, v in locs.items() if len(v))
            if present:
                k = present[int(u_class * len(present))]
                voxel = locs[k][int(u_voxel * len(locs[k]))]
                start = []
                for v, s, c in zip(voxel, shape, self.crop):
                    lo, hi = start_range(s, c)
                    start.append(int(np.clip(int(v) - c // 2, lo, hi)))
                return CropChoice(case_id, tuple(start), k)  # type: ignore[arg-type]
        return CropChoice(case_id, tuple(uniform), 0)  # type: ignore[arg-type]
