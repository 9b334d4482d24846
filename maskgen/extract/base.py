"""The frozen feature-extractor interface: (B, 1, Z, Y, X) image in [0, 1] -> (B, C, Z, Y, X) float32 features."""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import nn

#: What every extractor expects as input: one channel, intensities already normalised to [0, 1] by the pipeline.
INPUT_SCALING = "1 channel, [0, 1] (pipeline normalisation)"


class Extractor(nn.Module, abc.ABC):
    """A frozen per-voxel feature extractor.

    Subclasses set `name`, `out_channels`, `layer`, `size_multiple` (every spatial input size must be a multiple of
    it), `min_size` (smallest spatial size it accepts) and `supports_autocast` (bf16 autocast is safe), implement
    `features(x)` and `arch()`, and call `self.freeze()` at the end of `__init__`.

    The module stays in eval mode with `requires_grad=False` on every parameter, even if a parent module calls
    `.train()`: batch-norm statistics of a frozen extractor must never move.
    """

    name: str = "extractor"
    out_channels: int = 0
    layer: str = "final"
    size_multiple: int = 1
    min_size: int = 1
    supports_autocast: bool = False
    weights_sha256: str | None = None
    #: Where the weights came from (e.g. "--weights", "MASKGEN_ANATOMIX_WEIGHTS", "hub-cache"); not part of the
    #: fingerprint, since the same weights found in two places make the same features.
    source: str = "built-in"
    #: The row of `maskgen.extract.registry` that built it (recorded, so the store's extractor can be rebuilt); not
    #: part of the features' identity.
    kind: str | None = None
    #: The weights (or model) file it was built from, if any: extraction workers rebuild from it.
    weights_path: str | None = None

    @abc.abstractmethod
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Raw features of an already padded input (spatial sizes multiples of `size_multiple`)."""

    @abc.abstractmethod
    def arch(self) -> dict[str, Any]:
        """JSON-safe architecture/hyper-parameters that, with the weights, determine the features."""

    def freeze(self) -> "Extractor":
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)
        return self

    def train(self, mode: bool = True) -> "Extractor":  # noqa: ARG002 - frozen: always eval
        return super().train(False)

    def fingerprint(self) -> dict[str, Any]:
        """What made the features: `maskgen.extract.registry.IDENTITY_FIELDS` determine them; `name` and `kind`
        say how to rebuild it. Stores record it and refuse mixing extractors."""
        return {
            "name": self.name,
            "kind": self.kind or self.name,
            "layer": self.layer,
            "weights_sha256": self.weights_sha256,
            "out_channels": int(self.out_channels),
            "arch": self.arch(),
            "input_scaling": INPUT_SCALING,
        }

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"{self.name}: expected input of shape (B, 1, Z, Y, X), got {tuple(x.shape)}")
        spatial = tuple(x.shape[2:])
        if any(s % self.size_multiple for s in spatial) or any(s < self.min_size for s in spatial):
            raise ValueError(
                f"{self.name}: spatial size {spatial} must be multiples of {self.size_multiple} and at least "
                f"{self.min_size}; pad first (maskgen.extract.inference.pad_to_multiple does this)"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.features(x).float()

    def extra_repr(self) -> str:
        return f"name={self.name!r}, layer={self.layer!r}, out_channels={self.out_channels}, source={self.source!r}"
