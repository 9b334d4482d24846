"""Crop sampling and the training batch stream (in-memory fake store with the FeatureStore methods)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from maskgen.errors import MaskgenError
from maskgen.train.loader import LoaderSpec, TrainBatches, choose_train_cases, make_loader
from maskgen.train.sampling import CropSampler, sample_rng, start_range


@dataclass(frozen=True)
class _Info:
    case_id: str
    split: str
    shape_zyx: tuple
    feature_mean: tuple
    feature_std: tuple
    domain: str = "d"
    has_label: bool = True


class FakeStore:
    """The FeatureStore methods training uses, over arrays in memory; records what was read."""

    def __init__(self, cases: dict):
        self.arrays = cases  # case_id -> (split, image (1,Z,Y,X), features (C,Z,Y,X), label (Z,Y,X))
        self.crops: list = []
        self.whole_reads = 0

    def cases(self, split=None, domain=None):
        out = [_Info(cid, s, tuple(lab.shape), tuple([0.0] * f.shape[0]), tuple([1.0] * f.shape[0]))
               for cid, (s, img, f, lab) in sorted(self.arrays.items())]
        return [c for c in out if split is None or c.split == split]

    def read_case(self, case_id):
        self.whole_reads += 1
        _, img, f, lab = self.arrays[case_id]
        return {"image": img, "features": f, "label": lab}

    def read_crop(self, case_id, start_zyx, size_zyx, dtype=np.float32):
        self.crops.append((case_id, tuple(int(s) for s in start_zyx), tuple(size_zyx)))
        _, img, f, lab = self.arrays[case_id]
        out = {}
        for name, arr, lead in (("image", img, 1), ("features", f, 1), ("label", lab, 0)):
            shape = arr.shape[:lead] + tuple(size_zyx)
            res = np.zeros(shape, arr.dtype)
            src, dst = [], []
            for s, n, size in zip(start_zyx, arr.shape[lead:], size_zyx):
                lo, hi = max(s, 0), min(s + size, n)
                src.append(slice(lo, max(lo, hi)))
                dst.append(slice(lo - s, lo - s + max(0, hi - lo)))
            res[(slice(None),) * lead + tuple(dst)] = arr[(slice(None),) * lead + tuple(src)]
            out[name] = res.astype(dtype) if name != "label" else res
        return out

    def foreground_locations(self, case_id, max_per_class=10000, seed=0):
        lab = self.arrays[case_id][3]
        return {k: np.argwhere(lab == k).astype(np.int32) for k in (1, 2)}


def _store(n_train=3, shape=(20, 24, 28)) -> FakeStore:
    rng = np.random.default_rng(0)
    cases = {}
    for i in range(n_train + 2):
        lab = np.zeros(shape, np.uint8)
        lab[3:6, 4:7, 20:23] = 1               # a small class-1 blob
        lab[min(15 + i % 3, shape[0] - 1), 18, 5] = 2  # a single class-2 voxel
        img = rng.random((1, *shape)).astype(np.float32)
        feats = rng.standard_normal((2, *shape)).astype(np.float32)
        split = "train" if i < n_train else ("val" if i == n_train else "test")
        cases[f"c{i}"] = (split, img, feats, lab)
    return FakeStore(cases)


def _spec(store, **kw) -> LoaderSpec:
    base = dict(case_ids=tuple(c.case_id for c in store.cases(split="train")), crop_zyx=(8, 8, 8), batch_size=3,
                seed=11, fg_fraction=1 / 3, aug_prob=0.33, allow_flips=True, spatial_on_cpu=True,
                read_features=True, volume_stats=False)
    base.update(kw)
    return LoaderSpec(**base)


def test_start_range():
    assert start_range(20, 8) == (0, 12)
    assert start_range(6, 8) == (-2, 0)


def test_foreground_crops_are_centred_on_a_present_class():
    store = _store()
    sampler = CropSampler(store, ["c0", "c1"], (8, 8, 8), fg_fraction=1.0)
    classes = []
    for s in range(300):
        choice = sampler.sample(np.random.default_rng(s))
        crop = store.read_crop(choice.case_id, choice.start_zyx, (8, 8, 8))
        assert choice.foreground_class in (1, 2)
        assert (crop["label"] == choice.foreground_class).any()
        if choice.foreground_class == 2:  # single voxel away from the borders: exactly at the crop centre
            assert crop["label"][4, 4, 4] == 2
        classes.append(choice.foreground_class)
    assert 0.4 < np.mean(np.array(classes) == 2) < 0.6  # a class is chosen uniformly, not by voxel count


def test_foreground_fraction_and_uniform_crops():
    store = _store()
    sampler = CropSampler(store, ["c0", "c1", "c2"], (8, 8, 8), fg_fraction=1 / 3)
    picks = [sampler.sample(sample_rng(0, s, 0)) for s in range(900)]
    assert abs(np.mean([p.foreground_class > 0 for p in picks]) - 1 / 3) < 0.06
    uniform = [p for p in picks if p.foreground_class == 0]
    starts = np.array([p.start_zyx for p in uniform])
    assert starts.min() >= 0 and (starts.max(0) <= np.array([12, 16, 20])).all()
    assert len({p.case_id for p in picks}) == 3
    small = CropSampler(_store(shape=(6, 24, 28)), ["c0"], (8, 8, 8), fg_fraction=0.0)
    zs = {small.sample(np.random.default_rng(s)).start_zyx[0] for s in range(100)}
    assert zs == {-2, -1, 0}  # a crop larger than the volume covers it at a random offset


def test_batches_read_crops_of_train_cases_only_and_replay():
    store = _store()
    ds = TrainBatches(store, _spec(store), 0, 5)
    batches = list(ds)
    assert [b["step"] for b in batches] == [0, 1, 2, 3, 4]
    b = batches[0]
    assert b["image"].shape == (3, 1, 8, 8, 8) and b["features"].shape == (3, 2, 8, 8, 8)
    assert b["label"].shape == (3, 1, 8, 8, 8) and b["label"].dtype == torch.uint8
    assert b["image"].dtype == torch.float32 and 0 <= b["image"].min() and b["image"].max() <= 1
    assert store.whole_reads == 0 and {c[0] for c in store.crops} <= {"c0", "c1", "c2"}
    assert all(c[2] == (8, 8, 8) for c in store.crops)
    again = TrainBatches(_store(), _spec(store), 3, 5)  # a resumed stream starts at step 3
    for x, y in zip(list(again), batches[3:]):
        for k in ("image", "features", "label"):
            assert torch.equal(x[k], y[k])
        assert x["case_ids"] == y["case_ids"]
    other_seed = next(iter(TrainBatches(_store(), _spec(store, seed=12), 0, 1)))
    assert not torch.equal(other_seed["image"], batches[0]["image"])


def test_worker_processes_give_the_same_batches_in_order():
    store = _store()
    spec = _spec(store)
    serial = list(make_loader(store, spec, 0, 4, num_workers=0, pin_memory=False))
    parallel = list(make_loader(store, spec, 0, 4, num_workers=2, pin_memory=False))
    assert [b["step"] for b in parallel] == [0, 1, 2, 3]
    for x, y in zip(serial, parallel):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["features"], y["features"])


def test_device_path_batches_carry_spatial_params_and_float16_features():
    store = _store()
    b = next(iter(TrainBatches(store, _spec(store, spatial_on_cpu=False, volume_stats=True), 0, 1)))
    assert b["features"].dtype == torch.float16
    assert set(b["spatial"]) == {"flip", "rot90", "resample", "matrix"} and b["spatial"]["matrix"].shape == (3, 4, 4)
    assert b["mean"].shape == (3, 2) and b["std"].shape == (3, 2)
    no_feats = next(iter(TrainBatches(store, _spec(store, read_features=False), 0, 1)))
    assert "features" not in no_feats


def test_choose_train_cases():
    ids = [f"c{i}" for i in range(10)]
    a = choose_train_cases(ids, 3, seed=0)
    assert a == choose_train_cases(list(reversed(ids)), 3, seed=0) and len(a) == 3 and list(a) == sorted(a)
    assert a != choose_train_cases(ids, 3, seed=1) or a != choose_train_cases(ids, 3, seed=2)
    assert choose_train_cases(ids, None, 0) == tuple(ids)
    with pytest.raises(MaskgenError, match="--n-train 11"):
        choose_train_cases(ids, 11, 0)


def test_work_splits_by_rank_then_worker():
    """Data-parallel ranks train on disjoint slots of each step's global batch: the batches of ranks 0 and 1 of
    world size 2 are, together, the batch of one process with twice the batch size."""
    from maskgen.train.loader import rank_slots, worker_steps

    assert list(worker_steps(3, 10, 1, 3)) == [4, 7] and list(rank_slots(2, 4)) == [8, 9, 10, 11]
    store = _store()
    whole = next(iter(TrainBatches(store, _spec(store, batch_size=4), 2, 3)))
    parts = [next(iter(TrainBatches(store, _spec(store, batch_size=2, rank=r, world_size=2), 2, 3))) for r in (0, 1)]
    for key in ("image", "features", "label"):
        assert torch.equal(torch.cat([p[key] for p in parts]), whole[key])
    assert parts[0]["case_ids"] + parts[1]["case_ids"] == whole["case_ids"]
    assert not torch.equal(parts[0]["image"], parts[1]["image"])
    with pytest.raises(ValueError, match="rank 2"):
        _spec(store, rank=2, world_size=2)
