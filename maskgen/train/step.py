"""One training step: the batch on the device, (device) augmentation, (online) features, the network input z,
view masking, then Dice+CE and an AdamW update at the step's learning rate."""

from __future__ import annotations

import math
from typing import Any

import torch

from maskgen.train.config import TrainConfig
from maskgen.train.inference import autocast
from maskgen.train.inputs import assemble_inputs
from maskgen.train.masking import step_view_mask
from maskgen.train.schedule import lr_at, set_lr
from maskgen.train.spatial_device import augment_spatial_batch


def make_loss() -> Any:
    """Dice + cross-entropy, equally weighted, without the background in the Dice (paper C.1, official code)."""
    from monai.losses import DiceCELoss

    return DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, lambda_dice=1.0, lambda_ce=1.0)


def step_inputs(
    batch: dict[str, Any], cfg: TrainConfig, step: int, device: torch.device, aug_device: str, extractor: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, label) of a loader batch on `device`: the masked network input (B, C_in, Z, Y, X) and the label."""
    nb = device.type == "cuda"
    image = batch["image"].to(device, non_blocking=nb).float()
    label = batch["label"].to(device, non_blocking=nb)
    features = batch["features"].to(device, non_blocking=nb) if "features" in batch else None
    stats = (batch["mean"].to(device), batch["std"].to(device)) if "mean" in batch else None
    if aug_device == "device":
        spatial = {k: v.to(device, non_blocking=nb) if k == "matrix" else v for k, v in batch["spatial"].items()}
        image, features, label = augment_spatial_batch(image, features, label, spatial)
    if extractor is not None:
        from maskgen.extract.inference import extract_batch

        features = extract_batch(extractor, image)
    z = assemble_inputs(image, features.float() if features is not None else None, cfg, stats)
    if cfg.mask_rate > 0:  # the rows of this batch's slots in the global batch's masks
        z = step_view_mask(z, cfg.mask_rate, cfg.seed, step, batch.get("slots", range(len(z))),
                           cfg.batch_size * cfg.world_size)
    return z, label


def optimise(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Any, z: torch.Tensor,
             label: torch.Tensor, lr: float, device: torch.device, dist: Any = None) -> float:
    """Forward, loss, backward and one AdamW update at `lr`; returns the loss. A non-finite loss is returned without
    touching the weights or the optimiser. With `dist` (data-parallel ranks, `model` wrapped in DDP) the loss is
    the mean over ranks, and non-finite on every rank when it is on any: all ranks skip the update together."""
    set_lr(optimizer, lr)
    with autocast(device):
        logits = model(z)
    loss = loss_fn(logits.float(), label.long())
    value = float(loss.detach()) if dist is None else dist.mean_loss(loss)
    if not math.isfinite(value):
        return value
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return value


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Any,
    batch: dict[str, Any],
    cfg: TrainConfig,
    step: int,
    device: torch.device,
    aug_device: str,
    extractor: Any = None,
    dist: Any = None,
) -> float:
    """One optimisation step (0-based `step`); returns the loss (the update is not applied when it is non-finite)."""
    z, label = step_inputs(batch, cfg, step, device, aug_device, extractor)
    return optimise(model, optimizer, loss_fn, z, label, lr_at(step, cfg), device, dist)
