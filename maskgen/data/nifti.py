"""Reading and writing NIfTI files with nibabel, with errors that name the file and say what to do."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from maskgen.atomic import atomic_path
from maskgen.errors import MaskgenError

_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile, nib.filebasedimages.ImageFileError)


def load_header(path: str | Path) -> nib.spatialimages.SpatialImage:
    """Open an image lazily (header only; data is read on access). Missing/unreadable files raise MaskgenError."""
    path = Path(path)
    try:
        if not path.exists():
            raise MaskgenError(f"{path} does not exist; check the data folder or the pipeline's layout")
        if path.is_dir():
            raise MaskgenError(f"{path} is a folder, not a NIfTI file")
        with open(path, "rb"):  # nibabel reports a file it may not open as "Could not read file": ask the OS first
            pass
        return nib.load(str(path))
    except PermissionError as e:
        raise MaskgenError(permission_message(path, e)) from None
    except _READ_ERRORS as e:
        what = "is truncated or corrupt" if _truncated(path) else "is not a readable NIfTI file"
        raise MaskgenError(f"{path} {what} ({_describe(e)}); re-export or re-download it") from None


def permission_message(path: Path, e: PermissionError) -> str:
    """The file (or a folder on its path) may not be read by this user: say so, and how to fix it."""
    return (f"{path} cannot be read: permission denied ({_describe(e)}); make it readable for this user (e.g. "
            f"`chmod a+r` on the file and `a+x` on its folders) or run as a user who may read it")


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _truncated(path: Path) -> bool:
    """A gzip stream that ends early, or a file shorter than a NIfTI header (348 bytes)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
        if magic == b"\x1f\x8b":
            with gzip.open(path, "rb") as g:
                while g.read(1 << 20):
                    pass
            return False
        return not path.name.lower().endswith(".gz") and path.stat().st_size < 348
    except (EOFError, zlib.error):
        return True
    except (OSError, gzip.BadGzipFile):
        return False


def spatial_shape(img: nib.spatialimages.SpatialImage) -> tuple[int, ...]:
    """The image's shape without trailing singleton axes beyond the third (x, y, z[, channels])."""
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 5 and shape[3] == 1:  # (x, y, z, 1, c): the NIfTI "vector" convention
        shape = shape[:3] + shape[4:]
    return shape


def _data(
    img: nib.spatialimages.SpatialImage, path: Path, channel: int | None, all_channels: bool = False
) -> np.ndarray:
    shape = spatial_shape(img)
    if len(shape) < 3:
        raise MaskgenError(f"{path} has shape {tuple(img.shape)}: a 3D volume (or 4D with channels) is needed")
    if len(shape) > 4:
        raise MaskgenError(f"{path} has shape {tuple(img.shape)}: more than one non-spatial axis is not supported")
    if len(shape) == 4 and not all_channels:
        if channel is None:
            raise MaskgenError(
                f"{path} is 4D with {shape[3]} volumes: the pipeline must say which channel each case uses "
                "(e.g. layout msd_brats)"
            )
        if not 0 <= channel < shape[3]:
            raise MaskgenError(f"{path} has {shape[3]} volumes, so channel {channel} does not exist")
    elif len(shape) == 3 and channel not in (None, 0):
        raise MaskgenError(f"{path} is a 3D volume, but the case asks for channel {channel}")
    try:
        if len(shape) == 4 and not all_channels:
            # Read only the requested volume: (x, y, z, c) or the vector form (x, y, z, 1, c).
            index = (slice(None),) * 3 + ((channel,) if len(img.shape) == 4 else (0, channel))
            data = np.asanyarray(img.dataobj[index]).reshape(shape[:3])
        else:
            data = np.asanyarray(img.dataobj).reshape(shape)
    except PermissionError as e:
        raise MaskgenError(permission_message(path, e)) from None
    except _READ_ERRORS as e:
        raise MaskgenError(
            f"{path} is truncated or corrupt ({_describe(e)}); re-export or re-download it"
        ) from None
    return data


def read_volume(path: str | Path, channel: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(data (x, y, z) in the file's dtype after scaling, affine 4x4 float64). 4D files need `channel`."""
    path = Path(path)
    img = load_header(path)
    return _data(img, path, channel), np.asarray(img.affine, dtype=np.float64)


def read_all_channels(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(data (x, y, z[, c]), affine): the whole file, for checks that look at every channel once."""
    path = Path(path)
    img = load_header(path)
    return _data(img, path, None, all_channels=True), np.asarray(img.affine, dtype=np.float64)


def orientation(affine: np.ndarray) -> tuple[str, str, str]:
    """Axis codes of an affine, e.g. ('L', 'P', 'S')."""
    return tuple(nib.aff2axcodes(np.asarray(affine)))  # type: ignore[return-value]


def save_nifti_atomic(img: nib.Nifti1Image, path: str | Path) -> Path:
    """Write to a temporary file in the same folder, then rename over `path` (no half-written outputs)."""
    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    with atomic_path(path, suffix=f".tmp{suffix}") as tmp:  # nibabel picks the format from the ending
        nib.save(img, tmp)
    return path
