"""The MNI152 2009a template shipped inside the nilearn wheel, as tissue maps on a coarse grid (offline).

Files read directly with nibabel from the installed nilearn package (no network, no nilearn import):
``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz`` (197x233x189, 1 mm, uint8
0-255; the T1 template is skull-stripped, gm/wm are probability maps). The brain mask is the template
thresholded at 0.2 of its maximum, as ``nilearn.datasets.load_mni152_brain_mask`` does (plus hole filling).
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskgen.errors import MaskgenError

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
MASK_THRESHOLD = 0.2  # nilearn.datasets.load_mni152_brain_mask(threshold=0.2)
TISSUES = ("csf", "grey_matter", "white_matter")  # label values 1, 2, 3


@dataclass(frozen=True, eq=False)
class Template:
    """Template tissue maps on an isotropic grid, arrays in (x, y, z) index order of a RAS affine.

    ``csf``/``gm``/``wm`` are partial-volume fractions that sum to ``mask`` (the soft brain mask); ``t1`` is
    the template intensity scaled to [0, 1]. ``t1_tissue_means`` are the mean T1 intensities of voxels whose
    dominant tissue is CSF, GM, WM (used to separate tissue contrast from sub-tissue anatomical detail).
    """

    t1: np.ndarray
    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    spacing: int
    t1_tissue_means: tuple[float, float, float]
    source_dir: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.t1.shape)

    def brain_bbox_world(self) -> tuple[np.ndarray, np.ndarray]:
        """World (mm) coordinates of the first and last voxel centres of the brain's bounding box."""
        idx = np.argwhere(self.mask >= 0.5)
        lo, hi = idx.min(0), idx.max(0)
        to_world = lambda v: self.affine[:3, :3] @ v + self.affine[:3, 3]  # noqa: E731
        return to_world(lo.astype(float)), to_world(hi.astype(float))


def nilearn_data_dir() -> Path:
    """Folder of nilearn's bundled data files, found without importing nilearn (which is slow)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise MaskgenError(
            "The demo dataset needs the MNI152 template shipped with nilearn, which is not installed: "
            "run `pip install 'nilearn>=0.10.3'`."
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    missing = [name for name in TEMPLATE_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise MaskgenError(
            f"nilearn is installed but its MNI152 template files are missing from {folder} ({', '.join(missing)}): "
            "reinstall it with `pip install --force-reinstall 'nilearn>=0.10.3'`."
        )
    return folder


@functools.lru_cache(maxsize=4)
def load_template(spacing: int = 2) -> Template:
    """Read the template and average-pool it to ``spacing`` mm (an integer factor of its 1 mm grid)."""
    import nibabel as nib
    from scipy import ndimage

    if not isinstance(spacing, (int, np.integer)) or not 1 <= spacing <= 8:
        raise ValueError(f"template spacing must be an integer number of mm in 1..8, got {spacing!r}")
    folder = nilearn_data_dir()
    maps, affine = {}, None
    for key, name in TEMPLATE_FILES.items():
        path = folder / name
        try:
            img = nib.load(path)
            maps[key] = np.asarray(img.dataobj, dtype=np.float32) / 255.0
        except Exception as e:  # truncated or unreadable file
            raise MaskgenError(f"cannot read the nilearn template file {path} ({e}): reinstall nilearn.") from e
        if affine is None:
            affine = img.affine
        elif not np.allclose(affine, img.affine) or maps[key].shape != maps["t1"].shape:
            raise MaskgenError(f"{path} is not on the grid of {folder / TEMPLATE_FILES['t1']}: reinstall nilearn.")
    if not np.allclose(np.abs(np.diag(affine)[:3]), 1.0) or not np.all(np.diag(affine)[:3] > 0):
        raise MaskgenError(f"{folder / TEMPLATE_FILES['t1']} is not a 1 mm RAS grid: unexpected nilearn version.")

    mask = ndimage.binary_fill_holes(maps["t1"] > MASK_THRESHOLD).astype(np.float32)
    gm = np.minimum(maps["gm"], 1.0) * mask
    wm = np.minimum(maps["wm"], 1.0 - gm) * mask
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    t1 = maps["t1"] * mask

    # Crop to the brain's bounding box plus one coarse voxel, pad to a multiple of `spacing`, average-pool.
    f = int(spacing)
    idx = np.argwhere(mask > 0)
    lo = np.maximum(idx.min(0) - f, 0)
    hi = idx.max(0) + f + 1
    n_out = -(-(hi - lo) // f)
    pooled = {}
    for key, arr in (("t1", t1), ("csf", csf), ("gm", gm), ("wm", wm), ("mask", mask)):
        block = np.zeros(tuple(n_out * f), dtype=np.float32)
        sub = arr[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        block[: sub.shape[0], : sub.shape[1], : sub.shape[2]] = sub
        pooled[key] = block.reshape(n_out[0], f, n_out[1], f, n_out[2], f).mean(axis=(1, 3, 5), dtype=np.float32)
    # coarse voxel i covers fine voxels lo + f*i .. lo + f*i + f-1: its centre is at lo + f*i + (f-1)/2
    scale = np.diag([f, f, f, 1.0])
    scale[:3, 3] = lo + (f - 1) / 2.0
    coarse_affine = affine @ scale

    dominant = np.argmax(np.stack([csf, gm, wm]), axis=0)
    inside = mask > 0
    means = tuple(float(t1[inside & (dominant == k)].mean()) for k in range(3))
    for arr in pooled.values():
        arr.setflags(write=False)  # shared through the cache: nobody may modify it
    return Template(
        t1=pooled["t1"],
        csf=pooled["csf"],
        gm=pooled["gm"],
        wm=pooled["wm"],
        mask=pooled["mask"],
        affine=coarse_affine,
        spacing=f,
        t1_tissue_means=means,
        source_dir=str(folder),
    )
