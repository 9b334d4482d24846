"""Real label maps from a user folder (NIfTI), as an optional source of anatomically shaped ensembles.

Each sample is a random crop of one label map (zero-padded where the map is smaller than the crop),
relabelled to consecutive values. Files are read lazily with nibabel and kept in memory (bounded).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maskgen.errors import MaskgenError
from maskgen.pretrain.ensembles import relabel_consecutive

_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class LabelCropParams:
    index: int                         # file index in `LabelFolder.files`
    start_fraction: tuple[float, float, float]   # crop start as a fraction of the free range per axis


class LabelFolder:
    """All `*.nii` / `*.nii.gz` label maps under `path` (recursively), cropped to `shape_zyx`."""

    def __init__(self, path: str | Path, shape_zyx: tuple[int, int, int], cache_size: int = 16) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise MaskgenError(f"label folder {self.path} does not exist or is not a folder; pass a folder of "
                               "NIfTI label maps to --label-dir, or leave it out to use synthetic ensembles only")
        self.files = sorted(p for p in self.path.rglob("*") if p.is_file() and p.name.endswith(_SUFFIXES))
        if not self.files:
            raise MaskgenError(f"label folder {self.path} holds no .nii or .nii.gz files; add label maps or "
                               "leave out --label-dir")
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        self.shape_zyx = tuple(int(s) for s in shape_zyx)
        self.cache_size = cache_size
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> np.ndarray:
        """The label map as (Z, Y, X) int64 (store order: the NIfTI's (x, y, z) axes reversed)."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        import nibabel as nib

        path = self.files[index]
        try:
            data = np.asanyarray(nib.load(str(path)).dataobj)
        except Exception as e:  # nibabel raises several types for unreadable files
            raise MaskgenError(f"cannot read label map {path}: {e}; remove or fix the file") from e
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise MaskgenError(f"label map {path} has shape {data.shape}; expected a 3D volume")
        if np.issubdtype(data.dtype, np.floating):
            if not np.all(np.isfinite(data)) or not np.allclose(data, np.round(data)):
                raise MaskgenError(f"label map {path} has non-integer values; it does not look like a label map")
            data = np.round(data)
        arr = np.ascontiguousarray(data.astype(np.int64).transpose(2, 1, 0))
        self._cache[index] = arr
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return arr

    def sample(self, rng: np.random.Generator) -> LabelCropParams:
        return LabelCropParams(index=int(rng.integers(0, len(self.files))),
                               start_fraction=tuple(float(v) for v in rng.random(3)))

    def apply(self, params: LabelCropParams) -> torch.Tensor:
        arr = self.load(params.index)
        out = np.zeros(self.shape_zyx, dtype=np.int64)
        src, dst = [], []
        for size, crop, frac in zip(arr.shape, self.shape_zyx, params.start_fraction):
            if size >= crop:
                start = int(frac * (size - crop + 1)) if size > crop else 0
                start = min(start, size - crop)
                src.append(slice(start, start + crop))
                dst.append(slice(0, crop))
            else:
                offset = min(int(frac * (crop - size + 1)), crop - size)
                src.append(slice(0, size))
                dst.append(slice(offset, offset + size))
        out[tuple(dst)] = arr[tuple(src)]
        return relabel_consecutive(torch.from_numpy(out))
