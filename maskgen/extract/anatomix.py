"""The anatomix 3D UNet (state_dict-compatible with the public `anatomix.pth`) and its frozen extractor wrapper.

Layout (see `../shared/reference/anatomix_unet_manifest.json`): one `nn.Sequential` named `model`. Encoder level 0
has three conv-norm-ReLU units, every other level and the bottleneck two; each encoder level keeps its output as a
skip and ends with MaxPool3d(2). Each decoder level is Upsample(x2, nearest), `torch.cat((skip, upsampled), 1)`,
two conv-norm-ReLU units. A final Conv3d(ngf -> output_nc) has no norm and no activation. All convs are 3x3x3,
reflect padding, no bias. Width (`ngf`) and depth (`num_downs`) follow the same rule, so small networks for
pretraining share the code.

`input_transform="mind-ssc"` (maskgen-pretrained networks only; the public checkpoint has none): the network
computes the MIND-SSC descriptor of its (B, 1, Z, Y, X) input (`maskgen.extract.mind.mind_ssc`, default
parameters, float32) and runs the UNet on those 12 channels, so it still takes an image and `input_nc` is 12.
`append_input=True` (only with a transform) appends that descriptor to the final features: the extractor gives
`output_nc + input_nc` channels, the learned context channels next to the descriptor they were computed from.
Both are part of `arch()` (hence of checkpoints and store fingerprints) only when set.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from maskgen.extract.base import Extractor

LAYERS = ("final", "penultimate")
NORMS = ("batch", "instance")
#: What the network computes from its one-channel input before the first conv, and the channels that gives.
INPUT_TRANSFORMS = {"mind-ssc": 12}


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    return nn.InstanceNorm3d(channels, affine=True)


class AnatomixUNet(nn.Module):
    """anatomix-style 3D UNet. The default configuration has exactly the public checkpoint's keys and shapes."""

    def __init__(
        self,
        input_nc: int = 1,
        output_nc: int = 16,
        ngf: int = 16,
        num_downs: int = 4,
        norm: str = "batch",
        input_transform: str | None = None,
        append_input: bool = False,
    ) -> None:
        super().__init__()
        for arg, value in (("input_nc", input_nc), ("output_nc", output_nc), ("ngf", ngf), ("num_downs", num_downs)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"AnatomixUNet: {arg} must be a positive integer, got {value!r}")
        if norm not in NORMS:
            raise ValueError(f"AnatomixUNet: norm must be one of {NORMS}, got {norm!r}")
        if input_transform is not None:
            if input_transform not in INPUT_TRANSFORMS:
                raise ValueError(f"AnatomixUNet: input_transform must be None or one of {sorted(INPUT_TRANSFORMS)}, "
                                 f"got {input_transform!r}")
            if input_nc != INPUT_TRANSFORMS[input_transform]:
                raise ValueError(f"AnatomixUNet: input_transform {input_transform!r} gives "
                                 f"{INPUT_TRANSFORMS[input_transform]} channels, so input_nc must be "
                                 f"{INPUT_TRANSFORMS[input_transform]}, got {input_nc}")
        self.input_nc, self.output_nc, self.ngf, self.num_downs, self.norm = input_nc, output_nc, ngf, num_downs, norm
        if not isinstance(append_input, bool):
            raise ValueError(f"AnatomixUNet: append_input must be True or False, got {append_input!r}")
        if append_input and input_transform is None:
            raise ValueError("AnatomixUNet: append_input=True needs an input_transform (appending the raw image "
                             "would make the features depend on the contrast)")
        self.input_transform, self.append_input = input_transform, append_input

        layers: list[nn.Module] = []
        skip_after: list[int] = []
        concat_after: list[int] = []

        def unit(cin: int, cout: int) -> None:
            layers.append(nn.Conv3d(cin, cout, 3, padding=1, padding_mode="reflect", bias=False))
            layers.append(_norm(norm, cout))
            layers.append(nn.ReLU(inplace=True))

        widths = [ngf * 2**i for i in range(num_downs + 1)]
        cin = input_nc
        for level in range(num_downs):
            for _ in range(3 if level == 0 else 2):
                unit(cin, widths[level])
                cin = widths[level]
            skip_after.append(len(layers) - 1)
            layers.append(nn.MaxPool3d(2))
        for _ in range(2):  # bottleneck
            unit(cin, widths[num_downs])
            cin = widths[num_downs]
        for level in reversed(range(num_downs)):
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            concat_after.append(len(layers) - 1)
            cin = cin + widths[level]
            for _ in range(2):
                unit(cin, widths[level])
                cin = widths[level]
        layers.append(nn.Conv3d(cin, output_nc, 3, padding=1, padding_mode="reflect", bias=False))

        self.model = nn.Sequential(*layers)
        self.skip_after = tuple(skip_after)
        self.concat_after = tuple(concat_after)

    @property
    def size_multiple(self) -> int:
        return 2**self.num_downs

    @property
    def min_size(self) -> int:
        """Reflect padding at the bottleneck needs at least 2 voxels there."""
        return 2 ** (self.num_downs + 1)

    def arch(self) -> dict[str, Any]:
        arch: dict[str, Any] = {
            "input_nc": self.input_nc,
            "output_nc": self.output_nc,
            "ngf": self.ngf,
            "num_downs": self.num_downs,
            "norm": self.norm,
        }
        if self.input_transform is not None:
            arch["input_transform"] = self.input_transform
        if self.append_input:
            arch["append_input"] = True
        return arch

    def feature_channels(self, layer: str = "final") -> int:
        """Channels of `forward(x, layer)`."""
        if layer == "penultimate":
            return self.ngf
        return self.output_nc + (self.input_nc if self.append_input else 0)

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """The first conv's input: `x` itself, or its MIND-SSC descriptor (float32, outside any autocast)."""
        if self.input_transform is None:
            return x
        from maskgen.extract.mind import mind_ssc

        with torch.autocast(x.device.type, enabled=False):
            return mind_ssc(x.float())

    def forward(self, x: torch.Tensor, layer: str = "final") -> torch.Tensor:
        """Final conv output (`layer="final"`) or the ReLU output just before it (`layer="penultimate"`)."""
        if layer not in LAYERS:
            raise ValueError(f"AnatomixUNet: layer must be one of {LAYERS}, got {layer!r}")
        stop = len(self.model) - (1 if layer == "penultimate" else 0)
        x = descriptor = self.transform_input(x)
        skips: list[torch.Tensor] = []
        for i, module in enumerate(self.model):
            if i == stop:
                break
            x = module(x)
            if i in self.skip_after:
                skips.append(x)
            elif i in self.concat_after:
                x = torch.cat((skips.pop(), x), 1)
        if self.append_input and layer == "final":
            x = torch.cat((x, descriptor.to(x.dtype)), 1)
        return x


class AnatomixExtractor(Extractor):
    """A frozen `AnatomixUNet` used as a feature extractor (the official code's `final` layer by default)."""

    supports_autocast = True
    kind = "anatomix"

    def __init__(
        self,
        net: AnatomixUNet,
        layer: str = "final",
        weights_sha256: str | None = None,
        name: str = "anatomix",
        source: str = "built-in",
    ) -> None:
        super().__init__()
        if layer not in LAYERS:
            raise ValueError(f"AnatomixExtractor: layer must be one of {LAYERS}, got {layer!r}")
        self.net = net
        self.name = name
        self.layer = layer
        self.weights_sha256 = weights_sha256
        self.source = source
        self.out_channels = net.feature_channels(layer)
        self.size_multiple = net.size_multiple
        self.min_size = net.min_size
        self.freeze()

    def arch(self) -> dict[str, Any]:
        return {"type": "AnatomixUNet", **self.net.arch()}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, layer=self.layer)
