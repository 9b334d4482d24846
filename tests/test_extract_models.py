"""anatomix UNet layout vs the public checkpoint's manifest, an independent reference forward, weights loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from maskgen.errors import MaskgenError
from maskgen.extract import weights as W
from maskgen.extract.anatomix import AnatomixExtractor, AnatomixUNet

FIXTURE = Path(__file__).parent / "data" / "anatomix_manifest_keys.json"
SHARED_MANIFEST = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "anatomix_unet_manifest.json"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(FIXTURE.read_text())


def _randomise(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights AND random batch-norm statistics, so that a wrong layer order or skip cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.ndim == 5:
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / (27 * t.shape[1])) ** 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1 + (1.0 if name.endswith(".weight") else 0.0))
    return net.eval()


def _reference_forward(state: dict, manifest: dict, x: torch.Tensor, stop: int | None = None) -> torch.Tensor:
    """The manifest's description executed with torch.nn.functional only (no maskgen code)."""
    skips, types = [], manifest["layer_types"]
    stop = len(types) if stop is None else stop
    for i, kind in enumerate(types[:stop]):
        if kind == "Conv3d":
            x = F.conv3d(F.pad(x, (1,) * 6, mode="reflect"), state[f"model.{i}.weight"])
        elif kind == "BatchNorm3d":
            p = f"model.{i}."
            x = F.batch_norm(x, state[p + "running_mean"], state[p + "running_var"], state[p + "weight"],
                             state[p + "bias"], training=False, eps=1e-5)
        elif kind == "ReLU":
            x = F.relu(x)
        elif kind == "MaxPool3d":
            x = F.max_pool3d(x, 2)
        elif kind == "Upsample":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        else:  # pragma: no cover - the manifest only has these
            raise AssertionError(kind)
        if i in manifest["encoder_skip_after_layer"]:
            skips.append(x)
        if i in manifest["decoder_concat_after_layer"]:
            x = torch.cat((skips.pop(), x), 1)
    return x


def _shapes(net: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in net.state_dict().items()}


def test_default_layout_equals_public_checkpoint_manifest(manifest):
    net = AnatomixUNet()
    assert _shapes(net) == manifest["state_dict"]
    assert list(_shapes(net)) == list(manifest["state_dict"]), "key order differs"
    assert [type(m).__name__ for m in net.model] == manifest["layer_types"]
    assert list(net.skip_after) == manifest["encoder_skip_after_layer"]
    assert list(net.concat_after) == manifest["decoder_concat_after_layer"]
    assert sum(p.numel() for p in net.parameters()) == manifest["parameter_count"] == 5_899_344
    convs = [m for m in net.model if isinstance(m, torch.nn.Conv3d)]
    assert all(c.padding_mode == "reflect" and c.bias is None and c.kernel_size == (3, 3, 3) for c in convs)


def test_default_layout_equals_shared_manifest():
    if not SHARED_MANIFEST.is_file():
        pytest.skip(f"{SHARED_MANIFEST} not present (the embedded copy in tests/data is checked above)")
    shared = json.loads(SHARED_MANIFEST.read_text())
    assert _shapes(AnatomixUNet()) == shared["state_dict"]
    assert sum(p.numel() for p in AnatomixUNet().parameters()) == shared["parameter_count"]


def test_forward_matches_independent_reference_both_layers(manifest):
    net = _randomise(AnatomixUNet(), seed=0)
    x = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    state = net.state_dict()
    with torch.no_grad():
        out = net(x)
        pen = net(x, layer="penultimate")
        ref = _reference_forward(state, manifest, x)
        ref_pen = _reference_forward(state, manifest, x, stop=65)
    assert out.shape == (1, 16, 32, 32, 32) and pen.shape == (1, 16, 32, 32, 32)
    assert out.std() > 0.01, "degenerate random network"
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pen, ref_pen, rtol=1e-4, atol=1e-5)
    assert (pen >= 0).all() and not torch.equal(out, pen)


@pytest.mark.parametrize("prefix", ["", "_orig_mod."])
def test_official_layout_checkpoint_reloads_strictly_and_reproduces(tmp_path, prefix):
    net = _randomise(AnatomixUNet(), seed=2)
    path = tmp_path / "anatomix.pth"
    torch.save({prefix + k: v for k, v in net.state_dict().items()}, path)
    fresh = W.load_anatomix_net(path)
    assert fresh.arch() == AnatomixUNet().arch()
    x = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(fresh(x), net(x))
        assert torch.equal(fresh(x, "penultimate"), net(x, "penultimate"))


def test_small_configs_follow_the_same_rule_and_size_multiple():
    net = AnatomixUNet(input_nc=1, output_nc=6, ngf=4, num_downs=2)
    assert net.size_multiple == 4 and net.min_size == 8
    assert _shapes(net)["model.0.weight"] == [4, 1, 3, 3, 3]
    assert _shapes(net)[f"model.{len(net.model) - 1}.weight"] == [6, 4, 3, 3, 3]
    # 3 + 2 encoder convs, 2 bottleneck, 2 x 2 decoder, 1 final
    assert sum(isinstance(m, torch.nn.Conv3d) for m in net.model) == 4 * 2 + 4
    with torch.no_grad():
        assert net.eval()(torch.rand(2, 1, 8, 12, 16)).shape == (2, 6, 8, 12, 16)
    inst = AnatomixUNet(ngf=4, num_downs=1, norm="instance")
    assert not any("running_mean" in k for k in inst.state_dict())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ngf": 0}, "ngf"),
        ({"num_downs": 2.0}, "num_downs"),
        ({"norm": "group"}, "norm"),
        ({"output_nc": -1}, "output_nc"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AnatomixUNet(**kwargs)
    with pytest.raises(ValueError, match="layer"):
        AnatomixUNet(ngf=2, num_downs=1)(torch.rand(1, 1, 4, 4, 4), layer="bottleneck")


def test_maskgen_checkpoint_builds_its_own_arch(tmp_path):
    net = _randomise(AnatomixUNet(output_nc=6, ngf=4, num_downs=2, norm="instance"), seed=4)
    path = W.save_anatomix_checkpoint(net, tmp_path / "pre" / "ckpt.pt", extra={"step": 7, "note": "pretrain"})
    assert not list(path.parent.glob(".*.tmp")), "temporary file left behind"
    raw = torch.load(path, weights_only=True)
    assert raw["arch"] == net.arch() and raw["step"] == 7
    fresh = W.load_anatomix_net(path)
    assert fresh.arch() == net.arch()
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(fresh(x), net(x))


def test_arch_is_inferred_from_a_plain_small_state_dict(tmp_path):
    net = _randomise(AnatomixUNet(output_nc=5, ngf=4, num_downs=3), seed=5)
    torch.save(net.state_dict(), tmp_path / "small.pth")
    assert W.infer_arch(net.state_dict()) == net.arch()
    assert W.load_anatomix_net(tmp_path / "small.pth").arch() == net.arch()


def test_mismatched_or_unreadable_files_name_the_file_and_keys(tmp_path):
    state = AnatomixUNet().state_dict()
    del state["model.4.running_var"]
    bad = tmp_path / "broken.pth"
    torch.save(state, bad)
    with pytest.raises(MaskgenError, match=r"broken\.pth.*missing keys.*model\.4\.running_var"):
        W.load_anatomix_net(bad)

    small = AnatomixUNet(ngf=4, num_downs=2).state_dict()
    wrong = tmp_path / "wrong_arch.pt"
    torch.save({"state_dict": small, "arch": {"ngf": 8, "num_downs": 2}}, wrong)
    with pytest.raises(MaskgenError, match=r"wrong_arch\.pt.*shape mismatches.*model\.0\.weight"):
        W.load_anatomix_net(wrong)

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(MaskgenError, match=r"cannot read weights file .*junk\.pth"):
        W.load_anatomix_net(junk)

    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": state, "cfg": Path("/x")}, unsafe)  # refused by weights_only=True
    with pytest.raises(MaskgenError, match=r"unsafe\.pth"):
        W.load_anatomix_net(unsafe)

    nothing = tmp_path / "empty.pth"
    torch.save({"epoch": 3}, nothing)
    with pytest.raises(MaskgenError, match=r"empty\.pth holds no state_dict"):
        W.load_anatomix_net(nothing)


def test_extractor_is_frozen_and_fingerprint_tracks_weights(tmp_path):
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save(_randomise(AnatomixUNet(ngf=4, num_downs=2), seed=6).state_dict(), a)
    torch.save(_randomise(AnatomixUNet(ngf=4, num_downs=2), seed=7).state_dict(), b)
    ea = AnatomixExtractor(W.load_anatomix_net(a), weights_sha256=W.sha256_file(a))
    eb = AnatomixExtractor(W.load_anatomix_net(b), weights_sha256=W.sha256_file(b))
    ea2 = AnatomixExtractor(W.load_anatomix_net(a), layer="penultimate", weights_sha256=W.sha256_file(a))
    fa, fb = ea.fingerprint(), eb.fingerprint()
    assert fa["weights_sha256"] != fb["weights_sha256"] and len(fa["weights_sha256"]) == 64
    def without_sha(fp):
        return {k: v for k, v in fp.items() if k != "weights_sha256"}

    assert without_sha(fa) == without_sha(fb)
    assert fa == AnatomixExtractor(W.load_anatomix_net(a), weights_sha256=W.sha256_file(a)).fingerprint()
    assert ea2.fingerprint()["layer"] == "penultimate" and ea2.fingerprint() != fa
    assert json.loads(json.dumps(fa)) == fa
    assert set(fa) >= {"name", "layer", "weights_sha256", "out_channels", "arch", "input_scaling"}
    assert fa["arch"]["ngf"] == 4 and fa["out_channels"] == 16
    ea.train()
    assert not ea.training and not ea.net.training
    assert not any(p.requires_grad for p in ea.parameters())
    assert ea.size_multiple == 4
    with pytest.raises(ValueError, match="multiples of 4"):
        ea(torch.rand(1, 1, 8, 8, 10))
