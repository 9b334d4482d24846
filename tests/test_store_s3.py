"""Stores on S3 (issue 13.2), against a real S3 server (moto) on 127.0.0.1 (`s3_server` in conftest.py): the store
API on S3 (conditional create, listings, sizes), `maskgen extract --out s3://...` killed mid-run and resumed while a
second writer is refused, `cache info|verify`, training (with a forked loader worker), evaluate, predict and sweep
from the URL, the tensorstore `s3` driver, the local chunk cache and credentials from the environment only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from _s3 import s3fs_filesystem
from maskgen.cli import app
from maskgen.demo.synthetic import make_synthetic_dataset
from maskgen.errors import MaskgenError
from maskgen.extract.run import ExtractConfig, run_extract
from maskgen.store import meta
from maskgen.store.chunk_cache import CacheSettings
from maskgen.store.kv import StoreIO
from maskgen.store.lock import LOCK_KEY, WriterLock
from maskgen.store.reader import FeatureStore

runner = CliRunner()
TINY = ["--steps", "2", "--batch-size", "2", "--channels", "4", "--depth", "2", "--crop-size", "16,16,16",
        "--val-every", "0", "--device", "cpu", "--quiet"]


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Synthetic data (3 subjects, 24^3: train, val, test cases) and its `mind` store on the local disk."""
    root = tmp_path_factory.mktemp("s3data")
    toml = make_synthetic_dataset(root / "syn", n_cases=3, size=24) / "pipeline.toml"
    ref = root / "ref.zarr"
    run_extract(ExtractConfig(dataset=str(toml), out=str(ref), extractor="mind"), progress=False)
    return toml, ref


def _upload(local: Path, url: str) -> str:
    s3fs_filesystem().put(str(local), url.removeprefix("s3://"), recursive=True)
    return url


def _same_cases(a: FeatureStore, b: FeatureStore) -> None:
    assert [c.case_id for c in a.cases()] == [c.case_id for c in b.cases()]
    for info in a.cases():
        da, db = a.read_case(info.case_id), b.read_case(info.case_id)
        for key in ("image", "features", "label"):
            np.testing.assert_array_equal(da[key], db[key])


# -- the store API on S3 ------------------------------------------------------------------------------------------
def test_location_helpers_keep_urls_intact(tmp_path):
    from maskgen.store.location import as_location, canonical, is_remote, name_of, same_store

    assert as_location("s3://bucket/amos.zarr/") == "s3://bucket/amos.zarr"  # Path() would give s3:/bucket/...
    assert as_location(f"file://{tmp_path}/a.zarr") == tmp_path / "a.zarr" and not is_remote(f"file://{tmp_path}")
    assert is_remote("gs://b/x") and name_of("s3://b/dir/amos.zarr/") == "amos.zarr"
    assert canonical("a.zarr") == str(Path("a.zarr").absolute()) and canonical("s3://b/x/") == "s3://b/x"
    assert same_store(f"file://{tmp_path}/a.zarr", tmp_path / "a.zarr") and not same_store("s3://b/x", "s3://b/y")


def test_keys_listings_and_conditional_create_on_s3(s3_bucket, monkeypatch):
    from zarr.storage import FsspecStore

    url = f"{s3_bucket}/k.zarr"
    io = StoreIO(url)
    assert not io.is_local and io.atomic_create and not io.root_exists()
    io.set("cases/a/zarr.json", b"{}")
    io.set("cases/a/image/c/0", b"12345")
    io.set("cases/b/zarr.json", b"{}")
    assert io.root_exists() and io.list_dir("cases") == ["a", "b"]
    assert io.list_prefix("cases/a") == ["cases/a/image/c/0", "cases/a/zarr.json"]
    assert io.size_prefix("cases/a") == 7 and io.get_many(["cases/a/image/c/0", "nope"]) == [b"12345", None]
    io.delete_dir("cases/a")
    assert io.list_dir("cases") == ["b"]

    io.set_if_not_exists(LOCK_KEY, b"first")
    # the race a check-then-write loses: the other writer checked before the key appeared. The conditional PUT
    # (If-None-Match: *) still refuses to overwrite.
    monkeypatch.setattr(FsspecStore, "exists", lambda self, key: _false())
    StoreIO(url).set_if_not_exists(LOCK_KEY, b"second")
    assert io.get(LOCK_KEY) == b"first"
    assert WriterLock(url).settle_s == 0  # no read-back delay needed where the create is atomic


async def _false() -> bool:
    return False


def test_missing_credentials_are_named_with_where_they_come_from(s3_bucket, monkeypatch, tmp_path):
    import s3fs

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(MaskgenError, match=r"no credentials .*environment .*~/\.aws/ and fsspec"):
        FeatureStore(f"{s3_bucket}/x.zarr")


# -- extract into S3: two writers, a kill, the resume ---------------------------------------------------------------
# The subprocess runs the real CLI with one test-only change: the completion step of one case sleeps (injected from
# here; production code has no hook), so the process is killed while it holds the lock with that case half done.
_SLOW_COMPLETE = """
import sys, time
from maskgen.store import writer
target = sys.argv.pop(1)
real = writer.mark_complete
def slow(group):
    if group.attrs.get("case_id") == target:
        print("ARRAYS WRITTEN", target, file=sys.stderr, flush=True)
        time.sleep(600)
    real(group)
writer.mark_complete = slow
from maskgen.cli import main
sys.argv[0] = "maskgen"
main()
"""


def test_extract_to_s3_killed_refuses_a_second_writer_and_resumes(data, s3_bucket):
    toml, ref = data
    ids = [c.case_id for c in FeatureStore(ref).cases()]
    url = f"{s3_bucket}/amos.zarr"
    args = ["extract", "--dataset", str(toml), "--out", url, "--extractor", "mind"]
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_COMPLETE, ids[1], *args], env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("ARRAYS WRITTEN"):
                break
        assert lines and lines[-1].startswith("ARRAYS WRITTEN"), "".join(lines)
        second = invoke(*args)  # a second writer while the first holds the lock in the store
        assert second.exit_code == 1 and f"pid {proc.pid}" in second.stderr and "--wait" in second.stderr
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert meta.case_state(url, ids[0]) == "complete" and meta.case_state(url, ids[1]) == "incomplete"
    assert StoreIO(url).get(LOCK_KEY) is not None  # the killed writer's lock is left behind...

    resumed = invoke(*args)  # ...and taken over (its process is gone from this host)
    assert resumed.exit_code == 0, resumed.output
    assert f"{len(ids) - 1} case(s) written, 1 skipped" in resumed.stdout.replace("\n", " ")
    assert StoreIO(url).get(LOCK_KEY) is None
    _same_cases(FeatureStore(ref), FeatureStore(url))

    verify = invoke("cache", "verify", url)
    assert verify.exit_code == 0 and f"{len(ids)} complete case(s) of {url}" in verify.stdout
    fs = s3fs_filesystem()
    chunk = f"{url.removeprefix('s3://')}/cases/{ids[2]}/features/c/0/0/0/0"
    raw = fs.cat(chunk)
    fs.pipe(chunk, raw[:100] + bytes(255 - b for b in raw[100:200]) + raw[200:])
    broken = invoke("cache", "verify", url)
    assert broken.exit_code == 1 and f"{ids[2]}: features chunk c/0/0/0/0 cannot be read" in broken.stderr
    info = invoke("cache", "info", url)
    assert info.exit_code == 0 and url in info.stdout and f"{len(ids)} complete case(s)" in info.stdout


# -- reading from S3: training, evaluation, prediction, sweeps -------------------------------------------------------
def test_train_evaluate_predict_and_sweep_from_s3(data, s3_bucket, tmp_path):
    import json

    _toml, ref = data
    url = _upload(ref, f"{s3_bucket}/amos.zarr")
    run = tmp_path / "run"
    res = invoke("train", "--features", url, "--out", run, *TINY, "--num-workers", "1")  # a forked worker reads S3
    assert res.exit_code == 0, res.output
    assert json.loads((run / "config.json").read_text())["features"] == url

    ev = invoke("evaluate", run, "--split", "test", "--checkpoint", "last", "--device", "cpu", "--quiet")
    assert ev.exit_code == 0, ev.output
    assert json.loads((run / "eval-test.json").read_text())["store"] == url

    image = sorted((Path(_toml).parent / "imagesTr").glob("*_0000.nii.gz"))[0]
    pr = invoke("predict", run, "--input", image, "--out", tmp_path / "pred", "--checkpoint", "last",
                "--device", "cpu", "--quiet")
    assert pr.exit_code == 0, pr.output
    assert len(list((tmp_path / "pred").glob("*.nii.gz"))) == 1

    sw = invoke("sweep", "--features", url, "--out", tmp_path / "sw", "--inputs", "both", "--mask-rate", "0.5",
                "--splits", "test", *TINY, "--num-workers", "0")
    assert sw.exit_code == 0, sw.output
    assert (tmp_path / "sw" / "results.csv").is_file()
    missing = invoke("train", "--features", f"{s3_bucket}/nothing.zarr", "--out", tmp_path / "r2", *TINY)
    assert missing.exit_code == 1 and f"--features {s3_bucket}/nothing.zarr does not exist" in missing.stderr


def test_tensorstore_reads_s3_with_its_s3_driver(data, s3_bucket):
    pytest.importorskip("tensorstore")
    from maskgen.store.tensorstore_backend import kvstore_spec

    _toml, ref = data
    url = _upload(ref, f"{s3_bucket}/ts.zarr")
    local, remote = FeatureStore(ref), FeatureStore(url, backend="tensorstore", chunk_cache=False)
    for info in local.cases():
        a = local.read_crop(info.case_id, (-3, 5, 2), (16, 16, 16))
        b = remote.read_crop(info.case_id, (-3, 5, 2), (16, 16, 16))
        for key in ("image", "features", "label"):
            np.testing.assert_array_equal(a[key], b[key])
    assert remote._backend().name == "tensorstore"  # not a silent fall-back to zarr-python
    assert kvstore_spec(remote.io, "cases")["driver"] == "s3"


# -- the local chunk cache ---------------------------------------------------------------------------------------------
def test_chunk_cache_serves_chunks_locally_and_never_a_rewritten_case(data, s3_bucket, tmp_path):
    from maskgen.store.writer import consolidate, write_case

    _toml, ref = data
    url = _upload(ref, f"{s3_bucket}/c.zarr")
    settings = CacheSettings(folder=str(tmp_path / "cache"), max_bytes=10**9)
    local, cached = FeatureStore(ref), FeatureStore(url, chunk_cache=settings)
    cid = local.cases()[0].case_id
    first = cached.read_crop(cid, (0, 0, 0), (16, 16, 16))
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert len(files) == 3  # one chunk of each array (24^3 cases: one chunk per array)

    fs = s3fs_filesystem()
    fs.rm(f"{url.removeprefix('s3://')}/cases/{cid}/features/c", recursive=True)  # only the cache has them now
    again = FeatureStore(url, chunk_cache=settings).read_crop(cid, (0, 0, 0), (16, 16, 16))
    np.testing.assert_array_equal(first["features"], again["features"])
    with pytest.raises(MaskgenError, match=f"case {cid}, array features is damaged"):
        FeatureStore(url, chunk_cache=False).read_crop(cid, (0, 0, 0), (16, 16, 16))

    case = local.read_case(cid)
    info = local.case(cid)
    write_case(url, cid, image=case["image"], features=case["features"] + 1.0, label=case["label"],
               attrs={"domain": info.domain, "split": info.split}, layout=local.layout)
    consolidate(url)  # as `maskgen extract --redo` ends
    fresh = FeatureStore(url, chunk_cache=settings).read_crop(cid, (0, 0, 0), (16, 16, 16))
    np.testing.assert_allclose(fresh["features"], first["features"] + 1.0, atol=0.02)


def test_chunk_cache_evicts_least_recently_used_files_down_to_its_limit(tmp_path):
    import time

    from maskgen.store.chunk_cache import cache_files, evict, parse_size

    folder = tmp_path / "cache"
    folder.mkdir()
    now = time.time()
    for i in range(10):
        p = folder / f"f{i}"
        p.write_bytes(b"x" * 100)
        os.utime(p, (now - 100 + i, now - 100 + i))  # f0 least recently used
    assert evict(CacheSettings(str(folder), max_bytes=2000)) == 0  # under the limit: nothing removed
    assert evict(CacheSettings(str(folder), max_bytes=500)) == 600
    assert sorted(Path(p).name for _, _, p in cache_files(folder)) == ["f6", "f7", "f8", "f9"]
    assert parse_size("1.5GiB") == int(1.5 * 2**30) and parse_size("20G") == 20 * 10**9
    with pytest.raises(MaskgenError, match="MASKGEN_CHUNK_CACHE_SIZE='lots' is not a size"):
        parse_size("lots")
