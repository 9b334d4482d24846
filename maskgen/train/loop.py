"""`train(cfg)`: the training loop (streamed crops, augmentation, view masking, Dice+CE, AdamW, cosine schedule,
validation, checkpoints, logs) and `load_run` for the evaluate stage."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from maskgen.config import config_diff, format_diff, from_dict, to_dict, write_json_atomic
from maskgen.errors import MaskgenError
from maskgen.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from maskgen.train.config import TrainConfig, check_crop, default_run_name
from maskgen.train.inference import autocast, dice_per_class, predict_volume
from maskgen.train.inputs import assemble_inputs, input_channels, uses_features
from maskgen.train.loader import LoaderSpec, choose_train_cases, make_loader
from maskgen.train.masking import view_mask
from maskgen.train.metrics_log import MetricsLog
from maskgen.train.placement import resolve_aug_device, resolve_device, resolve_num_workers
from maskgen.train.plots import plot_progress
from maskgen.train.schedule import lr_at, set_lr
from maskgen.train.spatial_device import augment_spatial_batch
from maskgen.train.unet import UNet, count_parameters

RUN_FILES = ("config.json", "metrics.jsonl", "progress.png", "best.pt", "last.pt")
#: Options that may differ when resuming: they change where/how fast the run executes, not what it computes
#: (aug_device only changes floating-point rounding of the same transform).
RUNTIME_FIELDS = ("num_workers", "device", "aug_device", "val_every", "extractor_weights")
VAL_CACHE_BYTES = 2 * 1024**3


# -- configuration ----------------------------------------------------------------------------------------------
def open_store(path: str) -> Any:
    from maskgen.store.reader import FeatureStore

    return FeatureStore(path)


def run_dir_for(cfg: TrainConfig) -> Path:
    return Path(cfg.out) if cfg.out else Path("runs") / default_run_name(cfg.features, cfg.inputs, cfg.mask_rate, cfg.seed)


def resolve_config(cfg: TrainConfig, store: Any) -> TrainConfig:
    """Fill the store-dependent fields: absolute store path, run folder, crop size, the train cases used."""
    train_ids = [c.case_id for c in store.cases(split="train")]
    if not train_ids:
        raise MaskgenError(f"{store.path} has no complete train case; run `maskgen extract` for the train split.")
    if cfg.train_cases:
        missing = sorted(set(cfg.train_cases) - set(train_ids))
        if missing:
            raise MaskgenError(f"train cases {missing[:5]} of the run are not complete train cases of {store.path}.")
        cases = tuple(cfg.train_cases)
    else:
        cases = choose_train_cases(train_ids, cfg.n_train, cfg.seed)
    crop = tuple(int(c) for c in (cfg.crop_zyx or store.pipeline.crop_zyx))
    check_crop(crop, cfg.depth)
    return cfg.replace(
        features=str(Path(cfg.features).absolute()),
        out=str(run_dir_for(cfg)),
        crop_zyx=crop,
        train_cases=cases,
    )


def _config_conflicts(saved: TrainConfig, given: TrainConfig) -> dict[str, tuple[Any, Any]]:
    unset = [k for k in ("crop_zyx", "train_cases") if not getattr(given, k)]  # not given: filled from the store
    return config_diff(saved, given, ignore=(*RUNTIME_FIELDS, "features", "out", *unset))


def _prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    if resume:
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise MaskgenError(
                f"run folder {run_dir} is not empty: pass --resume to continue that run, --overwrite to start it "
                "again, or another --out."
            )
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)


def loader_spec(cfg: TrainConfig, allow_flips: bool, aug_device: str) -> LoaderSpec:
    """The training loader's settings for a resolved `cfg` (train_cases and crop_zyx set; `resolve_config`);
    `aug_device` is the resolved placement of the spatial augmentation ("cpu" or "device")."""
    return LoaderSpec(
        case_ids=cfg.train_cases,
        crop_zyx=cfg.crop_zyx,  # type: ignore[arg-type]
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        fg_fraction=cfg.fg_fraction,
        aug_prob=cfg.aug_prob,
        allow_flips=allow_flips,
        spatial_on_cpu=aug_device == "cpu",
        read_features=uses_features(cfg.inputs) and not cfg.online_features,
        volume_stats=cfg.feature_norm == "volume",
    )


# -- the extractor, only for --online-features ------------------------------------------------------------------
def build_online_extractor(store: Any, cfg: TrainConfig, device: torch.device) -> Any:
    """The store's extractor (same name, layer, weights), frozen on `device`; an error if it cannot be rebuilt."""
    from maskgen.extract.registry import build_extractor

    fp = dict(store.extractor)
    name = str(fp.get("name", ""))
    try:
        if name == "mind":
            extractor = build_extractor("mind", device=device, allow_download=False)
        else:
            kind = "anatomix" if name == "anatomix" else "auto"
            extractor = build_extractor(
                kind, weights=cfg.extractor_weights, layer=str(fp.get("layer", "final")), device=device,
                allow_download=False,
            )
    except MaskgenError as e:
        raise MaskgenError(
            f"--online-features needs the extractor that made {store.path} ({name}, layer {fp.get('layer')}): {e}"
        ) from None
    got = extractor.fingerprint()
    diffs = [k for k in ("name", "layer", "weights_sha256", "out_channels", "arch") if k in fp and fp[k] != got.get(k)]
    if diffs:
        raise MaskgenError(
            f"--online-features: the extractor found ({got.get('name')}, weights sha256 "
            f"{str(got.get('weights_sha256'))[:12]}) differs from the one that made {store.path} in "
            f"{', '.join(diffs)} (store: {fp.get('name')}, weights sha256 {str(fp.get('weights_sha256'))[:12]}); "
            "pass the same weights with --extractor-weights."
        )
    return extractor


# -- validation ---------------------------------------------------------------------------------------------------
class Validator:
    """Mean foreground Dice over the val split's full volumes (sliding window, Gaussian blending)."""

    def __init__(self, store: Any, cfg: TrainConfig, device: torch.device, num_classes: int):
        self.store, self.cfg, self.device, self.num_classes = store, cfg, device, num_classes
        self.cases = [c for c in store.cases(split="val") if c.has_label]
        self._cache: dict[str, dict[str, Any]] = {}
        self._cached_bytes = 0

    def _read(self, case_id: str) -> dict[str, Any]:
        data = self._cache.get(case_id)
        if data is None:
            data = self.store.read_case(case_id)
            if not uses_features(self.cfg.inputs):
                data = {**data, "features": None}
            size = sum(v.nbytes for v in data.values() if isinstance(v, np.ndarray))
            if self._cached_bytes + size <= VAL_CACHE_BYTES:
                self._cache[case_id] = data
                self._cached_bytes += size
        return data

    def __call__(self, model: torch.nn.Module) -> dict[str, Any]:
        model.eval()
        per_case = {}
        try:
            for info in self.cases:
                data = self._read(info.case_id)
                stats = (info.feature_mean, info.feature_std) if self.cfg.feature_norm == "volume" else None
                probs = predict_volume(
                    model, data["image"], data["features"], self.cfg, self.device, self.cfg.val_overlap, stats
                )
                scores = dice_per_class(probs.argmax(0), torch.from_numpy(np.asarray(data["label"])), self.num_classes)
                per_case[info.case_id] = scores
        finally:
            model.train()
        if not per_case:
            return {}
        matrix = np.stack(list(per_case.values()))
        with np.errstate(all="ignore"):
            case_means = np.nanmean(matrix, axis=1)
            class_means = np.nanmean(matrix, axis=0)
        return {
            "val_dice": float(np.nanmean(case_means)),
            "val_dice_per_class": [None if math.isnan(v) else float(v) for v in class_means],
            "val_cases": len(per_case),
        }


# -- the loop -------------------------------------------------------------------------------------------------------
@dataclass
class _State:
    step: int = 0
    best_val_dice: float = -1.0


def train(
    cfg: TrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
) -> Path:
    """Train (or with `resume`, continue) the run `cfg.out`; returns the run folder.

    `stop_at`: stop after this many steps in total (saving last.pt), to be continued later with `resume=True`.
    """
    from monai.losses import DiceCELoss

    store = open_store(cfg.features)
    run_dir = run_dir_for(cfg)
    ckpt = None
    if resume:
        last = run_dir / "last.pt"
        if not last.is_file():
            raise MaskgenError(
                f"cannot resume: no checkpoint {last}. Start a new run without --resume (or check --out)."
            )
        ckpt = load_checkpoint(last)
        saved = from_dict(TrainConfig, ckpt["config"])
        conflicts = _config_conflicts(saved, cfg)
        if conflicts:
            raise MaskgenError(
                f"--resume of {run_dir}: options differ from the run's config "
                f"({format_diff(conflicts, 'run has', 'given')}); "
                "drop them to continue the run as it was, or start a new run."
            )
        cfg = saved.replace(**{k: getattr(cfg, k) for k in RUNTIME_FIELDS}, features=cfg.features)
        made_by = (ckpt.get("store") or {}).get("extractor")
        if made_by is not None and made_by != store.extractor:
            raise MaskgenError(
                f"--resume of {run_dir}: {store.path} was made by another extractor than the run's store "
                f"{(ckpt.get('store') or {}).get('path')}; resume with the same store."
            )
    cfg = resolve_config(cfg, store)
    _prepare_run_dir(run_dir, resume, overwrite)
    if stop_at is not None and not (0 < stop_at <= cfg.steps):
        raise MaskgenError(f"--stop-at {stop_at} must be in 1..{cfg.steps} (--steps).")
    end_step = cfg.steps if stop_at is None else stop_at
    write_json_atomic(run_dir / "config.json", to_dict(cfg))

    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one crop size for the whole run: let cuDNN pick its kernels
    aug_device = resolve_aug_device(cfg.aug_device, device)
    num_workers = resolve_num_workers(cfg.num_workers, device)
    pipeline = store.pipeline
    num_classes = int(pipeline.num_classes)
    num_features = int(store.num_features)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    model = UNet(input_channels(cfg.inputs, num_features), num_classes, cfg.channels, cfg.depth, cfg.dropout).place(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, lambda_dice=1.0, lambda_ce=1.0)
    state = _State()
    log = MetricsLog(run_dir / "metrics.jsonl")
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = _State(step=int(ckpt["step"]), best_val_dice=float(ckpt.get("best_val_dice", -1.0)))
        set_rng_state(ckpt["rng"])
        log.truncate_after(state.step)
        if state.step >= end_step:
            if progress:
                _console().print(f"{run_dir} is already at step {state.step} of {cfg.steps}: nothing to do.")
            return run_dir
    extractor = build_online_extractor(store, cfg, device) if cfg.online_features else None
    if extractor is not None and extractor.out_channels != num_features:
        raise MaskgenError(f"extractor gives {extractor.out_channels} channels, the store {num_features}.")

    spec = loader_spec(cfg, bool(pipeline.allow_flips), aug_device)
    _warm_foreground(store, cfg.train_cases)
    loader = make_loader(store, spec, state.step, end_step, num_workers, pin_memory=device.type == "cuda")
    validator = Validator(store, cfg, device, num_classes)
    store_info = {"path": cfg.features, "extractor": store.extractor, "num_features": num_features,
                  "classes": list(pipeline.classes), "pipeline": pipeline.name}

    def checkpoint(name: str, step: int, val_dice: float | None) -> None:
        save_checkpoint(run_dir / name, {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "rng": rng_state(),
            "loader": {"scheme": "sample_rng(seed, step, slot)", "seed": cfg.seed, "next_step": step},
            "config": to_dict(cfg),
            "model_config": model.config(),
            "store": store_info,
            "best_val_dice": state.best_val_dice,
            "val_dice": val_dice,
        })

    console = _console()
    if progress:
        console.print(
            f"[bold]maskgen train[/] {run_dir}: {len(cfg.train_cases)} train / {len(validator.cases)} val cases, "
            f"inputs {cfg.inputs} ({input_channels(cfg.inputs, num_features)} ch), mask rate {cfg.mask_rate}, "
            f"crop zyx {cfg.crop_zyx}, batch {cfg.batch_size}, UNet {count_parameters(model) / 1e6:.2f}M params, "
            f"{device.type}, spatial aug on {aug_device}, {num_workers} loader workers"
            + (", online features" if extractor is not None else "")
        )
    model.train()
    bar = _progress_bar(console, progress)
    task = bar.add_task("train", total=cfg.steps, completed=state.step, loss=float("nan"), lr=0.0, cps=0.0)
    batches: Iterator[dict[str, Any]] = iter(loader)
    last_saved = state.step if ckpt is not None else -1
    cps_ema = None
    try:
        with bar:
            t_prev = time.perf_counter()
            for step in range(state.step, end_step):
                batch = next(batches)
                t_data = time.perf_counter() - t_prev
                if int(batch["step"]) != step:
                    raise RuntimeError(f"loader out of order: got the batch of step {batch['step']} at step {step}")
                loss_value = _train_step(model, optimizer, loss_fn, batch, cfg, step, device, aug_device, extractor)
                lr = lr_at(step, cfg)
                if not math.isfinite(loss_value):
                    kept = (
                        f"The last good checkpoint {run_dir / 'last.pt'} (step {last_saved}) is untouched"
                        if last_saved > 0 else "No checkpoint had been written yet"
                    )
                    raise MaskgenError(
                        f"the loss became non-finite ({loss_value}) at step {step + 1}; the run stopped without "
                        f"applying that update. {kept}. Check the store for bad values or lower --lr, then continue "
                        "with --resume or start again with --overwrite."
                    )
                now = time.perf_counter()
                cps = cfg.batch_size / max(now - t_prev, 1e-9)
                cps_ema = cps if cps_ema is None else 0.9 * cps_ema + 0.1 * cps
                t_prev = now
                done = step + 1
                state.step = done
                log.append({"step": done, "loss": loss_value, "lr": lr, "crops_per_s": cps, "data_s": t_data})
                bar.update(task, completed=done, loss=loss_value, lr=lr, cps=cps_ema)
                validate_now = (cfg.val_every and done % cfg.val_every == 0) or done == cfg.steps
                if validate_now:
                    result = validator(model)
                    val = result.get("val_dice")
                    if val is not None:
                        log.append({"step": done, **result})
                        if val > state.best_val_dice:
                            state.best_val_dice = val
                            checkpoint("best.pt", done, val)
                    checkpoint("last.pt", done, val)
                    last_saved = done
                    plot_progress(log.read(), run_dir / "progress.png", title=run_dir.name)
                    t_prev = time.perf_counter()  # validation time is not loader time
            if last_saved != end_step:
                checkpoint("last.pt", end_step, None)
                plot_progress(log.read(), run_dir / "progress.png", title=run_dir.name)
    finally:
        del batches
    if progress:
        best = f", best val Dice {state.best_val_dice:.4f}" if state.best_val_dice >= 0 else ""
        console.print(f"[green]done[/] step {state.step}/{cfg.steps}{best}: {run_dir}")
    return run_dir


def _train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Any,
    batch: dict[str, Any],
    cfg: TrainConfig,
    step: int,
    device: torch.device,
    aug_device: str,
    extractor: Any,
) -> float:
    """One optimisation step; returns the loss (not applied when non-finite)."""
    nb = device.type == "cuda"
    image = batch["image"].to(device, non_blocking=nb).float()
    label = batch["label"].to(device, non_blocking=nb)
    features = batch["features"].to(device, non_blocking=nb) if "features" in batch else None
    stats = (batch["mean"].to(device), batch["std"].to(device)) if "mean" in batch else None
    if aug_device == "device":
        spatial = {k: v.to(device, non_blocking=nb) if k == "matrix" else v for k, v in batch["spatial"].items()}
        image, features, label = augment_spatial_batch(image, features, label, spatial)
    if extractor is not None:
        from maskgen.extract.inference import extract_batch

        features = extract_batch(extractor, image)
    z = assemble_inputs(image, features.float() if features is not None else None, cfg, stats)
    z = view_mask(z, cfg.mask_rate)
    set_lr(optimizer, lr_at(step, cfg))
    with autocast(device):
        logits = model(z)
    loss = loss_fn(logits.float(), label.long())
    value = float(loss.detach())
    if not math.isfinite(value):
        return value
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return value


def _warm_foreground(store: Any, case_ids: tuple[str, ...]) -> None:
    """Compute (or load) every train case's cached foreground locations once, before the workers start."""
    from maskgen.train.sampling import FG_MAX_PER_CLASS, FG_SEED

    for cid in case_ids:
        store.foreground_locations(cid, max_per_class=FG_MAX_PER_CLASS, seed=FG_SEED)


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _progress_bar(console: Any, enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("step"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[cps]:.1f} crops/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )


# -- for the evaluate stage ---------------------------------------------------------------------------------------
def load_run(run_dir: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu") -> tuple[
    torch.nn.Module, TrainConfig, dict[str, Any]
]:
    """(model in eval mode on `device`, TrainConfig, checkpoint dict) of a run folder's `best.pt` or `last.pt`."""
    if checkpoint not in ("best", "last"):
        raise MaskgenError(f"checkpoint {checkpoint!r} must be 'best' or 'last'.")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MaskgenError(f"run folder {run_dir} does not exist; train one with `maskgen train`.")
    path = run_dir / f"{checkpoint}.pt"
    if not path.is_file():
        hint = " (best.pt is written at the first validation; use checkpoint 'last')" if checkpoint == "best" else ""
        raise MaskgenError(f"{path} does not exist{hint}.")
    ckpt = load_checkpoint(path)
    cfg = from_dict(TrainConfig, ckpt["config"])
    mc = dict(ckpt["model_config"])
    model = UNet(mc["in_channels"], mc["out_channels"], mc["channels"], mc["depth"], mc.get("dropout", 0.0))
    model.load_state_dict(ckpt["model"])
    model.place(device).eval()
    return model, cfg, ckpt
