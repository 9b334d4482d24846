"""Synthetic pairs for pretraining: label ensembles, spatial transform, appearance, label folders, batches."""

from __future__ import annotations

import dataclasses
from pathlib import Path

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
    assert [t.shape for t in a] == [(2, 1, 16, 16, 16), (2, 1, 16, 16, 16), (2, 16, 16, 16), (2, 3)]
    assert not a[3].any()                               # no shifted views by default
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


def test_nested_shapes_are_layered_and_off_by_default():
    # Default config: no nested shapes and no extra parameters (older runs replay draw for draw).
    ens = RandomLabelEnsemble((24, 24, 24))
    p = ens.sample(np.random.default_rng(0))
    assert "nested" not in p.kinds and p.layers == () and p.folds == ()
    # Only nested shapes: each is a core wrapped in thin layers; every layer is its own label.
    cfg = SynthConfig(num_regions=(1, 1), num_shapes=(1, 1), tube_fraction=0.0, shell_fraction=0.0,
                      nested_fraction=1.0, nested_layers=(2, 2), layer_thickness=(0.25, 0.25),
                      shape_roughness=(0.0, 0.0), fold_amplitude=(0.0, 0.0), nested_scale=(1.0, 1.0),
                      shape_radius=(0.8, 0.8))
    ens = RandomLabelEnsemble((32, 32, 32), cfg)
    p = dataclasses.replace(ens.sample(np.random.default_rng(1)), centers=((0.0, 0.0, 0.0),),
                            radii=((0.8, 0.8, 0.8),))
    assert p.kinds == ("nested",) and len(p.layers[0]) == 2 and p.num_labels == 4
    labels = ens.apply(p)
    assert torch.equal(torch.unique(labels), torch.arange(4))          # background, core, two layers
    line = labels[16, 16, 16:]                                         # centre -> edge along x
    values = torch.unique_consecutive(line).tolist()
    assert len(values) == 4 and values[-1] == labels[0, 0, 0]          # core, inner layer, outer layer, background
    widths = [int((line == v).sum()) for v in values[1:3]]
    assert all(2 <= w <= 4 for w in widths)                            # 0.25 x radius 12.8 voxels ~ 3 voxels
    # The label count bound holds with nested shapes mixed in.
    mixed = RandomLabelEnsemble((16, 16, 16), SynthConfig(nested_fraction=0.5))
    for seed in range(5):
        q = mixed.sample(np.random.default_rng(seed))
        assert int(mixed.apply(q).max()) + 1 <= q.num_labels


def test_synth_overrides_parse_and_name_bad_settings():
    from maskgen.pretrain.config import synth_from_overrides

    cfg = synth_from_overrides(["nested_fraction=0.4", "layer-thickness=0.05,0.2", "nested_layers=1,2"])
    assert cfg.nested_fraction == 0.4 and cfg.layer_thickness == (0.05, 0.2) and cfg.nested_layers == (1, 2)
    assert synth_from_overrides([]) == SynthConfig()
    with pytest.raises(ValueError, match="unknown synthesis setting 'bogus'"):
        synth_from_overrides(["bogus=1"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        synth_from_overrides(["nested_fraction"])
    with pytest.raises(ValueError, match="nested_fraction"):
        synth_from_overrides(["nested_fraction=0.9"])          # with tube + shell fractions above 1


def test_shifted_views_are_offset_crops_of_one_rendering():
    synth = PairSynthesizer(16, SynthConfig(max_view_shift=4))
    params = synth.sample(np.random.default_rng(2))
    pair = synth.apply(params)
    assert pair.view1.shape == pair.view2.shape == (1, 16, 16, 16) and pair.labels.shape == (16, 16, 16)
    (a, b) = params.starts
    assert pair.offset == tuple(bi - ai for ai, bi in zip(a, b)) and any(pair.offset)
    big = synth.spatial.apply(synth._labels(params.labels), params.spatial)       # the 20^3 label map
    assert big.shape == (20, 20, 20)
    assert torch.equal(pair.labels, big[a[0]:a[0] + 16, a[1]:a[1] + 16, a[2]:a[2] + 16])
    view2_full = synth.appearance.apply(big, params.views[1])
    assert torch.equal(pair.view2, view2_full[:, b[0]:b[0] + 16, b[1]:b[1] + 16, b[2]:b[2] + 16])
    with pytest.raises(ValueError, match="max_view_shift"):
        PretrainConfig(out=Path("w.pt"), crop_size=16, num_downs=2, synth=SynthConfig(max_view_shift=9))
