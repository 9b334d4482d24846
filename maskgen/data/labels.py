"""Label values: the pipeline's remapping (label_map, binarize_labels) and the checks that make a label usable."""

from __future__ import annotations

import numpy as np

from maskgen.data.pipeline import Pipeline

# Geometry tolerance between an image and its label (and used by preprocessing): the voxel axes may differ by 0.1% of
# the smallest voxel size, the origin by 1% of it. Float32 header round-off is far below this; a real misregistration
# is far above.
AXES_TOLERANCE = 1e-3
ORIGIN_TOLERANCE = 1e-2


def affine_mismatch(image_affine: np.ndarray, label_affine: np.ndarray) -> str | None:
    """Why two affines describe different grids (beyond the tolerance above), or None when they match."""
    a, b = np.asarray(image_affine, dtype=np.float64), np.asarray(label_affine, dtype=np.float64)
    voxel = float(np.sqrt((a[:3, :3] ** 2).sum(axis=0)).min())
    axes = float(np.abs(a[:3, :3] - b[:3, :3]).max())
    origin = float(np.abs(a[:3, 3] - b[:3, 3]).max())
    if axes > AXES_TOLERANCE * voxel or origin > ORIGIN_TOLERANCE * voxel:
        return f"voxel axes differ by up to {axes:.4g} mm and origins by {origin:.4g} mm"
    return None


def remap_labels(values: np.ndarray, pipeline: Pipeline) -> np.ndarray:
    """Apply `binarize_labels` or `[label_map]` to an integer array (values not in the map stay as they are)."""
    if pipeline.binarize_labels:
        return (values != 0).astype(values.dtype)
    if not pipeline.label_map:
        return values
    out = values.copy()
    for raw, new in pipeline.label_map:
        out[values == raw] = new
    return out


def check_label(data: np.ndarray, pipeline: Pipeline) -> tuple[np.ndarray | None, list[str]]:
    """(uint8 label with values 0..K after remapping, []) or (None, [problems...]).

    Floats are accepted when every value is a whole number (0.0/1.0 after a cast); 0.5, NaN, negative values and values
    above K (after remapping) are problems, each named with the offending values and how to fix them.
    """
    arr = np.asarray(data)
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            return None, [f"label has {int((~finite).sum())} NaN/Inf voxels; labels must be whole numbers"]
        fractional = arr != np.round(arr)
        if fractional.any():
            examples = np.unique(arr[fractional])
            return None, [
                f"label has non-integer values {_fmt(examples)} ({int(fractional.sum())} voxels); it looks like a "
                "probability map or an interpolated label: export it with nearest-neighbour resampling"
            ]
        if arr.size and (arr.min() < -(2**31) or arr.max() >= 2**31):
            return None, [f"label has values out of range ({arr.min():g}..{arr.max():g})"]
        arr = arr.astype(np.int32)
    elif arr.dtype.kind not in "iu":
        return None, [f"label has unsupported data type {arr.dtype}; save it as an integer type"]
    values = _unique_ints(arr)
    mapped = remap_labels(values, pipeline)
    k = len(pipeline.classes)
    bad = values[(mapped < 0) | (mapped > k)]
    if bad.size:
        hint = " (a 0/255 mask: divide it by 255)" if 255 in bad.tolist() and k == 1 else ""
        return None, [
            f"label has undeclared values {_fmt(bad)}; the pipeline declares 0..{k} "
            f"({', '.join(pipeline.classes)}){hint}: fix the label, or the pipeline's classes / [label_map]"
        ]
    if not values.size:
        return np.zeros(arr.shape, dtype=np.uint8), []
    lo = min(int(values.min()), 0)  # negative raw values are possible when [label_map] maps them
    lut = np.zeros(int(values.max()) - lo + 1, dtype=np.uint8)
    lut[values - lo] = mapped.astype(np.uint8)
    return (lut[arr] if lo == 0 else lut[arr.astype(np.int64) - lo]), []


def _unique_ints(arr: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer array (a histogram when the range is small: much faster than sorting)."""
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    lo, hi = int(arr.min()), int(arr.max())
    if lo >= 0 and hi < (1 << 16):
        return np.flatnonzero(np.bincount(arr.ravel(), minlength=hi + 1)).astype(np.int64)
    return np.unique(arr).astype(np.int64)


def _fmt(values: np.ndarray, n: int = 8) -> str:
    items = [f"{v:g}" if isinstance(v, (float, np.floating)) else str(int(v)) for v in values.tolist()[:n]]
    return "[" + ", ".join(items) + (", ...]" if len(values) > n else "]")
