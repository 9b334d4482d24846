"""The segmentation UNet: the public code's network (default) or paper Table 15 read literally (`--unet table15`).

Both are 3D UNets of Conv-BN-ReLU blocks (3x3x3 convolutions without bias, BatchNorm, ReLU), MaxPool(2) down,
nearest x2 upsampling and concatenated skips, with width `channels` (n_c) doubled at each of `depth` levels:

- `public` (default): the UNet class of the official code (the same class as anatomix's network, see
  `../shared/reference/anatomix_unet_manifest.json`): encoder level 0 has three blocks, every other level two; each
  decoder level concatenates (skip, upsampled) and has two blocks of its skip's width (16/8/4/2/1 x n_c at depth 5);
  reflect padding; a 3x3x3 head convolution without bias. 36,874,980 parameters at n_c = 20, depth 5, 17 inputs and
  16 classes (paper 3.2: 36.9M).
- `table15`: paper Table 15 literally: three blocks per encoder level, decoder widths 32/16/4/2/1 x n_c, zero
  padding, concatenation (upsampled, skip), a 3x3x3 head with bias (75,456,996 parameters with the same settings).
  Checkpoints written before the `kind` was recorded are this network.

The head has no BatchNorm/ReLU (Table 15's block 33 lists them, but a ReLU would forbid negative logits).
`dropout` > 0 adds channel dropout (Dropout3d) after every block: the paper's Table 5 channel-dropout baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

KINDS = ("public", "table15")
LEGACY_KIND = "table15"  # the network of checkpoints without a recorded kind


@dataclass(frozen=True)
class _Spec:
    first_level_blocks: int
    other_level_blocks: int
    padding_mode: str
    head_bias: bool
    skip_first: bool            # decoder input torch.cat((skip, upsampled)) rather than (upsampled, skip)
    min_bottleneck: int         # voxels the bottleneck needs per side (reflect padding of 1 needs 2)


SPECS = {
    "public": _Spec(3, 2, "reflect", False, True, 2),
    "table15": _Spec(3, 3, "zeros", True, False, 1),
}


def decoder_widths(channels: int, depth: int, kind: str = "public") -> list[int]:
    """Output width of each decoder level, deepest first.

    public: the skip's width (16, 8, 4, 2, 1 x n_c at depth 5). table15: as Table 15 lists them, 32, 16, 4, 2, 1 x n_c
    (the two deepest decoder levels keep twice their skip's width, the shallower ones take their skip's width).
    """
    widths = []
    for level in range(depth - 1, -1, -1):  # skip level, deepest first
        factor = 2 ** (level + 1) if kind == "table15" and level >= depth - 2 else 2**level
        widths.append(channels * factor)
    return widths


def min_crop_side(depth: int, kind: str = "public") -> int:
    """The smallest crop side the network accepts (a multiple of 2**depth)."""
    return 2**depth * SPECS[kind].min_bottleneck


class ConvBNReLU(nn.Sequential):
    """3x3x3 convolution (no bias: BatchNorm follows) -> BatchNorm3d -> ReLU [-> Dropout3d(p) when p > 0].

    The optional channel dropout (no parameters, so state_dict keys are the same with or without it) is the
    generic-masking baseline of paper Table 5: whole feature maps dropped on every intermediate layer."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, padding_mode: str = "zeros") -> None:
        layers: list[nn.Module] = [
            nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, padding_mode=padding_mode, bias=False),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout3d(dropout))
        super().__init__(*layers)


class UNet(nn.Module):
    """A `kind` ("public" | "table15") UNet of width `channels` and `depth` max-pool levels (module docstring).

    Inputs must have every spatial side divisible by 2**depth (and at least `min_crop_side(depth, kind)`).
    """

    def __init__(self, in_channels: int, out_channels: int, channels: int = 20, depth: int = 5, dropout: float = 0.0,
                 kind: str = "public"):
        super().__init__()
        if in_channels < 1 or out_channels < 1 or channels < 1 or depth < 1:
            raise ValueError(
                f"UNet: in_channels={in_channels}, out_channels={out_channels}, channels={channels}, depth={depth} "
                "must all be >= 1"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"UNet: dropout={dropout} must be in [0, 1)")
        if kind not in SPECS:
            raise ValueError(f"UNet: kind={kind!r} must be one of {', '.join(KINDS)}")
        self.in_channels, self.out_channels, self.channels, self.depth = in_channels, out_channels, channels, depth
        self.dropout, self.kind, spec = float(dropout), kind, SPECS[kind]
        self._skip_first = spec.skip_first

        def block(cin: int, cout: int) -> ConvBNReLU:
            return ConvBNReLU(cin, cout, dropout, spec.padding_mode)

        self.encoder = nn.ModuleList()
        width_in, enc_widths = in_channels, []
        for level in range(depth + 1):
            width = channels * 2**level
            n = spec.first_level_blocks if level == 0 else spec.other_level_blocks
            blocks = ([nn.MaxPool3d(2)] if level > 0 else []) + [block(width_in if i == 0 else width, width)
                                                                  for i in range(n)]
            self.encoder.append(nn.Sequential(*blocks))
            enc_widths.append(width)
            width_in = width
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.decoder = nn.ModuleList()
        for level, width in zip(range(depth - 1, -1, -1), decoder_widths(channels, depth, kind)):
            self.decoder.append(nn.Sequential(block(width_in + enc_widths[level], width), block(width, width)))
            width_in = width
        self.head = nn.Conv3d(width_in, out_channels, kernel_size=3, padding=1, padding_mode=spec.padding_mode,
                              bias=spec.head_bias)

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
            up, skip = self.upsample(x), skips.pop()
            x = block(torch.cat([skip, up] if self._skip_first else [up, skip], dim=1))
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
            "kind": self.kind,
        }

    @staticmethod
    def from_config(config: dict) -> "UNet":
        """The network of a checkpoint's `model_config` (without a `kind`: the network of older checkpoints)."""
        return UNet(**{"kind": LEGACY_KIND, **dict(config)})


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
