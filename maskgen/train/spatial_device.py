"""Batched spatial augmentation on the training device: the same transform as `augment.apply_spatial`, applied to
the whole batch after it is moved (one `affine_grid` + two `grid_sample` calls over all channels), then the final
min-max rescale of the image. Used when `--aug-device` resolves to `device` (see `maskgen.train.placement`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from maskgen.train.augment import ROT90_AXES, SpatialParams


def pack_spatial(params: Sequence[SpatialParams], shape_zyx: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """Per-sample spatial parameters as tensors that travel with the batch (collated by the loader)."""
    return {
        "flip": torch.tensor([-1 if p.flip_axis is None else p.flip_axis for p in params], dtype=torch.int64),
        "rot90": torch.tensor([p.rot90_k % 4 for p in params], dtype=torch.int64),
        "resample": torch.tensor([p.needs_resampling(shape_zyx) for p in params], dtype=torch.bool),
        "matrix": torch.from_numpy(np.stack([p.matrix() for p in params]).astype(np.float32)),
    }


def theta_from_matrix(matrix: torch.Tensor, shape_zyx: Sequence[int]) -> torch.Tensor:
    """MONAI-convention matrices (B, 4, 4) (centred voxel coordinates, z, y, x) -> `affine_grid` thetas (B, 3, 4).

    `affine_grid` works in normalised (x, y, z) coordinates; with align_corners=False a voxel offset c from the
    centre is c * 2 / size (the normalisation MONAI's Resample uses).
    """
    m = matrix.to(torch.float64)
    d = torch.tensor([2.0 / s for s in shape_zyx], dtype=torch.float64, device=m.device)
    a = m[:, :3, :3] * d[None, :, None] / d[None, None, :]
    t = m[:, :3, 3] * d[None, :]
    rev = [2, 1, 0]
    a = a[:, rev][:, :, rev]
    t = t[:, rev]
    return torch.cat([a, t[:, :, None]], dim=2)


def augment_spatial_batch(
    image: torch.Tensor,
    features: torch.Tensor | None,
    label: torch.Tensor | None,
    spatial: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Apply each sample's spatial transform: image (B,1,...) and features (B,C,...) bilinear, label (B,1,...) nearest.

    Samples whose transform is a pure flip/quarter turn are permuted exactly; the others are resampled together.
    Finally the image is rescaled to [0, 1] per sample, as the CPU path's `ScaleIntensityd`.
    """
    shape = tuple(image.shape[2:])
    n_img = image.shape[1]
    x = image if features is None else torch.cat([image, features.to(image.dtype)], dim=1)
    lab = label
    flip = spatial["flip"].tolist()
    rot = spatial["rot90"].tolist()
    resample = spatial["resample"].tolist()
    exact = [b for b in range(x.shape[0]) if not resample[b] and (flip[b] >= 0 or rot[b])]
    if exact:
        x = x.clone()
        lab = lab.clone() if lab is not None else None
        for b in exact:
            x[b] = _permute(x[b], flip[b], rot[b])
            if lab is not None:
                lab[b] = _permute(lab[b], flip[b], rot[b])
    idx = [b for b in range(x.shape[0]) if resample[b]]
    if idx:
        everything = len(idx) == x.shape[0]
        index = torch.tensor(idx, device=x.device)
        theta = theta_from_matrix(spatial["matrix"][idx].to(x.device), shape).to(torch.float32)
        grid = F.affine_grid(theta, [len(idx), 1, *shape], align_corners=False)
        src = x if everything else x[idx]
        warped = F.grid_sample(src.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        x = warped.to(x.dtype) if everything else x.index_copy(0, index, warped.to(x.dtype))
        if lab is not None:
            src = lab if everything else lab[idx]
            warped = F.grid_sample(src.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
            warped = warped.round().to(lab.dtype)
            lab = warped if everything else lab.index_copy(0, index, warped)
    image_out = rescale_batch(x[:, :n_img])
    features_out = x[:, n_img:] if features is not None else None
    return image_out, features_out, lab


def rescale_batch(image: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max to [0, 1] (MONAI ScaleIntensity semantics: a constant sample becomes 0)."""
    flat = image.reshape(image.shape[0], -1)
    lo = flat.amin(dim=1).reshape(-1, *([1] * (image.dim() - 1)))
    hi = flat.amax(dim=1).reshape(-1, *([1] * (image.dim() - 1)))
    span = hi - lo
    return torch.where(span > 0, (image - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(image))


def _permute(x: torch.Tensor, flip_axis: int, k: int) -> torch.Tensor:
    """Exact flip then quarter turns of one (C, Z, Y, X) sample, as MONAI Flip / Rotate90."""
    if flip_axis >= 0:
        x = torch.flip(x, dims=(1 + flip_axis,))
    if k:
        x = torch.rot90(x, k, dims=(1 + ROT90_AXES[0], 1 + ROT90_AXES[1]))
    return x
