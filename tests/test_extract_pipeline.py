"""The one-process extraction pipeline (issue 16.1): case k+1 is read and case k-1 written while case k runs through
the extractor; statistics and the float16 cast happen where the features are made, so the writer only writes."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import maskgen.data.preprocess as P
import maskgen.extract.inference as I
from maskgen.demo.synthetic import make_synthetic_dataset
from maskgen.extract import run as R
from maskgen.store import writer
from maskgen.store.reader import FeatureStore

WAIT_S = 60.0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("data") / "syn", n_cases=3, size=16) / "pipeline.toml"


def test_reading_and_writing_overlap_the_forward(dataset, tmp_path, monkeypatch):
    """Inside the forward of case k, the read of case k+1 starts; inside the write of case k-1, the forward of case k
    starts. Run serially, each wait would time out."""
    from maskgen.data.layouts import discover_cases
    from maskgen.data.pipeline import load_pipeline

    ids = [c.case_id for c in discover_cases(load_pipeline(str(dataset)))]
    load_started = {cid: threading.Event() for cid in ids}
    forward_started = {cid: threading.Event() for cid in ids}
    made_from: dict[int, str] = {}
    seen = {"read_during_forward": 0, "forward_during_write": 0}
    real_pre, real_tensor, real_slabs = P.preprocess_case, I.extract_tensor, writer._write_slabs

    def pre(case, pipeline):
        load_started[case.case_id].set()
        out = real_pre(case, pipeline)
        made_from[id(out.image)] = case.case_id
        return out

    def tensor(extractor, image, *args, **kwargs):
        k = ids.index(made_from[id(image)])
        forward_started[ids[k]].set()
        if k + 1 < len(ids):
            seen["read_during_forward"] += load_started[ids[k + 1]].wait(WAIT_S)
        return real_tensor(extractor, image, *args, **kwargs)

    def slabs(arr, *args):
        if arr.path.endswith("features"):
            k = next(i for i, cid in enumerate(ids) if f"/{cid}/" in f"/{arr.path}")
            if k + 1 < len(ids):
                seen["forward_during_write"] += forward_started[ids[k + 1]].wait(WAIT_S)
        return real_slabs(arr, *args)

    monkeypatch.setattr(P, "preprocess_case", pre)
    monkeypatch.setattr(I, "extract_tensor", tensor)
    monkeypatch.setattr(writer, "_write_slabs", slabs)
    summary = R.run_extract(R.ExtractConfig(dataset=str(dataset), out=str(tmp_path / "p.zarr"), extractor="mind"),
                            progress=False)
    assert summary.ok and summary.cases_written == len(ids)
    assert seen == {"read_during_forward": len(ids) - 1, "forward_during_write": len(ids) - 1}
    assert set(summary.stage_seconds) == {"load", "extract", "write"} and min(summary.stage_seconds.values()) > 0


def test_statistics_and_cast_come_with_the_features(dataset, tmp_path, monkeypatch):
    """The writer gets float16 features and their statistics: it computes none itself."""
    from maskgen.extract.mind import MindSSC

    image = np.random.default_rng(0).random((1, 12, 14, 10), dtype=np.float32)
    got = I.extract_for_store(MindSSC(), image)
    ref = I.extract_volume(MindSSC(), image)
    mean, std = writer.channel_stats(ref)
    assert got.values.dtype == np.float16 and got.values.shape == ref.shape
    np.testing.assert_allclose(got.mean, mean, rtol=1e-6)
    np.testing.assert_allclose(got.std, std, rtol=1e-5)
    np.testing.assert_array_equal(got.values, torch.from_numpy(ref).half().numpy())
    assert I.extract_for_store(MindSSC(), image, dtype="int8").values.dtype == np.float32
    # the accelerator's path (torch reductions) gives the CPU path's numbers
    flat = torch.from_numpy(ref.reshape(12, -1))
    for a, b in zip(I._moments_torch(flat), I._moments_numpy(flat.numpy())):
        np.testing.assert_allclose(a, b, rtol=1e-12)

    def forbidden(*args, **kwargs):
        raise AssertionError("the writer recomputed the statistics")

    monkeypatch.setattr(writer, "channel_stats", forbidden)
    out = tmp_path / "s.zarr"
    summary = R.run_extract(R.ExtractConfig(dataset=str(dataset), out=str(out), extractor="mind"), progress=False)
    assert summary.ok
    store = FeatureStore(out)
    info = store.cases()[0]
    feats = store.read_case(info.case_id)["features"]
    np.testing.assert_allclose(info.feature_mean, feats.reshape(12, -1).mean(1), atol=1e-3)


def test_features_beyond_float16_are_a_named_case_error(dataset, tmp_path):
    class Big(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, x * 0 + 1e5], dim=1)

    model = tmp_path / "big.pt"
    torch.jit.script(Big()).save(str(model))
    summary = R.run_extract(R.ExtractConfig(dataset=str(dataset), out=str(tmp_path / "b.zarr"),
                                            extractor=f"torchscript:{model}", pad_multiple=1,
                                                dtype="float16"), progress=False,
                            raise_on_failure=False)
    assert summary.cases_written == 0 and len(summary.failed) == 4
    assert all("beyond what float16 holds" in why and "--dtype int8" in why for _, why in summary.failed)
    ok = R.run_extract(R.ExtractConfig(dataset=str(dataset), out=str(tmp_path / "i.zarr"),
                                       extractor=f"torchscript:{model}", pad_multiple=1, dtype="int8"), progress=False)
    assert ok.ok and ok.cases_written == 4
