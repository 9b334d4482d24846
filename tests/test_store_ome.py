"""Each case group is an OME-Zarr (NGFF 0.5) image: validated with the `ome-zarr-models` package's own reader."""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import synthetic_store
from maskgen.store.reader import FeatureStore

ome_v05 = pytest.importorskip("ome_zarr_models.v05")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.getbasetemp() / "train-tiny-store")  # shared with test_train_*.py


def test_case_groups_are_valid_ome_zarr_images_placed_in_space(store):
    import zarr

    s = FeatureStore(store)
    for info in s.cases():
        group = zarr.open_group(str(store / "cases" / info.case_id), mode="r")
        image = ome_v05.Image.from_zarr(group)  # raises if the metadata or the arrays do not match NGFF 0.5
        multiscales = {m.name: m for m in image.ome_attributes.multiscales}
        assert set(multiscales) == {"image", "features", "label"}
        affine = np.asarray(info.geometry["resampled_affine"])
        spacing_zyx = np.linalg.norm(affine[:3, :3], axis=0)[::-1]
        origin_zyx = affine[:3, 3][::-1]
        for name, ms in multiscales.items():
            axes = [(a.name, a.type, a.unit) for a in ms.axes]
            space = [("z", "space", "millimeter"), ("y", "space", "millimeter"), ("x", "space", "millimeter")]
            assert axes == ([("c", "channel", None)] if name != "label" else []) + space
            (dataset,) = ms.datasets
            assert dataset.path == name
            scale, translation = dataset.coordinateTransformations
            lead = 0 if name == "label" else 1
            np.testing.assert_allclose(scale.scale[lead:], spacing_zyx)
            np.testing.assert_allclose(translation.translation[lead:], origin_zyx)
            assert len(scale.scale) == group[name].ndim
        # the world position of a voxel, as a viewer computes it, is the NIfTI affine's
        z, y, x = 3, 5, 7
        world = np.asarray(translation.translation) + np.asarray(scale.scale) * np.array([z, y, x])
        np.testing.assert_allclose(world[::-1], (affine @ np.array([x, y, z, 1.0]))[:3], atol=1e-6)
