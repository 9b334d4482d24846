"""The segmentation UNet follows paper Table 15."""

from __future__ import annotations

import pytest
import torch

from maskgen.train.unet import UNet, count_parameters, decoder_widths


def _table15_parameter_count(n_in: int, nc: int, n_out: int) -> int:
    """Parameters of Table 15 written out block by block (conv 3x3x3 without bias + BatchNorm), head with bias."""
    def cbr(i: int, o: int) -> int:
        return 27 * i * o + 2 * o

    enc = [(n_in, nc), (nc, nc), (nc, nc)]
    for i, w in enumerate([2, 4, 8, 16, 32]):
        prev = [1, 2, 4, 8, 16][i]
        enc += [(prev * nc, w * nc), (w * nc, w * nc), (w * nc, w * nc)]
    # blocks 18-32: (upsampled width + skip width -> out), out -> out
    dec = [((32 + 16) * nc, 32 * nc), (32 * nc, 32 * nc),   # 18-20, skip = layer 14 (16 nc)
           ((32 + 8) * nc, 16 * nc), (16 * nc, 16 * nc),    # 21-23, skip = layer 11 (8 nc)
           ((16 + 4) * nc, 4 * nc), (4 * nc, 4 * nc),       # 24-26, skip = layer 8 (4 nc)
           ((4 + 2) * nc, 2 * nc), (2 * nc, 2 * nc),        # 27-29, skip = layer 5 (2 nc)
           ((2 + 1) * nc, nc), (nc, nc)]                    # 30-32, skip = layer 2 (nc)
    head = 27 * nc * n_out + n_out                          # 33, as a plain convolution to logits
    return sum(cbr(i, o) for i, o in enc + dec) + head


@pytest.mark.parametrize("n_out", [4, 16])
def test_default_unet_matches_table15(n_out):
    model = UNet(17, n_out)  # defaults: channels 20, depth 5
    assert count_parameters(model) == _table15_parameter_count(17, 20, n_out)
    assert decoder_widths(20, 5) == [640, 320, 80, 40, 20]
    convs_per_encoder_level = [sum(isinstance(m, torch.nn.Conv3d) for m in lvl.modules()) for lvl in model.encoder]
    pools = [sum(isinstance(m, torch.nn.MaxPool3d) for m in lvl.modules()) for lvl in model.encoder]
    assert convs_per_encoder_level == [3] * 6 and pools == [0, 1, 1, 1, 1, 1]
    assert [sum(isinstance(m, torch.nn.Conv3d) for m in lvl.modules()) for lvl in model.decoder] == [2] * 5
    assert model.upsample.mode == "nearest"


def test_tiny_unet_forward_backward_and_config():
    torch.manual_seed(0)
    model = UNet(3, 2, channels=4, depth=2)
    x = torch.randn(2, 3, 16, 16, 8, requires_grad=True)
    y = model(x)
    assert y.shape == (2, 2, 16, 16, 8)
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert model.config() == {"in_channels": 3, "out_channels": 2, "channels": 4, "depth": 2, "dropout": 0.0}
    clone = UNet(**model.config())
    clone.load_state_dict(model.state_dict())


def test_unet_rejects_bad_shapes_and_arguments():
    model = UNet(1, 2, channels=2, depth=2)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*depth=4"):
        model(torch.zeros(1, 1, 16, 16, 10))
    with pytest.raises(ValueError, match="depth=0"):
        UNet(1, 2, depth=0)
