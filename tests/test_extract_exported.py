"""Bring-your-own extractors: `--extractor torchscript:PATH`, `onnx:PATH` and plugins (entry point group
`maskgen.extractors`), through `maskgen extract`, the store's fingerprint and `rebuild_extractor`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from maskgen.cli import app
from maskgen.demo.synthetic import make_synthetic_dataset
from maskgen.errors import MaskgenError
from maskgen.extract.registry import build_extractor, rebuild_extractor
from maskgen.extract.weights import sha256_file
from maskgen.store.reader import FeatureStore

runner = CliRunner()


class TinyNet(nn.Module):
    """Needs even sizes (a 2x pool and upsample): 1 -> 3 channels on the input grid."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv3d(1, 3, 3, padding=1)
        self.b = nn.Conv3d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        return self.b(nn.functional.interpolate(nn.functional.avg_pool3d(h, 2), scale_factor=2.0)) + h


def _tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyNet().eval()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("data") / "syn", n_cases=3, size=24) / "pipeline.toml"


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    torch.jit.script(_tiny()).save(str(path))
    return path


def test_torchscript_store_records_sha_channels_and_padding(dataset, scripted, tmp_path):
    out = tmp_path / "ts.zarr"
    res = runner.invoke(app, ["extract", "--dataset", str(dataset), "--out", str(out), "--extractor",
                              f"torchscript:{scripted}", "--pad-multiple", "4"])
    assert res.exit_code == 0, res.output
    store = FeatureStore(out)
    fp = store.extractor
    assert fp["kind"] == "torchscript" and fp["weights_sha256"] == sha256_file(scripted)
    assert fp["out_channels"] == 3 and fp["arch"] == {"type": "torchscript", "pad_multiple": 4}
    info = store.cases()[0]
    data = store.read_case(info.case_id)
    with torch.no_grad():  # 24 is a multiple of 4: no padding, the model's own output
        expect = _tiny()(torch.from_numpy(data["image"])[None])[0].numpy()
    np.testing.assert_allclose(data["features"], expect, atol=3e-3)
    # the same model with another padding multiple makes other features: refused
    res = runner.invoke(app, ["extract", "--dataset", str(dataset), "--out", str(out), "--extractor",
                              f"torchscript:{scripted}", "--pad-multiple", "16"])
    assert res.exit_code == 1 and "'pad_multiple': 4" in res.stderr and "'pad_multiple': 16" in res.stderr


def test_torchscript_rebuild_from_the_store(dataset, scripted, tmp_path):
    out = tmp_path / "ts.zarr"
    res = runner.invoke(app, ["extract", "--dataset", str(dataset), "--out", str(out), "--extractor",
                              f"torchscript:{scripted}"])
    assert res.exit_code == 0, res.output
    store = FeatureStore(out)
    assert store.extractor["arch"]["pad_multiple"] == 16  # the default
    cfg = store.attrs["extract_config"]
    ex = rebuild_extractor(store.extractor, extract_config=cfg)
    assert ex.fingerprint() == store.extractor
    moved = tmp_path / "moved.pt"
    scripted.rename(moved)
    try:
        with pytest.raises(MaskgenError, match="not found.*|--weights"):
            rebuild_extractor(store.extractor, extract_config=cfg)
        assert rebuild_extractor(store.extractor, weights=moved, extract_config=cfg).fingerprint() == store.extractor
        other = tmp_path / "other.pt"
        torch.jit.script(_tiny(seed=1)).save(str(other))
        with pytest.raises(MaskgenError) as info:
            rebuild_extractor(store.extractor, weights=other, extract_config=cfg)
        assert sha256_file(other) in str(info.value) and store.extractor["weights_sha256"] in str(info.value)
    finally:
        moved.rename(scripted)


def test_exported_model_errors_name_the_file(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(MaskgenError, match=r"cannot load TorchScript model .*junk\.pt"):
        build_extractor(f"torchscript:{junk}")

    class Shrinks(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :, 1:]

    bad = tmp_path / "shrinks.pt"
    torch.jit.script(Shrinks()).save(str(bad))
    with pytest.raises(MaskgenError, match=r"shrinks\.pt returned \(1, 1, 31, 32, 32\).*\(1, C, Z, Y, X\)"):
        build_extractor(f"torchscript:{bad}")
    with pytest.raises(MaskgenError, match=r"needs a file: --extractor torchscript:PATH"):
        build_extractor("torchscript")
    with pytest.raises(MaskgenError, match=r"missing\.pt does not exist"):
        build_extractor(f"torchscript:{tmp_path / 'missing.pt'}")
    with pytest.raises(MaskgenError, match="pad_multiple 8 is not used by the 'mind' extractor"):
        build_extractor("mind", pad_multiple=8)


def test_torch_export_program(dataset, tmp_path):
    from torch.export import Dim, export, save

    class Conv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv3d(1, 3, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.a(x))

    torch.manual_seed(0)
    net = Conv().eval()
    dims = {2: Dim("z", min=2, max=512), 3: Dim("y", min=2, max=512), 4: Dim("x", min=2, max=512)}
    path = tmp_path / "conv.pt2"
    save(export(net, (torch.rand(1, 1, 8, 8, 8),), dynamic_shapes={"x": dims}), str(path))
    out = tmp_path / "e.zarr"
    res = runner.invoke(app, ["extract", "--dataset", str(dataset), "--out", str(out), "--extractor", f"export:{path}",
                              "--pad-multiple", "1"])
    assert res.exit_code == 0, res.output
    store = FeatureStore(out)
    fp = store.extractor
    assert fp["kind"] == "export" and fp["arch"] == {"type": "export", "pad_multiple": 1} and fp["out_channels"] == 3
    data = store.read_case(store.cases()[0].case_id)
    with torch.no_grad():
        np.testing.assert_allclose(data["features"], net(torch.from_numpy(data["image"])[None])[0].numpy(), atol=3e-3)
    assert rebuild_extractor(fp, extract_config=store.attrs["extract_config"]).fingerprint() == fp


def test_onnx_extractor_matches_the_torch_model(dataset, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    del ort
    path = tmp_path / "tiny.onnx"
    axes = {2: "z", 3: "y", 4: "x"}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_tiny(), (torch.rand(1, 1, 8, 8, 8),), str(path), dynamo=False, input_names=["image"],
                          output_names=["features"], dynamic_axes={"image": axes, "features": axes})
    ex = build_extractor(f"onnx:{path}", pad_multiple=2)
    x = torch.rand(2, 1, 10, 12, 14)
    with torch.no_grad():
        np.testing.assert_allclose(ex(x).numpy(), _tiny()(x).numpy(), atol=1e-5)
    out = tmp_path / "onnx.zarr"
    res = runner.invoke(app, ["extract", "--dataset", str(dataset), "--out", str(out), "--extractor", f"onnx:{path}",
                              "--pad-multiple", "2"])
    assert res.exit_code == 0, res.output
    fp = FeatureStore(out).extractor
    assert fp["kind"] == "onnx" and fp["out_channels"] == 3 and fp["weights_sha256"] == sha256_file(path)
    assert rebuild_extractor(fp, extract_config=FeatureStore(out).attrs["extract_config"]).fingerprint() == fp


# -- plugins: a real installed distribution with an entry point, found by importlib.metadata --------------------
PLUGIN = '''
import torch
from maskgen.extract.base import Extractor


class Toy(Extractor):
    name = "toy-extractor"
    out_channels = 3

    def __init__(self):
        super().__init__()
        self.freeze()

    def arch(self):
        return {"type": "toy", "version": 1}

    def features(self, x):
        return torch.cat([x, 1 - x, x * x], dim=1)


def make(device="cpu"):
    return Toy()
'''


@pytest.fixture()
def plugin_dir(tmp_path, monkeypatch):
    site = tmp_path / "site"
    info = site / "maskgen_toy_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: maskgen-toy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[maskgen.extractors]\ntoy = maskgen_toy_plugin:make\n")
    (site / "maskgen_toy_plugin.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(site))
    return site


def test_a_plugin_registered_by_entry_point(dataset, plugin_dir, tmp_path):
    from importlib.metadata import entry_points

    assert [ep.name for ep in entry_points(group="maskgen.extractors")] == ["toy"]
    out = tmp_path / "toy.zarr"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_dir), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "maskgen", "extract", "--dataset", str(dataset), "--out", str(out)]
    done = subprocess.run([*cmd, "--extractor", "toy"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    store = FeatureStore(out)
    fp = store.extractor
    assert fp["kind"] == "toy" and fp["name"] == "toy-extractor" and fp["out_channels"] == 3
    data = store.read_case(store.cases()[0].case_id)
    # int8 features (the default): per-channel scale max|f|/127, so within half a step (0.004) plus the image's rounding
    np.testing.assert_allclose(data["features"][1], 1 - data["image"][0], atol=6e-3)
    assert rebuild_extractor(fp).fingerprint() == fp
    # the factory takes no weights: --weights is refused, naming the plugin
    done = subprocess.run([*cmd, "--extractor", "toy", "--weights", str(dataset)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1 and "--weights" in done.stderr and "is not used by the 'toy' extractor" in done.stderr
    # without the plugin installed, the name is unknown and the message says where plugins register
    bare = {**env, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([*cmd, "--extractor", "toy"], env=bare, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "--extractor 'toy' is unknown" in done.stderr and "maskgen.extractors" in done.stderr


def test_one_registry_serves_online_training_and_predict(dataset, scripted, tmp_path):
    """A torchscript store is trained on with --online-features and predicted with: both rebuild the extractor
    through `rebuild_extractor` from the store's fingerprint (the file the store was made from, or --weights /
    --extractor-weights when it moved), and refuse a missing file with one message."""
    import shutil

    from _helpers import tiny_train_config
    from maskgen.train.loop import train

    model = tmp_path / "model.pt"
    shutil.copy(scripted, model)
    out = tmp_path / "ts.zarr"
    res = runner.invoke(app, ["extract", "--dataset", str(dataset), "--out", str(out), "--extractor",
                              f"torchscript:{model}", "--pad-multiple", "8"])
    assert res.exit_code == 0, res.output
    run = train(tiny_train_config(out, tmp_path / "run", steps=2, val_every=2, online_features=True), progress=False)
    image = sorted((dataset.parent / "imagesTr").glob("*.nii.gz"))[0]
    predict = ["predict", str(run), "--input", str(image), "--checkpoint", "last", "--device", "cpu", "--quiet"]
    res = runner.invoke(app, [*predict, "--out", str(tmp_path / "pred")])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "pred").glob("*.nii.gz"))) == 1
    moved = model.rename(tmp_path / "moved.pt")
    res = runner.invoke(app, [*predict, "--out", str(tmp_path / "pred2")])
    assert res.exit_code == 1 and "--weights" in res.stderr and str(model) in res.stderr, res.output
    res = runner.invoke(app, [*predict, "--out", str(tmp_path / "pred2"), "--weights", str(moved)])
    assert res.exit_code == 0, res.output
    with pytest.raises(MaskgenError, match="--online-features needs the extractor"):
        train(tiny_train_config(out, tmp_path / "run2", steps=2, online_features=True), progress=False)
    run3 = train(tiny_train_config(out, tmp_path / "run3", steps=2, online_features=True,
                                   extractor_weights=str(moved)), progress=False)
    assert (run3 / "last.pt").is_file()
