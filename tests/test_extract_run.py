"""`run_extract` / `maskgen extract`: store contents, resume, refusal, failures, dask schedulers, CLI."""

from __future__ import annotations

import errno
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from maskgen.cli import app
from maskgen.demo.synthetic import make_synthetic_dataset
from maskgen.errors import MaskgenError
from maskgen.extract import run as R
from maskgen.store import meta as store_meta
from maskgen.store import writer
from maskgen.store.reader import FeatureStore

runner = CliRunner()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("data") / "syn", n_cases=3, size=24) / "pipeline.toml"


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """A serial, uninterrupted extraction that other runs are compared with."""
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    summary = R.run_extract(R.ExtractConfig(dataset=str(dataset), out=str(out), extractor="mind"), progress=False)
    return out, summary


def assert_same_store(a, b):
    sa, sb = FeatureStore(a), FeatureStore(b)
    assert [c.case_id for c in sa.cases()] == [c.case_id for c in sb.cases()]
    assert sa.cases()
    for info in sa.cases():
        assert info == sb.case(info.case_id)
        da, db = sa.read_case(info.case_id, dtype=np.float16), sb.read_case(info.case_id, dtype=np.float16)
        for key in ("image", "features", "label"):
            np.testing.assert_array_equal(da[key], db[key], err_msg=f"{info.case_id}/{key}")


def test_store_contents(reference, dataset):
    out, summary = reference
    assert summary.ok and summary.cases_total == 4 and summary.cases_written == 4 and summary.cases_skipped == 0
    assert summary.extractor == "mind" and summary.voxels_written == 4 * 24**3
    assert summary.bytes_written > 0 and summary.bytes_per_voxel == summary.bytes_written / summary.voxels_written
    s = FeatureStore(out)
    assert s.used_consolidated
    a = s.attrs
    assert a["format_version"] == 1 and a["maskgen_version"]
    assert a["pipeline"]["name"] == "synthetic" and a["spacing_zyx"] == [1.0, 1.0, 1.0]
    assert a["normalization"] == "minmax"
    assert a["extractor"]["name"] == "mind" and a["extractor"]["out_channels"] == 12
    assert a["layout"]["dtype"] == "int8" and a["layout"]["codec"] == "none"  # the default, chosen by measurement
    assert a["layout"]["chunks_zyx"] == [32, 32, 32]  # chunks_for_crop of the synthetic 16^3 crop
    assert a["extract_config"]["dataset"] == str(dataset) and a["extract_config"]["extractor"] == "mind"
    assert {c.split for c in s.cases()} == {"train", "val", "test"}
    assert {c.domain for c in s.cases()} == {"a", "b"}
    info = s.cases()[0]
    data = s.read_case(info.case_id)
    assert data["features"].shape == (12, 24, 24, 24) and data["image"].shape == (1, 24, 24, 24)
    assert data["label"].shape == (24, 24, 24) and set(np.unique(data["label"])) <= {0, 1, 2}
    np.testing.assert_allclose(info.feature_mean, data["features"].reshape(12, -1).mean(1), atol=2e-3)
    assert info.geometry["resampled_shape_xyz"] == [24, 24, 24]
    # the features are MIND of the stored image
    from maskgen.extract.inference import extract_volume
    from maskgen.extract.registry import build_extractor

    expect = extract_volume(build_extractor("mind"), data["image"])
    assert np.abs(expect - data["features"]).max() < 0.02


def test_rerun_skips_complete_cases_and_overwrite_redoes_all(reference, dataset, tmp_path):
    ref, _ = reference
    out = tmp_path / "s.zarr"
    shutil.copytree(ref, out)
    chunk = next((out / "cases").rglob("features/c/0/0/0/0"))
    before = chunk.stat().st_mtime_ns
    cfg = R.ExtractConfig(dataset=str(dataset), out=str(out), extractor="mind")
    summary = R.run_extract(cfg, progress=False)
    assert (summary.cases_written, summary.cases_skipped) == (0, 4)
    assert chunk.stat().st_mtime_ns == before
    assert FeatureStore(out).used_consolidated
    # an incomplete case (never marked) is redone
    victim = out / store_meta.case_prefix(FeatureStore(out).cases()[1].case_id)
    shutil.rmtree(victim / "label")
    meta = victim / "zarr.json"
    meta.write_text(meta.read_text().replace('"complete": true', '"complete": false'))
    summary = R.run_extract(cfg, progress=False)
    assert (summary.cases_written, summary.cases_skipped) == (1, 3)
    assert_same_store(ref, out)
    summary = R.run_extract(R.ExtractConfig(dataset=str(dataset), out=str(out), extractor="mind", overwrite=True),
                            progress=False)
    assert (summary.cases_written, summary.cases_skipped) == (4, 0)
    assert_same_store(ref, out)


def test_threads_scheduler_builds_the_extractor_once(reference, dataset, tmp_path, monkeypatch):
    from maskgen.extract import registry

    ref, _ = reference
    out = tmp_path / "t.zarr"
    built = []
    real = registry.build_extractor

    def counting(*args, **kwargs):
        built.append(args[0] if args else kwargs.get("name"))
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, "build_extractor", counting)
    R.run_extract(R.ExtractConfig(dataset=str(dataset), out=str(out), extractor="mind", workers=2,
                                  parallel="threads"), progress=False)
    assert built == ["mind"]  # in the calling process only; 4 cases on 2 threads reuse it
    assert_same_store(ref, out)
    # released after the run: a worker of a later run rebuilds it from the store's fingerprint
    ref_ = R.ExtractorRef(FeatureStore(out).extractor, None, "cpu")
    assert R.worker_extractor(ref_).fingerprint() == FeatureStore(out).extractor and built == ["mind", "mind"]


def test_local_processes_equal_serial(reference, dataset, tmp_path):
    """Spawned worker processes (each builds its own extractor and checks its fingerprint) give the same store."""
    ref, _ = reference
    out = tmp_path / "p.zarr"
    summary = R.run_extract(R.ExtractConfig(dataset=str(dataset), out=str(out), extractor="mind", workers=2,
                                            parallel="processes"), progress=False)
    assert summary.ok and summary.cases_written == 4
    assert_same_store(ref, out)


def test_distributed_local_cluster_equals_serial(reference, dataset, tmp_path):
    from distributed import LocalCluster

    ref, _ = reference
    out = tmp_path / "d.zarr"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        summary = R.run_extract(
            R.ExtractConfig(dataset=str(dataset), out=str(out), extractor="mind", scheduler=cluster.scheduler_address),
            progress=False,
        )
    assert summary.ok and summary.cases_written == 4
    assert_same_store(ref, out)


def test_bad_scheduler_address_is_a_clear_error(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(R, "SCHEDULER_CONNECT_TIMEOUT_S", 0.5)
    with pytest.raises(MaskgenError, match="cannot connect to the dask scheduler at tcp://127.0.0.1:1"):
        R.run_extract(R.ExtractConfig(dataset=str(dataset), out=str(tmp_path / "x.zarr"), extractor="mind",
                                      scheduler="tcp://127.0.0.1:1"), progress=False)
    assert not (tmp_path / "x.zarr").exists()


def test_failed_cases_are_named_and_the_rest_is_intact(reference, dataset, tmp_path, monkeypatch):
    """A corrupted input, non-finite features and a full disk: each case named, exit 1, the others complete."""
    import maskgen.data.preprocess as P
    import maskgen.extract.inference as I
    from maskgen.data.layouts import discover_cases
    from maskgen.data.pipeline import load_pipeline

    ref, _ = reference
    data = tmp_path / "data"
    shutil.copytree(dataset.parent, data)
    toml = data / "pipeline.toml"
    toml.write_text(toml.read_text().replace(str(dataset.parent), str(data)))
    cases = discover_cases(load_pipeline(str(toml)))
    broken, nan_case, full_case = cases[0], cases[1], cases[2]
    broken.image.write_bytes(b"\x1f\x8b not really a nifti")
    made_from = {}  # id of a preprocessed image -> its case (cases are read ahead of the forward: no "current")
    real_pre, real_extract, real_slabs = P.preprocess_case, I.extract_tensor, writer._write_slabs

    def pre(case, pipeline):
        out = real_pre(case, pipeline)
        made_from[id(out.image)] = case.case_id
        return out

    def extract(extractor, image, device="cpu", *args, **kwargs):
        feats = real_extract(extractor, image, device, *args, **kwargs)
        if made_from.get(id(image)) == nan_case.case_id:
            feats = feats.clone()  # an inference tensor: a copy to edit
            feats[3, 1, 2, 3] = float("inf")
        return feats

    def slabs(arr, *args):
        if full_case.case_id in arr.path and arr.path.endswith("features"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_slabs(arr, *args)

    monkeypatch.setattr(P, "preprocess_case", pre)
    monkeypatch.setattr(I, "extract_tensor", extract)
    monkeypatch.setattr(writer, "_write_slabs", slabs)
    out = tmp_path / "f.zarr"
    result = runner.invoke(app, ["extract", "--dataset", str(toml), "--out", str(out), "--extractor", "mind"])
    assert result.exit_code == 1, result.output
    err = result.stderr
    assert "3 of 4 case(s) failed" in err
    assert f"{broken.case_id}: cannot load" in err
    assert f"{nan_case.case_id}: 1 non-finite value(s) in the features in channel(s) [3]" in err
    assert f"{full_case.case_id}: disk full" in err
    assert "1 case(s) written" in result.stdout
    s = FeatureStore(out)
    assert [c.case_id for c in s.cases()] == [cases[3].case_id] and s.used_consolidated
    for c in cases[:3]:
        assert store_meta.case_state(out, c.case_id) == "absent"
    np.testing.assert_array_equal(s.read_case(cases[3].case_id)["features"],
                                  FeatureStore(ref).read_case(cases[3].case_id)["features"])
    # fixed: the same command completes the store, skipping the complete case
    monkeypatch.undo()
    shutil.copy(dataset.parent / broken.image.relative_to(data), broken.image)
    result = runner.invoke(app, ["extract", "--dataset", str(toml), "--out", str(out), "--extractor", "mind"])
    assert result.exit_code == 0, result.output
    assert "3 case(s) written, 1 skipped" in result.stdout
    assert [c.case_id for c in FeatureStore(out).cases()] == [c.case_id for c in cases]


def test_refuses_a_store_made_with_other_settings(reference, dataset, tmp_path):
    import torch

    from maskgen.extract import weights as W
    from maskgen.extract.anatomix import AnatomixUNet
    from maskgen.extract.weights import save_anatomix_checkpoint

    ref, _ = reference
    out = tmp_path / "s.zarr"
    shutil.copytree(ref, out)
    torch.manual_seed(0)
    weights = save_anatomix_checkpoint(AnatomixUNet(output_nc=4, ngf=4, num_downs=2), tmp_path / "tiny.pt")
    result = runner.invoke(app, ["extract", "--dataset", str(dataset), "--out", str(out), "--extractor", "anatomix",
                                 "--weights", str(weights)])
    assert result.exit_code == 1
    assert "extractor: store has 'mind' (weights sha256 none), this run has 'anatomix' (weights sha256 " \
        f"{W.sha256_file(weights)})" in result.stderr
    assert "number of feature channels: store has 12, this run has 4" in result.stderr
    assert "--overwrite" in result.stderr
    result = runner.invoke(app, ["extract", "--dataset", str(dataset), "--out", str(out), "--extractor", "mind",
                                 "--dtype", "float16"])
    assert result.exit_code == 1 and "feature dtype: store has 'int8', this run has 'float16'" in result.stderr
    result = runner.invoke(app, ["extract", "--dataset", str(dataset), "--out", str(out), "--extractor", "mind",
                                 "--chunks", "16", "--codec", "blosc-lz4"])
    assert result.exit_code == 1
    assert "chunk shape: store has [32, 32, 32], this run has [16, 16, 16]" in result.stderr
    assert "codec: store has 'none', this run has 'blosc-lz4'" in result.stderr
    assert_same_store(ref, out)
    assert FeatureStore(out).used_consolidated  # a refused run does not touch the store


def test_anatomix_without_weights_stops_before_the_store(dataset, tmp_path, monkeypatch):
    from maskgen.extract.weights import find_anatomix_weights

    monkeypatch.delenv("MASKGEN_ANATOMIX_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if find_anatomix_weights(None, allow_download=False) is not None:
        pytest.skip("anatomix weights are installed on this machine")
    out = tmp_path / "none.zarr"
    result = runner.invoke(app, ["extract", "--dataset", str(dataset), "--out", str(out), "--extractor", "anatomix"])
    assert result.exit_code == 1
    assert "--weights" in result.stderr
    assert not out.exists()


def test_cli_default_out_int8_then_cache_info_and_verify(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["extract", "--dataset", str(dataset), "--extractor", "mind", "--dtype", "int8",
                                 "--chunks", "16"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "cache" / "synthetic.zarr"
    assert "4 case(s) written, 0 skipped" in result.stdout and "bytes/voxel" in result.stdout
    s = FeatureStore(out)
    assert s.attrs["layout"]["dtype"] == "int8" and s.attrs["layout"]["chunks_zyx"] == [16, 16, 16]
    assert s.array(s.cases()[0].case_id, "features").chunks == (12, 12, 12, 12)  # 24 = 2 x 12, balanced
    info = runner.invoke(app, ["cache", "info", str(out)])
    assert info.exit_code == 0, info.output
    for needle in ("mind", "12 channels", "int8", "bytes/voxel", "train", "val", "test", "consolidated"):
        assert needle in info.stdout, info.stdout
    ok = runner.invoke(app, ["cache", "verify", str(out)])
    assert ok.exit_code == 0 and "OK: 4 complete case(s)" in ok.stdout
    again = runner.invoke(app, ["extract", "--dataset", str(dataset), "--extractor", "mind", "--dtype", "int8"])
    assert again.exit_code == 0 and "0 case(s) written, 4 skipped" in again.stdout  # resumes with the store's chunks
    bad = runner.invoke(app, ["extract", "--dataset", str(dataset), "--extractor", "mind", "--workers", "0"])
    assert bad.exit_code != 0


def test_config_checks_name_the_bad_value():
    for kwargs, needle in (({"dtype": "float64"}, "float64"), ({"workers": 0}, "0"), ({"codec": "lzma"}, "lzma"),
                           ({"device": "tpu"}, "tpu"), ({"chunks": (0, 4, 4)}, "(0, 4, 4)")):
        with pytest.raises(MaskgenError) as info:
            R.ExtractConfig(dataset="x", **kwargs)
        assert needle in str(info.value)


def test_cli_names_flags_in_option_errors(dataset, tmp_path):
    """Options the chosen extractor does not take are refused by the registry's table, in the CLI's words."""
    base = ["extract", "--dataset", str(dataset), "--out", str(tmp_path / "x.zarr")]
    res = runner.invoke(app, [*base, "--extractor", "mind", "--layer", "penultimate"])
    assert res.exit_code == 1
    assert "--layer 'penultimate' is not used by the 'mind' extractor (it applies to anatomix); drop --layer" \
        in res.stderr
    res = runner.invoke(app, [*base, "--extractor", "anatomix", "--pad-multiple", "8"])
    assert res.exit_code == 1 and "--pad-multiple 8 is not used by the 'anatomix' extractor" in res.stderr
    res = runner.invoke(app, [*base, "--extractor", "dino"])
    assert res.exit_code == 1 and "--extractor 'dino' is unknown; choose one of auto, mind, anatomix, " \
        "torchscript:PATH, export:PATH, onnx:PATH" in res.stderr
    assert not (tmp_path / "x.zarr").exists()


def test_store_accepts_the_same_weights_under_another_name(dataset, tmp_path, monkeypatch):
    """The store's compatibility check is the registry's identity rule: a store made by `auto` from the shipped
    default ('maskgen-small') is completed by `--extractor anatomix --weights` of the same file, not by other
    weights."""
    import json

    import torch

    from maskgen.extract import weights as W
    from maskgen.extract.anatomix import AnatomixUNet

    monkeypatch.delenv(W.ENV_VAR, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(W, "_hub_cache_lookup", lambda: None)
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    torch.manual_seed(0)
    W.save_anatomix_checkpoint(AnatomixUNet(output_nc=4, ngf=4, num_downs=2), shipped / "small.pt")
    (shipped / "default.json").write_text(json.dumps({"file": "small.pt", "name": "maskgen-small"}))
    monkeypatch.setattr(W, "SHIPPED_DIR", shipped)
    out = tmp_path / "s.zarr"
    first = R.run_extract(R.ExtractConfig(dataset=str(dataset), out=str(out)), progress=False)
    assert first.extractor == "maskgen-small" and FeatureStore(out).extractor["kind"] == "anatomix"
    victim = FeatureStore(out).cases()[0].case_id
    writer.delete_case(out, victim)
    again = R.run_extract(R.ExtractConfig(dataset=str(dataset), out=str(out), extractor="anatomix",
                                          weights=str(shipped / "small.pt")), progress=False)
    assert (again.cases_written, again.cases_skipped) == (1, 3)
    torch.manual_seed(1)
    other = W.save_anatomix_checkpoint(AnatomixUNet(output_nc=4, ngf=4, num_downs=2), tmp_path / "other.pt")
    with pytest.raises(MaskgenError, match=rf"extractor: store has 'maskgen-small' \(weights sha256 "
                                           rf"{W.sha256_file(shipped / 'small.pt')}\), this run has 'anatomix' "
                                           rf"\(weights sha256 {W.sha256_file(other)}\)"):
        R.run_extract(R.ExtractConfig(dataset=str(dataset), out=str(out), extractor="anatomix", weights=str(other)),
                      progress=False)
