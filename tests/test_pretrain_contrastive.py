"""Voxel-wise contrastive losses: voxel sampling and the properties the objective must have."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from maskgen.pretrain.contrastive import (
    MODES,
    VoxelContrastiveLoss,
    cross_view_supcon_loss,
    paired_voxels,
    sample_voxels,
    supcon_loss,
    voxel_infonce_loss,
)


def _labels(shape=(2, 12, 12, 12)) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    lab = torch.zeros(shape, dtype=torch.int64)
    lab[:, 2:6] = 1
    lab[:, :, 7:11] = 2
    lab[:, 9:, 9:, 9:] = 3                       # a small label (27 voxels per volume)
    lab[1] = torch.where(torch.rand(shape[1:], generator=g) < 0.1, 4, lab[1])
    return lab


def _label_features(labels: torch.Tensor, channels: int = 8, noise: float = 0.1, seed: int = 0) -> torch.Tensor:
    """Features that identify the label (a fixed random code per label) plus noise: (B, C, Z, Y, X)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randn(int(labels.max()) + 1, channels, generator=torch.Generator().manual_seed(99))
    feats = codes[labels].permute(0, 4, 1, 2, 3)
    return feats + noise * torch.randn(feats.shape, generator=g)


def test_sample_voxels_distinct_and_label_balanced():
    labels = _labels()[0]
    idx = sample_voxels(labels, 200, torch.Generator().manual_seed(1))
    assert idx.shape == (200,) and len(torch.unique(idx)) == 200
    counts = torch.bincount(labels.reshape(-1)[idx], minlength=4)
    share = labels.reshape(-1).bincount(minlength=4).float() / labels.numel()
    assert share[3] < 0.02                        # rare in the volume ...
    assert counts[3] >= 20                        # ... but well represented among the samples (27 available)
    again = sample_voxels(labels, 200, torch.Generator().manual_seed(1))
    assert torch.equal(idx, again)
    with pytest.raises(ValueError, match="cannot sample"):
        sample_voxels(labels, labels.numel() + 1, torch.Generator())


@pytest.mark.parametrize("mode", MODES)
def test_loss_lower_for_matching_features_than_shuffled(mode):
    labels = _labels()
    loss_fn = VoxelContrastiveLoss(temperature=0.1, voxels_per_volume=128, mode=mode)
    f1 = _label_features(labels, seed=1)
    f2 = _label_features(labels, seed=2)                       # other view: same codes, other noise
    matched, stats = loss_fn(f1, f2, labels, torch.Generator().manual_seed(0))
    perm = torch.randperm(labels[0].numel(), generator=torch.Generator().manual_seed(3))
    shuffled_f2 = f2.flatten(2)[:, :, perm].reshape(f2.shape)  # break the voxel correspondence of view 2
    shuffled, shuffled_stats = loss_fn(f1, shuffled_f2, labels, torch.Generator().manual_seed(0))
    assert matched < shuffled - 1.0
    assert stats["pos_cos"] > 0.8 and shuffled_stats["pos_cos"] < 0.5
    assert stats["neg_cos"] < stats["pos_cos"]


def test_loss_is_invariant_to_per_channel_affine_changes():
    """Features are standardised per volume and channel first (as downstream training does)."""
    labels = _labels()
    loss_fn = VoxelContrastiveLoss(temperature=0.2, voxels_per_volume=64)
    f1, f2 = _label_features(labels, seed=1), _label_features(labels, seed=2)
    scale = torch.rand(1, f1.shape[1], 1, 1, 1, generator=torch.Generator().manual_seed(4)) + 0.5
    a, _ = loss_fn(f1, f2, labels, torch.Generator().manual_seed(0))
    b, _ = loss_fn(f1 * scale + 3.0, f2, labels, torch.Generator().manual_seed(0))
    assert torch.allclose(a, b, atol=1e-4)


def test_supcon_reaches_its_bound_for_perfect_clusters_and_has_gradients():
    keys = torch.tensor([0, 0, 1, 1, 2, 2])
    perfect = F.one_hot(keys, 3).float()
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    z = F.normalize(z, dim=1).requires_grad_(True)
    good = supcon_loss(perfect, keys, temperature=0.05)
    assert float(good) < 0.01                                  # each anchor's one positive takes all the mass
    bad = supcon_loss(z, keys, temperature=0.05)
    assert bad.item() > good.item()
    bad.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    cross_good = cross_view_supcon_loss(perfect, perfect, keys, temperature=0.05)
    # two positives per anchor in the other view: the bound is log(2)
    assert abs(float(cross_good) - torch.log(torch.tensor(2.0)).item()) < 0.01


def test_voxel_infonce_ignores_other_voxels_of_the_same_label():
    keys = torch.tensor([0, 0, 1, 1])
    z = F.one_hot(keys, 2).float()                 # same-label voxels share one code: indistinguishable
    # with same-label voxels left out, each anchor only competes with the other label: loss -> 0
    assert voxel_infonce_loss(z, z, keys, temperature=0.05).item() < 1e-3
    # were they negatives, the loss could not go below log(2)
    assert supcon_loss(torch.cat([z, z]), torch.cat([keys, keys]), 0.05).item() > 1.0
    swapped = z[[1, 0, 3, 2]]                      # a voxel's partner in the other view is its label-mate
    assert voxel_infonce_loss(z, swapped, keys, 0.05).item() < 1e-3
    far = F.one_hot(1 - keys, 2).float()           # the other view puts each voxel on the other label's code
    assert voxel_infonce_loss(z, far, keys, 0.05).item() > 5.0


def test_loss_checks_its_arguments():
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        VoxelContrastiveLoss(temperature=0.0)
    with pytest.raises(ValueError, match="voxels_per_volume must be >= 2, got 1"):
        VoxelContrastiveLoss(voxels_per_volume=1)
    with pytest.raises(ValueError, match="mode must be one of .* got 'pixel'"):
        VoxelContrastiveLoss(mode="pixel")
    loss_fn = VoxelContrastiveLoss(voxels_per_volume=8)
    f = torch.zeros(1, 4, 4, 4, 4)
    with pytest.raises(ValueError, match="labels"):
        loss_fn(f, f, torch.zeros(1, 4, 4, 5, dtype=torch.int64), torch.Generator())


def test_shifted_views_pair_the_same_voxel_not_the_same_position():
    g = torch.Generator().manual_seed(0)
    big = torch.randn(1, 6, 20, 20, 20, generator=g)           # one "rendered volume"
    labels_big = (big[0, 0] > 0).long() + (big[0, 1] > 0.5).long()
    a, b = (1, 4, 0), (3, 0, 2)                                # crop starts of the two views
    crop = lambda t, s: t[..., s[0]:s[0] + 16, s[1]:s[1] + 16, s[2]:s[2] + 16]  # noqa: E731
    f1, f2, labels = crop(big, a), crop(big, b), crop(labels_big, a)[None]
    offset = tuple(bi - ai for ai, bi in zip(a, b))
    i1, i2 = paired_voxels(labels[0], 64, torch.Generator().manual_seed(1), offset)
    assert torch.equal(f1[0].flatten(1)[:, i1], f2[0].flatten(1)[:, i2])        # the same voxels of the volume
    assert not torch.equal(i1, i2)
    loss_fn = VoxelContrastiveLoss(voxels_per_volume=64, temperature=0.05)
    offsets = torch.tensor([offset])
    aligned, _ = loss_fn(f1, f2, labels, torch.Generator().manual_seed(2), offsets=offsets)
    unaligned, _ = loss_fn(f1, f2, labels, torch.Generator().manual_seed(2))    # offset ignored: wrong pairs
    assert aligned.item() < 0.5 * unaligned.item()
    # a zero offset is exactly the unshifted path (same draws, same loss)
    same, _ = loss_fn(f1, f1, labels, torch.Generator().manual_seed(3), offsets=torch.zeros(1, 3, dtype=torch.int64))
    plain, _ = loss_fn(f1, f1, labels, torch.Generator().manual_seed(3))
    assert same.item() == plain.item()
