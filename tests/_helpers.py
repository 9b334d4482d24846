"""Helpers shared by several test files (fixtures stay in the test files; conftest.py is kept minimal)."""

from __future__ import annotations

import contextlib
import csv
from pathlib import Path
from typing import Any, Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]


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


@contextlib.contextmanager
def cli_subprocess(args: list[str], cwd: Path | None = None) -> Iterator[Any]:
    """`maskgen ARGS` in a real subprocess (its own process group, Ctrl-C as a terminal delivers it, one torch
    thread, this checkout's code); the group is killed on exit if it is still running."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", CLI_WITH_CTRL_C, *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            import signal

            os.killpg(proc.pid, signal.SIGKILL)


def ctrl_c(proc: Any) -> tuple[str, float]:
    """Send a terminal's Ctrl-C (SIGINT to the whole process group); (stderr, seconds until it exited)."""
    import os
    import signal
    import time

    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    stderr = after_ctrl_c(proc)
    return stderr, time.monotonic() - t0
