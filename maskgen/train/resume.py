"""The resume policy: which options may change when a run is continued, and the config a resumed run trains with.

A run continues as it was configured. Options that change where or how fast it runs (not what it computes) may be
given again with other values; any other difference is refused, naming each field. The CLI passes only the options
given explicitly on its command line (`resume_config`); the library compares a whole config (`continued_config`).
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
RUNTIME_FIELDS = ("num_workers", "device", "aug_device", "val_every", "extractor_weights")
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


def continued_config(saved: TrainConfig, given: TrainConfig, run_dir: Path) -> TrainConfig:
    """The config to continue a run saved with `saved` when `given` was asked for: `saved` with the runtime
    fields of `given`; any other difference is a MaskgenError naming the fields. `given.crop_zyx` /
    `given.train_cases` left empty mean "as the run" (they are filled from the store)."""
    unset = [k for k in ("crop_zyx", "train_cases") if not getattr(given, k)]
    conflicts = config_diff(saved, given, ignore=(*RUNTIME_FIELDS, *LOCATION_FIELDS, *unset))
    if conflicts:
        raise MaskgenError(
            f"--resume of {run_dir}: options differ from the run's config "
            f"({format_diff(conflicts, 'run has', 'given')}); drop them to continue the run as it was, or start a "
            "new run."
        )
    return saved.replace(**{k: getattr(given, k) for k in RUNTIME_FIELDS}, features=given.features)


def check_same_extractor(ckpt: Mapping[str, Any], store: Any, run_dir: Path) -> None:
    """A run continues only on features of the extractor it was trained on."""
    made_by = (ckpt.get("store") or {}).get("extractor")
    if made_by is not None and made_by != store.extractor:
        raise MaskgenError(
            f"--resume of {run_dir}: {store.path} was made by another extractor than the run's store "
            f"{(ckpt.get('store') or {}).get('path')}; resume with the same store."
        )
