"""Helpers shared by several test files (fixtures stay in the test files; conftest.py is kept minimal)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np


def synthetic_store(folder: Path, n_cases: int = 4, size: int = 32, dtype: str | None = None) -> Path:
    """`folder/store.zarr`: MIND features of `make_synthetic_dataset(folder / "data", n_cases, size)`, made by
    `run_extract` (feature `dtype`: the default, or e.g. "float16"). A complete store already there is reused, so
    test files asking for the same folder share it."""
    from maskgen.demo.synthetic import make_synthetic_dataset
    from maskgen.extract.run import ExtractConfig, run_extract

    path = folder / "store.zarr"
    if not (path / "zarr.json").exists():
        data = make_synthetic_dataset(folder / "data", n_cases=n_cases, size=size)
        run_extract(ExtractConfig(dataset=str(data / "pipeline.toml"), out=str(path), extractor="mind", dtype=dtype),
                    progress=False)
    return path


def domains_rows(root: Path) -> list[dict[str, str]]:
    """The rows of a generated dataset's `domains.csv`."""
    with open(root / "domains.csv", newline="") as f:
        return list(csv.DictReader(f))


def load_nifti(path: Path) -> tuple[np.ndarray, Any]:
    """(data as stored on disk, the nibabel image)."""
    import nibabel as nib

    img = nib.load(path)
    return np.asarray(img.dataobj), img


#: Options of a tiny training run (seconds on a CPU) on `synthetic_store` data.
TINY_TRAIN = dict(steps=4, batch_size=2, channels=4, depth=2, val_every=2, num_workers=0, seed=3)


def tiny_train_config(store: Path, out: Path, **changes: Any) -> Any:
    """A TrainConfig of `TINY_TRAIN` with `changes`."""
    from maskgen.train.config import TrainConfig

    return TrainConfig(features=str(store), out=str(out), **{**TINY_TRAIN, **changes})


def after_ctrl_c(proc: Any, timeout: float = 60.0) -> str:
    """stderr of a subprocess sent Ctrl-C, once it exits; if it does not, every thread's stack (started with
    PYTHONFAULTHANDLER=1: SIGABRT dumps them) in the failure."""
    import os
    import signal
    import subprocess

    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGABRT)
        stderr = proc.communicate(timeout=30)[1]
        stacks = stderr.split("Extension modules:")[0]
        raise AssertionError(f"still running {timeout:.0f} s after Ctrl-C:\n{stacks[-12000:]}") from None


#: `python -c` code running the CLI with Python's own Ctrl-C handler, also when the test process was started with
#: SIGINT ignored (a background job of a non-interactive shell: `pytest ... &`), which the child would inherit.
CLI_WITH_CTRL_C = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                   "from maskgen.cli import main; main()")
