"""Network input assembly shared by training, validation and evaluation."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from maskgen.errors import MaskgenError
from maskgen.train.inputs import assemble_inputs, input_channels, raw_stack, split_window


def _cfg(inputs="both", norm="crop"):
    return SimpleNamespace(inputs=inputs, feature_norm=norm)


def test_modes_and_channel_counts():
    img = torch.rand(2, 1, 8, 8, 8)
    feats = torch.randn(2, 5, 8, 8, 8) * 3 + 7
    both = assemble_inputs(img, feats, _cfg("both"))
    assert both.shape == (2, 6, 8, 8, 8) == (2, input_channels("both", 5), 8, 8, 8)
    assert torch.equal(both[:, :1], img)
    assert assemble_inputs(img, None, _cfg("image")).shape == (2, 1, 8, 8, 8)
    only = assemble_inputs(None, feats, _cfg("features"))
    assert only.shape == (2, 5, 8, 8, 8)
    torch.testing.assert_close(only, both[:, 1:])
    with pytest.raises(MaskgenError, match="needs the features"):
        assemble_inputs(img, None, _cfg("both"))


def test_crop_norm_is_per_sample_per_channel_instance_norm():
    feats = torch.randn(3, 4, 6, 6, 6) * torch.arange(1, 5).view(1, 4, 1, 1, 1) + 10
    z = assemble_inputs(torch.rand(3, 1, 6, 6, 6), feats, _cfg())[:, 1:]
    flat = z.flatten(2)
    torch.testing.assert_close(flat.mean(2), torch.zeros(3, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.var(2, unbiased=False), torch.ones(3, 4), atol=1e-3, rtol=0)
    torch.testing.assert_close(z, torch.nn.functional.instance_norm(feats, eps=1e-5))


def test_volume_norm_uses_stored_statistics_and_unbatched_inputs():
    feats = np.random.default_rng(0).normal(5, 2, (3, 4, 4, 4)).astype(np.float32)
    img = np.random.default_rng(1).random((1, 4, 4, 4)).astype(np.float32)
    mean, std = [5.0, 4.0, 3.0], [2.0, 1.0, 0.5]
    z = assemble_inputs(img, feats, _cfg(norm="volume"), stats=(mean, std))
    assert z.shape == (4, 4, 4, 4)
    expect = (feats - np.array(mean)[:, None, None, None]) / np.array(std)[:, None, None, None]
    np.testing.assert_allclose(z[1:].numpy(), expect, rtol=1e-5)
    batched = assemble_inputs(torch.from_numpy(img)[None].repeat(2, 1, 1, 1, 1),
                              torch.from_numpy(feats)[None].repeat(2, 1, 1, 1, 1), _cfg(norm="volume"),
                              stats=(torch.tensor([mean, mean]), torch.tensor([std, std])))
    torch.testing.assert_close(batched[0], z)
    with pytest.raises(MaskgenError, match="statistics"):
        assemble_inputs(img, feats, _cfg(norm="volume"))


@pytest.mark.parametrize("mode", ["both", "image", "features"])
def test_raw_stack_round_trip(mode):
    img, feats = torch.rand(1, 1, 4, 4, 4), torch.rand(1, 3, 4, 4, 4)
    i, f = split_window(raw_stack(img, feats, mode), mode)
    if mode != "features":
        assert torch.equal(i, img)
    if mode != "image":
        assert torch.equal(f, feats)


def test_contract_form_matches_config_form():
    from maskgen.train.inputs import assemble

    img, feats = torch.rand(2, 1, 4, 4, 4), torch.randn(2, 3, 4, 4, 4)
    torch.testing.assert_close(assemble(img, feats, "both", "crop"), assemble_inputs(img, feats, _cfg("both")))
    with pytest.raises(MaskgenError, match="'pixels'"):
        assemble(img, feats, "pixels", "crop")
