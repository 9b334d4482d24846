"""OME-Zarr (NGFF 0.5) metadata of a case group, so viewers (napari, neuroglancer) place its arrays in space.

Each case group carries `attributes["ome"]` with one multiscale per array (image, features, label; one resolution
level each): axes c (channel) and z, y, x (space, millimetre), and per dataset a `scale` (voxel spacing) and a
`translation` (world position of voxel 0, from the resampled RAS affine). Coordinates are world RAS millimetres in
(z, y, x) order, as the arrays are stored.
"""

from __future__ import annotations

from typing import Any

import numpy as np

NGFF_VERSION = "0.5"
SPACE_UNIT = "millimeter"


def spatial_transform(spacing_zyx: Any, geometry: dict[str, Any] | None) -> tuple[list[float], list[float]]:
    """(scale_zyx, translation_zyx) in mm: the resampled affine's axis lengths and origin, else `spacing_zyx` and 0."""
    affine = (geometry or {}).get("resampled_affine")
    if affine is not None:
        a = np.asarray(affine, dtype=np.float64)
        scale_xyz = np.linalg.norm(a[:3, :3], axis=0)
        return [float(s) for s in scale_xyz[::-1]], [float(t) for t in a[:3, 3][::-1]]
    return [float(s) for s in spacing_zyx], [0.0, 0.0, 0.0]


def _axes(with_channel: bool) -> list[dict[str, str]]:
    space = [{"name": n, "type": "space", "unit": SPACE_UNIT} for n in ("z", "y", "x")]
    return ([{"name": "c", "type": "channel"}] if with_channel else []) + space


def _multiscale(name: str, with_channel: bool, scale: list[float], translation: list[float]) -> dict[str, Any]:
    lead = [1.0] if with_channel else []
    lead0 = [0.0] if with_channel else []
    return {
        "name": name,
        "axes": _axes(with_channel),
        "datasets": [{
            "path": name,
            "coordinateTransformations": [
                {"type": "scale", "scale": lead + scale},
                {"type": "translation", "translation": lead0 + translation},
            ],
        }],
    }


def case_ome_attrs(names: list[str], spacing_zyx: Any, geometry: dict[str, Any] | None) -> dict[str, Any]:
    """The `ome` attribute of a case group holding arrays `names` (image and features: c,z,y,x; label: z,y,x)."""
    scale, translation = spatial_transform(spacing_zyx, geometry)
    return {
        "version": NGFF_VERSION,
        "multiscales": [_multiscale(n, n != "label", scale, translation) for n in names],
    }
