"""The resume policy: which options may change when a run is continued, and the config a resumed run trains with.

A run continues as it was configured. Options that do not change what was already trained may be given again with
other values (`RESUMABLE_FIELDS`): where and how fast it runs, how often and how it validates, and the optimiser
settings of the steps still to come (`--lr`, `--weight-decay`, `--steps` upward). Any other difference is refused,
naming each field. Each accepted change is recorded, with the step it applies from, in the run's `history`
(config.json and every checkpoint).

Schedule rule: the learning rate stays a pure function of the step and the current settings,
lr(t) = lr * (1 + cos(pi t / steps)) / 2 (`maskgen.train.schedule.lr_at`). After `--resume --lr L` the remaining
steps follow that cosine with base L; after `--resume --steps M` (M >= the run's steps) the cosine is recomputed
over M steps, so from the resume step s the rate is lr * (1 + cos(pi s / M)) / 2 (a step up when the old run had
already decayed): a run extended this way is not the run a fresh `--steps M` would give.

The CLI passes only the options given explicitly on its command line (`resume_config`); the library compares a
whole config (`continued_config`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from maskgen.config import config_diff, format_diff
from maskgen.errors import MaskgenError
from maskgen.train.config import TrainConfig, default_run_name

#: Options that may differ when resuming: they change where/how fast the run executes, not what it computes
#: (aug_device only changes floating-point rounding of the same transform).
RUNTIME_FIELDS = ("num_workers", "device", "aug_device", "val_every", "extractor_weights", "dist_timeout")
#: Options that may change on --resume: the runtime ones and those of the steps still to come (module docstring).
RESUMABLE_FIELDS = (*RUNTIME_FIELDS, "val_overlap", "lr", "weight_decay", "steps")
#: Fields that say where the run is, not what it trains.
LOCATION_FIELDS = ("features", "out")


def run_dir_for(cfg: TrainConfig) -> Path:
    """The run folder: `cfg.out`, else runs/<store>-<inputs>-mr<rate>-s<seed>."""
    return Path(cfg.out) if cfg.out else Path("runs") / default_run_name(cfg.features, cfg.inputs, cfg.mask_rate, cfg.seed)


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig recorded in a run folder's config.json."""
    path = Path(run_dir) / "config.json"
    try:
        return TrainConfig.from_saved(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise MaskgenError(f"cannot read the run's config {path} ({e}); start a new run in another --out.") from None


def resume_config(features: str, out: str | None, given: Mapping[str, Any]) -> TrainConfig:
    """The config of `maskgen train --resume`: the run's recorded config with the options `given` on the command
    line applied (only those; the others keep the run's values). The run folder is `out`, else the default folder
    of the given options. Whether the changes are allowed is decided by `continued_config` when the run starts."""
    probe = TrainConfig(features=features, out=out or "", **given)
    run_dir = run_dir_for(probe)
    base = read_run_config(run_dir) if (run_dir / "config.json").is_file() else probe
    return base.replace(features=features, out=out or base.out, **dict(given))


def continued_config(saved: TrainConfig, given: TrainConfig, run_dir: Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The config to continue a run saved with `saved` when `given` was asked for, and the changes it makes
    ({field: (old, new)}): `saved` with the `RESUMABLE_FIELDS` of `given`; any other difference is a MaskgenError
    naming the fields, as is a lower `steps`. `given.crop_zyx` / `given.train_cases` left empty and `given.views`
    None (auto) mean "as the run" (they are filled from the store)."""
    unset = [k for k in ("crop_zyx", "train_cases") if not getattr(given, k)] + (["views"] if given.views is None else [])
    # world_size is the launch's, checked by `check_world_size` with its own message
    conflicts = config_diff(saved, given, ignore=(*RESUMABLE_FIELDS, *LOCATION_FIELDS, *unset, "world_size"))
    if conflicts:
        raise MaskgenError(
            f"--resume of {run_dir}: options differ from the run's config "
            f"({format_diff(conflicts, 'run has', 'given')}); drop them to continue the run as it was, or start a "
            f"new run. Options that may change on --resume: {', '.join(RESUMABLE_FIELDS)}."
        )
    if given.steps < saved.steps:
        raise MaskgenError(
            f"--resume of {run_dir}: --steps can only be raised (run has {saved.steps}, given {given.steps}); stop "
            "earlier with --stop-at instead."
        )
    cfg = saved.replace(**{k: getattr(given, k) for k in RESUMABLE_FIELDS}, features=given.features)
    return cfg, config_diff(saved, cfg, ignore=("out",))


def check_world_size(saved: TrainConfig, world_size: int, run_dir: Path) -> None:
    """A run resumes with the number of processes it was trained with: its batches and BatchNorm statistics depend
    on how the global batch is split (`maskgen.train.distributed`)."""
    if saved.world_size != world_size:
        launch = "without --nproc" if saved.world_size == 1 else f"with --nproc {saved.world_size}"
        raise MaskgenError(
            f"--resume of {run_dir}: the run was trained on {saved.world_size} process(es) (world size "
            f"{saved.world_size}, global batch {saved.world_size * saved.batch_size}) but this launch has "
            f"{world_size}; resume it {launch} (torchrun --nproc-per-node {saved.world_size}), or start a new run."
        )


def history_entry(step: int, changes: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    """A record of config.json's `history`: the options changed on a resume, from which step they apply."""
    import datetime

    return {"step": int(step), "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "changes": {k: [a, b] for k, (a, b) in changes.items()}}


def check_same_extractor(ckpt: Mapping[str, Any], store: Any, run_dir: Path) -> None:
    """A run continues only on features of the extractor it was trained on (the registry's identity rule: the same
    weights recorded under another name are the same features)."""
    from maskgen.extract.registry import identity_problems

    made_by = (ckpt.get("store") or {}).get("extractor")
    problems = identity_problems(made_by, store.extractor, "the run's store has", "this store has") if made_by else []
    if problems:
        raise MaskgenError(
            f"--resume of {run_dir}: {store.path} was made by another extractor than the run's store "
            f"{(ckpt.get('store') or {}).get('path')} ({'; '.join(problems)}); resume with the same store."
        )
