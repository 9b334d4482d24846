"""Running a frozen extractor on a whole volume (padded, or sliding-window above a size threshold) or on crops."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from maskgen.extract.base import Extractor

DEFAULT_WINDOW = 128
DEFAULT_OVERLAP = 0.5
#: Volumes with more voxels than this go through sliding windows. The default anatomix network peaks at about
#: 0.7 KB per input voxel in float32 on the CPU (measured, max RSS at 128^3), so 160^3 voxels ~ 2.9 GB.
DEFAULT_THRESHOLD_VOXELS = 160**3
#: Sliding-window outputs are blended on the accelerator when the output and weight buffers fit in this many bytes
#: (a 256^3 volume of 16 channels needs ~1.1 GB), else on the CPU. The network's activations (~0.7 KB per window
#: voxel) are what sliding windows bound; the output costs (C + 1) x 4 bytes per voxel.
DEVICE_STITCH_MAX_BYTES = 4 * 2**30


def _ceil_to(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def padded_shape(shape: tuple[int, ...], multiple: int, min_size: int = 1) -> tuple[int, ...]:
    """Smallest spatial shape >= `shape` that is a multiple of `multiple` and at least `min_size` everywhere."""
    return tuple(max(_ceil_to(s, multiple), _ceil_to(min_size, multiple)) for s in shape)


def pad_to_multiple(
    x: torch.Tensor, multiple: int, min_size: int = 1, mode: str = "replicate"
) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad the 3 trailing dims of (B, C, Z, Y, X) symmetrically; returns (padded, slices that crop back)."""
    shape = tuple(x.shape[-3:])
    target = padded_shape(shape, multiple, min_size)
    if target == shape:
        return x, tuple(slice(0, s) for s in shape)
    before = [(t - s) // 2 for s, t in zip(shape, target)]
    after = [t - s - b for s, t, b in zip(shape, target, before)]
    # F.pad takes the last dim first: (x_before, x_after, y_before, y_after, z_before, z_after)
    pads = [p for b, a in zip(reversed(before), reversed(after)) for p in (b, a)]
    return F.pad(x, pads, mode=mode), tuple(slice(b, b + s) for b, s in zip(before, shape))


def _autocast(extractor: Extractor, device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and extractor.supports_autocast:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _run_padded(extractor: Extractor, x: torch.Tensor) -> torch.Tensor:
    padded, crop = pad_to_multiple(x, extractor.size_multiple, extractor.min_size)
    with _autocast(extractor, x.device):
        out = extractor(padded)
    return out[(slice(None), slice(None), *crop)].float()


def extract_volume(extractor: Extractor, image: np.ndarray, device: str | torch.device = "cpu", **kwargs: Any
                   ) -> np.ndarray:
    """`extract_tensor` as a (C, Z, Y, X) float32 NumPy array (same options)."""
    return extract_tensor(extractor, image, device, **kwargs).cpu().numpy()


def extract_tensor(
    extractor: Extractor,
    image: np.ndarray,
    device: str | torch.device = "cpu",
    window: int = DEFAULT_WINDOW,
    threshold_voxels: int | None = DEFAULT_THRESHOLD_VOXELS,
    overlap: float = DEFAULT_OVERLAP,
    sw_batch_size: int = 1,
) -> torch.Tensor:
    """Features of one (1, Z, Y, X) float32 image -> (C, Z, Y, X) float32 contiguous tensor where it was made (on
    `device`, or on the CPU when sliding-window outputs were blended there); `extract_volume` returns it as NumPy.

    Up to `threshold_voxels` voxels (None: no limit) the whole volume runs at once, padded (replicate) to a multiple
    of `extractor.size_multiple` and cropped back. Larger volumes use MONAI `sliding_window_inference` with
    `window`^3 windows (rounded up to the size multiple), `overlap` and Gaussian blending (`gaussian_weight_map`);
    windows run on `device` and are blended there when the output fits in `DEVICE_STITCH_MAX_BYTES`, else on the
    CPU, so device memory stays bounded. `torch.inference_mode`;
    bf16 autocast on CUDA for extractors that support it. The extractor is moved to `device`.
    """
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"extract_volume: expected an image of shape (1, Z, Y, X), got {image.shape}")
    if window < 1 or not 0 <= overlap < 1:
        raise ValueError(f"extract_volume: need window >= 1 and 0 <= overlap < 1, got {window}, {overlap}")
    device = torch.device(device)
    extractor.to(device)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    n_voxels = int(np.prod(image.shape[1:]))
    with torch.inference_mode():
        if threshold_voxels is None or n_voxels <= threshold_voxels:
            out = _run_padded(extractor, x.to(device))
        else:
            out = _sliding_window(extractor, x, device, window, overlap, sw_batch_size)
        return out[0].contiguous()


@dataclass
class StoreFeatures:
    """Features ready for the store: `values` (C, Z, Y, X) NumPy in the dtype the writer stores (float16), or float32
    (int8 stores, which the writer quantises, and features that cannot be cast: the writer names the problem), and
    per-channel mean/std computed where the features were made."""

    values: np.ndarray
    mean: list[float]
    std: list[float]
    absmax: float = 0.0        # largest |value| (NaN when some value is not finite)


#: Largest magnitude float16 holds; features beyond it would become inf in a float16 store.
FLOAT16_MAX = 65504.0


def feature_stats(features: torch.Tensor) -> tuple[list[float], list[float], float]:
    """(per-channel mean, std, largest |value|) of (C, ...) features, accumulated in float64: on the accelerator
    with torch, on the CPU with NumPy (a float64 `einsum` for the sum of squares: ~4x faster than `np.std`)."""
    flat = features.reshape(features.shape[0], -1)
    mean, sq, amax = _moments_torch(flat) if features.device.type != "cpu" else _moments_numpy(flat.numpy())
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite features: the writer names them
        std = np.sqrt(np.maximum(sq - mean**2, 0.0))
    return [float(m) for m in mean], [float(s) for s in std], amax


def _moments_torch(flat: torch.Tensor) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-row mean and mean square (float64) and max |value|, computed where `flat` is."""
    n = max(flat.shape[1], 1)
    mean = flat.sum(1, dtype=torch.float64) / n
    sq = (flat.double() ** 2).sum(1) / n
    amax = float(flat.abs().max()) if flat.numel() else 0.0
    return mean.cpu().numpy(), sq.cpu().numpy(), amax


def _moments_numpy(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    n = max(flat.shape[1], 1)
    mean = flat.mean(axis=1, dtype=np.float64)
    sq = np.einsum("ij,ij->i", flat, flat, dtype=np.float64) / n
    amax = float(max(abs(float(flat.max(initial=0.0))), abs(float(flat.min(initial=0.0)))))
    return mean, sq, amax


def extract_for_store(
    extractor: Extractor, image: np.ndarray, device: str | torch.device = "cpu", dtype: str = "float16", **kwargs
) -> StoreFeatures:
    """`extract_tensor`, then `store_features`: statistics and the float16 cast where the features are (the
    accelerator when there is one: half the bytes cross to the host), so the writer only writes."""
    with torch.inference_mode():
        return store_features(extract_tensor(extractor, image, device, **kwargs), dtype)


def store_features(out: torch.Tensor, dtype: str = "float16") -> StoreFeatures:
    """(C, Z, Y, X) features -> StoreFeatures: per-channel statistics, then float16 when the store keeps float16
    and every value fits (else float32, for the writer to quantise (int8) or to name the problem)."""
    with torch.inference_mode():
        mean, std, amax = feature_stats(out)
        castable = dtype == "float16" and np.isfinite(amax) and amax <= FLOAT16_MAX
        values = (out.half() if castable else out.float()).cpu().numpy()
    return StoreFeatures(values, mean, std, amax)


def gaussian_weight_map(roi_size: tuple[int, ...], sigma_scale: float = 0.125) -> torch.Tensor:
    """Separable Gaussian blending weights (max 1, sigma = sigma_scale * window size) WITHOUT MONAI's 1e-3 floor.

    MONAI clamps its Gaussian map at 1e-3, so near the volume's faces, where every covering window has a weight
    near that floor, a window whose edge (replicate-padded, no real context) lies on the voxel counts as much as a
    window centred on it. Unclamped weights keep the centred window dominant: on a 40x44x36 test volume with 24^3
    windows this cut the mean deviation from whole-volume features about 10x (MIND-SSC and a small anatomix net).
    The smallest weight, at a window corner, is about 1e-10 (fine in float32).
    """
    axes = [
        torch.exp(-0.5 * ((torch.arange(r, dtype=torch.float64) - (r - 1) / 2) / (sigma_scale * r)) ** 2)
        for r in roi_size
    ]
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return (weights / weights.max()).clamp_min(1e-30).float()


def _sliding_window(
    extractor: Extractor, x: torch.Tensor, device: torch.device, window: int, overlap: float, sw_batch_size: int
) -> torch.Tensor:
    from monai.inferers import sliding_window_inference

    padded, crop = pad_to_multiple(x, extractor.size_multiple, extractor.min_size)
    buffer_bytes = (extractor.out_channels + 1) * 4 * padded[0, 0].numel()
    stitch = device if device.type != "cpu" and buffer_bytes <= DEVICE_STITCH_MAX_BYTES else torch.device("cpu")
    roi = _ceil_to(max(window, extractor.min_size), extractor.size_multiple)
    roi_size = tuple(min(roi, s) for s in padded.shape[2:])

    def predictor(w: torch.Tensor) -> torch.Tensor:
        with _autocast(extractor, w.device):
            return extractor(w).float()

    out = sliding_window_inference(
        padded,
        roi_size=roi_size,
        sw_batch_size=sw_batch_size,
        predictor=predictor,
        overlap=overlap,
        mode="gaussian",
        padding_mode="replicate",
        roi_weight_map=gaussian_weight_map(roi_size),
        sw_device=device,
        device=stitch,
    )
    return torch.as_tensor(out)[(slice(None), slice(None), *crop)].float()


def extract_batch(extractor: Extractor, crops: torch.Tensor) -> torch.Tensor:
    """Features of (B, 1, z, y, x) crops on the extractor's device -> (B, C, z, y, x) float32, same device.

    For on-the-fly features during training (`--online-features`): pads to the size multiple and crops back,
    bf16 autocast on CUDA. Runs under `torch.no_grad` rather than `inference_mode` because the result feeds a
    network being trained, and inference tensors cannot be saved for its backward pass.
    """
    if crops.ndim != 5 or crops.shape[1] != 1:
        raise ValueError(f"extract_batch: expected crops of shape (B, 1, z, y, x), got {tuple(crops.shape)}")
    with torch.no_grad():
        return _run_padded(extractor, crops.float())
