"""The segmentation UNet of paper Table 15 (Conv-BN-ReLU blocks, max-pooling, nearest upsampling, concat skips)."""

from __future__ import annotations

import torch
from torch import nn


def decoder_widths(channels: int, depth: int) -> list[int]:
    """Output width of each decoder level, deepest first, as Table 15 lists them.

    For depth 5 the table gives 32, 16, 4, 2, 1 x n_c after concatenating with the skips of widths 16, 8, 4, 2, 1 x n_c:
    the two deepest decoder levels keep twice their skip's width, the shallower ones take their skip's width.
    """
    widths = []
    for level in range(depth - 1, -1, -1):  # skip level, deepest first
        factor = 2 ** (level + 1) if level >= depth - 2 else 2**level
        widths.append(channels * factor)
    return widths


class ConvBNReLU(nn.Sequential):
    """3x3x3 convolution (no bias: BatchNorm follows) -> BatchNorm3d -> ReLU [-> Dropout3d(p) when p > 0].

    The optional channel dropout (no parameters, so state_dict keys are the same with or without it) is the
    generic-masking baseline of paper Table 5: whole feature maps dropped on every intermediate layer."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = [
            nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout3d(dropout))
        super().__init__(*layers)


class UNet(nn.Module):
    """Paper Table 15 with width `channels` (n_c) and `depth` max-pool levels (the table: depth 5).

    Encoder level i (i = 0..depth) has 3 Conv-BN-ReLU blocks of width n_c * 2**i, each level after the first starting
    with MaxPool(2). Each decoder level upsamples x2 (nearest), concatenates the encoder skip of the same resolution
    and applies 2 Conv-BN-ReLU blocks (widths from `decoder_widths`). The head is a 3x3x3 convolution to
    `out_channels` logits, without the BatchNorm and ReLU that Table 15's block 33 lists: a ReLU would forbid negative
    logits. `dropout` (default 0) adds channel dropout (Dropout3d) after every Conv-BN-ReLU block: the paper's
    Table 5 channel-dropout baseline.
    Inputs must have every spatial side divisible by 2**depth.
    """

    def __init__(self, in_channels: int, out_channels: int, channels: int = 20, depth: int = 5, dropout: float = 0.0):
        super().__init__()
        if in_channels < 1 or out_channels < 1 or channels < 1 or depth < 1:
            raise ValueError(
                f"UNet: in_channels={in_channels}, out_channels={out_channels}, channels={channels}, depth={depth} "
                "must all be >= 1"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"UNet: dropout={dropout} must be in [0, 1)")
        self.in_channels, self.out_channels, self.channels, self.depth = in_channels, out_channels, channels, depth
        self.encoder = nn.ModuleList()
        width_in = in_channels
        enc_widths = []
        for level in range(depth + 1):
            width = channels * 2**level
            blocks = [nn.MaxPool3d(2)] if level > 0 else []
            blocks += [ConvBNReLU(width_in, width, dropout), ConvBNReLU(width, width, dropout),
                       ConvBNReLU(width, width, dropout)]
            self.encoder.append(nn.Sequential(*blocks))
            enc_widths.append(width)
            width_in = width
        self.dropout = float(dropout)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.decoder = nn.ModuleList()
        for level, width in zip(range(depth - 1, -1, -1), decoder_widths(channels, depth)):
            self.decoder.append(nn.Sequential(ConvBNReLU(width_in + enc_widths[level], width, dropout),
                                              ConvBNReLU(width, width, dropout)))
            width_in = width
        self.head = nn.Conv3d(width_in, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = 2**self.depth
        if any(s % m for s in x.shape[2:]):
            raise ValueError(f"UNet input spatial shape {tuple(x.shape[2:])} must be divisible by 2**depth={m}")
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level < self.depth:
                skips.append(x)
        for block in self.decoder:
            x = block(torch.cat([self.upsample(x), skips.pop()], dim=1))
        return self.head(x)

    _channels_last = False

    def place(self, device: torch.device | str) -> "UNet":
        """Move to `device`; on the CPU also switch weights and inputs to the channels-last 3D layout, whose oneDNN
        kernels made a CPU training step ~40% faster here (benchmarks/README.md). Values are unchanged."""
        device = torch.device(device)
        self._channels_last = device.type == "cpu"
        fmt = torch.channels_last_3d if self._channels_last else torch.contiguous_format
        return self.to(device=device, memory_format=fmt)

    def config(self) -> dict:
        """The constructor kwargs, saved in checkpoints as `model_config`."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "channels": self.channels,
            "depth": self.depth,
            "dropout": self.dropout,
        }


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
