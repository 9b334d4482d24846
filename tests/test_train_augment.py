"""Augmentation: replayable sampling, spatial consistency across image/features/label, CPU vs device paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from maskgen.train.augment import Augmenter, IntensityParams, SpatialParams, apply_spatial, rescale_image
from maskgen.train.spatial_device import augment_spatial_batch, pack_spatial

S = (24, 20, 24)  # (y, x) not square: odd quarter turns are resampled into the fixed crop


def _sample(seed: int = 0, shape=S, channels: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    for k, (cz, cy, cx, r) in enumerate([(8, 8, 9, 6), (15, 12, 14, 5), (12, 10, 6, 4)], start=1):
        label[(zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = k
    image = (label.astype(np.float32) * 0.25)[None]
    feats = ndimage.gaussian_filter(rng.standard_normal((channels,) + shape).astype(np.float32), (0, 2, 2, 2))
    feats[0] = image[0]  # a feature channel equal to the image
    return {"image": torch.from_numpy(image), "features": torch.from_numpy(feats), "label": torch.from_numpy(label[None])}


AFFINE = SpatialParams(affine=True, rotate=(0.5, -0.3, 0.7), shear=(0.15, -0.1, 0.05), scale=(1.15, 0.85, 1.1))
CASES = [
    SpatialParams(flip_axis=0),
    SpatialParams(rot90_k=2, flip_axis=2),
    SpatialParams(rot90_k=1),  # (y, x) = (20, 24): resampled into the fixed crop
    AFFINE,
    SpatialParams(affine=True, flip_axis=1, rot90_k=3, rotate=(-0.6, 0.2, 0.1), shear=(0.0, 0.2, -0.2),
                  scale=(0.8, 1.2, 1.0)),
]


def test_sampling_replays_and_respects_probabilities():
    aug = Augmenter(prob=0.33, allow_flips=True)
    a = aug.sample(np.random.default_rng(5))
    b = aug.sample(np.random.default_rng(5))
    assert a == b
    data = _sample()
    out1, out2 = aug.apply(data, a), aug.apply(data, b)
    for k in out1:
        assert torch.equal(out1[k], out2[k])
    many = [aug.sample(np.random.default_rng(s)) for s in range(600)]
    for attr, frac in (("affine", lambda p: p.spatial.affine), ("flip", lambda p: p.spatial.flip_axis is not None),
                       ("rot", lambda p: p.spatial.rot90_k > 0), ("noise", lambda p: p.intensity.seeds[1] is not None)):
        rate = np.mean([frac(p) for p in many])
        assert abs(rate - 0.33) < 0.07, (attr, rate)
    none = Augmenter(prob=0.33, allow_flips=False)
    assert all(p.spatial.flip_axis is None and p.spatial.rot90_k == 0
               for p in (none.sample(np.random.default_rng(s)) for s in range(200)))
    assert all(Augmenter(prob=0.0).sample(np.random.default_rng(s)).spatial.identity for s in range(50))


@pytest.mark.parametrize("params", CASES)
def test_feature_channel_equal_to_image_stays_equal(params):
    data = _sample()
    out = apply_spatial(data, params)
    assert out["image"].shape == (1, *S) and out["label"].dtype == torch.uint8
    assert torch.equal(out["image"][0], out["features"][0])
    assert not torch.equal(out["image"], data["image"])  # it did transform


def _interior_label(label: torch.Tensor) -> torch.Tensor:
    """label where its 3x3x3 neighbourhood has one class, else 255."""
    lab = label[0].numpy()
    uniform = np.ones(lab.shape, bool)
    for k in np.unique(lab):
        m = lab == k
        uniform &= ~(ndimage.binary_dilation(m, np.ones((3, 3, 3))) & ~ndimage.binary_erosion(m, np.ones((3, 3, 3))))
    out = np.where(uniform, lab, 255).astype(np.uint8)
    return torch.from_numpy(out[None])


def _misaligned_voxels(image: torch.Tensor, label: torch.Tensor, interior: torch.Tensor) -> int:
    """Where the nearest label sample is interior, bilinear image must equal 0.25 * label exactly."""
    inside = interior[0] != 255
    bad = inside & ((image[0] - 0.25 * label[0].float()).abs() > 1e-5)
    bad |= inside & (interior[0] != label[0])
    return int(bad.sum())


@pytest.mark.parametrize("params", CASES)
def test_label_boundaries_stay_aligned_with_image(params):
    data = _sample()
    interior = _interior_label(data["label"])
    out = apply_spatial(data, params)
    out_interior = apply_spatial({"label": interior}, params)["label"]
    assert int((out_interior[0] != 255).sum()) > 500
    assert _misaligned_voxels(out["image"], out["label"], out_interior) == 0
    # the check can fail: a label transformed with a different transform is caught
    other = SpatialParams(flip_axis=(0 if params.flip_axis != 0 else 1))
    wrong = apply_spatial({"label": interior}, other)["label"]
    assert _misaligned_voxels(out["image"], apply_spatial({"label": data["label"]}, other)["label"], wrong) > 0


def test_device_path_matches_monai_path():
    samples = [_sample(seed=i) for i in range(len(CASES) + 1)]
    params = CASES + [SpatialParams()]
    batch = {k: torch.stack([s[k] for s in samples]) for k in ("image", "features", "label")}
    spatial = pack_spatial(params, S)
    image, feats, label = augment_spatial_batch(batch["image"], batch["features"], batch["label"], spatial)
    assert feats.dtype == torch.float32 and label.dtype == torch.uint8
    for b, (s, p) in enumerate(zip(samples, params)):
        ref = rescale_image(apply_spatial(s, p))
        torch.testing.assert_close(image[b], ref["image"], atol=1e-4, rtol=0)
        torch.testing.assert_close(feats[b], ref["features"], atol=1e-4, rtol=0)
        assert (label[b] != ref["label"]).float().mean() < 1e-3
    assert torch.equal(label[-1], batch["label"][-1]) and torch.equal(feats[-1], batch["features"][-1])
    # float16 features from the store (cast on the device) give the same result up to float16 rounding
    _, f16, _ = augment_spatial_batch(batch["image"], batch["features"].half(), batch["label"], spatial)
    torch.testing.assert_close(f16, feats, atol=1e-2, rtol=1e-2)


def test_intensity_touches_only_the_image_and_rescales():
    data = _sample()
    data["image"] = data["image"] + 0.1 * torch.rand_like(data["image"])
    aug = Augmenter(prob=1.0, spatial=False)
    params = aug.sample(np.random.default_rng(0))
    assert len(params.intensity.applied) == 7
    out = aug.apply(data, params)
    assert torch.equal(out["features"], data["features"]) and torch.equal(out["label"], data["label"])
    assert not torch.allclose(out["image"], data["image"])
    assert out["image"].min() == 0 and out["image"].max() == 1
    again = aug.apply(data, params)
    assert torch.equal(out["image"], again["image"])
    # no transform sampled: only the final rescale, as the paper's pipeline
    plain = Augmenter(prob=0.0).apply(data, Augmenter(prob=0.0).sample(np.random.default_rng(0)))
    lo, hi = data["image"].min(), data["image"].max()
    torch.testing.assert_close(plain["image"], (data["image"] - lo) / (hi - lo))


def test_intensity_params_are_explicit():
    p = IntensityParams((None, 3, None, None, 9, None, None))
    assert p.applied == ("gaussian_noise", "contrast")
