"""Issue 11.3: training draws one stored view per crop (clean or augmented), reads its image and features, and adds
only the spatial augmentation; `--views` picks how many of the store's views are used."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from _helpers import tiny_train_config
from maskgen.cli import app
from maskgen.store.reader import FeatureStore
from maskgen.train.loop import train

runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from maskgen.demo.synthetic import make_synthetic_dataset
    from maskgen.extract.run import ExtractConfig, run_extract

    folder = tmp_path_factory.mktemp("views-store")
    data = make_synthetic_dataset(folder / "data", n_cases=4, size=32)
    out = folder / "v2.zarr"
    run_extract(ExtractConfig(dataset=str(data / "pipeline.toml"), out=str(out), extractor="mind", views=2),
                progress=False)
    return out


def _record(monkeypatch):
    """Record the view of every crop read and every call of the intensity transforms during training."""
    import maskgen.train.augment as augment

    seen = {"views": [], "intensity": 0}
    real_read = FeatureStore.read_crop

    def read_crop(self, case_id, start, size, dtype=np.float32, view=0):
        seen["views"].append(view)
        return real_read(self, case_id, start, size, dtype=dtype, view=view)

    real_intensity = augment.apply_intensity

    def apply_intensity(data, params, transforms=None):
        seen["intensity"] += 1
        return real_intensity(data, params, transforms)

    monkeypatch.setattr(FeatureStore, "read_crop", read_crop)
    monkeypatch.setattr(augment, "apply_intensity", apply_intensity)
    return seen


def test_training_reads_augmented_views_and_skips_the_intensity_transforms(store, tmp_path, monkeypatch):
    seen = _record(monkeypatch)
    run = train(tiny_train_config(store, tmp_path / "views", steps=6, batch_size=4, val_every=0, aug_prob=0.5),
                progress=False)
    assert json.loads((run / "config.json").read_text())["views"] == 2  # auto = every view of the store
    views = np.asarray(seen["views"])
    assert len(views) == 24 and {1, 2} <= set(views.tolist())
    # clean with the probability that no intensity transform fires: 0.5^7 < 1%
    assert (views == 0).mean() < 0.1
    assert seen["intensity"] == 0  # the view's image is used as stored: its features were made from it
    seen["views"].clear()
    run = train(tiny_train_config(store, tmp_path / "clean", steps=6, batch_size=4, val_every=0, aug_prob=0.5,
                                  views=0), progress=False)
    assert json.loads((run / "config.json").read_text())["views"] == 0
    assert set(seen["views"]) == {0} and seen["intensity"] > 0  # as before views existed


def test_a_crop_is_the_stored_view_under_the_spatial_transform_and_replays(store):
    from maskgen.train.augment import rescale_image
    from maskgen.train.loader import LoaderSpec, TrainBatches

    s = FeatureStore(store)
    cases = tuple(c.case_id for c in s.cases(split="train"))
    spec = LoaderSpec(case_ids=cases, crop_zyx=(16, 16, 16), batch_size=4, seed=7, fg_fraction=0.0, aug_prob=0.33,
                      allow_flips=True, spatial_on_cpu=True, read_features=True, volume_stats=True, views=2)
    batches = TrainBatches(s, spec, 0, 30)
    checked = {0: 0, 1: 0, 2: 0}
    for step in range(30):
        for slot in range(4):
            from maskgen.train.sampling import sample_rng

            sample = batches.sample(step, slot)
            view = sample["view"]
            assert not sample["params"].intensity.any
            if not sample["params"].spatial.identity:
                continue
            choice = batches.sampler.sample(sample_rng(7, step, slot))
            crop = s.read_crop(choice.case_id, choice.start_zyx, (16, 16, 16), view=view)
            expected = rescale_image({"image": torch.from_numpy(crop["image"])})["image"]
            torch.testing.assert_close(sample["image"], expected)
            torch.testing.assert_close(sample["features"], torch.from_numpy(crop["features"]))
            checked[view] += 1
    assert min(checked.values()) > 0, checked  # clean and both augmented views were seen unchanged
    again = TrainBatches(FeatureStore(store), spec, 0, 30)
    a, b = batches.batch(5), again.batch(5)
    assert torch.equal(a["views"], b["views"]) and torch.equal(a["image"], b["image"])
    assert torch.equal(a["features"], b["features"]) and torch.equal(a["mean"], b["mean"])
    info = s.case(a["case_ids"][0])
    v = int(a["views"][0])
    np.testing.assert_allclose(a["mean"][0].numpy(), np.asarray(info.view_stats(v)[0], dtype=np.float32))


def test_views_option_is_checked_against_the_store_and_the_inputs(store, tmp_path):
    base = ["train", "--features", str(store), "--steps", "1", "--channels", "4", "--depth", "2", "--quiet",
            "--val-every", "0"]
    res = runner.invoke(app, base + ["--views", "3", "--out", str(tmp_path / "a")])
    assert res.exit_code == 1 and "--views 3 asks for more augmented views than" in res.stderr
    assert "(2 per train case)" in res.stderr and "maskgen extract --views 3 --overwrite" in res.stderr
    res = runner.invoke(app, base + ["--views", "2", "--inputs", "image", "--out", str(tmp_path / "b")])
    assert res.exit_code == 1 and "--views 2 cannot be used with --inputs image" in res.stderr
    res = runner.invoke(app, base + ["--views", "two", "--out", str(tmp_path / "c")])
    assert res.exit_code == 1 and "--views 'two'" in res.stderr
    res = runner.invoke(app, base + ["--views", "1", "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output  # fewer views than the store holds
    assert json.loads((tmp_path / "d" / "config.json").read_text())["views"] == 1
    res = runner.invoke(app, base + ["--inputs", "image", "--out", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output  # auto: ERM keeps the per-crop intensity augmentation
    assert json.loads((tmp_path / "e" / "config.json").read_text())["views"] == 0
