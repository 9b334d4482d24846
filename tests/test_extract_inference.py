"""extract_volume (whole volume / sliding window), extract_batch, and the cross-domain stability measures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from maskgen.extract.anatomix import AnatomixExtractor, AnatomixUNet
from maskgen.extract.inference import extract_batch, extract_volume, gaussian_weight_map, pad_to_multiple
from maskgen.extract.mind import MindSSC, mind_ssc
from maskgen.extract.stability import cross_domain_stability, linear_cka


def _image(shape, seed=0) -> np.ndarray:
    img = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 2.0)
    img = (img - img.min()) / (img.max() - img.min())
    return img.astype(np.float32)[None]


def _tiny_anatomix(seed=0) -> AnatomixExtractor:
    torch.manual_seed(seed)
    net = AnatomixUNet(output_nc=6, ngf=4, num_downs=2)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return AnatomixExtractor(net)


class _Recording(MindSSC):
    """MIND-SSC that records the spatial shape of every input it sees."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[int, ...]] = []

    def features(self, x):
        self.seen.append(tuple(x.shape[2:]))
        return super().features(x)


def test_pad_to_multiple_is_symmetric_and_crops_back():
    x = torch.arange(5 * 6 * 7, dtype=torch.float32).reshape(1, 1, 5, 6, 7)
    padded, crop = pad_to_multiple(x, 4, min_size=8)
    assert padded.shape == (1, 1, 8, 8, 8)
    assert torch.equal(padded[(slice(None), slice(None), *crop)], x)
    assert crop[0] == slice(1, 6)  # 3 voxels of padding: 1 before, 2 after
    same, full = pad_to_multiple(x, 1)
    assert same is x and full == (slice(0, 5), slice(0, 6), slice(0, 7))


def test_whole_volume_equals_direct_forward():
    ex = _tiny_anatomix()
    img = _image((16, 24, 20))  # multiples of 4, >= min_size 8
    with torch.no_grad():
        direct = ex(torch.from_numpy(img)[None])[0].numpy()
    out = extract_volume(ex, img)
    assert out.dtype == np.float32 and out.shape == (6, 16, 24, 20)
    np.testing.assert_array_equal(out, direct)

    odd = _image((13, 18, 7), seed=1)
    out = extract_volume(ex, odd)
    assert out.shape == (6, 13, 18, 7) and np.isfinite(out).all()
    padded, crop = pad_to_multiple(torch.from_numpy(odd)[None], 4, 8)
    with torch.no_grad():
        np.testing.assert_array_equal(out, ex(padded)[(0, slice(None), *crop)].numpy())

    np.testing.assert_array_equal(extract_volume(MindSSC(), odd), mind_ssc(torch.from_numpy(odd)[None])[0].numpy())


@pytest.mark.parametrize("make", [_Recording, _tiny_anatomix], ids=["mind", "anatomix"])
def test_sliding_window_is_bounded_and_close_to_whole_volume(make):
    ex = make()
    img = _image((40, 44, 36), seed=2)
    whole = extract_volume(ex, img)
    sliding = extract_volume(ex, img, threshold_voxels=1000, window=24, overlap=0.5)
    assert sliding.shape == whole.shape and sliding.dtype == np.float32
    if isinstance(ex, _Recording):
        assert ex.seen[0] == (40, 44, 36) and len(ex.seen) > 1
        assert all(s == (24, 24, 24) for s in ex.seen[1:]), ex.seen
    rel = np.abs(sliding - whole).mean() / whole.std()
    assert rel < 0.03, rel
    assert np.corrcoef(sliding.ravel(), whole.ravel())[0, 1] > 0.995


def test_sliding_window_rounds_windows_to_the_size_multiple():
    ex = _tiny_anatomix()
    calls = []
    ex.register_forward_pre_hook(lambda m, args: calls.append(tuple(args[0].shape[2:])))
    out = extract_volume(ex, _image((30, 26, 9), seed=3), threshold_voxels=100, window=10)
    assert out.shape == (6, 30, 26, 9)
    # window 10 -> 12 (multiple of 4); the 9-voxel axis is padded to 12 first
    assert calls and all(c == (12, 12, 12) for c in calls), calls


def test_gaussian_weight_map_has_no_floor():
    w = gaussian_weight_map((24, 24, 24))
    assert w.shape == (24, 24, 24) and w.max() == 1.0
    assert w[0, 0, 0] < 1e-8 and w[0, 0, 0] > 0


def test_extract_batch_pads_and_feeds_autograd():
    ex = _tiny_anatomix()
    crops = torch.from_numpy(np.stack([_image((10, 12, 14), seed=s) for s in (4, 5)]))
    feats = extract_batch(ex, crops)
    assert feats.shape == (2, 6, 10, 12, 14) and feats.dtype == torch.float32 and not feats.requires_grad
    np.testing.assert_allclose(feats[1].numpy(), extract_volume(ex, crops[1].numpy()), rtol=1e-5, atol=1e-6)
    head = torch.nn.Conv3d(7, 2, 3, padding=1)
    loss = head(torch.cat([crops, feats], 1)).square().mean()
    loss.backward()  # features are normal tensors (not inference tensors), usable in a training graph
    assert head.weight.grad is not None
    with pytest.raises(ValueError, match="crops of shape"):
        extract_batch(ex, crops[:, 0])


def test_extract_volume_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(1, Z, Y, X\)"):
        extract_volume(MindSSC(), np.zeros((8, 8, 8), np.float32))
    with pytest.raises(ValueError, match="overlap"):
        extract_volume(MindSSC(), np.zeros((1, 8, 8, 8), np.float32), overlap=1.0)


def test_stability_measures():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 10, 12, 14)).astype(np.float32)
    same = cross_domain_stability(a, 2.5 * a + 1.0)
    assert same["cosine"] == pytest.approx(1.0) and same["cka"] == pytest.approx(1.0)
    assert same["channel_corr"] == pytest.approx(1.0) and same["voxels"] == 10 * 12 * 14

    b = rng.standard_normal(a.shape)
    noise = cross_domain_stability(a, b, max_voxels=1000, seed=1)
    assert abs(noise["cosine"]) < 0.1 and noise["cka"] < 0.05 and noise["voxels"] == 1000
    assert cross_domain_stability(torch.from_numpy(a), torch.from_numpy(b), max_voxels=1000, seed=1) == noise
    assert cross_domain_stability(a, b, max_voxels=1000, seed=2) != noise

    mask = np.zeros(a.shape[1:], bool)
    mask[:5] = True
    half = np.where(mask, a, b)
    assert cross_domain_stability(a, half, mask=mask)["cosine"] == pytest.approx(1.0)
    assert cross_domain_stability(a, half)["cosine"] < 0.7

    x = rng.standard_normal((1, 6, 7, 8))
    y = x + rng.standard_normal(x.shape)
    r = np.corrcoef(x.ravel(), y.ravel())[0, 1]
    single = cross_domain_stability(x, y)
    assert single["cka"] == pytest.approx(r**2) and single["channel_corr"] == pytest.approx(r)

    mixed = cross_domain_stability(a, a[:2])  # different channel counts: CKA only
    assert "cosine" not in mixed and 0 < mixed["cka"] < 1
    assert linear_cka(np.ones((10, 2)), rng.standard_normal((10, 3))) == 0.0
    with pytest.raises(ValueError, match="one grid"):
        cross_domain_stability(a, a[:, :5])
    with pytest.raises(ValueError, match="mask shape"):
        cross_domain_stability(a, a, mask=mask[:5])
