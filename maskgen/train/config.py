"""TrainConfig: every option of a training run, frozen and saved in `config.json` and in each checkpoint."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

from maskgen.config import from_dict, xyz_text  # noqa: F401 - xyz_text: sizes in messages, x,y,z
from maskgen.errors import OptionError
from maskgen.train.dice import EMPTY_CLASS_CONVENTIONS

INPUT_MODES = ("both", "image", "features")
FEATURE_NORMS = ("crop", "volume")
UNET_KINDS = ("public", "table15")
AUG_DEVICES = ("auto", "cpu", "device")
DEVICES = ("auto", "cpu", "cuda")
PAPER_STEPS = 250_000  # paper 4.1, all-data setting (few-shot: 40k)


@dataclass(frozen=True)
class TrainConfig:
    """Options of one training run (paper C.1–C.3 defaults).

    Resolved fields (`out`, `crop_zyx`, `train_cases`) are filled by `maskgen.train.setup.resolve_config` from the
    store before the run starts, so `config.json` records exactly what was trained.
    """

    features: str                                  # path of the feature store (maskgen extract)
    out: str = ""                                  # run folder; "" = runs/<store>-<inputs>-mr<rate>-s<seed>
    inputs: str = "both"                           # both (image + features) | image (ERM) | features
    mask_rate: float | None = None                 # view masking rate r: F.dropout3d over all input channels;
                                                   # None = 0.5 with both inputs, 0 (ERM) with one (resolved here)
    steps: int = PAPER_STEPS
    batch_size: int = 4
    lr: float = 2e-4
    weight_decay: float = 1e-4
    channels: int = 20                             # UNet width n_c (paper 3.2, Table 15)
    depth: int = 5                                 # number of max-pool levels
    unet: str = "public"                           # public (the official code's UNet) | table15 (Table 15 literally)
    crop_zyx: tuple[int, int, int] | None = None   # None = the store pipeline's crop size
    fg_fraction: float = 0.0                       # fraction of crops centred on a foreground voxel (paper: 0,
                                                   # uniform crops; nnU-Net: 1/3)
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
    empty_class: str = "ignore"                    # validation Dice of a class absent from the reference: ignore
                                                   # (paper / MONAI) | zero (nnU-Net); maskgen.train.dice
    views: int | None = None                       # augmented views of the store to draw crops from (extract
                                                   # --views); None = all the store has with cached features, 0 with
                                                   # --inputs image / --online-features (resolved by setup)
    world_size: int = 1                            # data-parallel processes (resolved from torchrun's launch);
                                                   # batch_size is per process: the global batch is the product
    sync_bn: bool = False                          # SyncBatchNorm across the processes (CUDA only)
    dist_timeout: float = 900.0                    # seconds a collective waits for the other processes before the
                                                   # run stops (a rank that died or hangs)

    def __post_init__(self) -> None:
        for name, allowed in (("inputs", INPUT_MODES), ("feature_norm", FEATURE_NORMS), ("aug_device", AUG_DEVICES),
                              ("device", DEVICES), ("empty_class", EMPTY_CLASS_CONVENTIONS)):
            _choice(name, getattr(self, name), allowed)
        _choice("unet", self.unet, UNET_KINDS)
        self._resolve_mask_rate()
        for name in ("steps", "batch_size", "channels", "depth", "world_size"):
            _at_least(name, getattr(self, name), 1)
        _finite("lr", self.lr, positive=True)
        _finite("weight_decay", self.weight_decay, positive=False)
        _finite("dist_timeout", self.dist_timeout, positive=True)
        _fraction("fg_fraction", self.fg_fraction)
        _fraction("dropout", self.dropout, upper_open=True, hint="(0 disables channel dropout)")
        _fraction("aug_prob", self.aug_prob)
        _fraction("val_overlap", self.val_overlap, upper_open=True)
        _at_least("val_every", self.val_every, 0, hint="(0 = validate at the end only)")
        _at_least("seed", self.seed, 0)
        if self.n_train is not None:
            _at_least("n_train", self.n_train, 1)
        if self.num_workers is not None:
            _at_least("num_workers", self.num_workers, 0)
        if self.crop_zyx is not None:
            check_crop(self.crop_zyx, self.depth, self.unet)
        self._check_views()

    def _check_views(self) -> None:
        """views: None (auto) or an integer >= 0; stored views carry augmented features, so they need cached
        features (not --inputs image, whose intensity augmentation runs per crop, nor --online-features)."""
        if self.views is None:
            return
        _at_least("views", self.views, 0, hint="(0 ignores the store's augmented views; auto uses them all)")
        if self.views > 0 and (self.inputs == "image" or self.online_features):
            why = "{inputs} image" if self.inputs == "image" else "{online_features}"
            raise OptionError("views", self.views, f"cannot be used with {why}: stored views carry augmented "
                              "features, and there the intensity augmentation runs on each crop; use {views} 0 or auto.")

    def _resolve_mask_rate(self) -> None:
        """mask_rate None -> 0.5 with both inputs, 0 with one; a non-zero rate needs both inputs (view masking drops
        whole input channels: on a single input it blanks samples, which is neither ERM nor MaskGen)."""
        if self.mask_rate is None:
            object.__setattr__(self, "mask_rate", 0.5 if self.inputs == "both" else 0.0)
        _fraction("mask_rate", self.mask_rate, upper_open=True,
                  hint="(0 disables view masking; the paper uses 0.25-0.75, 0.5 untuned)")
        if self.mask_rate > 0 and self.inputs != "both":
            raise OptionError(
                "mask_rate", self.mask_rate,
                f"needs both inputs: view masking drops whole input channels, and with {{inputs}} {self.inputs} it "
                "would blank whole samples. Leave the rate at its default (0 with a single input: the paper's "
                f"'{'Image' if self.inputs == 'image' else 'Reps.'} only' baseline) or use {{inputs}} both; the "
                "channel-dropout baseline is {dropout} with {inputs} image.",
            )

    @classmethod
    def from_saved(cls, data: dict) -> "TrainConfig":
        """A TrainConfig from its `to_dict` form in a checkpoint or config.json (`history` and the derived
        `effective_batch_size` ignored). Configs recorded before the UNet kind was an option trained the Table 15
        network, those before views read none."""
        data = {k: v for k, v in data.items() if k not in ("history", "effective_batch_size")}
        data.setdefault("unet", "table15")
        data.setdefault("views", 0)  # runs recorded before views existed read no view
        return from_dict(cls, data)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def check_crop(crop_zyx: tuple[int, ...], depth: int, unet: str = "public") -> None:
    """Every crop side must be a positive multiple of 2**depth so the UNet's skips line up, and at least the
    network's smallest input (the public UNet's reflect padding needs 2 voxels at the bottleneck)."""
    from maskgen.train.unet import min_crop_side

    m, low = 2**depth, min_crop_side(depth, unet)
    if len(crop_zyx) == 3 and all(int(c) % m == 0 for c in crop_zyx) and min(int(c) for c in crop_zyx) < low:
        fixed = tuple(max(low, int(c)) for c in crop_zyx)
        raise OptionError(
            "crop_zyx", tuple(crop_zyx),
            f"is too small for the {unet} UNet of depth {depth}: every side must be at least {low} (2 voxels at "
            f"the bottleneck); pass e.g. {{crop_zyx}} {xyz_text(fixed)} or a smaller {{depth}}.",
        )
    if len(crop_zyx) != 3 or any(int(c) <= 0 or int(c) % m for c in crop_zyx):
        fixed = tuple(max(m, round(int(c) / m) * m) for c in crop_zyx)
        raise OptionError(
            "crop_zyx", tuple(crop_zyx),
            f"must have 3 positive sides divisible by 2**depth={m} (depth {depth}); pass e.g. {{crop_zyx}} "
            f"{xyz_text(fixed)} or a smaller {{depth}}.",
        )


def default_run_name(store_path: str, inputs: str, mask_rate: float, seed: int) -> str:
    """runs/<store name>-<inputs>-mr<rate in %>-s<seed>, e.g. runs/amos-both-mr50-s0."""
    from pathlib import Path

    name = Path(str(store_path).rstrip("/")).name
    for suffix in (".zarr", ".zarr3"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return f"{name}-{inputs}-mr{round(mask_rate * 100)}-s{seed}"


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise OptionError(name, value, f"is not one of {', '.join(allowed)}.")


def _at_least(name: str, value: int, low: int, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise OptionError(name, value, f"must be an integer >= {low}{' ' + hint if hint else ''}.")


def _finite(name: str, value: float, positive: bool) -> None:
    ok = isinstance(value, numbers.Real) and math.isfinite(value) and (value > 0 if positive else value >= 0)
    if not ok:
        raise OptionError(name, value, f"must be a finite number {'> 0' if positive else '>= 0'}.")


def _fraction(name: str, value: float, upper_open: bool = False, hint: str = "") -> None:
    ok = isinstance(value, numbers.Real) and 0.0 <= value and (value < 1.0 if upper_open else value <= 1.0)
    if not ok:
        interval = "[0, 1)" if upper_open else "[0, 1]"
        raise OptionError(name, value, f"is out of range: use a value in {interval}{' ' + hint if hint else ''}.")
