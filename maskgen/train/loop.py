"""`train(cfg)`: the training loop, to be read top to bottom like nanoGPT's train.py.

setup (`setup.py`: store, config, run folder, model, optimiser, loader) -> for each step: the next batch, one
optimisation step (`step.py`: augmentation on the device, z = concat(image, features), view masking, Dice+CE,
AdamW at the cosine learning rate of `schedule.py`), a line of metrics.jsonl -> every `val_every` steps: validation
(`validate.py`), best.pt / last.pt (`checkpoint.py`) and progress.png (`plots.py`). Under torchrun every process
runs this loop on its share of each global batch (`distributed.py`); only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from maskgen.progress import log_interval as log_interval_s
from maskgen.train.checkpoint import diverged_error, rng_state, set_rng_state, write_checkpoint
from maskgen.train.config import TrainConfig
from maskgen.train.distributed import distributed
from maskgen.train.inputs import input_channels
from maskgen.train.placement import resolve_device
from maskgen.train.plots import plot_progress
from maskgen.train.interrupt import InterruptGuard, interrupted
from maskgen.train.loggers import check_logger
from maskgen.train.progress import Watch, console, say
from maskgen.train.schedule import lr_at
from maskgen.train.setup import Run, setup, start
from maskgen.train.step import train_step
from maskgen.train.unet import count_parameters


def train(
    cfg: TrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
    logger: str = "none",
    log_interval: float | None = None,
) -> Path:
    """Train (or with `resume`, continue) the run `cfg.out`; returns the run folder.

    `stop_at`: stop after this many steps in total (saving last.pt), to be continued later with `resume=True`.
    Launched by torchrun (`maskgen train --nproc N`), each process trains one data-parallel replica.
    `logger`: none | tensorboard | mlflow (`maskgen.train.loggers`); `log_interval`: seconds between progress lines
    when stderr is not a terminal (`maskgen.progress`); both on rank 0 only. Ctrl-C writes last.pt at the last whole
    step and raises a KeyboardInterrupt saying so (`maskgen.train.interrupt`).
    """
    check_logger(logger)
    interval = log_interval_s(log_interval)
    with distributed(resolve_device(cfg.device), cfg.dist_timeout) as dist:
        run = setup(cfg, resume=resume, overwrite=overwrite, stop_at=stop_at, dist=dist)
        return _train(run, progress and dist.is_main, logger if dist.is_main else "none", interval)


def _train(run: Run, progress: bool, logger: str = "none", interval: float | None = None) -> Path:
    out = console()
    if run.step >= run.end_step:
        if progress:
            say(out, f"{run.dir} is already at step {run.step} of {run.cfg.steps}: nothing to do.")
        return run.dir
    loader = start(run)
    if progress:
        say(out, describe(run))
    with _torch_rng(run), Watch(run, progress, interval, logger):
        _loop(run, loader)
    if progress:
        best = f", best val Dice {run.best_val_dice:.4f}" if run.best_val_dice >= 0 else ""
        say(out, f"done: step {run.step}/{run.cfg.steps}{best}: {run.dir}", style="green")
    return run.dir


def _loop(run: Run, loader: Any) -> None:
    cfg = run.cfg
    batches: Iterator[dict[str, Any]] = iter(loader)
    start_step = run.step
    try:
        with InterruptGuard(run.optimizer) as guard:
            t_prev = time.perf_counter()
            for step in range(run.step, run.end_step):
                with guard.held():  # not inside the loader's queues and locks
                    batch = next(batches)
                t_data = time.perf_counter() - t_prev
                if int(batch["step"]) != step:
                    raise RuntimeError(f"loader out of order: got the batch of step {batch['step']} at step {step}")
                lr = lr_at(step, cfg)
                loss = train_step(run.net, run.optimizer, run.loss_fn, batch, cfg, step, run.device,
                                  run.aug_device, run.extractor, run.dist)
                if not math.isfinite(loss):
                    raise diverged_error(run, step, f"the loss became non-finite ({loss}{run.dist.where()}; the "
                                                    "update was not applied)")
                if not run.weights_finite():
                    raise diverged_error(run, step, f"the weights became non-finite after the update (lr {lr:.3g})")
                run.step = step + 1
                run.dist.trace(run.step, run.model)
                now = time.perf_counter()
                cps = cfg.batch_size * cfg.world_size / max(now - t_prev, 1e-9)   # crops of the global batch
                if run.dist.is_main:
                    run.log.append({"step": run.step, "loss": loss, "lr": lr, "crops_per_s": cps, "data_s": t_data})
                t_prev = now  # per-step figures (dropped in the train/ split: they had become cumulative)
                if (cfg.val_every and run.step % cfg.val_every == 0) or run.step == cfg.steps:
                    validate_and_checkpoint(run)
                    t_prev = time.perf_counter()  # validation time is not loader time
            if run.last_saved != run.end_step:
                save(run, {})
    except KeyboardInterrupt:
        del batches  # stop the loader workers first
        raise interrupted(run, guard, start_step) from None
    finally:
        batches = None


def validate_and_checkpoint(run: Run) -> None:
    """Validate (every rank its share of the cases, with rank 0's BatchNorm statistics: the model rank 0 saves);
    then `save`."""
    run.dist.sync_buffers(run.model)
    save(run, run.validator(run.model))


def save(run: Run, result: dict[str, Any]) -> None:
    """On rank 0: log the validation `result` (if any); best.pt when the val Dice improved; last.pt (with every
    rank's RNG state); progress.png. An error there stops every rank."""
    val = result.get("val_dice")
    best = val is not None and val > run.best_val_dice
    if best:
        run.best_val_dice = val
    rngs = run.dist.gather(rng_state())

    def write() -> None:
        if val is not None:
            run.log.append({"step": run.step, **result})
        if best:
            write_checkpoint(run, "best.pt", val, rngs)
        write_checkpoint(run, "last.pt", val, rngs)
        plot_progress(run.log.read(), run.dir / "progress.png", title=run.dir.name)

    run.dist.on_main(write)
    run.last_saved = run.step


def describe(run: Run) -> str:
    cfg = run.cfg
    n_in = input_channels(cfg.inputs, int(run.store.num_features))
    return (
        f"maskgen train {run.dir}: {len(cfg.train_cases)} train / {len(run.validator.cases)} val cases, "
        f"inputs {cfg.inputs} ({n_in} ch), mask rate {cfg.mask_rate}, crop zyx {cfg.crop_zyx}, batch "
        f"{cfg.batch_size}{f' x {cfg.world_size} processes' if cfg.world_size > 1 else ''}, UNet "
        f"{count_parameters(run.model) / 1e6:.2f}M params, {run.device.type}, spatial aug on "
        f"{run.aug_device}, {run.num_workers} loader workers" + (", online features" if cfg.online_features else "")
    )


@contextlib.contextmanager
def _torch_rng(run: Run) -> Iterator[None]:
    """torch's global RNG for this run only: seeded from the run seed, or restored from last.pt on resume; the
    caller's state is put back afterwards. (Crops, augmentation and view masks use explicit generators; the global
    RNG serves the channel-dropout baseline's nn.Dropout3d.)"""
    devices = [run.device.index or 0] if run.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if run.rng is not None:
            set_rng_state(run.rng)
        else:
            torch.manual_seed(run.dist.torch_seed(run.cfg.seed))
        yield
