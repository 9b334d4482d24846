"""Voxel-wise contrastive losses (InfoNCE with label-aware negatives) between two aligned renderings.

Features are first standardised per volume and channel (instance norm, as downstream training does), then for
each volume a bounded set of voxels is drawn, balanced across labels (each label present is equally
likely, then a uniform voxel within it), and the same voxels are read from both views' features (L2-normalised
embeddings z, temperature t). Each view has its own random contrast, so intensity cannot match voxels across
views: every variant rewards features that are stable across appearance. Modes:

- `voxel` (default): anchors of one view against the voxels of the other; the positive is the same voxel,
  the negatives are the voxels with other labels; other voxels of the same label are left out (neither pulled
  nor pushed). loss_i = -log( exp(z_i.w_i / t) / (exp(z_i.w_i / t) + sum_{j: label_j != label_i} exp(z_i.w_j / t)) ),
  symmetrised over the two views. Learns quickly on a CPU budget (pure label positives below stall there).
- `cross_view`: the positives of an anchor are all voxels of the other view with its label (its own counterpart
  included): same-label voxels are pulled together across views, which asks the network to give every region
  one code from its shape alone; the objective of anatomix, but slow to start.
- `supcon`: both views pooled, every voxel an anchor against all others with label positives (SupCon, Khosla et
  al., 2020), so within-view pairs count too.

The loss is averaged over anchors and over the volumes of a batch (negatives never cross volumes). With shifted
views (`SynthConfig.max_view_shift`) the two crops are offset, and voxel p of view 1 is compared with voxel
p - offset of view 2 (`paired_voxels`): a network can then no longer match voxels by their position in the crop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MODES = ("voxel", "cross_view", "supcon")


def sample_voxels(labels: torch.Tensor, num: int, generator: torch.Generator) -> torch.Tensor:
    """`num` distinct flat voxel indices of a (Z, Y, X) label map, label-balanced (without replacement)."""
    flat = labels.reshape(-1)
    if num > flat.numel():
        raise ValueError(f"cannot sample {num} voxels from a volume of {flat.numel()}")
    counts = torch.bincount(flat)
    present = (counts > 0).sum()
    weights = 1.0 / (counts[flat].to(torch.float64) * present)
    return torch.multinomial(weights, num, replacement=False, generator=generator)


def paired_voxels(
    labels: torch.Tensor, num: int, generator: torch.Generator, offset: tuple[int, int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of `num` label-balanced voxels into view 1 and view 2 (the same voxels without an offset).

    `offset` (view-2 crop start minus view-1 crop start, shifted views): voxel p of view 1 is voxel p - offset of
    view 2; only voxels that both crops contain are drawn.
    """
    if offset is None or not any(offset):
        idx = sample_voxels(labels, num, generator)
        return idx, idx
    size = labels.shape
    lo = [max(0, d) for d in offset]
    hi = [min(s, s + d) for s, d in zip(size, offset)]
    sub = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].contiguous()
    local = sample_voxels(sub, num, generator)
    z = local // (sub.shape[1] * sub.shape[2]) + lo[0]
    y = (local // sub.shape[2]) % sub.shape[1] + lo[1]
    x = local % sub.shape[2] + lo[2]
    first = (z * size[1] + y) * size[2] + x
    second = ((z - offset[0]) * size[1] + (y - offset[1])) * size[2] + (x - offset[2])
    return first, second


def supcon_loss(z: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss of (N, C) L2-normalised embeddings with integer class `keys` (N,)."""
    n = z.shape[0]
    logits = z @ z.t() / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (keys[:, None] == keys[None, :]) & ~self_mask
    n_pos = positives.sum(1)
    valid = n_pos > 0
    pos_log_prob = log_prob.masked_fill(~positives, 0.0).sum(1)
    return -(pos_log_prob[valid] / n_pos[valid]).mean()


def cross_view_supcon_loss(
    z1: torch.Tensor, z2: torch.Tensor, keys: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Symmetric cross-view supervised contrastive loss: anchors of one view against all voxels of the other.

    z1, z2: (M, C) L2-normalised embeddings of the same M voxels in the two views; keys: (M,) labels. The
    positives of an anchor are the other view's voxels with its label (its own counterpart included).
    """
    logits = z1 @ z2.t() / temperature                       # (M, M): view-1 anchors x view-2 candidates
    positives = keys[:, None] == keys[None, :]
    n_pos = positives.sum(1)
    loss_12 = -(torch.log_softmax(logits, dim=1).masked_fill(~positives, 0.0).sum(1) / n_pos).mean()
    loss_21 = -(torch.log_softmax(logits.t(), dim=1).masked_fill(~positives, 0.0).sum(1) / n_pos).mean()
    return 0.5 * (loss_12 + loss_21)


def voxel_infonce_loss(z1: torch.Tensor, z2: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric cross-view InfoNCE: positive = the same voxel, negatives = the other view's voxels of other labels.

    z1, z2: (M, C) L2-normalised embeddings of the same M distinct voxels in the two views; keys: (M,) labels.
    """
    m = z1.shape[0]
    same_label = keys[:, None] == keys[None, :]
    ignore = same_label & ~torch.eye(m, dtype=torch.bool, device=z1.device)
    logits = (z1 @ z2.t() / temperature).masked_fill(ignore, float("-inf"))
    target = torch.arange(m, device=z1.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


class VoxelContrastiveLoss(torch.nn.Module):
    """Contrast features of two aligned renderings, (B, C, Z, Y, X) each, with labels (B, Z, Y, X)."""

    def __init__(self, temperature: float = 0.1, voxels_per_volume: int = 256, mode: str = "voxel") -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if voxels_per_volume < 2:
            raise ValueError(f"voxels_per_volume must be >= 2, got {voxels_per_volume}")
        self.temperature = float(temperature)
        self.voxels_per_volume = int(voxels_per_volume)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode

    def forward(
        self, f1: torch.Tensor, f2: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
        offsets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """`labels` are view 1's; `offsets` (B, 3): view-2 crop start minus view-1 crop start (shifted views)."""
        if f1.shape != f2.shape or f1.ndim != 5:
            raise ValueError(f"features must be two (B, C, Z, Y, X) tensors of one shape, got {tuple(f1.shape)} "
                             f"and {tuple(f2.shape)}")
        if labels.shape != (f1.shape[0], *f1.shape[2:]):
            raise ValueError(f"labels {tuple(labels.shape)} do not match features {tuple(f1.shape)}")
        # Per-volume channel standardisation, as the features are used downstream; it also removes the shared
        # offset that otherwise dominates the cosine of raw UNet outputs and lets the embedding collapse.
        f1 = F.instance_norm(f1)
        f2 = F.instance_norm(f2)
        losses, pos_cos, neg_cos = [], [], []
        for b in range(f1.shape[0]):
            offset = None if offsets is None else tuple(int(v) for v in offsets[b])
            idx1, idx2 = paired_voxels(labels[b], self.voxels_per_volume, generator, offset)
            keys = labels[b].reshape(-1)[idx1.to(labels.device)].to(f1.device)
            z1 = F.normalize(f1[b].flatten(1)[:, idx1.to(f1.device)].t(), dim=1)        # (M, C)
            z2 = F.normalize(f2[b].flatten(1)[:, idx2.to(f1.device)].t(), dim=1)
            if self.mode == "voxel":
                losses.append(voxel_infonce_loss(z1, z2, keys, self.temperature))
            elif self.mode == "cross_view":
                losses.append(cross_view_supcon_loss(z1, z2, keys, self.temperature))
            else:
                losses.append(supcon_loss(torch.cat([z1, z2]), torch.cat([keys, keys]), self.temperature))
            with torch.no_grad():
                pos_cos.append((z1 * z2).sum(1).mean())
                different = keys[:, None] != keys[None, :]
                if different.any():
                    neg_cos.append((z1 @ z2.t())[different].mean())
        loss = torch.stack(losses).mean()
        stats = {"pos_cos": float(torch.stack(pos_cos).mean()),
                 "neg_cos": float(torch.stack(neg_cos).mean()) if neg_cos else float("nan")}
        return loss, stats
