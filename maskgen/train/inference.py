"""Whole-volume prediction with MONAI sliding-window inference, assembling inputs exactly as training does."""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import numpy as np
import torch

from maskgen.train.inputs import assemble_inputs, raw_stack, split_window


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, nothing on the CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
    tensors. Windows of the training crop size (`cfg.crop_zyx`, or `roi_zyx`) slide with `overlap` and Gaussian
    blending; each window's input is built by `assemble_inputs` (so `--feature-norm crop` normalises per window, as
    per training crop), `stats` = (mean, std) for `--feature-norm volume`. `output`: "probabilities" (softmax) or
    "logits". The model must be in eval mode.
    """
    from monai.inferers import sliding_window_inference

    if output not in ("probabilities", "logits"):
        raise ValueError(f"predict_volume: output={output!r} must be 'probabilities' or 'logits'")
    device = torch.device(device)
    roi = tuple(int(r) for r in (roi_zyx or cfg.crop_zyx))
    raw = raw_stack(image, features, cfg.inputs).to(device)

    def predictor(window: torch.Tensor) -> torch.Tensor:
        img, feats = split_window(window, cfg.inputs)
        z = assemble_inputs(img, feats, cfg, stats)
        with autocast(device):
            return model(z).float()

    with torch.no_grad():
        logits = sliding_window_inference(
            raw,
            roi_size=roi,
            sw_batch_size=sw_batch_size or max(1, int(getattr(cfg, "batch_size", 1))),
            predictor=predictor,
            overlap=overlap,
            mode="gaussian",
            padding_mode="constant",
            cval=0.0,
        )
    logits = torch.as_tensor(logits)[0].float()
    out = torch.softmax(logits, dim=0) if output == "probabilities" else logits
    return out.cpu()

