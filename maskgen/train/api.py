"""`maskgen.train(...)`: the Python form of `maskgen train` (docs/python-api.md). Heavy imports happen inside."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def train(features: str | Path, out: str | Path | None = None, *, crop_size: Any = None, resume: bool = False,
          overwrite: bool = False, stop_at: int | None = None, progress: bool = True, logger: str = "none",
          log_interval: float | None = None, **options: Any) -> Path:
    """Train the view-masked segmentation UNet on crops streamed from a feature store, exactly as `maskgen train`
    does, and return the run folder (checkpoints best.pt / last.pt, config.json, metrics.jsonl, progress.png).

    Args:
        features: the store made by `extract` (a folder or an fsspec URL).
        out: the run folder (default: runs/<store>-<inputs>-mr<rate>-s<seed>).
        crop_size: training crop, N or (x, y, z) like `--crop-size` (default: the store pipeline's).
        resume: continue the run in `out` from its last.pt; `options` given here may change it (as on the CLI).
        overwrite: start again in a non-empty run folder.
        stop_at: stop after this many steps in total (continue later with `resume=True`).
        progress: show progress (a bar on a terminal, lines otherwise).
        logger: "none" | "tensorboard" | "mlflow" (`--logger`); log_interval: seconds between progress lines.
        **options: any other field of `maskgen.train.config.TrainConfig`: inputs ("both" | "image" | "features"),
            mask_rate, steps, batch_size, lr, channels, depth, unet, fg_fraction, aug_prob, val_every, seed,
            device, num_workers, ...

    Raises:
        MaskgenError: the store does not exist, an option is out of range (OptionError names the field), ...
    """
    from maskgen.config import parse_size
    from maskgen.errors import MaskgenError
    from maskgen.store.kv import store_exists
    from maskgen.train.config import TrainConfig
    from maskgen.train.loop import train as train_loop
    from maskgen.train.resume import resume_config

    features = str(features)
    if crop_size is not None:
        if "crop_zyx" in options:
            raise MaskgenError("give the crop once: crop_size (N or x, y, z) or crop_zyx (z, y, x), not both.")
        options["crop_zyx"] = parse_size(crop_size, "crop_size")
    if not store_exists(features):
        raise MaskgenError(f"features {features} does not exist; create the store with maskgen.extract(...).")
    out = None if out is None else str(out)
    if resume:
        cfg = resume_config(features, out, options)
    else:
        cfg = TrainConfig(features=features, out=out or "", **options)
    return train_loop(cfg, resume=resume, overwrite=overwrite, stop_at=stop_at, progress=progress, logger=logger,
                      log_interval=log_interval)
