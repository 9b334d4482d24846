"""Synthetic pairs for pretraining: label ensembles, spatial transform, appearance, label folders, batches."""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pytest
import torch

from maskgen.errors import MaskgenError
from maskgen.pretrain.config import PretrainConfig, SynthConfig
from maskgen.pretrain.ensembles import RandomLabelEnsemble
from maskgen.pretrain.labelmaps import LabelFolder
from maskgen.pretrain.render import RandomAppearance
from maskgen.pretrain.spatial import RandomSpatial, SpatialParams
from maskgen.pretrain.synth import PairSynthesizer, synthesize_batch

SHAPE = (24, 20, 16)


def test_label_ensemble_is_deterministic_and_consecutive():
    ens = RandomLabelEnsemble(SHAPE)
    p1 = ens.sample(np.random.default_rng(3))
    p2 = ens.sample(np.random.default_rng(3))
    assert p1 == p2
    a, b = ens.apply(p1), ens.apply(p2)
    assert a.shape == SHAPE and a.dtype == torch.int64
    assert torch.equal(a, b)
    values = torch.unique(a)
    assert torch.equal(values, torch.arange(len(values)))       # consecutive 0..K-1
    assert len(values) >= 3                                     # a partition plus shapes, not a blank volume
    other = ens.apply(ens.sample(np.random.default_rng(4)))
    assert not torch.equal(a, other)


def test_label_ensemble_upper_bound_of_labels():
    ens = RandomLabelEnsemble((16, 16, 16))
    for seed in range(5):
        p = ens.sample(np.random.default_rng(seed))
        labels = ens.apply(p)
        assert int(labels.max()) + 1 <= p.num_regions + len(p.kinds)


def test_spatial_identity_and_flip_are_exact():
    labels = RandomLabelEnsemble(SHAPE).apply(RandomLabelEnsemble(SHAPE).sample(np.random.default_rng(0)))
    spatial = RandomSpatial()
    identity = SpatialParams((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (False, False, False), 0.0, 3, 0)
    assert torch.equal(spatial.apply(labels, identity), labels)
    # grid_sample's last axis is (x, y, z): flipping the first entry flips the X axis (last array axis)
    flip_x = dataclasses.replace(identity, flips=(True, False, False))
    assert torch.equal(spatial.apply(labels, flip_x), labels.flip(-1))
    random = spatial.sample(np.random.default_rng(1))
    warped = spatial.apply(labels, random)
    assert warped.dtype == labels.dtype and warped.shape == labels.shape
    assert set(torch.unique(warped).tolist()) <= set(torch.unique(labels).tolist())   # nearest: no new labels


def test_appearance_range_determinism_and_inversion():
    labels = RandomLabelEnsemble(SHAPE).apply(RandomLabelEnsemble(SHAPE).sample(np.random.default_rng(0)))
    k = int(labels.max()) + 1
    app = RandomAppearance(SynthConfig(p_invert=0.0))
    params = app.sample(np.random.default_rng(5), k)
    img = app.apply(labels, params)
    assert img.shape == (1, *SHAPE) and img.dtype == torch.float32
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    assert float(img.max() - img.min()) > 0.5
    assert torch.equal(img, app.apply(labels, params))
    inverted = app.apply(labels, dataclasses.replace(params, invert=True))
    assert torch.allclose(img + inverted, torch.ones_like(img))
    with pytest.raises(ValueError, match="covers|cover"):
        app.apply(labels, app.sample(np.random.default_rng(0), 1))


def test_appearance_follows_the_labels():
    """Without texture, noise, blur or bias, each label is one flat intensity."""
    cfg = SynthConfig(within_label_std=(0.0, 0.0), texture_amplitude=(0.0, 0.0), blur_sigma=(0.0, 0.0),
                      p_resolution_loss=0.0, bias_strength=(0.0, 0.0), noise_std=(0.0, 0.0))
    labels = torch.zeros(SHAPE, dtype=torch.int64)
    labels[4:12] = 1
    labels[:, 5:9] = 2
    app = RandomAppearance(cfg)
    img = app.apply(labels, app.sample(np.random.default_rng(2), 3))[0]
    for k in range(3):
        values = img[labels == k]
        assert float(values.max() - values.min()) < 1e-5


def test_pair_views_differ_but_share_labels_and_batches_are_pure():
    synth = PairSynthesizer(16)
    pair = synth(np.random.default_rng(0))
    assert pair.view1.shape == pair.view2.shape == (1, 16, 16, 16)
    assert pair.labels.shape == (16, 16, 16)
    assert not torch.equal(pair.view1, pair.view2)
    a = synthesize_batch(synth, seed=7, step=3, batch_size=2)
    b = synthesize_batch(synth, seed=7, step=3, batch_size=2)
    c = synthesize_batch(synth, seed=7, step=4, batch_size=2)
    assert [t.shape for t in a] == [(2, 1, 16, 16, 16), (2, 1, 16, 16, 16), (2, 16, 16, 16)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[2], c[2])
    assert not torch.equal(a[2][0], a[2][1])           # the two samples of a batch are different label maps


def _write_label(path, data):
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def test_label_folder_crops_pads_and_relabels(tmp_path):
    big = np.zeros((20, 20, 20), dtype=np.uint8)
    big[5:15, 5:15, 5:15] = 7
    big[8:12, 8:12, 8:12] = 3
    _write_label(tmp_path / "a.nii.gz", big)
    small = np.full((4, 6, 5), 9, dtype=np.int16)
    _write_label(tmp_path / "b.nii", small)
    folder = LabelFolder(tmp_path, (12, 12, 12))
    assert len(folder) == 2
    for seed in range(4):
        params = folder.sample(np.random.default_rng(seed))
        crop = folder.apply(params)
        assert crop.shape == (12, 12, 12)
        values = torch.unique(crop)
        assert torch.equal(values, torch.arange(len(values)))
    padded = folder.apply(dataclasses.replace(folder.sample(np.random.default_rng(0)), index=1))
    assert int((padded == 1).sum()) == small.size and int((padded == 0).sum()) == 12**3 - small.size
    synth = PairSynthesizer(12, SynthConfig(p_real_labels=1.0), folder)
    assert synth(np.random.default_rng(0)).labels.shape == (12, 12, 12)


def test_label_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(MaskgenError, match="no .nii"):
        LabelFolder(tmp_path, (8, 8, 8))
    with pytest.raises(MaskgenError, match="does not exist"):
        LabelFolder(tmp_path / "missing", (8, 8, 8))
    _write_label(tmp_path / "bad.nii.gz", np.random.default_rng(0).random((8, 8, 8)).astype(np.float32))
    folder = LabelFolder(tmp_path, (8, 8, 8))
    with pytest.raises(MaskgenError, match="bad.nii.gz"):
        folder.apply(folder.sample(np.random.default_rng(0)))


def test_config_checks_name_the_bad_value(tmp_path):
    with pytest.raises(ValueError, match="crop_size 36"):
        PretrainConfig(out=tmp_path / "w.pt", crop_size=36, num_downs=3)
    with pytest.raises(ValueError, match="temperature"):
        PretrainConfig(out=tmp_path / "w.pt", temperature=0.0)
    with pytest.raises(ValueError, match="p_invert"):
        SynthConfig(p_invert=1.5)
    with pytest.raises(ValueError, match="scale"):
        SynthConfig(scale=(1.5, 1.0))
