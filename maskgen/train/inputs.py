"""The network input z, assembled the same way in training, validation and evaluation.

z = concat(image, normalised features) (`--inputs both`), the image alone (`image`, the ERM baseline) or the
normalised features alone (`features`). Features are normalised per channel either over the crop / sliding window
(`--feature-norm crop`, the official code's InstanceNorm3d on every crop) or with the per-volume mean and std stored
by `maskgen extract` (`volume`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from maskgen.errors import MaskgenError

EPS = 1e-5  # InstanceNorm3d's default epsilon, as the official code


def input_channels(inputs: str, num_features: int) -> int:
    """Number of UNet input channels for an input mode."""
    return {"both": 1 + num_features, "image": 1, "features": num_features}[inputs]


def uses_image(inputs: str) -> bool:
    return inputs in ("both", "image")


def uses_features(inputs: str) -> bool:
    return inputs in ("both", "features")


def normalize_features(features: torch.Tensor, mode: str, stats: Any = None) -> torch.Tensor:
    """Per-channel normalisation of raw features (B, C, Z, Y, X) in float32.

    mode "crop": zero mean, unit variance over each crop and channel (`F.instance_norm`, eps 1e-5).
    mode "volume": (f - mean) / std with `stats = (mean, std)`, each of shape (C,) or (B, C).
    """
    f = features.float()
    if mode == "crop":
        return F.instance_norm(f, eps=EPS)
    if mode == "volume":
        if stats is None:
            raise MaskgenError(
                "--feature-norm volume needs the per-volume feature statistics (feature_mean/feature_std of the store "
                "case); pass stats=(mean, std)."
            )
        mean, std = (torch.as_tensor(np.asarray(s, dtype=np.float32) if not torch.is_tensor(s) else s) for s in stats)
        mean = mean.to(device=f.device, dtype=torch.float32)
        std = std.to(device=f.device, dtype=torch.float32)
        if mean.dim() == 1:
            mean, std = mean.unsqueeze(0), std.unsqueeze(0)
        if mean.shape[-1] != f.shape[1]:
            raise MaskgenError(f"feature statistics have {mean.shape[-1]} channels but the features have {f.shape[1]}.")
        shape = (mean.shape[0], f.shape[1], 1, 1, 1)
        return (f - mean.reshape(shape)) / std.clamp_min(EPS).reshape(shape)
    raise ValueError(f"unknown feature normalisation {mode!r}: use 'crop' or 'volume'")


def assemble_inputs(image: Any, features: Any, cfg: Any, stats: Any = None) -> torch.Tensor:
    """Network input for `cfg.inputs` / `cfg.feature_norm` (a TrainConfig or anything with those attributes).

    image: (B, 1, Z, Y, X) or (1, Z, Y, X), in [0, 1]; features: raw (B, C, Z, Y, X) or (C, Z, Y, X), or None when
    `cfg.inputs == "image"`; arrays or tensors. `stats`: (mean, std) for `feature_norm == "volume"`.
    Returns float32 (B, C_in, Z, Y, X), or (C_in, Z, Y, X) for unbatched inputs, on the inputs' device.
    """
    unbatched = _ndim(image if image is not None else features) == 4
    parts: list[torch.Tensor] = []
    if uses_image(cfg.inputs):
        if image is None:
            raise MaskgenError(f"--inputs {cfg.inputs} needs the image, but none was given.")
        img = _as5d(image).float()
        if img.shape[1] != 1:
            raise MaskgenError(f"expected a one-channel image, got {img.shape[1]} channels.")
        parts.append(img)
    if uses_features(cfg.inputs):
        if features is None:
            raise MaskgenError(f"--inputs {cfg.inputs} needs the features, but none were given.")
        parts.append(normalize_features(_as5d(features), cfg.feature_norm, stats))
    z = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    return z[0] if unbatched else z


def assemble(image: Any, features: Any, inputs_mode: str, feature_norm: str, stats: Any = None) -> torch.Tensor:
    """`assemble_inputs` with the mode and normalisation passed directly (the ARCHITECTURE.md contract form)."""
    return assemble_inputs(image, features, _Modes(inputs_mode, feature_norm), stats)


class _Modes:
    def __init__(self, inputs: str, feature_norm: str):
        if inputs not in ("both", "image", "features"):
            raise MaskgenError(f"inputs mode {inputs!r} is not one of both, image, features.")
        self.inputs, self.feature_norm = inputs, feature_norm


def split_window(window: torch.Tensor, inputs: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Inverse of `raw_stack`: a (B, 1+C | 1 | C, ...) raw window -> (image or None, features or None)."""
    if inputs == "both":
        return window[:, :1], window[:, 1:]
    if inputs == "image":
        return window, None
    return None, window


def raw_stack(image: Any, features: Any, inputs: str) -> torch.Tensor:
    """The raw channels a mode needs, stacked (image first): what sliding-window inference slides over."""
    parts = []
    if uses_image(inputs):
        parts.append(_as5d(image).float())
    if uses_features(inputs):
        parts.append(_as5d(features).float())
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _ndim(x: Any) -> int:
    return len(x.shape)


def _as5d(x: Any) -> torch.Tensor:
    t = x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))
    if t.dim() == 4:
        t = t.unsqueeze(0)
    if t.dim() != 5:
        raise MaskgenError(f"expected a (B, C, Z, Y, X) or (C, Z, Y, X) array, got shape {tuple(t.shape)}.")
    return t

