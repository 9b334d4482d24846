"""CLI commands of the 'train' stage (light module: heavy imports go inside command bodies)."""

from __future__ import annotations

import os
from typing import Optional

import typer

from maskgen.cli._common import handle_errors, size_option, threads_option, use_threads
from maskgen.config import xyz_text

# `train --help` groups its options in these panels (new options: pick one)
DATA, MODEL, OPTIMISATION, AUGMENTATION, RUN = "Data", "Model", "Optimisation", "Augmentation", "Run control"

# option name (python) -> TrainConfig field, for options that map one to one
_FIELDS = (
    "inputs", "mask_rate", "steps", "batch_size", "lr", "weight_decay", "channels", "depth", "unet", "fg_fraction",
    "aug_prob", "aug_device", "feature_norm", "n_train", "val_every", "num_workers", "seed", "device",
    "online_features", "extractor_weights", "dropout", "empty_class", "views", "sync_bn", "dist_timeout",
)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main app."""

    @app.command("train")
    @handle_errors(fields={"crop_zyx": ("crop_size", xyz_text)})
    def train_command(
        ctx: typer.Context,
        features: str = typer.Option(..., "--features", rich_help_panel=DATA, help="Feature store made by `maskgen extract`: a folder or an fsspec URL (s3://bucket/amos.zarr)."),
        inputs: str = typer.Option("both", "--inputs", rich_help_panel=MODEL, help="both (image + features) | image (ERM) | features."),
        steps: int = typer.Option(250_000, "--steps", rich_help_panel=OPTIMISATION, help="Training steps (paper: 250k all-data, 40k few-shot)."),
        batch_size: int = typer.Option(4, "--batch-size", rich_help_panel=OPTIMISATION, help="Crops per step."),
        lr: float = typer.Option(2e-4, "--lr", rich_help_panel=OPTIMISATION, help="AdamW learning rate at step 0 (cosine to 0)."),
        weight_decay: float = typer.Option(1e-4, "--weight-decay", rich_help_panel=OPTIMISATION, help="AdamW weight decay."),
        mask_rate: Optional[float] = typer.Option(
            None, "--mask-rate", rich_help_panel=AUGMENTATION, help="View masking rate in [0, 1) (default 0.5 with --inputs both; 0, i.e. no "
            "masking, with a single input, where a non-zero rate is refused)."
        ),
        channels: int = typer.Option(20, "--channels", rich_help_panel=MODEL, help="UNet base width n_c (paper 3.2)."),
        depth: int = typer.Option(5, "--depth", rich_help_panel=MODEL, help="UNet max-pool levels (crop sides must divide by 2**depth)."),
        unet: str = typer.Option(
            "public", "--unet", rich_help_panel=MODEL, help="public (the official code's UNet: 36.87M parameters at width 20, depth 5) | "
            "table15 (paper Table 15 read literally: 75.46M)."
        ),
        crop_size: Optional[str] = size_option(  # the command receives (z, y, x)
            None, "--crop-size", rich_help_panel=DATA, help="Training crop in voxels, N (cubic) or X,Y,Z (x,y,z "
            "order) (default: the store pipeline's)."
        ),
        fg_fraction: float = typer.Option(
            0.0, "--fg-fraction", rich_help_panel=DATA, help="Fraction of crops centred on a foreground voxel (paper: 0, uniform crops; "
            "nnU-Net: 0.33)."
        ),
        aug_prob: float = typer.Option(0.33, "--aug-prob", rich_help_panel=AUGMENTATION, help="Probability of each augmentation (paper C.2)."),
        aug_device: str = typer.Option(
            "auto", "--aug-device", rich_help_panel=AUGMENTATION, help="Spatial augmentation: cpu (loader workers) | device (batched) | auto."
        ),
        feature_norm: str = typer.Option("crop", "--feature-norm", rich_help_panel=DATA, help="crop (instance norm) | volume (stored stats)."),
        n_train: Optional[int] = typer.Option(None, "--n-train", rich_help_panel=DATA, help="Few-shot: train on K random train cases."),
        out: Optional[str] = typer.Option(
            None, "--out", rich_help_panel=RUN, help="Run folder (default: runs/STORE-INPUTS-mrRATE-sSEED)."
        ),
        val_every: int = typer.Option(1000, "--val-every", rich_help_panel=RUN, help="Validate and save last.pt every N steps (0: at end)."),
        num_workers: Optional[int] = typer.Option(None, "--num-workers", rich_help_panel=DATA, help="Loader worker processes (default: automatic)."),
        seed: int = typer.Option(0, "--seed", rich_help_panel=RUN, help="Run seed (model init, crops, augmentation, masking)."),
        device: str = typer.Option("auto", "--device", rich_help_panel=RUN, help="auto | cpu | cuda."),
        online_features: bool = typer.Option(
            False, "--online-features", rich_help_panel=DATA, help="Recompute features from each augmented crop with the frozen extractor."
        ),
        extractor_weights: Optional[str] = typer.Option(
            None, "--extractor-weights", rich_help_panel=DATA, help="Extractor weights for --online-features (anatomix.pth)."
        ),
        dropout: float = typer.Option(
            0.0, "--dropout", rich_help_panel=MODEL, help="Channel dropout after every UNet block (paper Table 5 baseline; use with --inputs image)."
        ),
        empty_class: str = typer.Option(
            "ignore", "--empty-class", rich_help_panel=RUN, help="Validation Dice of a class absent from the reference: ignore (paper, MONAI) | zero (nnU-Net)."
        ),
        views: Optional[str] = typer.Option(
            None, "--views", rich_help_panel=AUGMENTATION, help="Augmented views of the store (maskgen extract "
            "--views) to draw crops from: auto (all the store has; none with --inputs image or --online-features) | 0 "
            "(ignore them: intensity augmentation of the image only, as before) | K [default: auto]."
        ),
        resume: bool = typer.Option(False, "--resume", rich_help_panel=RUN, help="Continue the run in --out from its last.pt."),
        overwrite: bool = typer.Option(False, "--overwrite", rich_help_panel=RUN, help="Start again in a non-empty run folder."),
        stop_at: Optional[int] = typer.Option(
            None, "--stop-at", rich_help_panel=RUN, help="Stop after this many steps in total (continue later with --resume)."
        ),
        quiet: bool = typer.Option(False, "--quiet", rich_help_panel=RUN, help="No progress bar or progress lines."),
        logger: str = typer.Option(
            "none", "--logger", rich_help_panel=RUN, help="Experiment tracker: none | tensorboard (event files in "
            "RUN/tensorboard) | mlflow (file store RUN/mlruns, or $MLFLOW_TRACKING_URI); optional extras "
            "maskgen[tensorboard], maskgen[mlflow]."
        ),
        log_interval: Optional[float] = typer.Option(
            None, "--log-interval", rich_help_panel=RUN, help="Seconds between progress lines when stderr/stdout is "
            "not a terminal (SLURM, | tee, CI); default $MASKGEN_LOG_INTERVAL or 30."
        ),
        nproc: int = typer.Option(
            1, "--nproc", rich_help_panel=RUN, help="Data-parallel processes on this machine, one per GPU (DDP; gloo "
            "on the CPU): runs `torchrun --standalone --nproc-per-node N -m maskgen train ...`. --batch-size is per "
            "process."
        ),
        sync_bn: bool = typer.Option(
            False, "--sync-bn", rich_help_panel=MODEL, help="SyncBatchNorm: batch statistics over all processes (CUDA)."
        ),
        dist_timeout: float = typer.Option(
            900.0, "--dist-timeout", rich_help_panel=RUN, help="Seconds the processes wait for each other before the "
            "run stops (a dead or hung rank)."
        ),
        threads: Optional[int] = threads_option(rich_help_panel=RUN),
    ) -> None:
        """Train the segmentation UNet on crops streamed from a feature store (view masking, paper C.1-C.3)."""
        from maskgen.errors import MaskgenError
        from maskgen.store.kv import store_exists
        from maskgen.train.config import TrainConfig
        from maskgen.train.loop import train
        from maskgen.train.resume import resume_config

        if nproc != 1:
            return _launch(ctx, nproc, device)
        use_threads(threads)  # re-applied for the loader workers when they start (maskgen.threads)
        values = {name: ctx.params[name] for name in _FIELDS}
        values["views"] = _parse_views(views)
        values["crop_zyx"] = crop_size
        if not store_exists(features):
            raise MaskgenError(f"--features {features} does not exist; create the store with `maskgen extract`.")
        if resume:  # the run continues as recorded; only options given on this command line may change
            cfg = resume_config(features, out, {k: values[k] for k in _explicit(ctx)})
        else:
            cfg = TrainConfig(features=features, out=out or "", **values)
        run_dir = train(cfg, resume=resume, overwrite=overwrite, stop_at=stop_at, progress=not quiet, logger=logger,
                        log_interval=log_interval)
        if os.environ.get("RANK", "0") == "0":  # under torchrun: once, by rank 0
            typer.echo(str(run_dir))


def _launch(ctx: typer.Context, nproc: int, device: str) -> None:
    """`--nproc N`: this command line without --nproc, in N processes started by torchrun's launcher."""
    import torch

    from maskgen.errors import MaskgenError
    from maskgen.train.distributed import launch, launched

    if nproc < 1:
        raise MaskgenError(f"--nproc {nproc} must be at least 1.")
    if launched():
        raise MaskgenError("--nproc starts the processes itself; under torchrun leave it out (torchrun's "
                           "--nproc-per-node sets the number).")
    gpus = torch.cuda.device_count() if device != "cpu" else 0
    if (device == "cuda" or gpus) and nproc > gpus:
        raise MaskgenError(f"--nproc {nproc} needs one CUDA device per process but PyTorch sees {gpus}; use --nproc "
                           f"{max(gpus, 1)} or --device cpu.")
    launch([ctx.info_name or "train", *_command_line(ctx, drop=("nproc",))], nproc)


def _command_line(ctx: typer.Context, drop: tuple[str, ...]) -> list[str]:
    """The options given on the command line, as arguments again (without those named in `drop`)."""
    args: list[str] = []
    for param in ctx.command.params:
        name = param.name or ""
        if name in drop or getattr(ctx.get_parameter_source(name), "name", "") != "COMMANDLINE":
            continue
        value = ctx.params[name]
        if isinstance(value, tuple):  # a size option hands the command (z, y, x); its flag takes x,y,z
            value = xyz_text(value)
        if getattr(param, "is_flag", False):
            flags = param.opts if value else param.secondary_opts
            args += flags[:1]
        else:
            args += [param.opts[0], str(value)]
    return args


def _parse_views(text: str | None) -> int | None:
    """`--views auto|K` -> None (auto) or K."""
    from maskgen.errors import MaskgenError

    if text is None or text.strip().lower() == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise MaskgenError(f"--views {text!r} is not auto or a whole number of views (e.g. 0 or 2).") from None


def _explicit(ctx: typer.Context) -> set[str]:
    """The TrainConfig fields given on the command line (compared by name: typer vendors its own click, whose
    ParameterSource is not click's)."""
    given = {n for n in (*_FIELDS, "crop_size") if getattr(ctx.get_parameter_source(n), "name", "") == "COMMANDLINE"}
    return {("crop_zyx" if n == "crop_size" else n) for n in given}
