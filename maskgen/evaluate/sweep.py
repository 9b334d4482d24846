"""`maskgen sweep`: train and evaluate a grid of variants from one feature store, never re-running the extractor.

The grid is planned by `maskgen.evaluate.sweep_plan`. Each variant is one `run_variant(spec, variant)` call: train
in `<out>/<variant>/` (`maskgen.train.loop.train`), then evaluate (`eval-<split>.json`) on each requested split. The
calls run one after the other in this process, or, with `scheduler`, as dask.distributed tasks on a cluster
(`maskgen.evaluate.sweep_cluster`), each asking for one GPU where workers declare that resource.

Resumable: a variant whose eval files all exist (scored with the sweep's Dice convention) is skipped; one with
`last.pt` continues from it (`resume=True`), which is also how a variant whose worker died is re-run; one whose folder
holds no checkpoint yet starts again. An existing variant folder trained with other options is an error (use another
`--out`). After every variant, `results.{csv,md,png}` are rewritten (`maskgen.evaluate.sweep_results`) and
`sweep-status.json` says which variants are done, running and failed (`maskgen.evaluate.sweep_status`).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from maskgen.errors import MaskgenError
from maskgen.store.kv import store_exists
from maskgen.store.location import as_location, canonical, same_store
from maskgen.evaluate.sweep_plan import INPUT_ORDER, METHODS, Variant, plan_variants  # noqa: F401 (the sweep's API)
from maskgen.evaluate.sweep_results import collect_results, results_markdown_rows, write_results  # noqa: F401


@dataclass(frozen=True)
class SweepSpec:
    """Everything one variant needs besides the variant itself (picklable: it travels to dask workers)."""

    store: str
    out_dir: str
    train_options: tuple[tuple[str, Any], ...]
    splits: tuple[str, ...] = ("val", "test")
    checkpoint: str = "best"
    overlap: float = 0.5
    empty_class: str = "ignore"

    def config(self, variant: Variant) -> Any:
        """The variant's TrainConfig (checked by its `__post_init__`)."""
        from maskgen.train.config import TrainConfig

        return TrainConfig(features=self.store, out=str(Path(self.out_dir) / variant.name),
                           empty_class=self.empty_class, **dict(self.train_options), **variant.train_changes())

    @property
    def device(self) -> str:
        return str(dict(self.train_options).get("device", "auto"))


@dataclass(frozen=True)
class VariantOutcome:
    """What `run_variant` did: action "skipped" (finished earlier), "trained" (from step 0) or "resumed" (from
    `from_step`, the step of the `last.pt` it found), then evaluated unless skipped."""

    name: str
    action: str
    from_step: int = 0
    seconds: float = 0.0
    where: str = ""                                  # host:pid that ran it
    notes: tuple[str, ...] = field(default_factory=tuple)


def variant_state(run_dir: Path, splits: Sequence[str], empty_class: str = "ignore") -> str:
    """'done' (every eval file present, scored with the `empty_class` convention), 'trained' (last.pt, an eval file
    missing or scored otherwise), 'partial' (folder without checkpoint), or 'new'."""
    from maskgen.evaluate.evaluate import eval_paths

    if all(_eval_convention(eval_paths(run_dir, s)[0]) == empty_class for s in splits):
        return "done"
    if (run_dir / "last.pt").is_file():
        return "trained"
    if run_dir.is_dir() and any(run_dir.iterdir()):
        return "partial"
    return "new"


def _eval_convention(path: Path) -> str | None:
    """The Dice convention an eval file was scored with (None when it is missing or unreadable)."""
    from maskgen.evaluate.evaluate import LEGACY_EMPTY_CLASS

    try:
        return str(json.loads(path.read_text()).get("empty_class", LEGACY_EMPTY_CLASS))
    except (OSError, ValueError, AttributeError):
        return None


def _check_existing(run_dir: Path, cfg: Any) -> None:
    """A variant folder from an earlier invocation must have been trained with the same options."""
    from maskgen.config import config_diff
    from maskgen.train.resume import RUNTIME_FIELDS, read_run_config

    if not (run_dir / "config.json").is_file():
        return
    saved = read_run_config(run_dir)
    unset = (("crop_zyx",) if cfg.crop_zyx is None else ()) + (("views",) if cfg.views is None else ())
    diffs = [f"{k} {a!r} there, {b!r} now" for k, (a, b) in
             config_diff(saved, cfg, ignore=(*RUNTIME_FIELDS, "features", "out", "train_cases", *unset)).items()]
    if not same_store(saved.features, cfg.features):
        diffs.append(f"store {saved.features} there, {cfg.features} now")
    if diffs:
        raise MaskgenError(
            f"{run_dir} was trained with other options ({'; '.join(diffs)}); use another --out for a new sweep, "
            "or the same options to resume this one."
        )


def _check_splits(store: Path | str, splits: Sequence[str], checkpoint: str) -> None:
    """Before any training: every split to evaluate exists in the store with labelled cases."""
    from maskgen.evaluate.evaluate import SPLITS
    from maskgen.store.reader import FeatureStore

    if checkpoint not in ("best", "last"):
        raise MaskgenError(f"--checkpoint {checkpoint!r} must be best or last.")
    if not splits:
        raise MaskgenError("--splits is empty: give at least one of val, test.")
    fs = FeatureStore(store)
    for split in splits:
        if split not in SPLITS:
            raise MaskgenError(f"--splits {split!r} is not one of {', '.join(SPLITS)}.")
        if not any(c.has_label for c in fs.cases(split=split)):
            raise MaskgenError(f"{store} has no labelled case in split {split!r}; drop it from --splits.")


def run_variant(spec: SweepSpec, variant: Variant, progress: bool = False,
                log: Callable[[str], None] | None = None) -> VariantOutcome:
    """Train (or continue, or skip) and evaluate one variant; the unit of work of serial and cluster sweeps."""
    from maskgen.evaluate.evaluate import evaluate_run
    from maskgen.train.loop import train

    say = log or (lambda _msg: None)
    t0 = time.perf_counter()
    where = f"{socket.gethostname()}:{os.getpid()}"
    cfg = spec.config(variant)
    run_dir = Path(spec.out_dir) / variant.name
    state = variant_state(run_dir, spec.splits, spec.empty_class)
    if state != "new":
        _check_existing(run_dir, cfg)
    if state == "done":
        say(f"{variant.name}: finished earlier, skipped")
        return VariantOutcome(variant.name, "skipped", where=where)
    notes = []
    if multiprocessing.current_process().daemon and cfg.num_workers != 0:
        cfg = cfg.replace(num_workers=0)  # a daemonic process (a dask worker) cannot start loader processes
        notes.append("loader workers off: this process is daemonic (start dask workers with "
                     "DASK_DISTRIBUTED__WORKER__DAEMON=False to use them)")
    from_step = _checkpoint_step(run_dir / "last.pt") if state == "trained" else 0
    if state == "trained":
        say(f"{variant.name}: continuing from {run_dir / 'last.pt'} (step {from_step})")
        # the run continues as saved (checked equal above); the crop is left to the saved config
        train(cfg.replace(crop_zyx=None), resume=True, progress=progress)
    else:
        say(f"{variant.name}: training" + (" again (no checkpoint was written)" if state == "partial" else ""))
        train(cfg, resume=False, overwrite=state == "partial", progress=progress)
    ckpt = spec.checkpoint if (run_dir / f"{spec.checkpoint}.pt").is_file() else "last"
    if ckpt != spec.checkpoint:
        notes.append(f"no {spec.checkpoint}.pt (no validation case?): evaluated last.pt")
    for split in spec.splits:
        evaluate_run(run_dir, split, ckpt, spec.overlap, device=spec.device, empty_class=spec.empty_class)
    return VariantOutcome(variant.name, "resumed" if state == "trained" else "trained", from_step,
                          round(time.perf_counter() - t0, 3), where, tuple(notes))


def _checkpoint_step(path: Path) -> int:
    """The step a checkpoint was saved at, read without loading its tensors (memory-mapped)."""
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("step", 0))
    except Exception:  # noqa: BLE001 - train(resume=True) reports an unreadable checkpoint properly
        return 0


def run_sweep(
    store: str | Path,
    out_dir: str | Path,
    variants: Sequence[Variant],
    train_options: dict[str, Any],
    splits: Sequence[str] = ("val", "test"),
    checkpoint: str = "best",
    overlap: float = 0.5,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    empty_class: str = "ignore",
    scheduler: str | None = None,
) -> dict[str, list[str]]:
    """Train and evaluate every variant (skipping finished ones) in this process, or on the dask.distributed
    cluster at `scheduler`; returns {"trained", "resumed", "skipped", "failed"} lists of variant names and writes
    the results files. `empty_class`: the Dice convention of validation and evaluation (`maskgen.train.dice`)."""
    from maskgen.evaluate.sweep_status import SweepStatus

    spec = _prepare(store, out_dir, variants, train_options, splits, checkpoint, overlap, empty_class)
    status = SweepStatus(Path(spec.out_dir), [v.name for v in variants], enabled=progress)
    with status:
        if scheduler:
            from maskgen.evaluate.sweep_cluster import run_on_cluster

            run_on_cluster(run_variant, spec, variants, scheduler, status,
                           lambda: write_results(spec.out_dir, variants, spec.splits), log)
        else:
            _run_serial(spec, variants, status, progress, log)
    write_results(spec.out_dir, variants, spec.splits)
    if status.failed:
        raise MaskgenError(
            f"{len(status.failed)} of {len(variants)} variants failed: "
            + "; ".join(f"{n}: {e}" for n, e in status.failed.items())
            + f". The others are done; run the same command again to retry (see {status.path})."
        )
    return status.summary()


def _prepare(store: str | Path, out_dir: str | Path, variants: Sequence[Variant], train_options: dict[str, Any],
             splits: Sequence[str], checkpoint: str, overlap: float, empty_class: str) -> SweepSpec:
    """Every check before anything is trained or written; the sweep folder is created last."""
    store, out_dir = as_location(store), Path(out_dir)  # the store: a folder or an fsspec URL
    if not store_exists(store):
        raise MaskgenError(f"--features {store} does not exist; create the store with `maskgen extract`.")
    if not splits:
        raise MaskgenError("--splits is empty: give at least one split to evaluate (e.g. test).")
    _check_splits(store, splits, checkpoint)
    reserved = {"features", "out", "inputs", "mask_rate", "seed", "dropout", "empty_class"} & set(train_options)
    if reserved:
        raise MaskgenError(f"train options {sorted(reserved)} are set by the sweep itself.")
    spec = SweepSpec(canonical(store), str(out_dir.absolute()), tuple(sorted(train_options.items())),
                     tuple(splits), checkpoint, overlap, empty_class)
    for v in variants:
        spec.config(v)  # every variant's options are checked (TrainConfig) first
    out_dir.mkdir(parents=True, exist_ok=True)
    return spec


def _run_serial(spec: SweepSpec, variants: Sequence[Variant], status: Any, progress: bool,
                log: Callable[[str], None] | None) -> None:
    """One variant after the other in this process; the first failure stops the sweep (and is raised)."""
    for i, v in enumerate(variants):
        head = f"[{i + 1}/{len(variants)}] "
        status.started(v.name, "here")
        try:
            outcome = run_variant(spec, v, progress,
                                  (lambda msg: log(head + msg)) if log else None)
        except Exception as e:  # recorded in sweep-status.json, then the sweep stops as it always did
            status.failed_with(v.name, f"{type(e).__name__}: {e}")
            raise
        status.finished(outcome)
        for note in outcome.notes:
            if log:
                log(f"{head}{v.name}: {note}")
        write_results(spec.out_dir, variants, spec.splits)
