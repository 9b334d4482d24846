"""CLI commands of the 'train' stage (light module: heavy imports go inside command bodies)."""

from __future__ import annotations

from typing import Optional

import typer

from maskgen.cli._common import handle_errors
from maskgen.train.config import xyz_text

# option name (python) -> TrainConfig field, for options that map one to one
_FIELDS = (
    "inputs", "mask_rate", "steps", "batch_size", "lr", "weight_decay", "channels", "depth", "unet", "fg_fraction",
    "aug_prob", "aug_device", "feature_norm", "n_train", "val_every", "num_workers", "seed", "device",
    "online_features", "extractor_weights", "dropout", "empty_class",
)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main app."""

    @app.command("train")
    @handle_errors(fields={"crop_zyx": ("crop_size", xyz_text)})
    def train_command(
        ctx: typer.Context,
        features: str = typer.Option(..., "--features", help="Feature store made by `maskgen extract`: a folder or an fsspec URL (s3://bucket/amos.zarr)."),
        out: Optional[str] = typer.Option(
            None, "--out", help="Run folder (default: runs/STORE-INPUTS-mrRATE-sSEED)."
        ),
        inputs: str = typer.Option("both", "--inputs", help="both (image + features) | image (ERM) | features."),
        mask_rate: Optional[float] = typer.Option(
            None, "--mask-rate", help="View masking rate in [0, 1) (default 0.5 with --inputs both; 0, i.e. no "
            "masking, with a single input, where a non-zero rate is refused)."
        ),
        steps: int = typer.Option(250_000, "--steps", help="Training steps (paper: 250k all-data, 40k few-shot)."),
        batch_size: int = typer.Option(4, "--batch-size", help="Crops per step."),
        lr: float = typer.Option(2e-4, "--lr", help="AdamW learning rate at step 0 (cosine to 0)."),
        weight_decay: float = typer.Option(1e-4, "--weight-decay", help="AdamW weight decay."),
        channels: int = typer.Option(20, "--channels", help="UNet base width n_c (paper 3.2)."),
        depth: int = typer.Option(5, "--depth", help="UNet max-pool levels (crop sides must divide by 2**depth)."),
        unet: str = typer.Option(
            "public", "--unet", help="public (the official code's UNet: 36.87M parameters at width 20, depth 5) | "
            "table15 (paper Table 15 read literally: 75.46M)."
        ),
        crop_size: Optional[str] = typer.Option(
            None, "--crop-size", help="Training crop x,y,z in voxels (default: the store pipeline's)."
        ),
        fg_fraction: float = typer.Option(
            0.0, "--fg-fraction", help="Fraction of crops centred on a foreground voxel (paper: 0, uniform crops; "
            "nnU-Net: 0.33)."
        ),
        aug_prob: float = typer.Option(0.33, "--aug-prob", help="Probability of each augmentation (paper C.2)."),
        aug_device: str = typer.Option(
            "auto", "--aug-device", help="Spatial augmentation: cpu (loader workers) | device (batched) | auto."
        ),
        feature_norm: str = typer.Option("crop", "--feature-norm", help="crop (instance norm) | volume (stored stats)."),
        n_train: Optional[int] = typer.Option(None, "--n-train", help="Few-shot: train on K random train cases."),
        val_every: int = typer.Option(1000, "--val-every", help="Validate and save last.pt every N steps (0: at end)."),
        num_workers: Optional[int] = typer.Option(None, "--num-workers", help="Loader worker processes (default: automatic)."),
        seed: int = typer.Option(0, "--seed", help="Run seed (model init, crops, augmentation, masking)."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
        online_features: bool = typer.Option(
            False, "--online-features", help="Recompute features from each augmented crop with the frozen extractor."
        ),
        extractor_weights: Optional[str] = typer.Option(
            None, "--extractor-weights", help="Extractor weights for --online-features (anatomix.pth)."
        ),
        dropout: float = typer.Option(
            0.0, "--dropout", help="Channel dropout after every UNet block (paper Table 5 baseline; use with --inputs image)."
        ),
        empty_class: str = typer.Option(
            "ignore", "--empty-class", help="Validation Dice of a class absent from the reference: ignore (paper, MONAI) | zero (nnU-Net)."
        ),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Start again in a non-empty run folder."),
        stop_at: Optional[int] = typer.Option(
            None, "--stop-at", help="Stop after this many steps in total (continue later with --resume)."
        ),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar or progress lines."),
        logger: str = typer.Option(
            "none", "--logger", help="Experiment tracker: none | tensorboard (event files in RUN/tensorboard) | "
            "mlflow (file store RUN/mlruns, or $MLFLOW_TRACKING_URI); optional extras maskgen[tensorboard|mlflow]."
        ),
        log_interval: Optional[float] = typer.Option(
            None, "--log-interval", help="Seconds between progress lines when stderr/stdout is not a terminal "
            "(SLURM, | tee, CI); default $MASKGEN_LOG_INTERVAL or 30."
        ),
    ) -> None:
        """Train the segmentation UNet on crops streamed from a feature store (view masking, paper C.1-C.3)."""
        from maskgen.errors import MaskgenError
        from maskgen.store.kv import store_exists
        from maskgen.train.config import TrainConfig, parse_crop_size
        from maskgen.train.loop import train
        from maskgen.train.resume import resume_config

        values = {name: ctx.params[name] for name in _FIELDS}
        values["crop_zyx"] = parse_crop_size(crop_size) if crop_size else None
        if not store_exists(features):
            raise MaskgenError(f"--features {features} does not exist; create the store with `maskgen extract`.")
        if resume:  # the run continues as recorded; only options given on this command line may change
            cfg = resume_config(features, out, {k: values[k] for k in _explicit(ctx)})
        else:
            cfg = TrainConfig(features=features, out=out or "", **values)
        run_dir = train(cfg, resume=resume, overwrite=overwrite, stop_at=stop_at, progress=not quiet, logger=logger,
                        log_interval=log_interval)
        typer.echo(str(run_dir))


def _explicit(ctx: typer.Context) -> set[str]:
    """The TrainConfig fields given on the command line (compared by name: typer vendors its own click, whose
    ParameterSource is not click's)."""
    given = {n for n in (*_FIELDS, "crop_size") if getattr(ctx.get_parameter_source(n), "name", "") == "COMMANDLINE"}
    return {("crop_zyx" if n == "crop_size" else n) for n in given}
