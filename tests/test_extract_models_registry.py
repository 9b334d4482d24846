"""build_extractor and weights resolution: flag > env > hub cache > download, fallbacks and their messages."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from maskgen.errors import MaskgenError
from maskgen.extract import weights as W
from maskgen.extract.anatomix import AnatomixExtractor, AnatomixUNet
from maskgen.extract.mind import MindSSC
from maskgen.extract.registry import ExtractorFallbackWarning, build_extractor

_REAL_HUB_CACHE_LOOKUP = W._hub_cache_lookup


@pytest.fixture(autouse=True)
def _nothing_installed(monkeypatch, tmp_path):
    """No env var, empty hub cache, no download, no shipped default: each test adds what it needs."""
    monkeypatch.delenv(W.ENV_VAR, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(W, "_hub_cache_lookup", lambda: None)

    def no_download(timeout):
        raise AssertionError("tests must never download")

    monkeypatch.setattr(W, "_hub_download", no_download)
    monkeypatch.setattr(W, "SHIPPED_DIR", tmp_path / "no-shipped-weights")


def _save_small(path, seed=0, **arch):
    torch.manual_seed(seed)
    net = AnatomixUNet(**{"output_nc": 6, "ngf": 4, "num_downs": 2, **arch})
    torch.save(net.state_dict(), path)
    return path


def test_auto_falls_back_to_mind_with_a_visible_warning():
    with pytest.warns(ExtractorFallbackWarning, match=r"falling back to the 'mind' extractor.*--weights"):
        ex = build_extractor("auto")
    assert isinstance(ex, MindSSC) and ex.fingerprint()["name"] == "mind"


def test_explicit_anatomix_without_weights_says_how_to_pass_them():
    with pytest.raises(MaskgenError, match=rf"no anatomix weights found.*--weights PATH.*{W.ENV_VAR}"):
        build_extractor("anatomix")


def test_resolution_order_flag_env_cache_download(tmp_path, monkeypatch):
    flag, env, cached, downloaded = (_save_small(tmp_path / f"{n}.pth", seed=i)
                                     for i, n in enumerate(["flag", "env", "cached", "dl"]))
    monkeypatch.setenv(W.ENV_VAR, str(env))
    monkeypatch.setattr(W, "_hub_cache_lookup", lambda: cached)
    monkeypatch.setattr(W, "_hub_download", lambda timeout: downloaded)
    monkeypatch.setattr(W, "_hub_probe", lambda timeout: None)  # the hub answers
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(W, "_hub_offline", lambda: False)
    assert W.find_anatomix_weights(flag) == W.WeightsFile(flag, "--weights")
    assert W.find_anatomix_weights() == W.WeightsFile(env, W.ENV_VAR)
    monkeypatch.delenv(W.ENV_VAR)
    assert W.find_anatomix_weights() == W.WeightsFile(cached, "hub-cache")
    monkeypatch.setattr(W, "_hub_cache_lookup", lambda: None)
    assert W.find_anatomix_weights() == W.WeightsFile(downloaded, "hub-download")
    assert W.find_anatomix_weights(allow_download=False) is None
    monkeypatch.setattr(W, "_hub_offline", lambda: True)
    assert W.find_anatomix_weights() is None


def test_missing_explicit_files_are_errors_not_fallbacks(tmp_path, monkeypatch):
    with pytest.raises(MaskgenError, match=r"nope\.pth \(--weights\) does not exist"):
        build_extractor("auto", weights=tmp_path / "nope.pth")
    monkeypatch.setenv(W.ENV_VAR, str(tmp_path / "gone.pth"))
    with pytest.raises(MaskgenError, match=rf"{W.ENV_VAR}=.*gone\.pth does not exist"):
        build_extractor("auto")


def test_hub_cache_lookup_reads_the_standard_cache_layout_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert _REAL_HUB_CACHE_LOOKUP() is None
    repo = tmp_path / "models--neeldey--anatomix"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert _REAL_HUB_CACHE_LOOKUP() is None
    _save_small(snapshot / W.HUB_FILENAME)
    assert _REAL_HUB_CACHE_LOOKUP() == snapshot / W.HUB_FILENAME
    monkeypatch.setattr(W, "_hub_cache_lookup", _REAL_HUB_CACHE_LOOKUP)
    ex = build_extractor("anatomix")
    assert ex.source == f"hub-cache: {snapshot / W.HUB_FILENAME}"


def test_offline_mode_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert W._hub_offline()


def test_auto_uses_anatomix_from_env_and_records_source(tmp_path, monkeypatch):
    path = _save_small(tmp_path / "anatomix.pth")
    monkeypatch.setenv(W.ENV_VAR, str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExtractorFallbackWarning)
        ex = build_extractor("auto")
    assert isinstance(ex, AnatomixExtractor) and ex.name == "anatomix"
    assert ex.source == f"{W.ENV_VAR}: {path}"
    assert ex.fingerprint()["weights_sha256"] == W.sha256_file(path)
    assert ex.out_channels == 6 and ex.size_multiple == 4


def test_layers_and_channels(tmp_path):
    path = _save_small(tmp_path / "w.pth")
    final = build_extractor("anatomix", weights=path)
    pen = build_extractor("anatomix", weights=path, layer="penultimate")
    x = torch.rand(1, 1, 8, 8, 8)
    assert final(x).shape[1] == 6 and pen(x).shape[1] == 4 and pen.out_channels == 4
    assert (pen(x) >= 0).all()
    with pytest.raises(MaskgenError, match="unknown feature layer 'middle'"):
        build_extractor("anatomix", weights=path, layer="middle")


def test_auto_prefers_a_shipped_pretrained_extractor_over_mind(tmp_path, monkeypatch):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    net = AnatomixUNet(output_nc=8, ngf=4, num_downs=2)
    W.save_anatomix_checkpoint(net, shipped / "small.pt")
    (shipped / "default.json").write_text(json.dumps({"file": "small.pt", "name": "maskgen-small"}))
    monkeypatch.setattr(W, "SHIPPED_DIR", shipped)
    with pytest.warns(ExtractorFallbackWarning, match="shipped maskgen-pretrained extractor 'maskgen-small'"):
        ex = build_extractor("auto")
    assert ex.name == "maskgen-small" and ex.out_channels == 8 and ex.source.startswith("shipped")
    (shipped / "default.json").write_text(json.dumps({"file": "missing.pt"}))
    with pytest.raises(MaskgenError, match=r"missing\.pt, which does not exist"):
        build_extractor("auto")


def test_bad_names_and_options():
    with pytest.raises(MaskgenError, match="extractor 'dino' is unknown; choose one of auto, mind, anatomix"):
        build_extractor("dino")
    with pytest.raises(MaskgenError, match=r"weights 'x\.pth' is not used by the 'mind' extractor.*anatomix"):
        build_extractor("mind", weights="x.pth")
    with pytest.raises(MaskgenError, match="layer 'penultimate' is not used by the 'mind' extractor"):
        build_extractor("mind", layer="penultimate")
    with pytest.raises(MaskgenError, match="takes no ':PATH'"):
        build_extractor("mind:/x.pt")


def test_mind_on_device_is_frozen():
    ex = build_extractor("mind", device="cpu")
    ex.train()
    assert not ex.training and ex.out_channels == 12


# -- rebuilding a store's extractor from its fingerprint (training --online-features, evaluate, predict, workers) --
def _fingerprint_of(path, **kwargs):
    return build_extractor("anatomix", weights=path, **kwargs).fingerprint()


def test_rebuild_finds_the_weights_with_the_recorded_sha256(tmp_path, monkeypatch):
    """Other weights in $MASKGEN_ANATOMIX_WEIGHTS, the right ones only in the shipped folder: the lookup skips the
    first because its sha256 differs, and builds the second with the recorded layer."""
    from maskgen.extract.registry import rebuild_extractor

    right = _save_small(tmp_path / "right.pth", seed=1)
    fp = _fingerprint_of(right, layer="penultimate")
    assert fp["kind"] == "anatomix"
    monkeypatch.setenv(W.ENV_VAR, str(_save_small(tmp_path / "other.pth", seed=2)))
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "small.pth").write_bytes(right.read_bytes())
    (shipped / "default.json").write_text(json.dumps({"file": "small.pth", "name": "maskgen-small"}))
    monkeypatch.setattr(W, "SHIPPED_DIR", shipped)
    ex = rebuild_extractor(fp)
    assert ex.fingerprint()["weights_sha256"] == fp["weights_sha256"] and ex.layer == "penultimate"
    assert ex.weights_path == str(shipped / "small.pth")
    # the file named in the store's extract_config comes first
    ex = rebuild_extractor(fp, extract_config={"weights": str(right)})
    assert ex.weights_path == str(right)


def test_rebuild_refuses_other_weights_naming_both_sha256(tmp_path, monkeypatch):
    from maskgen.extract.registry import rebuild_extractor

    right, other = _save_small(tmp_path / "right.pth", seed=1), _save_small(tmp_path / "other.pth", seed=2)
    fp = _fingerprint_of(right)
    with pytest.raises(MaskgenError) as info:
        rebuild_extractor(fp, weights=other, purpose="predict needs it")
    text = str(info.value)
    assert text.startswith("predict needs it") and W.sha256_file(right) in text and W.sha256_file(other) in text
    monkeypatch.setenv(W.ENV_VAR, str(other))
    with pytest.raises(MaskgenError, match=rf"(?s){W.sha256_file(other)}.*--weights"):
        rebuild_extractor(fp)
    monkeypatch.delenv(W.ENV_VAR)
    with pytest.raises(MaskgenError, match="no anatomix weights found"):
        rebuild_extractor(fp)  # nothing found, and never a download (the fixture's _hub_download raises)


def test_rebuild_downloads_only_when_asked(tmp_path, monkeypatch):
    from maskgen.extract.registry import rebuild_extractor

    right = _save_small(tmp_path / "right.pth", seed=1)
    fp = _fingerprint_of(right)
    calls = []
    monkeypatch.setattr(W, "_hub_offline", lambda: False)
    monkeypatch.setattr(W, "_hub_probe", lambda timeout: None)
    monkeypatch.setattr(W, "_hub_download", lambda timeout: calls.append(1) or right)
    with pytest.raises(MaskgenError):
        rebuild_extractor(fp)
    assert calls == []
    assert rebuild_extractor(fp, allow_download=True).weights_path == str(right) and calls == [1]


def test_rebuild_of_mind_and_identity_rules(tmp_path):
    from maskgen.extract.registry import identity_problems, rebuild_extractor

    fp = build_extractor("mind").fingerprint()
    assert rebuild_extractor(fp, weights=tmp_path / "ignored.pth").fingerprint() == fp
    # the name is informative: the same weights under another name make the same features
    assert identity_problems(fp, {**fp, "name": "other", "kind": "other"}) == []
    problems = identity_problems(fp, {**fp, "out_channels": 8})
    assert problems[0].startswith("extractor: store has 'mind' (weights sha256 none)")
    assert problems[1] == "number of feature channels: store has 12, this run has 8"
    # records made before `kind` existed are recognised by their architecture
    old = {k: v for k, v in fp.items() if k != "kind"}
    assert rebuild_extractor(old).fingerprint() == fp
    with pytest.raises(MaskgenError, match=r"'dino' extractor, which is not installed.*maskgen\.extractors"):
        rebuild_extractor({**fp, "kind": "dino", "arch": {"type": "DINO"}})
