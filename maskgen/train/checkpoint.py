"""Checkpoints (`best.pt`, `last.pt`): model, optimiser, step, the torch RNG state, configs; atomic writes.

`load_run` opens a run folder's checkpoint for the evaluate stage.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from maskgen.atomic import atomic_path
from maskgen.config import to_dict
from maskgen.errors import MaskgenError
from maskgen.train.config import TrainConfig
from maskgen.train.finite import nonfinite

CHECKPOINT_VERSION = 1
CHECKPOINTS = ("best", "last")


def rng_state() -> dict[str, Any]:
    """The torch global RNG states (CPU and every CUDA device), in types `weights_only` loads.

    Training draws from them only in the channel-dropout baseline's `nn.Dropout3d` (crops, augmentation and view
    masks come from explicit generators of (seed, step)); saving them keeps that baseline's resume exact."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore `rng_state()` (older checkpoints also carry NumPy/Python states, which training no longer uses)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        for i, s in enumerate(cuda):
            torch.cuda.set_rng_state(s, device=i)


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    with atomic_path(path) as tmp:
        torch.save({"version": CHECKPOINT_VERSION, **payload}, tmp)


def diverged_error(run: Any, step: int, what: str) -> MaskgenError:
    """The message of a run stopped at (0-based) `step` because something became non-finite: what is kept on disk
    and how to continue."""
    kept = (
        f"The last good checkpoint {run.dir / 'last.pt'} (step {run.last_saved}) is untouched and finite"
        if run.last_saved > 0 else "No checkpoint had been written yet"
    )
    return MaskgenError(
        f"{what} at step {step + 1}; the run stopped. {kept}. Lower --lr (now {run.cfg.lr:g}) and continue with "
        f"`maskgen train --resume --out {run.dir} --lr <lower>` (if it stops again at once, the steps before had "
        "already damaged the weights: start again with --overwrite), or check the store for bad values."
    )


def write_checkpoint(run: Any, name: str, val_dice: float | None, rngs: list[dict[str, Any]] | None = None) -> None:
    """`run.dir / name` for a `maskgen.train.setup.Run` after `run.step` steps: model, optimiser, step, RNG state,
    the loader's position, the configs and their history, the store it trains on and the validation scores.
    `rngs`: every data-parallel rank's `rng_state()` (rank 0's is `rng`; all of them `rng_ranks`, restored per rank).

    Written only when every parameter, buffer and optimiser state is finite (else `diverged_error`)."""
    model, optimizer = run.model.state_dict(), run.optimizer.state_dict()
    bad = nonfinite({"model": model, "optimizer": optimizer["state"]})
    if bad:
        raise diverged_error(run, run.step - 1, f"{name} was not written: {bad.describe()} after the update")
    save_checkpoint(run.dir / name, {
        "model": model,
        "optimizer": optimizer,
        "step": run.step,
        "rng": rngs[0] if rngs else rng_state(),
        **({"rng_ranks": rngs} if rngs and len(rngs) > 1 else {}),
        "loader": {"scheme": "sample_rng(seed, step, slot)", "seed": run.cfg.seed, "next_step": run.step},
        "config": to_dict(run.cfg),
        "history": list(run.history),
        "model_config": run.model.config(),
        "store": run.store_info,
        "best_val_dice": run.best_val_dice,
        "val_dice": val_dice,
    })
    if name == "last.pt":
        run.last_saved = run.step


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """`torch.load(weights_only=True)`; a missing or unreadable file, or one holding non-finite weights or optimiser
    state (a diverged run's), is a MaskgenError naming it: nothing evaluates, predicts with or resumes from it."""
    path = Path(path)
    if not path.is_file():
        raise MaskgenError(f"checkpoint {path} does not exist.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unpickling problem as a user-facing error
        raise MaskgenError(f"cannot read checkpoint {path}: {e}. Is the file complete?") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise MaskgenError(f"{path} is not a maskgen training checkpoint (no model/config).")
    bad = nonfinite({"model": ckpt["model"], "optimizer": (ckpt.get("optimizer") or {}).get("state", {})})
    if bad:
        raise MaskgenError(
            f"{path} holds non-finite weights ({bad.describe()}): its run diverged before it was written. Use the "
            "run's other checkpoint (best.pt / last.pt) if it is finite, or train again with a lower --lr."
        )
    return ckpt


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu") -> tuple[
    torch.nn.Module, TrainConfig, dict[str, Any]
]:
    """(model in eval mode on `device`, TrainConfig, checkpoint dict) of a run folder's `best.pt` or `last.pt`."""
    from maskgen.train.unet import UNet

    if checkpoint not in CHECKPOINTS:
        raise MaskgenError(f"checkpoint {checkpoint!r} must be 'best' or 'last'.")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MaskgenError(f"run folder {run_dir} does not exist; train one with `maskgen train`.")
    path = run_dir / f"{checkpoint}.pt"
    if not path.is_file():
        hint = " (best.pt is written at the first validation; use checkpoint 'last')" if checkpoint == "best" else ""
        raise MaskgenError(f"{path} does not exist{hint}.")
    ckpt = load_checkpoint(path)
    cfg = TrainConfig.from_saved(ckpt["config"])
    model = UNet.from_config(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    model.place(device).eval()
    return model, cfg, ckpt
