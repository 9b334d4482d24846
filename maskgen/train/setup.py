"""Everything a training run needs before its first step: the store, the resolved config, the run folder, the model,
optimiser and loss (restored on resume), the loader, the validator and, with --online-features, the extractor."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from maskgen.config import to_dict, write_json_atomic
from maskgen.errors import MaskgenError, OptionError
from maskgen.store.location import canonical
from maskgen.threads import current as current_threads, reconfigure as reconfigure_threads
from maskgen.train.checkpoint import load_checkpoint
from maskgen.train.config import TrainConfig, check_crop, xyz_text
from maskgen.train.distributed import Dist
from maskgen.train.inputs import input_channels, uses_features
from maskgen.train.loader import LoaderSpec, choose_train_cases, make_loader
from maskgen.train.views import resolve_views
from maskgen.train.metrics_log import MetricsLog
from maskgen.train.placement import resolve_aug_device, resolve_device, resolve_num_workers
from maskgen.train.finite import WeightsCheck
from maskgen.train.resume import check_same_extractor, check_world_size, continued_config, history_entry, run_dir_for
from maskgen.train.unet import UNet, min_crop_side
from maskgen.train.validate import Validator

RUN_FILES = ("config.json", "metrics.jsonl", "progress.png", "best.pt", "last.pt")


@dataclass
class Run:
    """A run ready to train: what `train()` works with (nanoGPT's globals, in one place)."""

    cfg: TrainConfig
    dir: Path
    store: Any
    device: torch.device
    aug_device: str
    num_workers: int
    model: UNet
    optimizer: torch.optim.Optimizer
    loss_fn: Any
    extractor: Any
    validator: Validator
    log: MetricsLog
    end_step: int                       # this invocation stops after this many steps in total
    step: int = 0                       # steps done
    best_val_dice: float = -1.0
    last_saved: int = -1                # step of the last last.pt written (-1: none yet)
    rng: dict[str, Any] | None = None   # torch RNG state to restore (resume)
    store_info: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)   # options changed on resumes (resume.py)
    weights_finite: Any = None          # WeightsCheck of the model: called after every update
    dist: Dist = field(default_factory=Dist)   # this process among the data-parallel ones (distributed.py)
    net: Any = None                     # the module trained: `model`, or DDP around it (several processes)

    @property
    def num_classes(self) -> int:
        return int(self.store.pipeline.num_classes)


def open_store(path: str) -> Any:
    from maskgen.store.reader import FeatureStore

    return FeatureStore(path)


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
    check_crop(crop, cfg.depth, cfg.unet)
    check_crop_fits(crop, [tuple(c.shape_zyx) for c in store.cases(split="train") if c.case_id in set(cases)],
                    cfg.depth, cfg.unet)
    views = resolve_views(cfg.views, store, cases, uses_features(cfg.inputs) and not cfg.online_features)
    return cfg.replace(features=canonical(cfg.features), out=str(run_dir_for(cfg)), crop_zyx=crop,
                       train_cases=cases, views=views)


def check_crop_fits(crop_zyx: tuple[int, ...], shapes_zyx: list[tuple[int, ...]], depth: int, unet: str) -> None:
    """A crop may exceed a volume (it is zero-padded around it, as nnU-Net pads a volume to its patch size), but not
    the largest train volume rounded up to the network's multiple: beyond that a crop only adds padding and time."""
    m = 2**depth
    largest = [max(s[a] for s in shapes_zyx) for a in range(3)]
    useful = tuple(max(min_crop_side(depth, unet), -(-n // m) * m) for n in largest)
    if any(c > u for c, u in zip(crop_zyx, useful)):
        best = tuple(min(c, u) for c, u in zip(crop_zyx, useful))
        raise OptionError(
            "crop_zyx", tuple(crop_zyx),
            f"is larger than every train volume (the largest spans {xyz_text(tuple(largest))} voxels, x,y,z): a "
            f"bigger crop only adds zero padding and makes every step slower. Use at most {{crop_zyx}} "
            f"{xyz_text(best)} (the largest volume rounded up to a multiple of 2**depth={m}).",
        )


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, config: dict[str, Any]) -> None:
    """Make the run folder and write its config.json: a new run needs an empty folder (or --overwrite, which
    removes only the run's own files). A folder that cannot be written is one MaskgenError naming it."""
    try:
        if not resume and run_dir.exists() and any(run_dir.iterdir()):
            if not overwrite:
                raise MaskgenError(
                    f"run folder {run_dir} is not empty: pass --resume to continue that run, --overwrite to start it "
                    "again, or another --out."
                )
            for name in RUN_FILES:
                (run_dir / name).unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "config.json", config)
    except OSError as e:
        raise MaskgenError(
            f"cannot write the run folder {run_dir}: {e.strerror or e}; pass an --out in a folder you can write to."
        ) from None


def loader_spec(cfg: TrainConfig, allow_flips: bool, aug_device: str, rank: int = 0) -> LoaderSpec:
    """The training loader's settings for a resolved `cfg` (train_cases and crop_zyx set; `resolve_config`);
    `aug_device` is the resolved placement of the spatial augmentation ("cpu" or "device"); `rank` this process's
    among `cfg.world_size`."""
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
        views=int(cfg.views or 0),
        rank=rank,
        world_size=cfg.world_size,
    )


def build_model(cfg: TrainConfig, num_features: int, num_classes: int, device: torch.device) -> UNet:
    """The UNet of `cfg`, initialised from `cfg.seed` (torch's global RNG is left as it was), placed on `device`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = UNet(input_channels(cfg.inputs, num_features), num_classes, cfg.channels, cfg.depth, cfg.dropout,
                     kind=cfg.unet)
    return model.place(device)


def warm_foreground(store: Any, case_ids: tuple[str, ...]) -> None:
    """Compute (or load) every train case's cached foreground locations once, before the workers start."""
    from maskgen.train.sampling import FG_MAX_PER_CLASS, FG_SEED

    for cid in case_ids:
        store.foreground_locations(cid, max_per_class=FG_MAX_PER_CLASS, seed=FG_SEED)


def _resume_from(cfg: TrainConfig, store: Any, run_dir: Path, world_size: int) -> tuple[TrainConfig, dict[str, Any]]:
    last = run_dir / "last.pt"
    if not last.is_file():
        raise MaskgenError(f"cannot resume: no checkpoint {last}. Start a new run without --resume (or check --out).")
    ckpt = load_checkpoint(last)
    saved = TrainConfig.from_saved(ckpt["config"])
    check_world_size(saved, world_size, run_dir)
    cfg, changes = continued_config(saved, cfg, run_dir)
    check_same_extractor(ckpt, store, run_dir)
    ckpt["history"] = list(ckpt.get("history") or []) + ([history_entry(int(ckpt["step"]), changes)] if changes else [])
    return cfg, ckpt


def setup(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, stop_at: int | None = None,
          dist: Dist | None = None) -> Run:
    """A `Run` at its first step to do: new (`resume=False`) or restored from the run folder's last.pt; `dist`:
    this process among the data-parallel ones (`maskgen.train.distributed`; default: the only one). Every check
    (device, store, config, resume) comes before the run folder is created or written."""
    dist = dist or Dist()
    store = open_store(cfg.features)
    run_dir = run_dir_for(cfg)
    ckpt = None
    if resume:
        cfg, ckpt = _resume_from(cfg, store, run_dir, dist.world_size)
    cfg = resolve_config(cfg, store).replace(world_size=dist.world_size)
    if stop_at is not None and not (0 < stop_at <= cfg.steps):
        raise MaskgenError(f"--stop-at {stop_at} must be in 1..{cfg.steps} (--steps).")
    history = list(ckpt["history"]) if ckpt is not None else []
    config = {**to_dict(cfg), "effective_batch_size": cfg.batch_size * cfg.world_size, "history": history}
    device = dist.device(resolve_device(cfg.device))
    dist.on_main(lambda: prepare_run_dir(run_dir, resume, overwrite, config))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one crop size for the whole run: let cuDNN pick its kernels
    num_features, num_classes = int(store.num_features), int(store.pipeline.num_classes)
    model = build_model(cfg, num_features, num_classes, device)
    net = dist.wrap(model, cfg.sync_bn)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    workers = resolve_num_workers(cfg.num_workers, device, dist.local_world_size)
    run = Run(cfg=cfg, dir=run_dir, store=store, device=device, aug_device=resolve_aug_device(cfg.aug_device, device),
              num_workers=workers, model=model, optimizer=optimizer,
              loss_fn=_loss(), extractor=None, validator=Validator(store, cfg, device, num_classes, dist=dist),
              log=MetricsLog(run_dir / "metrics.jsonl"), end_step=cfg.steps if stop_at is None else stop_at,
              store_info={"path": cfg.features, "extractor": store.extractor, "num_features": num_features,
                          "classes": list(store.pipeline.classes), "pipeline": store.pipeline.name},
              history=history, weights_finite=WeightsCheck(model), dist=dist, net=net)
    if ckpt is not None:
        _restore(run, ckpt)
    return run


def _loss() -> Any:
    from maskgen.train.step import make_loss

    return make_loss()


def _restore(run: Run, ckpt: dict[str, Any]) -> None:
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    for group in run.optimizer.param_groups:  # a changed --weight-decay applies from here (lr is set every step)
        group["weight_decay"] = run.cfg.weight_decay
    run.step = run.last_saved = int(ckpt["step"])
    run.best_val_dice = float(ckpt.get("best_val_dice", -1.0))
    ranks = ckpt.get("rng_ranks") or [ckpt["rng"]]   # each rank's torch RNG (one entry for a single process)
    run.rng = ranks[run.dist.rank]
    if run.dist.is_main:
        run.log.truncate_after(run.step)


def start(run: Run) -> Any:
    """What the first step needs beyond `setup` (slow or process-starting, so only when there are steps to do):
    the online extractor, the train cases' foreground locations, and the loader from `run.step`."""
    from maskgen.train.online import build_online_extractor

    cfg = run.cfg
    reconfigure_threads(run.num_workers)  # the command's thread policy, minus this run's loader workers
    if run.dist.is_main:  # what torch uses from the first step on (rank 0's, under DDP)
        run.log.append({"step": run.step, **current_threads()})
    if cfg.online_features:
        run.extractor = build_online_extractor(run.store, cfg, run.device)
    spec = loader_spec(cfg, bool(run.store.pipeline.allow_flips), run.aug_device, run.dist.rank)
    warm_foreground(run.store, cfg.train_cases)
    return make_loader(run.store, spec, run.step, run.end_step, run.num_workers, pin_memory=run.device.type == "cuda")
