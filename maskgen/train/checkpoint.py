"""Checkpoints (`best.pt`, `last.pt`): model, optimiser, step, every RNG state, configs; atomic writes."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskgen.atomic import atomic_path
from maskgen.errors import MaskgenError

CHECKPOINT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), NumPy and Python global RNG states, in types `weights_only` loads."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": _to_lists(random.getstate()),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        for i, s in enumerate(cuda):
            torch.cuda.set_rng_state(s, device=i)
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]), float(n["cached_gaussian"]))
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    with atomic_path(path) as tmp:
        torch.save({"version": CHECKPOINT_VERSION, **payload}, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """`torch.load(weights_only=True)`; a missing or unreadable file is a MaskgenError naming it."""
    path = Path(path)
    if not path.is_file():
        raise MaskgenError(f"checkpoint {path} does not exist.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unpickling problem as a user-facing error
        raise MaskgenError(f"cannot read checkpoint {path}: {e}. Is the file complete?") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise MaskgenError(f"{path} is not a maskgen training checkpoint (no model/config).")
    return ckpt


def _to_lists(x: Any) -> Any:
    if isinstance(x, tuple):
        return [_to_lists(v) for v in x]
    return x
