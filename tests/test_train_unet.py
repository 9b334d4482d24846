"""The segmentation UNet: the public code's network (default) and paper Table 15 read literally."""

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


def _public_parameter_count(n_in: int, nc: int, n_out: int) -> int:
    """The public code's UNet (the anatomix class at ngf = n_c, num_downs = 5), written out block by block:
    Conv-BN-ReLU = 3x3x3 conv without bias + BatchNorm (weight, bias); 3 blocks at full resolution, 2 per lower level,
    decoder widths 16/8/4/2/1 x n_c after concatenating the skip, head 3x3x3 without bias."""
    def cbr(i: int, o: int) -> int:
        return 27 * i * o + 2 * o

    enc = [(n_in, nc), (nc, nc), (nc, nc)]
    for w in (2, 4, 8, 16, 32):
        enc += [(w // 2 * nc, w * nc), (w * nc, w * nc)]
    dec = []
    for w in (16, 8, 4, 2, 1):
        dec += [((2 * w + w) * nc, w * nc), (w * nc, w * nc)]   # upsampled 2w + skip w -> w
    return sum(cbr(i, o) for i, o in enc + dec) + 27 * nc * n_out


def test_default_unet_is_the_public_codes():
    """Paper 3.2: 36.9M parameters at width 20, depth 5; the public code's UNet has 36.87M with 17 inputs and 16
    classes. maskgen's default counts 36,874,980."""
    model = UNet(17, 16)
    n = count_parameters(model)
    assert n == _public_parameter_count(17, 20, 16) == 36_874_980
    assert abs(n - 36.87e6) / 36.87e6 < 1e-3 and round(n / 1e5) / 10 == 36.9
    assert decoder_widths(20, 5) == [320, 160, 80, 40, 20]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert all(c.padding_mode == "reflect" and c.bias is None for c in convs)
    assert [sum(isinstance(m, torch.nn.Conv3d) for m in lvl.modules()) for lvl in model.encoder] == [3, 2, 2, 2, 2, 2]
    assert model.config()["kind"] == "public"


def test_public_unet_computes_what_the_public_class_computes():
    """Same weights, same function as the anatomix class (the official code's UNet, state_dict-checked against the
    public manifest in tests/test_extract_models.py): layer order, (skip, upsampled) concatenation, reflect padding."""
    from maskgen.extract.anatomix import AnatomixUNet

    torch.manual_seed(0)
    ours, public = UNet(3, 2, channels=4, depth=2), AnatomixUNet(input_nc=3, output_nc=2, ngf=4, num_downs=2)
    theirs = list(public.state_dict().values())
    mine = ours.state_dict()
    assert [tuple(v.shape) for v in mine.values()] == [tuple(v.shape) for v in theirs]
    ours.load_state_dict(dict(zip(mine, (torch.randn_like(v) if v.is_floating_point() else v for v in theirs))))
    public.load_state_dict(dict(zip(public.state_dict(), ours.state_dict().values())))
    for m in list(ours.modules()) + list(public.modules()):
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_var.abs_()
    x = torch.randn(2, 3, 16, 12, 8)
    torch.testing.assert_close(ours.eval()(x), public.eval()(x))


@pytest.mark.parametrize("n_out", [4, 16])
def test_table15_unet_is_the_table_read_literally(n_out):
    model = UNet(17, n_out, kind="table15")  # channels 20, depth 5
    assert count_parameters(model) == _table15_parameter_count(17, 20, n_out)
    assert decoder_widths(20, 5, "table15") == [640, 320, 80, 40, 20]
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
    assert model.config() == {"in_channels": 3, "out_channels": 2, "channels": 4, "depth": 2, "dropout": 0.0,
                              "kind": "public"}
    clone = UNet.from_config(model.config())
    clone.load_state_dict(model.state_dict())
    # a checkpoint written before the kind was recorded holds the Table 15 network
    legacy = {k: v for k, v in UNet(3, 2, channels=4, depth=2, kind="table15").config().items() if k != "kind"}
    assert UNet.from_config(legacy).kind == "table15"


def test_unet_rejects_bad_shapes_and_arguments():
    from maskgen.train.unet import min_crop_side

    assert min_crop_side(5) == 64 and min_crop_side(5, "table15") == 32
    model = UNet(1, 2, channels=2, depth=2)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*depth=4"):
        model(torch.zeros(1, 1, 16, 16, 10))
    with pytest.raises(ValueError, match="depth=0"):
        UNet(1, 2, depth=0)
    with pytest.raises(ValueError, match="kind='big'"):
        UNet(1, 2, kind="big")
