"""Whole-volume prediction with MONAI sliding-window inference, assembling inputs exactly as training does."""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from maskgen.train.inputs import _as5d, assemble_inputs, uses_features, uses_image


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, nothing on the CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def read_for_inference(store: Any, case_id: str, with_features: bool) -> dict[str, Any]:
    """A store case for `predict_volume`: image, label and, only `with_features`, the features (an image-only run
    reads none of them); float16 as a float16 store holds them (exact, half the bytes: `predict_volume` converts
    each window), float32 for int8 features (dequantised as the training loader does)."""
    dtype = np.float16 if store.case(case_id).feature_scale is None else np.float32
    return store.read_case(case_id, dtype=dtype, features=with_features)


def predict_volume(
    model: torch.nn.Module,
    image: Any,
    features: Any,
    cfg: Any,
    device: str | torch.device = "cpu",
    overlap: float = 0.5,
    stats: Any = None,
    output: str = "probabilities",
    sw_batch_size: int | None = None,
    roi_zyx: Sequence[int] | None = None,
) -> torch.Tensor:
    """Class scores (K+1, Z, Y, X) float32 on the CPU for one volume.

    image (1, Z, Y, X) in [0, 1] and raw features (C, Z, Y, X) (None when `cfg.inputs == "image"`), arrays or
    tensors, float32 or float16 (a float16 store's values, read without conversion: windows are converted to float32
    exactly). Windows of the training crop size (`cfg.crop_zyx`, or `roi_zyx`) slide with `overlap` and Gaussian
    blending (MONAI `sliding_window_inference`, `sw_batch_size` windows at a time, default `cfg.batch_size`); each
    window's input is built by `assemble_inputs` (so `--feature-norm crop` normalises per window, as per training
    crop), `stats` = (mean, std) for `--feature-norm volume`. `output`: "probabilities" (softmax) or "logits". The
    model must be in eval mode; bf16 autocast on CUDA.

    MONAI slides over the image alone (float32, one channel); the predictor takes each window's features from the
    features in their own dtype on `device` with the same slices (`with_coord`), so the (1+C)-channel volume is
    never stacked or converted as a whole: one copy of the features goes to the device, in half the bytes for a
    float16 store.
    """
    from monai.inferers import sliding_window_inference

    if output not in ("probabilities", "logits"):
        raise ValueError(f"predict_volume: output={output!r} must be 'probabilities' or 'logits'")
    device = torch.device(device)
    roi = tuple(int(r) for r in (roi_zyx or cfg.crop_zyx))
    guide, feats, crop = _window_sources(image, features, cfg.inputs, roi, device)

    def predictor(window: torch.Tensor, slices: Sequence[Sequence[slice]]) -> torch.Tensor:
        img = window if uses_image(cfg.inputs) else None
        z = assemble_inputs(img, None if feats is None else _gather(feats, slices), cfg, stats)
        with autocast(device):
            return model(z).float()

    with torch.no_grad():
        logits = sliding_window_inference(
            guide,
            roi_size=roi,
            sw_batch_size=sw_batch_size or max(1, int(getattr(cfg, "batch_size", 1))),
            predictor=predictor,
            overlap=overlap,
            mode="gaussian",
            with_coord=True,
        )
    logits = torch.as_tensor(logits)[(0, slice(None), *crop)].float()
    out = torch.softmax(logits, dim=0) if output == "probabilities" else logits
    return out.cpu()


def _window_sources(
    image: Any, features: Any, inputs: str, roi: tuple[int, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None, tuple[slice, ...]]:
    """(what MONAI slides over: the float32 image, or a zero placeholder without one; the features in their own
    dtype, or None; the slices that crop the padding back), both padded with zeros to at least `roi` as MONAI pads
    a smaller volume (`padding_mode="constant"`, `cval=0`: diff // 2 before, the rest after) and on `device`."""
    if uses_image(inputs):
        guide = _as5d(image).to(device=device, dtype=torch.float32)
    else:
        guide = torch.zeros((1, 1, 1, 1, 1), device=device).expand(1, 1, *_as5d(features).shape[2:])
    feats = _as5d(features).to(device) if uses_features(inputs) else None
    shape = guide.shape[2:]
    before = [max(r - s, 0) // 2 for r, s in zip(roi, shape)]
    after = [max(r - s, 0) - b for r, s, b in zip(roi, shape, before)]
    crop = tuple(slice(b, b + s) for b, s in zip(before, shape))
    if any(before) or any(after):
        pads = [p for b, a in zip(reversed(before), reversed(after)) for p in (b, a)]  # last dim first
        guide = F.pad(guide.contiguous(), pads, mode="constant", value=0.0)
        feats = None if feats is None else F.pad(feats, pads, mode="constant", value=0.0)
    return guide, feats, crop


def _gather(feats: torch.Tensor, slices: Sequence[Sequence[slice]]) -> torch.Tensor:
    """The windows `slices` of (1, C, Z, Y, X) features as one float32 batch (B, C, z, y, x), converted while copied
    (one pass over the windows, whatever the stored dtype)."""
    first = feats[tuple(slices[0])]
    out = torch.empty((len(slices), *first.shape[1:]), dtype=torch.float32, device=feats.device)
    for b, s in enumerate(slices):
        out[b].copy_(feats[tuple(s)][0])
    return out
