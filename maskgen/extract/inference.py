"""Running a frozen extractor on a whole volume (padded, or sliding-window above a size threshold) or on crops."""

from __future__ import annotations

import contextlib
import math

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


def extract_volume(
    extractor: Extractor,
    image: np.ndarray,
    device: str | torch.device = "cpu",
    window: int = DEFAULT_WINDOW,
    threshold_voxels: int | None = DEFAULT_THRESHOLD_VOXELS,
    overlap: float = DEFAULT_OVERLAP,
    sw_batch_size: int = 1,
) -> np.ndarray:
    """Features of one (1, Z, Y, X) float32 image -> (C, Z, Y, X) float32 NumPy array.

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
    return out[0].cpu().numpy()


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
