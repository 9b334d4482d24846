"""The pretraining loop: synthetic pairs -> AnatomixUNet -> voxel contrastive loss, with exact resume.

Exactness: the data and voxel samples of step s are a pure function of (seed, s), the learning rate a pure
function of s, and the model is initialised from `seed` without touching the global RNG. A checkpoint holds
the model, the optimizer and the unlogged loss window, so N steps + resume + N steps gives the same weights
as 2N steps (bitwise on the same machine and thread count).

Devices: `cfg.device` cuda runs the network under bf16 autocast and the loss in float32; the batches are still
synthesised on the CPU (in `cfg.num_workers` processes, which changes nothing but speed: a batch is a pure function
of (seed, step)); the labels and the voxel samples stay on the CPU. On the CPU the loop is the plain float32 one.

Files (state folder `<out>.state/`): `config.json`, `last.pt` (resumable state, written atomically),
`metrics.jsonl` (one record per `log_every` steps) and `progress.png`. The output `<out>` is written at the end
with `maskgen.extract.weights.save_anatomix_checkpoint`: `{"state_dict", "arch", "config", "step", ...}`, which
loads with `--extractor anatomix --weights <out>`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from maskgen import __version__
from maskgen.atomic import atomic_path
from maskgen.config import config_diff, format_diff, to_dict, write_json_atomic
from maskgen.errors import MaskgenError
from maskgen.pretrain.config import PretrainConfig
from maskgen.pretrain.contrastive import VoxelContrastiveLoss
from maskgen.pretrain.synth import PairSynthesizer, synthesize_batch
from maskgen.pretrain.plots import plot_progress
from maskgen.threads import one_thread_worker_init, reconfigure as reconfigure_threads
from maskgen.train.metrics_log import MetricsLog
from maskgen.train.inference import autocast
from maskgen.train.placement import resolve_device, resolve_num_workers
from maskgen.train.schedule import cosine_lr, set_lr

STATE_FORMAT = "maskgen-pretrain-state/1"
WEIGHTS_FORMAT = "maskgen-anatomix/1"
#: Config fields that may differ on resume (`device` changes the arithmetic, not the run: a run may start on a GPU and
#: finish on the CPU; bitwise replay needs the same device).
_RESUME_FREE = ("out", "checkpoint_every", "log_every", "device", "num_workers")


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Learning rate of (0-based) step `step`: linear warm-up, then cosine from `lr` to `min_lr` at `steps`."""
    return cosine_lr(step, cfg.steps, cfg.lr, cfg.min_lr, cfg.warmup_steps)


def build_network(cfg: PretrainConfig) -> torch.nn.Module:
    """A freshly initialised AnatomixUNet of `cfg.arch`, seeded by `cfg.seed` (the global RNG is left as it was)."""
    from maskgen.extract.anatomix import AnatomixUNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return AnatomixUNet(**cfg.arch)


def _step_generator(seed: int, step: int) -> torch.Generator:
    value = int(np.random.default_rng([int(seed), int(step), 0x5EED]).integers(0, 2**62))
    return torch.Generator().manual_seed(value)


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


@dataclass
class _Run:
    """A pretraining run ready to step: network, optimiser, loss, data, and where it stands."""

    cfg: PretrainConfig
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: VoxelContrastiveLoss
    synth: PairSynthesizer
    log: MetricsLog
    device: torch.device = torch.device("cpu")
    step: int = 0
    window: list[list[float]] = field(default_factory=list)   # losses/cosines since the last logged record
    elapsed: float = 0.0
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def last_path(self) -> Path:
        return self.cfg.state_dir / "last.pt"


def _check_start(cfg: PretrainConfig, resume: bool, stop_after: int | None) -> None:
    if stop_after is not None and stop_after < 1:
        raise MaskgenError(f"--stop-after must be >= 1, got {stop_after}")
    out, state_dir, last_path = Path(cfg.out), cfg.state_dir, cfg.state_dir / "last.pt"
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


def _setup(cfg: PretrainConfig, resume: bool) -> _Run:
    """The run at step 0, or restored from its state folder's last.pt (same settings required)."""
    from maskgen.pretrain.labelmaps import LabelFolder

    synth = PairSynthesizer(
        cfg.crop_size,
        cfg.synth,
        LabelFolder(cfg.label_dir, (cfg.crop_size + cfg.synth.max_view_shift,) * 3)
        if cfg.label_dir is not None else None,
    )
    device = resolve_device(cfg.device)
    net = build_network(cfg).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr_at(0, cfg), weight_decay=cfg.weight_decay)
    loss_fn = VoxelContrastiveLoss(cfg.temperature, cfg.voxels_per_volume, mode=cfg.loss)
    run = _Run(cfg, net, optimizer, loss_fn, synth, MetricsLog(cfg.state_dir / "metrics.jsonl"), device)
    if resume:
        state = load_state(run.last_path)
        saved = {"input": "image", "append_input": False, **state["config"]}   # states from before these fields
        diffs = config_diff(saved, to_dict(cfg), ignore=_RESUME_FREE)
        if diffs:
            raise MaskgenError(f"cannot resume {cfg.state_dir}: the settings differ from the saved run ("
                               + format_diff(diffs, "saved", "now")
                               + "); use the original settings or start a new run with another --out")
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        run.step = int(state["step"])
        run.window = [list(map(float, w)) for w in state["window"]]
        run.elapsed = float(state.get("elapsed_s", 0.0))
    else:
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cfg.state_dir / "config.json", to_dict(cfg))
    run.records = run.log.truncate_after(run.step)  # drop records logged after the checkpoint we resume from
    return run


def _save_state(run: _Run) -> None:
    cfg = run.cfg
    with atomic_path(run.last_path) as tmp:
        model = {k: v.detach().cpu() for k, v in run.net.state_dict().items()}   # the same tensors on the CPU
        torch.save({"format": STATE_FORMAT, "step": run.step, "model": model, "device": run.device.type,
                    "optimizer": run.optimizer.state_dict(), "config": to_dict(cfg), "arch": dict(cfg.arch),
                    "window": run.window, "elapsed_s": run.elapsed, "maskgen_version": __version__}, tmp)
    plot_progress(run.records, cfg.state_dir / "progress.png", title=f"{Path(cfg.out).name}: step {run.step}/{cfg.steps}")


class StepBatches(torch.utils.data.Dataset):
    """Item i: the batch of step `start + i`, `synthesize_batch(synth, seed, start + i, batch_size)`."""

    def __init__(self, synth: PairSynthesizer, seed: int, batch_size: int, start: int, end: int) -> None:
        self.synth, self.seed, self.batch_size, self.start, self.end = synth, seed, batch_size, start, end

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return synthesize_batch(self.synth, self.seed, self.start + i, self.batch_size)


def num_workers_for(cfg: PretrainConfig, device: torch.device) -> int:
    """`cfg.num_workers`, or by default none on the CPU (the network dominates) and up to 8 on CUDA (synthesis does)."""
    if cfg.num_workers is not None:
        return cfg.num_workers
    return resolve_num_workers(None, device) if device.type == "cuda" else 0


def step_batches(run: _Run, end: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """The batches of steps run.step .. end-1 in order, synthesised in worker processes when configured."""
    data = StepBatches(run.synth, run.cfg.seed, run.cfg.batch_size, run.step, end)
    workers = num_workers_for(run.cfg, run.device)
    reconfigure_threads(workers)  # the command's thread policy, minus the synthesis workers
    if workers == 0:
        return (data[i] for i in range(len(data)))
    return iter(torch.utils.data.DataLoader(data, batch_size=None, shuffle=False, num_workers=workers,
                                            pin_memory=run.device.type == "cuda", prefetch_factor=4,
                                            worker_init_fn=one_thread_worker_init))


def _step(run: _Run, batch: tuple[torch.Tensor, ...]) -> None:
    """One optimisation step at `run.step` on its batch (data, voxel samples and lr are pure functions of (seed, step))."""
    cfg = run.cfg
    t0 = time.perf_counter()
    set_lr(run.optimizer, lr_at(run.step, cfg))
    view1, view2, labels, offsets = batch
    with autocast(run.device):
        features = run.net(torch.cat([view1, view2]).to(run.device, non_blocking=True))
    f1, f2 = features.float().chunk(2)
    loss, stats = run.loss_fn(f1, f2, labels, _step_generator(cfg.seed, run.step),
                              offsets=offsets if cfg.synth.max_view_shift else None)
    if not torch.isfinite(loss):
        raise MaskgenError(f"pretraining diverged at step {run.step + 1} (loss {loss.item()}); "
                           f"lower --lr (now {cfg.lr}) and start a new run")
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.step += 1
    run.elapsed += time.perf_counter() - t0
    run.window.append([float(loss.detach()), stats["pos_cos"], stats["neg_cos"]])


def _log(run: _Run) -> None:
    """The mean of the window since the last record, as a metrics.jsonl record."""
    values = np.array(run.window, dtype=np.float64)
    neg = float(np.nanmean(values[:, 2])) if np.isfinite(values[:, 2]).any() else float("nan")
    record = {"step": run.step, "loss": float(values[:, 0].mean()), "pos_cos": float(values[:, 1].mean()),
              "neg_cos": neg, "lr": lr_at(run.step - 1, run.cfg), "elapsed_s": round(run.elapsed, 3)}
    run.records.append(record)
    run.log.append(record)
    run.window = []


def pretrain(
    cfg: PretrainConfig,
    resume: bool = False,
    stop_after: int | None = None,
    show_progress: bool = True,
    log_interval: float | None = None,
) -> Path:
    """Train (or continue) the run of `cfg`; returns the weights path once `cfg.steps` are done.

    `stop_after`: stop this invocation after that many steps (the state stays resumable); the weights file is
    then not written yet and the state path is returned instead.
    """
    from maskgen.progress import Progress

    _check_start(cfg, resume, stop_after)
    run = _setup(cfg, resume)
    end = cfg.steps if stop_after is None else min(cfg.steps, run.step + stop_after)
    progress = Progress("pretrain", cfg.steps, run.step, describe=lambda f: f"loss {f['loss']:.4f}",
                        enabled=show_progress, interval=log_interval)
    run.net.train()
    last_loss = run.records[-1]["loss"] if run.records else float("nan")
    try:
        with progress:
            for batch in step_batches(run, end):
                _step(run, batch)
                if run.step % cfg.log_every == 0 or run.step == cfg.steps:
                    _log(run)
                    last_loss = run.records[-1]["loss"]
                if run.step % cfg.checkpoint_every == 0 or run.step == end:
                    _save_state(run)
                # before the first logged step of a fresh run: the mean loss of the steps so far
                shown = last_loss if math.isfinite(last_loss) else float(np.mean([w[0] for w in run.window]))
                progress.update(run.step, loss=shown)
    except KeyboardInterrupt:
        saved = load_state(run.last_path)["step"] if run.last_path.exists() else 0
        raise KeyboardInterrupt(f"Interrupted at step {run.step}; the last checkpoint is at step {saved}. "
                                "Continue with the same command plus --resume.") from None
    if run.step < cfg.steps:
        return run.last_path
    return _write_weights(run, last_loss)


def _write_weights(run: _Run, last_loss: float) -> Path:
    from maskgen.extract.weights import save_anatomix_checkpoint

    run.net.eval()
    out = Path(run.cfg.out)
    save_anatomix_checkpoint(run.net, out, extra={
        "format": WEIGHTS_FORMAT, "kind": "maskgen-pretrain", "config": to_dict(run.cfg), "step": run.step,
        "seed": run.cfg.seed, "final_loss": last_loss, "maskgen_version": __version__,
        "torch_version": str(torch.__version__), "device": run.device.type,
    })
    return out
