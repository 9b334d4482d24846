"""The pretraining loop: synthetic pairs -> AnatomixUNet -> voxel contrastive loss, with exact resume.

Exactness: the data and voxel samples of step s are a pure function of (seed, s), the learning rate a pure
function of s, and the model is initialised from `seed` without touching the global RNG. A checkpoint holds
the model, the optimizer and the unlogged loss window, so N steps + resume + N steps gives the same weights
as 2N steps (bitwise on the same machine and thread count).

Files (state folder `<out>.state/`): `config.json`, `last.pt` (resumable state, written atomically),
`metrics.jsonl` (one record per `log_every` steps) and `progress.png`. The output `<out>` is written at the end
with `maskgen.extract.weights.save_anatomix_checkpoint`: `{"state_dict", "arch", "config", "step", ...}`, which
loads with `--extractor anatomix --weights <out>`.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskgen import __version__
from maskgen.atomic import atomic_path, write_text_atomic
from maskgen.config import config_diff, format_diff, from_dict, to_dict, write_json_atomic
from maskgen.errors import MaskgenError
from maskgen.pretrain.config import PretrainConfig
from maskgen.pretrain.contrastive import VoxelContrastiveLoss
from maskgen.pretrain.synth import PairSynthesizer, synthesize_batch

STATE_FORMAT = "maskgen-pretrain-state/1"
WEIGHTS_FORMAT = "maskgen-anatomix/1"
#: Config fields that do not change the trained weights, so they may differ on resume.
_RESUME_FREE = ("out", "checkpoint_every", "log_every")


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Learning rate of (0-based) step `step`: linear warm-up, then cosine from `lr` to `min_lr` at `steps`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * t))


def build_network(cfg: PretrainConfig) -> torch.nn.Module:
    """A freshly initialised AnatomixUNet of `cfg.arch`, seeded by `cfg.seed` (the global RNG is left as it was)."""
    from maskgen.extract.anatomix import AnatomixUNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return AnatomixUNet(**cfg.arch)


def _step_generator(seed: int, step: int) -> torch.Generator:
    value = int(np.random.default_rng([int(seed), int(step), 0x5EED]).integers(0, 2**62))
    return torch.Generator().manual_seed(value)


def _read_metrics(path: Path, upto_step: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            if rec["step"] <= upto_step:
                records.append(rec)
    return records


def _write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(rec) + "\n" for rec in records))


def load_state(path: Path) -> dict[str, Any]:
    """A `last.pt` training state (weights_only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise MaskgenError(f"cannot read pretraining state {path}: {type(e).__name__}: {e}; delete the folder "
                           f"{path.parent} to start over") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise MaskgenError(f"{path} is not a maskgen pretraining state ({STATE_FORMAT}); delete {path.parent} "
                           "to start over")
    return state


def pretrain(
    cfg: PretrainConfig,
    resume: bool = False,
    stop_after: int | None = None,
    show_progress: bool = True,
) -> Path:
    """Train (or continue) the run of `cfg`; returns the weights path once `cfg.steps` are done.

    `stop_after`: stop this invocation after that many steps (the state stays resumable); the weights file is
    then not written yet and the state path is returned instead.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from maskgen.extract.weights import save_anatomix_checkpoint
    from maskgen.pretrain.labelmaps import LabelFolder
    from maskgen.pretrain.plots import plot_progress

    if stop_after is not None and stop_after < 1:
        raise MaskgenError(f"--stop-after must be >= 1, got {stop_after}")
    out = Path(cfg.out)
    state_dir = cfg.state_dir
    last_path = state_dir / "last.pt"
    metrics_path = state_dir / "metrics.jsonl"
    current = to_dict(cfg)

    if out.is_dir():
        raise MaskgenError(f"--out {out} is a folder; give a file path such as {out / 'weights.pt'}")
    if not resume:
        if last_path.exists():
            raise MaskgenError(f"a pretraining run already exists at {state_dir}; pass --resume to continue it, or "
                               f"delete {state_dir} (and {out}) to start over")
        if out.exists():
            raise MaskgenError(f"{out} already exists; choose another --out or delete it")
    elif not last_path.exists():
        raise MaskgenError(f"nothing to resume: {last_path} does not exist; run without --resume to start")

    synth = PairSynthesizer(
        cfg.crop_size,
        cfg.synth,
        LabelFolder(cfg.label_dir, (cfg.crop_size + cfg.synth.max_view_shift,) * 3) if cfg.label_dir is not None else None,
    )
    net = build_network(cfg)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr_at(0, cfg), weight_decay=cfg.weight_decay)
    loss_fn = VoxelContrastiveLoss(cfg.temperature, cfg.voxels_per_volume, mode=cfg.loss)

    step = 0
    window: list[list[float]] = []
    elapsed = 0.0
    if resume:
        state = load_state(last_path)
        diffs = config_diff(state["config"], current, ignore=_RESUME_FREE)
        if diffs:
            raise MaskgenError(f"cannot resume {state_dir}: the settings differ from the saved run ("
                               + format_diff(diffs, "saved", "now")
                               + "); use the original settings or start a new run with another --out")
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        window = [list(map(float, w)) for w in state["window"]]
        elapsed = float(state.get("elapsed_s", 0.0))
    else:
        state_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(state_dir / "config.json", current)
    records = _read_metrics(metrics_path, step)
    _write_metrics(metrics_path, records)          # drop records logged after the checkpoint we resume from

    def save_state() -> None:
        with atomic_path(last_path) as tmp:
            torch.save({"format": STATE_FORMAT, "step": step, "model": net.state_dict(),
                        "optimizer": optimizer.state_dict(), "config": current, "arch": dict(cfg.arch),
                        "window": window, "elapsed_s": elapsed, "maskgen_version": __version__}, tmp)
        plot_progress(records, state_dir / "progress.png", title=f"{out.name}: step {step}/{cfg.steps}")

    end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]pretrain[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not show_progress,
    )
    net.train()
    last_loss = records[-1]["loss"] if records else float("nan")
    try:
        with progress:
            task = progress.add_task("pretrain", total=cfg.steps, completed=step, loss=f"{last_loss:.4f}")
            while step < end:
                t0 = time.perf_counter()
                lr = lr_at(step, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                view1, view2, labels, offsets = synthesize_batch(synth, cfg.seed, step, cfg.batch_size)
                features = net(torch.cat([view1, view2]))
                f1, f2 = features.chunk(2)
                loss, stats = loss_fn(f1, f2, labels, _step_generator(cfg.seed, step),
                                      offsets=offsets if cfg.synth.max_view_shift else None)
                if not torch.isfinite(loss):
                    raise MaskgenError(f"pretraining diverged at step {step + 1} (loss {loss.item()}); "
                                       f"lower --lr (now {cfg.lr}) and start a new run")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                elapsed += time.perf_counter() - t0
                window.append([float(loss.detach()), stats["pos_cos"], stats["neg_cos"]])
                if step % cfg.log_every == 0 or step == cfg.steps:
                    values = np.array(window, dtype=np.float64)
                    records.append({"step": step, "loss": float(values[:, 0].mean()),
                                    "pos_cos": float(values[:, 1].mean()),
                                    "neg_cos": float(np.nanmean(values[:, 2])) if np.isfinite(values[:, 2]).any()
                                    else float("nan"),
                                    "lr": lr, "elapsed_s": round(elapsed, 3)})
                    window = []
                    with metrics_path.open("a") as f:
                        f.write(json.dumps(records[-1]) + "\n")
                    last_loss = records[-1]["loss"]
                if step % cfg.checkpoint_every == 0 or step == end:
                    save_state()
                progress.update(task, completed=step, loss=f"{last_loss:.4f}")
    except KeyboardInterrupt:
        console.print(f"Interrupted at step {step}; the last checkpoint is at step "
                      f"{load_state(last_path)['step'] if last_path.exists() else 0}. "
                      "Continue with the same command plus --resume.")
        raise
    if step < cfg.steps:
        return last_path
    net.eval()
    save_anatomix_checkpoint(net, out, extra={
        "format": WEIGHTS_FORMAT, "kind": "maskgen-pretrain", "config": current, "step": step,
        "seed": cfg.seed, "final_loss": last_loss, "maskgen_version": __version__, "torch_version": str(torch.__version__),
    })
    return out


def read_run_config(state_dir: str | os.PathLike) -> PretrainConfig:
    """The PretrainConfig saved in a state folder's config.json."""
    path = Path(state_dir) / "config.json"
    try:
        return from_dict(PretrainConfig, json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise MaskgenError(f"cannot read {path}: {e}") from None
