"""Issue 11.3: `maskgen extract --views K` stores K intensity-augmented views (image + its features) per train case."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from maskgen.cli import app
from maskgen.data.intensity_aug import augment_volume, view_params, view_seed
from maskgen.demo.synthetic import make_synthetic_dataset
from maskgen.extract.views import VIEW_PROB, VIEW_SEED
from maskgen.store.reader import FeatureStore

runner = CliRunner()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("data") / "syn", n_cases=3, size=24) / "pipeline.toml"


@pytest.fixture(scope="module")
def store(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("views") / "v.zarr"
    res = runner.invoke(app, ["extract", "--dataset", str(dataset), "--out", str(out), "--extractor", "mind",
                              "--views", "2"])
    assert res.exit_code == 0, res.output
    return out


def test_train_cases_hold_seeded_augmented_views_with_their_features(store, dataset):
    from maskgen.data.layouts import discover_cases
    from maskgen.data.pipeline import load_pipeline
    from maskgen.data.preprocess import preprocess_case
    from maskgen.extract.mind import MindSSC

    s = FeatureStore(store)
    assert s.view_count == 2 and s.attrs["views"]["count"] == 2 and s.attrs["views"]["prob"] == VIEW_PROB
    pipeline = load_pipeline(str(dataset))
    cases = {c.case_id: c for c in discover_cases(pipeline)}
    train = [c for c in s.cases() if c.split == "train"]
    assert train and all(c.num_views == 2 for c in train)
    assert all(c.num_views == 0 for c in s.cases() if c.split != "train")  # val/test images are never augmented
    for info in train:
        image = preprocess_case(cases[info.case_id], pipeline).image
        for k, rec in enumerate(info.views, start=1):
            assert rec["seed"] == view_seed(VIEW_SEED, info.case_id, k)
            params = view_params(rec["seed"], VIEW_PROB)
            assert rec["transforms"] == params.to_record() and rec["transforms"]
            crop = s.read_crop(info.case_id, (0, 0, 0), info.shape_zyx, view=k)
            expected = augment_volume(image, params)
            np.testing.assert_allclose(crop["image"], expected, atol=1e-3)  # float16 storage
            assert np.abs(expected - image).max() > 0.01                    # the view is not the clean image
            with torch.no_grad():
                feats = MindSSC()(torch.from_numpy(expected)[None])[0].numpy()
            scale = np.asarray(rec["feature_scale"])[:, None, None, None]
            assert np.abs(crop["features"] - feats).max() <= 0.51 * scale.max() + 1e-3  # int8 rounding
            assert np.abs(crop["features"] - s.read_crop(info.case_id, (0, 0, 0), info.shape_zyx)["features"]).max() > 0
            np.testing.assert_array_equal(crop["label"], s.read_crop(info.case_id, (0, 0, 0), info.shape_zyx)["label"])
    arrays = json.loads((store / "cases" / train[0].case_id / "zarr.json").read_text())["attributes"]["ome"]
    assert [m["name"] for m in arrays["multiscales"]][-4:] == ["image_view1", "features_view1", "image_view2",
                                                               "features_view2"]
    view_meta = json.loads((store / "cases" / train[0].case_id / "features_view1" / "zarr.json").read_text())
    clean_meta = json.loads((store / "cases" / train[0].case_id / "features" / "zarr.json").read_text())
    assert view_meta["chunk_grid"] == clean_meta["chunk_grid"] and view_meta["codecs"] == clean_meta["codecs"]
    with pytest.raises(Exception, match="has 2 augmented view"):
        s.read_crop(train[0].case_id, (0, 0, 0), (8, 8, 8), view=3)


def test_cache_info_lists_views_seeds_and_bytes_per_view(store):
    res = runner.invoke(app, ["cache", "info", str(store)])
    assert res.exit_code == 0, res.output
    s = FeatureStore(store)
    train = [c for c in s.cases() if c.split == "train"]
    assert f"views         2 per train case on {len(train)} case(s)" in res.output
    for info in train:
        assert f"view1 seed {info.views[0]['seed']} [{', '.join(info.views[0]['transforms'])}]" in res.output
    from maskgen.store.inspect import store_info

    si = store_info(store)
    # one view = a float16 image + int8 features (12 channels): ~14 bytes per voxel without codec
    assert 13.0 < si.view_bytes_per_voxel < 15.0 and si.bytes_per_view > 0
    assert "per view per case" in res.output
    verify = runner.invoke(app, ["cache", "verify", str(store)])
    assert verify.exit_code == 0, verify.output


def test_views_are_reproducible_and_a_store_keeps_its_view_count(store, dataset, tmp_path):
    again = tmp_path / "again.zarr"
    assert runner.invoke(app, ["extract", "--dataset", str(dataset), "--out", str(again), "--extractor", "mind",
                               "--views", "2"]).exit_code == 0
    a, b = FeatureStore(store), FeatureStore(again)
    for info in a.cases(split="train"):
        assert b.case(info.case_id).views == info.views
        np.testing.assert_array_equal(a.read_crop(info.case_id, (0, 0, 0), info.shape_zyx, view=2)["image"],
                                      b.read_crop(info.case_id, (0, 0, 0), info.shape_zyx, view=2)["image"])
    # a re-run without --views keeps the store's views (nothing to do); another count is refused, not mixed
    res = runner.invoke(app, ["extract", "--dataset", str(dataset), "--out", str(again), "--extractor", "mind"])
    assert res.exit_code == 0 and "0 case(s) written" in res.output
    res = runner.invoke(app, ["extract", "--dataset", str(dataset), "--out", str(again), "--extractor", "mind",
                              "--views", "1"])
    assert res.exit_code == 1 and "augmented views (--views)" in res.stderr and "--overwrite" in res.stderr
