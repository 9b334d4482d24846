"""Frozen configuration of `maskgen pretrain`: the synthetic data ranges and the training run."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path


def _check_range(name: str, lo: float, hi: float, minimum: float | None = None, maximum: float | None = None) -> None:
    if lo > hi:
        raise ValueError(f"{name}: lower bound {lo} is above upper bound {hi}")
    if minimum is not None and lo < minimum:
        raise ValueError(f"{name}: {lo} is below the allowed minimum {minimum}")
    if maximum is not None and hi > maximum:
        raise ValueError(f"{name}: {hi} is above the allowed maximum {maximum}")


@dataclass(frozen=True)
class SynthConfig:
    """Ranges that the random label ensembles and their renderings are drawn from (uniform unless noted).

    Label ensembles: a smooth random partition (argmax of `num_regions` upsampled noise fields) with
    `num_shapes` deformed blobs, shells and thin tubes/sheets painted over it.
    Rendering (independently per view): per-label mean and within-label noise, smooth per-label texture,
    blur, resolution loss, bias field, additive noise, gamma and contrast inversion.
    """

    num_regions: tuple[int, int] = (3, 12)
    num_shapes: tuple[int, int] = (4, 20)
    shape_radius: tuple[float, float] = (0.08, 0.45)   # fraction of the half-width of the crop
    shape_roughness: tuple[float, float] = (0.0, 0.6)
    tube_fraction: float = 0.3                         # probability that a shape is a thin tube or sheet
    shell_fraction: float = 0.2                        # probability that a shape is a hollow shell
    # Nested shapes (off by default, so older runs reproduce): a core wrapped in 1..N thin layers, each its own
    # label, with a folded boundary (cortex, organ capsules, vessel and bowel walls).
    nested_fraction: float = 0.0                       # probability that a shape is nested (taken from the blobs)
    nested_layers: tuple[int, int] = (1, 3)            # layers around the core
    layer_thickness: tuple[float, float] = (0.06, 0.3)  # per layer, in units of the shape's radius
    fold_grid: tuple[int, int] = (4, 10)               # coarse grid of the folding field (finer: more folds)
    fold_amplitude: tuple[float, float] = (0.0, 0.5)   # displacement of the boundary, in units of the radius
    nested_scale: tuple[float, float] = (1.0, 3.0)     # nested shapes' radii are the drawn radius times this
    # Shifted views (off by default): both views are cut from one larger rendered volume at independent random
    # offsets of 0..max_view_shift voxels per axis, so a voxel sits at different positions in the two crops and
    # position within the crop (which a UNet can read from its borders) no longer identifies a voxel.
    max_view_shift: int = 0
    # spatial
    rotation_deg: float = 180.0
    scale: tuple[float, float] = (0.75, 1.33)
    elastic_strength: tuple[float, float] = (0.0, 0.08)  # max displacement in normalised [-1, 1] units
    # appearance
    within_label_std: tuple[float, float] = (0.0, 0.05)
    texture_amplitude: tuple[float, float] = (0.0, 0.12)
    blur_sigma: tuple[float, float] = (0.0, 1.2)       # voxels, drawn per axis
    p_resolution_loss: float = 0.3
    resolution_factor: tuple[float, float] = (1.0, 3.0)
    bias_strength: tuple[float, float] = (0.0, 0.3)
    noise_std: tuple[float, float] = (0.0, 0.05)
    log_gamma: tuple[float, float] = (-0.6, 0.6)
    p_invert: float = 0.3
    p_zero_background: float = 0.25
    p_real_labels: float = 0.5                         # used only when a label folder is given

    def __post_init__(self) -> None:
        _check_range("num_regions", *self.num_regions, minimum=1)
        _check_range("num_shapes", *self.num_shapes, minimum=0)
        _check_range("shape_radius", *self.shape_radius, minimum=0.01)
        _check_range("shape_roughness", *self.shape_roughness, minimum=0.0)
        _check_range("nested_layers", *self.nested_layers, minimum=1)
        _check_range("layer_thickness", *self.layer_thickness, minimum=0.01)
        _check_range("fold_grid", *self.fold_grid, minimum=2)
        _check_range("fold_amplitude", *self.fold_amplitude, minimum=0.0)
        _check_range("nested_scale", *self.nested_scale, minimum=0.1)
        _check_range("scale", *self.scale, minimum=0.1)
        _check_range("elastic_strength", *self.elastic_strength, minimum=0.0)
        _check_range("within_label_std", *self.within_label_std, minimum=0.0)
        _check_range("texture_amplitude", *self.texture_amplitude, minimum=0.0)
        _check_range("blur_sigma", *self.blur_sigma, minimum=0.0)
        _check_range("resolution_factor", *self.resolution_factor, minimum=1.0)
        _check_range("bias_strength", *self.bias_strength, minimum=0.0)
        _check_range("noise_std", *self.noise_std, minimum=0.0)
        _check_range("log_gamma", *self.log_gamma)
        for name in ("tube_fraction", "shell_fraction", "nested_fraction", "p_resolution_loss", "p_invert", "p_zero_background", "p_real_labels"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        if self.tube_fraction + self.shell_fraction + self.nested_fraction > 1.0:
            raise ValueError(
                f"tube_fraction + shell_fraction + nested_fraction must be <= 1, got {self.tube_fraction} + "
                f"{self.shell_fraction} + {self.nested_fraction}"
            )
        if isinstance(self.max_view_shift, bool) or not isinstance(self.max_view_shift, int) or self.max_view_shift < 0:
            raise ValueError(f"max_view_shift must be a non-negative integer (voxels), got {self.max_view_shift!r}")
        if self.rotation_deg < 0:
            raise ValueError(f"rotation_deg must be >= 0, got {self.rotation_deg}")


def _parse_value(text: str) -> object:
    parts = [p.strip() for p in text.split(",")]
    values: list[object] = []
    for part in parts:
        if part.lower() in ("true", "false"):
            values.append(part.lower() == "true")
            continue
        try:
            values.append(int(part))
        except ValueError:
            try:
                values.append(float(part))
            except ValueError:
                raise ValueError(f"{text!r} is not a number or a comma-separated pair of numbers") from None
    return values[0] if len(values) == 1 else values


def synth_from_overrides(items: list[str] | tuple[str, ...]) -> SynthConfig:
    """A SynthConfig from `KEY=VALUE` strings (`--synth nested_fraction=0.4 --synth layer_thickness=0.05,0.2`)."""
    from maskgen.config import from_dict

    names = [f.name for f in fields(SynthConfig)]
    overrides: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not value.strip():
            raise ValueError(f"synthesis setting {item!r} must look like KEY=VALUE (e.g. nested_fraction=0.4)")
        if key not in names:
            raise ValueError(f"unknown synthesis setting {key!r}; choose from {', '.join(names)}")
        try:
            overrides[key] = _parse_value(value)
        except ValueError as e:
            raise ValueError(f"synthesis setting {key}: {e}") from None
    try:
        return from_dict(SynthConfig, overrides)
    except TypeError as e:
        raise ValueError(f"synthesis settings {items}: {e}") from None


LOSSES = ("voxel", "cross_view", "supcon")
#: What the network sees: the rendered image, or its MIND-SSC descriptor computed inside the network
#: (`AnatomixUNet(input_transform="mind-ssc")`, so the weights file still maps an image to features).
INPUTS = ("image", "mind-ssc")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class PretrainConfig:
    """One `maskgen pretrain` run. Everything that changes the result is here (and must match on resume)."""

    out: Path
    steps: int = 2000
    crop_size: int = 32
    batch_size: int = 2
    ngf: int = 8
    num_downs: int = 3
    out_channels: int = 16
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 100
    weight_decay: float = 1e-5
    temperature: float = 0.1
    voxels_per_volume: int = 256
    loss: str = "voxel"             # contrastive mode, see maskgen.pretrain.contrastive: voxel | cross_view | supcon
    input: str = "image"            # image | mind-ssc (see INPUTS)
    append_input: bool = False      # mind-ssc only: the features are [UNet output, descriptor] (loss on both)
    seed: int = 0
    label_dir: Path | None = None
    checkpoint_every: int = 50
    log_every: int = 10
    synth: SynthConfig = field(default_factory=SynthConfig)
    # Where it runs (free to change on resume). cuda: bf16 autocast for the network, the loss in float32. The CPU
    # path is bitwise the same as before these fields existed; a CUDA run is reproducible on the same GPU model only.
    device: str = "auto"            # auto (cuda if available) | cpu | cuda
    num_workers: int | None = None  # processes that synthesise the next batches; None: 0 on the CPU, up to 8 on cuda

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.num_workers is not None and (isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int)
                                             or self.num_workers < 0):
            raise ValueError(f"num_workers must be a non-negative integer, got {self.num_workers!r}")
        positive = ("steps", "crop_size", "batch_size", "ngf", "num_downs", "out_channels", "voxels_per_volume",
                    "checkpoint_every", "log_every")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        multiple = 2 ** self.num_downs
        if self.crop_size % multiple:
            raise ValueError(
                f"crop_size {self.crop_size} must be a multiple of 2**num_downs = {multiple} "
                f"(e.g. {max(multiple, self.crop_size // multiple * multiple)})"
            )
        if self.crop_size // multiple < 2:
            raise ValueError(
                f"crop_size {self.crop_size} is too small for num_downs {self.num_downs}: "
                f"the bottleneck would be {self.crop_size // multiple} voxels wide (need >= 2)"
            )
        if self.out_channels < 2:
            raise ValueError(f"out_channels must be >= 2 for a contrastive embedding, got {self.out_channels}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.input not in INPUTS:
            raise ValueError(f"input must be one of {INPUTS}, got {self.input!r}")
        if self.append_input and self.input == "image":
            raise ValueError("append_input needs input 'mind-ssc' (appending the raw image would make the features "
                             "depend on the contrast)")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.voxels_per_volume < 2:
            raise ValueError(f"voxels_per_volume must be >= 2, got {self.voxels_per_volume}")
        if self.voxels_per_volume > self.crop_size ** 3:
            raise ValueError(
                f"voxels_per_volume {self.voxels_per_volume} exceeds the {self.crop_size ** 3} voxels of a crop"
            )
        shift = self.synth.max_view_shift
        if shift and (2 * shift > self.crop_size or self.voxels_per_volume > (self.crop_size - shift) ** 3):
            raise ValueError(
                f"synth max_view_shift {shift} is too large for crop_size {self.crop_size}: the two views must "
                f"overlap by at least half the crop and hold voxels_per_volume ({self.voxels_per_volume}) voxels"
            )

    @property
    def arch(self) -> dict[str, int | str]:
        """Keyword arguments of `AnatomixUNet` for this run (recorded in every checkpoint)."""
        from maskgen.extract.anatomix import INPUT_TRANSFORMS

        arch: dict[str, int | str] = {"input_nc": 1, "output_nc": self.out_channels, "ngf": self.ngf,
                                      "num_downs": self.num_downs, "norm": "batch"}
        if self.input != "image":
            arch.update(input_nc=INPUT_TRANSFORMS[self.input], input_transform=self.input)
        if self.append_input:
            arch["append_input"] = True
        return arch

    @property
    def state_dir(self) -> Path:
        """Folder beside the output with the resumable training state, metrics and plots."""
        return Path(str(self.out) + ".state")
