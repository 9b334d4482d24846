"""TrainConfig: every option of a training run, frozen and saved in `config.json` and in each checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from maskgen.errors import MaskgenError

INPUT_MODES = ("both", "image", "features")
FEATURE_NORMS = ("crop", "volume")
AUG_DEVICES = ("auto", "cpu", "device")
DEVICES = ("auto", "cpu", "cuda")
PAPER_STEPS = 250_000  # paper 4.1, all-data setting (few-shot: 40k)


@dataclass(frozen=True)
class TrainConfig:
    """Options of one training run (paper C.1–C.3 defaults).

    Resolved fields (`out`, `crop_zyx`, `train_cases`) are filled by `maskgen.train.loop.resolve_config` from the
    store before the run starts, so `config.json` records exactly what was trained.
    """

    features: str                                  # path of the feature store (maskgen extract)
    out: str = ""                                  # run folder; "" = runs/<store>-<inputs>-mr<rate>-s<seed>
    inputs: str = "both"                           # both (image + features) | image (ERM) | features
    mask_rate: float = 0.5                         # view masking rate r: F.dropout3d over all input channels
    steps: int = PAPER_STEPS
    batch_size: int = 4
    lr: float = 2e-4
    weight_decay: float = 1e-4
    channels: int = 20                             # UNet width n_c (paper Table 15)
    depth: int = 5                                 # number of max-pool levels
    crop_zyx: tuple[int, int, int] | None = None   # None = the store pipeline's crop size
    fg_fraction: float = 1.0 / 3.0                 # fraction of crops centred on a foreground voxel
    aug_prob: float = 0.33                         # probability of each augmentation (paper C.2)
    aug_device: str = "auto"                       # where the spatial augmentation runs: auto | cpu | device
    feature_norm: str = "crop"                     # crop (instance norm per crop) | volume (stored statistics)
    n_train: int | None = None                     # few-shot: train on K randomly chosen train cases
    train_cases: tuple[str, ...] = ()              # the train cases used (resolved)
    val_every: int = 1000                          # validate (and save last.pt) every N steps; 0 = at the end only
    val_overlap: float = 0.5                       # sliding-window overlap for validation
    num_workers: int | None = None                 # DataLoader workers; None = automatic
    seed: int = 0
    device: str = "auto"                           # auto | cpu | cuda
    online_features: bool = False                  # recompute features from the augmented crop every step
    extractor_weights: str | None = None           # weights for --online-features (else the registry's lookup)
    dropout: float = 0.0                           # channel dropout after every UNet block (paper Table 5 baseline)

    def __post_init__(self) -> None:
        _choice("--inputs", self.inputs, INPUT_MODES)
        _choice("--feature-norm", self.feature_norm, FEATURE_NORMS)
        _choice("--aug-device", self.aug_device, AUG_DEVICES)
        _choice("--device", self.device, DEVICES)
        if not (0.0 <= self.mask_rate < 1.0):
            raise MaskgenError(
                f"--mask-rate {self.mask_rate} is out of range: use a rate in [0, 1) "
                "(0 disables view masking; the paper uses 0.25-0.75, 0.5 untuned)."
            )
        _positive("--steps", self.steps)
        _positive("--batch-size", self.batch_size)
        _positive("--channels", self.channels)
        _positive("--depth", self.depth)
        if not self.lr > 0:
            raise MaskgenError(f"--lr {self.lr} must be > 0.")
        if self.weight_decay < 0:
            raise MaskgenError(f"--weight-decay {self.weight_decay} must be >= 0.")
        if not (0.0 <= self.fg_fraction <= 1.0):
            raise MaskgenError(f"--fg-fraction {self.fg_fraction} must be in [0, 1].")
        if not (0.0 <= self.dropout < 1.0):
            raise MaskgenError(f"--dropout {self.dropout} must be in [0, 1) (0 disables channel dropout).")
        if not (0.0 <= self.aug_prob <= 1.0):
            raise MaskgenError(f"--aug-prob {self.aug_prob} must be in [0, 1].")
        if not (0.0 <= self.val_overlap < 1.0):
            raise MaskgenError(f"validation overlap {self.val_overlap} must be in [0, 1).")
        if self.val_every < 0:
            raise MaskgenError(f"--val-every {self.val_every} must be >= 0 (0 = validate at the end only).")
        if self.n_train is not None and self.n_train < 1:
            raise MaskgenError(f"--n-train {self.n_train} must be >= 1.")
        if self.seed < 0:
            raise MaskgenError(f"--seed {self.seed} must be >= 0.")
        if self.num_workers is not None and self.num_workers < 0:
            raise MaskgenError(f"--num-workers {self.num_workers} must be >= 0.")
        if self.crop_zyx is not None:
            check_crop(self.crop_zyx, self.depth)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def check_crop(crop_zyx: tuple[int, ...], depth: int) -> None:
    """Every crop side must be a positive multiple of 2**depth so the UNet's skips line up."""
    m = 2**depth
    if len(crop_zyx) != 3 or any(int(c) <= 0 or int(c) % m for c in crop_zyx):
        xyz = ",".join(str(c) for c in tuple(crop_zyx)[::-1])
        raise MaskgenError(
            f"crop size (x,y,z)={xyz} must have 3 positive sides divisible by 2**depth={m} "
            f"(depth {depth}); pass e.g. --crop-size {','.join(str(max(m, round(int(c) / m) * m)) for c in tuple(crop_zyx)[::-1])} "
            "or a smaller --depth."
        )


def parse_crop_size(text: str) -> tuple[int, int, int]:
    """`--crop-size x,y,z` (pipeline order) -> (z, y, x)."""
    try:
        xyz = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise MaskgenError(f"--crop-size {text!r} is not three integers x,y,z (e.g. 64,64,64).") from None
    if len(xyz) != 3 or min(xyz) <= 0:
        raise MaskgenError(f"--crop-size {text!r} must be three positive integers x,y,z (e.g. 64,64,64).")
    return (xyz[2], xyz[1], xyz[0])


def default_run_name(store_path: str, inputs: str, mask_rate: float, seed: int) -> str:
    """runs/<store name>-<inputs>-mr<rate in %>-s<seed>, e.g. runs/amos-both-mr50-s0."""
    from pathlib import Path

    name = Path(str(store_path).rstrip("/")).name
    for suffix in (".zarr", ".zarr3"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return f"{name}-{inputs}-mr{round(mask_rate * 100)}-s{seed}"


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise MaskgenError(f"{flag} {value!r} is not one of {', '.join(allowed)}.")


def _positive(flag: str, value: int) -> None:
    if int(value) < 1:
        raise MaskgenError(f"{flag} {value} must be >= 1.")
