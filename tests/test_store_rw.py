"""Writer and reader of the feature store, on small in-memory volumes (no extractor)."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import shutil

import numpy as np
import pytest

from maskgen.data.pipeline import Pipeline
from maskgen.errors import MaskgenError
from maskgen.store import meta, writer
from maskgen.store.layout import StoreLayout
from maskgen.store.reader import FeatureStore
from maskgen.store.tensorstore_backend import tensorstore_available

PIPE = Pipeline(name="toy", layout="nnunet", spacing=(1.0, 1.0, 2.0), crop_size=(16, 16, 8), normalization="minmax",
                classes=("a", "b"))
FP = {"name": "toy", "layer": "final", "weights_sha256": None, "out_channels": 3, "arch": {}}


def _case(seed: int, shape=(10, 13, 17), channels=3):
    rng = np.random.default_rng(seed)
    image = rng.random((1, *shape)).astype(np.float32)
    feats = (rng.normal(size=(channels, *shape)) * np.array([1, 5, 0.1])[:, None, None, None]).astype(np.float32)
    label = rng.integers(0, 3, size=shape).astype(np.uint8)
    return image, feats, label


def _make(path, layout=StoreLayout(dtype="float16"), cases=("c0", "c1", "c2"), consolidate=True, shape=(10, 13, 17)):
    writer.prepare_store(path, writer.root_attributes(PIPE, FP, layout))
    data = {}
    for i, cid in enumerate(cases):
        image, feats, label = _case(i, shape)
        writer.write_case(path, cid, image=image, features=feats, label=label, layout=layout,
                          attrs={"domain": "d0" if i % 2 == 0 else "d1", "split": "train" if i < 2 else "test",
                                 "spacing_zyx": [2.0, 1.0, 1.0]})
        data[cid] = (image, feats, label)
    if consolidate:
        writer.consolidate(path)
    return data


@pytest.fixture(params=["zarr", "tensorstore"])
def backend(request):
    if request.param == "tensorstore" and not tensorstore_available():
        pytest.skip("tensorstore is not installed (optional)")
    return request.param


@pytest.fixture(scope="module")
def store16(tmp_path_factory):
    path = tmp_path_factory.mktemp("s") / "f16.zarr"
    return path, _make(path, StoreLayout(dtype="float16", chunks_zyx=(4, 8, 8)))


def test_cases_metadata_and_root(store16):
    path, data = store16
    s = FeatureStore(path)
    assert [c.case_id for c in s.cases()] == ["c0", "c1", "c2"]
    assert s.used_consolidated
    assert [c.case_id for c in s.cases(split="train")] == ["c0", "c1"]
    assert [c.case_id for c in s.cases(domain="d1")] == ["c1"]
    assert [c.case_id for c in s.cases(split="test", domain="d0")] == ["c2"]
    info = s.case("c1")
    assert info.shape_zyx == (10, 13, 17) and info.spacing_zyx == (2.0, 1.0, 1.0)
    feats = data["c1"][1]
    np.testing.assert_allclose(info.feature_mean, feats.reshape(3, -1).mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(info.feature_std, feats.reshape(3, -1).std(1), rtol=1e-5)
    assert s.num_features == 3 and s.num_classes == 3
    assert s.pipeline == PIPE
    assert s.spacing_zyx == (2.0, 1.0, 1.0) and s.attrs["normalization"] == "minmax"
    assert s.attrs["layout"]["chunks_zyx"] == [4, 8, 8]
    with pytest.raises(MaskgenError, match="nope"):
        s.case("nope")


def test_read_case_matches_written(store16, backend):
    path, data = store16
    s = FeatureStore(path, backend=backend)
    image, feats, label = data["c2"]
    got = s.read_case("c2")
    assert got["features"].dtype == np.float32 and got["image"].dtype == np.float32 and got["label"].dtype == np.uint8
    np.testing.assert_array_equal(got["features"], feats.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(got["image"], image.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(got["label"], label)


@pytest.mark.parametrize(
    "start, size",
    [((0, 0, 0), (10, 13, 17)), ((2, 3, 5), (4, 8, 8)), ((-3, 5, 10), (8, 8, 12)), ((7, -4, -2), (6, 20, 21)),
     ((20, 0, 0), (4, 4, 4)), ((-5, -5, -5), (3, 3, 3))],
)
def test_read_crop_zero_pads_outside(store16, start, size, backend):
    path, data = store16
    s = FeatureStore(path, backend=backend)
    image, feats, label = data["c0"]
    pad = 25
    ref_f = np.pad(feats.astype(np.float16).astype(np.float32), ((0, 0),) + ((pad, pad),) * 3)
    ref_l = np.pad(label, ((pad, pad),) * 3)
    sl = tuple(slice(a + pad, a + pad + b) for a, b in zip(start, size))
    got = s.read_crop("c0", start, size)
    assert got["features"].shape == (3, *size) and got["image"].shape == (1, *size) and got["label"].shape == size
    np.testing.assert_array_equal(got["features"], ref_f[(slice(None),) + sl])
    np.testing.assert_array_equal(got["label"], ref_l[sl])
    half = s.read_crop("c0", start, size, dtype=np.float16)
    assert half["features"].dtype == np.float16
    np.testing.assert_array_equal(half["features"].astype(np.float32), got["features"])


def test_read_crop_reads_only_the_chunks_it_touches(store16, monkeypatch):
    import zarr.storage

    path, _ = store16
    s = FeatureStore(path, backend="zarr")
    s.read_crop("c0", (0, 0, 0), (1, 1, 1))  # metadata opened
    chunks = s.array("c0", "features").chunks
    assert chunks == (3, 4, 7, 6)  # (4, 8, 8) balanced over (10, 13, 17)
    keys = []
    original = zarr.storage.LocalStore.get

    async def recording(self, key, *args, **kwargs):
        keys.append(key)
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", recording)
    s.read_crop("c0", (4, 7, 6), (4, 7, 6))  # exactly chunk (1, 1, 1)
    assert sorted(k for k in keys if "/features/" in k) == ["cases/c0/features/c/0/1/1/1"]
    keys.clear()
    s.read_crop("c0", (3, 6, 5), (2, 2, 2))  # straddles one corner: 8 chunks
    assert len([k for k in keys if "/features/" in k]) == 8
    keys.clear()
    s.read_crop("c0", (-4, 0, 0), (2, 2, 2))  # fully outside: nothing read
    assert keys == []


def test_int8_store_dequantises(tmp_path, backend):
    path = tmp_path / "i8.zarr"
    data = _make(path, StoreLayout(dtype="int8"), cases=("c0",))
    s = FeatureStore(path, backend=backend)
    info = s.case("c0")
    assert info.feature_scale is not None and len(info.feature_scale) == 3
    assert str(s.array("c0", "features").dtype) == "int8"
    feats = data["c0"][1]
    got = s.read_case("c0")["features"]
    assert np.all(np.abs(got - feats).reshape(3, -1).max(1) <= np.asarray(info.feature_scale) / 2 + 1e-6)
    crop = s.read_crop("c0", (-2, 0, 0), (6, 6, 6))["features"]
    np.testing.assert_array_equal(crop[:, 2:], got[:, :4, :6, :6])
    assert not crop[:, :2].any()


def test_incomplete_cases_are_ignored(tmp_path):
    path = tmp_path / "s.zarr"
    _make(path, cases=("c0", "c1"))
    assert FeatureStore(path).used_consolidated
    # A new run first drops the consolidated copy, then (here) gets killed while rewriting c1.
    writer.prepare_store(path, writer.root_attributes(PIPE, FP, StoreLayout(dtype="float16")))
    meta_file = path / "cases" / "c1" / "zarr.json"
    doc = json.loads(meta_file.read_text())
    doc["attributes"]["complete"] = False
    meta_file.write_text(json.dumps(doc))
    assert meta.case_state(path, "c1") == "incomplete"
    s = FeatureStore(path)
    assert [c.case_id for c in s.cases()] == ["c0"] and not s.used_consolidated
    assert "c1" in s.case_folders() and "c1" not in s
    # a case folder without metadata (killed right after mkdir) and one with a damaged zarr.json are ignored too
    (path / "cases" / "c9").mkdir()
    meta_file.write_text("{trunc")
    assert [c.case_id for c in FeatureStore(path).cases()] == ["c0"]
    assert meta.case_state(path, "c1") == "incomplete"


def test_consolidated_metadata_stale_when_folders_change(tmp_path):
    path = tmp_path / "s.zarr"
    _make(path, cases=("c0", "c1"))
    assert FeatureStore(path).used_consolidated
    shutil.rmtree(path / "cases" / "c1")  # removed behind maskgen's back
    s = FeatureStore(path)
    assert [c.case_id for c in s.cases()] == ["c0"] and not s.used_consolidated
    s.read_case("c0")


def test_non_finite_features_write_nothing(tmp_path):
    path = tmp_path / "s.zarr"
    _make(path, cases=("c0",))
    image, feats, label = _case(5)
    feats[1, 2, 3, 4] = np.nan
    with pytest.raises(MaskgenError, match=r"case bad: 1 non-finite .* channel\(s\) \[1\]"):
        writer.write_case(path, "bad", image=image, features=feats, label=label, attrs={}, layout=StoreLayout(dtype="float16"))
    assert meta.case_state(path, "bad") == "absent"


def test_write_error_leaves_no_partial_group(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "s.zarr"
    _make(path, cases=("c0",))
    original = writer._write_slabs
    calls = {"n": 0}

    def full_disk(arr, data, *args):
        calls["n"] += 1
        if calls["n"] == 2:  # the features array, after the image was written
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(arr, data, *args)

    monkeypatch.setattr(writer, "_write_slabs", full_disk)
    image, feats, label = _case(1)
    with pytest.raises(OSError):
        writer.write_case(path, "c1", image=image, features=feats, label=label, attrs={}, layout=StoreLayout(dtype="float16"))
    assert meta.case_state(path, "c1") == "absent"
    assert [c.case_id for c in FeatureStore(path).cases()] == ["c0"]


def test_backend_choice(tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"
    _make(path, cases=("c0",))
    monkeypatch.delenv("MASKGEN_STORE_BACKEND", raising=False)
    # the default, chosen by measurement (benchmarks/read_path.py): tensorstore when it is installed
    assert FeatureStore(path).backend == ("tensorstore" if tensorstore_available() else "zarr")
    assert FeatureStore(path, backend="zarr").backend == "zarr"
    monkeypatch.setenv("MASKGEN_STORE_BACKEND", "zarr")
    assert FeatureStore(path).backend == "zarr"
    with pytest.raises(MaskgenError, match="'hdf5'"):
        FeatureStore(path, backend="hdf5")


def test_case_ids_must_be_group_names(tmp_path):
    for bad in ("a/b", ".hidden", "__x", ""):
        with pytest.raises(MaskgenError, match="case id"):
            meta.check_case_id(bad)


def test_prepare_store_refuses_other_settings_and_foreign_folders(tmp_path):
    path = tmp_path / "s.zarr"
    _make(path, cases=("c0",))
    other = Pipeline(name="toy", layout="nnunet", spacing=(1.0, 1.0, 1.0), crop_size=(16, 16, 8),
                     normalization="ct", classes=("a", "b"))
    attrs = writer.root_attributes(other, {**FP, "weights_sha256": "abc", "layer": "penultimate"},
                                   StoreLayout(dtype="int8"))
    from maskgen.extract.registry import identity_problems  # the extractor rule comes from the registry

    with pytest.raises(MaskgenError) as info:
        writer.prepare_store(path, attrs, extractor_problems=identity_problems)
    msg = str(info.value)
    for needle in ("spacing", "normalisation", "feature layer", "weights (sha256)", "feature dtype", "--overwrite"):
        assert needle in msg, msg
    assert meta.case_state(path, "c0") == "complete"  # untouched
    writer.prepare_store(path, attrs, overwrite=True)
    assert meta.case_state(path, "c0") == "absent"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(MaskgenError, match="not a maskgen feature store"):
        writer.prepare_store(foreign, attrs, overwrite=True)
    assert (foreign / "notes.txt").exists()
    with pytest.raises(MaskgenError, match="not a maskgen feature store"):
        FeatureStore(foreign)
    with pytest.raises(MaskgenError, match="does not exist"):
        FeatureStore(tmp_path / "missing.zarr")


def test_pickled_store_reads_in_another_process(store16, backend):
    path, data = store16
    s = FeatureStore(path, backend=backend)
    s.read_case("c0")  # open handles before pickling
    clone = pickle.loads(pickle.dumps(s))
    assert clone._reader is None and clone._zarr is None and clone.io._store is None and clone.backend == backend
    np.testing.assert_array_equal(clone.read_crop("c1", (0, 0, 0), (4, 4, 4))["label"], data["c1"][2][:4, :4, :4])


_FORKED = {}


def _forked_read(queue):
    import warnings

    s = _FORKED["store"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        feats = s.read_crop("c1", (1, 2, 3), (4, 4, 4))["features"].tolist()
    queue.put((feats, [str(w.message) for w in caught]))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_store_used_before_fork_reads_in_the_child(store16, backend):
    """DataLoader workers started with fork inherit the store object, handles included: it must reopen them."""
    path, data = store16
    s = FeatureStore(path, backend=backend)
    expect = s.read_crop("c1", (1, 2, 3), (4, 4, 4))["features"]
    _FORKED["store"] = s
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_forked_read, args=(queue,))
    proc.start()
    try:
        got, messages = queue.get(timeout=60)
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
    _FORKED.clear()
    np.testing.assert_array_equal(np.asarray(got, dtype=np.float32), expect)
    if backend == "tensorstore":  # tensorstore is not fork-safe: the child falls back to zarr-python, saying why
        assert any("forked after tensorstore was used" in m for m in messages), messages


def _fg_worker(args):
    path, case_id = args
    locs = FeatureStore(path).foreground_locations(case_id, max_per_class=50, seed=3)
    return {k: v.tolist() for k, v in locs.items()}


def test_foreground_locations_sampled_once_and_cached_atomically(tmp_path):
    path = tmp_path / "s.zarr"
    data = _make(path, cases=("c0",))
    label = data["c0"][2]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:  # two DataLoader-like workers racing on the same cache file
        results = pool.map(_fg_worker, [(str(path), "c0")] * 4)
    assert all(r == results[0] for r in results)
    cache = path / meta.fg_key("c0")
    assert cache.is_file() and [p.name for p in cache.parent.iterdir()] == ["c0.npz"]  # no temporary files left
    s = FeatureStore(path)
    locs = s.foreground_locations("c0", max_per_class=50, seed=3)
    assert set(locs) == {1, 2}
    for k, pts in locs.items():
        assert pts.shape == (50, 3) and pts.dtype == np.int32
        assert len({tuple(p) for p in pts}) == 50
        assert np.all(label[tuple(pts.T)] == k)
        assert pts.tolist() == results[0][k]
    # all voxels when the class is small; another seed re-samples and rewrites the cache
    every = s.foreground_locations("c0", max_per_class=10**6, seed=3)
    assert len(every[1]) == int((label == 1).sum())
    assert s.foreground_locations("c0", max_per_class=50, seed=4)[1].tolist() != locs[1].tolist()
    # re-writing the case drops its cached locations
    image, feats, lab = _case(7)
    writer.write_case(path, "c0", image=image, features=feats, label=lab, attrs={}, layout=StoreLayout(dtype="float16"))
    assert not cache.exists()


@pytest.mark.parametrize("bad", ["zarr.json", "ZARR.JSON", "Zarr.Json", ".zattrs", ".maskgen"])
def test_reserved_case_ids_are_refused_by_the_writer(tmp_path, bad):
    path = tmp_path / "s.zarr"
    writer.prepare_store(path, writer.root_attributes(PIPE, FP, StoreLayout(dtype="float16")))
    image, feats, label = _case(0)
    with pytest.raises(MaskgenError, match="rename the case file"):
        writer.write_case(path, bad, image=image, features=feats, label=label, attrs={}, layout=StoreLayout(dtype="float16"))
    assert sorted(p.name for p in (path / "cases").iterdir()) == ["zarr.json"]  # nothing written


def test_verify_refuses_a_case_named_like_the_store_metadata(tmp_path):
    """`maskgen verify` (the data stage's check) refuses a case id that would overwrite the store's zarr.json."""
    from typer.testing import CliRunner

    from maskgen.cli import app
    from maskgen.demo.synthetic import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "syn", n_cases=3, size=16)
    old = "sub-000_a"
    (root / "imagesTr" / f"{old}_0000.nii.gz").rename(root / "imagesTr" / "zarr.json_0000.nii.gz")
    (root / "labelsTr" / f"{old}.nii.gz").rename(root / "labelsTr" / "zarr.json.nii.gz")
    csv = root / "domains.csv"
    csv.write_text(csv.read_text().replace(f"{old},", "zarr.json,"))
    result = CliRunner().invoke(app, ["verify", "--dataset", str(root / "pipeline.toml")])
    assert result.exit_code == 1, result.output
    assert "'zarr.json' is a name the feature store uses itself" in " ".join(result.output.split())


def test_case_is_not_marked_complete_unless_every_array_reads_back(tmp_path, monkeypatch):
    """The completion marker comes after a read-back: a chunk deleted behind the writer's back (another process
    rewriting the case) leaves the case absent, never complete without its data."""
    path = tmp_path / "s.zarr"
    _make(path, cases=("c0",))
    real = writer.write_arrays

    def then_lose_a_chunk(group, *args, **kwargs):
        real(group, *args, **kwargs)
        victim = sorted((path / "cases" / "c1" / "image" / "c").rglob("*"))[-1]
        victim.unlink()

    monkeypatch.setattr(writer, "write_arrays", then_lose_a_chunk)
    image, feats, label = _case(1)
    with pytest.raises(MaskgenError, match=r"case c1: the image array has \d+ of \d+ chunks after writing"):
        writer.write_case(path, "c1", image=image, features=feats, label=label, attrs={}, layout=StoreLayout(dtype="float16"))
    assert meta.case_state(path, "c1") == "absent"


@pytest.mark.parametrize("stored", ["int8", "float16"])
@pytest.mark.parametrize("out_dtype", [np.float32, np.float16])
def test_dequantize_into_equals_dequantize_in_one_pass(stored, out_dtype):
    """The reader's conversion into preallocated (here strided) outputs gives exactly what `dequantize` gives."""
    from maskgen.store.layout import dequantize, dequantize_into

    rng = np.random.default_rng(0)
    scale = np.array([0.5, 0.01, 3.0], np.float32) if stored == "int8" else None
    arr = (rng.integers(-127, 128, (3, 5, 6, 7)) if stored == "int8" else rng.normal(size=(3, 5, 6, 7)) * 100)
    arr = arr.astype(stored)
    out = np.full((3, 9, 6, 7), np.nan, dtype=out_dtype)
    dequantize_into(arr, out[:, 2:7], scale)
    np.testing.assert_array_equal(out[:, 2:7], dequantize(arr, scale, out_dtype))
    assert np.isnan(out[:, :2]).all() and np.isnan(out[:, 7:]).all()  # nothing written outside the view
