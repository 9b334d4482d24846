"""Atomic file writes: a temporary file in the same folder, fsynced, then renamed over the target.

A reader (or a run killed half-way) never sees a half-written output: it sees the old file or the new one.
The temporary file gets the mode a plain `open()` would give (0666 minus the umask), not mkstemp's 0600, and is
removed on any exception (KeyboardInterrupt included), leaving the old file untouched.

    with atomic_path(out, suffix=".nii.gz") as tmp:   # keep the ending a library needs (nibabel, matplotlib)
        nib.save(img, tmp)
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success fsync it, give it the normal mode and rename it over
    `path`; on any exception remove it and re-raise. The parent folder is created if needed.

    `suffix` ends the temporary name (e.g. ".nii.gz" for nibabel, ".png" for matplotlib); the name starts with
    `.<name>.` so it is hidden and easy to attribute.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns `path` as a Path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically, newlines as given (no platform translation); returns `path`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding=encoding, newline="") as f:
            f.write(text)
    return path


def new_file_mode() -> int:
    """The mode `open(path, "w")` would give a new file: 0o666 minus the process umask."""
    return 0o666 & ~_umask()


def _umask() -> int:
    # /proc/self/status reports the umask without changing it (os.umask() must set it to read it, which races
    # with other threads creating files); fall back to that elsewhere.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
