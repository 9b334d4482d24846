"""`maskgen pretrain`: a tiny run end to end, loading through the anatomix path, exact resume, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from maskgen.cli import app
from maskgen.pretrain.config import PretrainConfig
from maskgen.pretrain.loop import lr_at

TINY = ["--crop-size", "32", "--batch-size", "1", "--ngf", "2", "--num-downs", "2", "--out-channels", "4",
        "--voxels", "32", "--warmup-steps", "2", "--checkpoint-every", "2", "--quiet"]


def _run(*args: str):
    return CliRunner().invoke(app, ["pretrain", *args, *TINY])


def _records(out) -> list[dict]:
    lines = (out.parent / f"{out.name}.state" / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in lines]


def test_tiny_run_writes_weights_that_load_as_anatomix(tmp_path):
    from maskgen.extract.registry import build_extractor
    from maskgen.extract.weights import read_checkpoint

    out = tmp_path / "weights.pt"
    result = _run("--out", str(out), "--steps", "3", "--seed", "1")
    assert result.exit_code == 0, result.output
    state_dir = tmp_path / "weights.pt.state"
    assert (state_dir / "last.pt").is_file() and (state_dir / "progress.png").is_file()
    assert len(_records(out)) == 1 and _records(out)[0]["step"] == 3     # log_every 10: the final step is logged
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert ckpt["arch"] == {"input_nc": 1, "output_nc": 4, "ngf": 2, "num_downs": 2, "norm": "batch"}
    assert ckpt["step"] == 3 and ckpt["config"]["seed"] == 1 and ckpt["seed"] == 1
    state, arch = read_checkpoint(out)
    assert arch["ngf"] == 2 and set(state) == set(ckpt["state_dict"])
    extractor = build_extractor("anatomix", weights=str(out))
    assert extractor.out_channels == 4 and extractor.weights_sha256
    feats = extractor(torch.rand(1, 1, 16, 16, 16))
    assert feats.shape == (1, 4, 16, 16, 16) and torch.isfinite(feats).all()
    # the weights changed from their initialisation
    from maskgen.pretrain.loop import build_network

    init = build_network(PretrainConfig(out=out, crop_size=32, ngf=2, num_downs=2, out_channels=4, seed=1))
    assert any(not torch.equal(v, ckpt["state_dict"][k]) for k, v in init.state_dict().items() if v.is_floating_point())


def test_exact_resume_n_plus_n_equals_2n(tmp_path):
    straight = tmp_path / "a" / "w.pt"
    assert _run("--out", str(straight), "--steps", "6").exit_code == 0
    split = tmp_path / "b" / "w.pt"
    first = _run("--out", str(split), "--steps", "6", "--stop-after", "3")
    assert first.exit_code == 0, first.output
    assert not split.exists() and "--resume" in first.output
    second = _run("--out", str(split), "--steps", "6", "--resume")
    assert second.exit_code == 0, second.output
    a = torch.load(straight, weights_only=True)["state_dict"]
    b = torch.load(split, weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _records(straight) == _records(split)


def test_resume_and_overwrite_errors_name_the_fix(tmp_path):
    out = tmp_path / "w.pt"
    missing = _run("--out", str(out), "--steps", "4", "--resume")
    assert missing.exit_code == 1 and "nothing to resume" in missing.stderr
    assert _run("--out", str(out), "--steps", "4", "--stop-after", "2").exit_code == 0
    again = _run("--out", str(out), "--steps", "4")
    assert again.exit_code == 1 and "--resume" in again.stderr
    changed = _run("--out", str(out), "--steps", "4", "--resume", "--lr", "0.5")
    assert changed.exit_code == 1 and "lr: saved 0.001, now 0.5" in changed.stderr
    bad = CliRunner().invoke(app, ["pretrain", "--out", str(tmp_path / "x.pt"), "--crop-size", "36", "--num-downs", "3"])
    assert bad.exit_code == 1 and "crop_size 36" in bad.stderr


def test_lr_is_a_pure_function_of_step(tmp_path):
    cfg = PretrainConfig(out=tmp_path / "w.pt", steps=100, lr=1e-3, min_lr=1e-5, warmup_steps=10)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(99, cfg) == pytest.approx(1e-5, rel=0.05)
    values = [lr_at(s, cfg) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert [lr_at(s, cfg) for s in range(100)] == [lr_at(s, cfg) for s in range(100)]


def test_synth_settings_reach_the_saved_config_and_bad_ones_fail(tmp_path):
    out = tmp_path / "w.pt"
    result = _run("--out", str(out), "--steps", "1", "--synth", "nested_fraction=0.5",
                  "--synth", "layer_thickness=0.1,0.2")
    assert result.exit_code == 0, result.output
    saved = torch.load(out, weights_only=True)["config"]["synth"]
    assert saved["nested_fraction"] == 0.5 and list(saved["layer_thickness"]) == [0.1, 0.2]
    bad = _run("--out", str(tmp_path / "x.pt"), "--steps", "1", "--synth", "nested_fractoin=0.5")
    assert bad.exit_code == 1 and "unknown synthesis setting 'nested_fractoin'" in bad.stderr


def test_mind_ssc_input_network_trains_and_extracts_from_the_image(tmp_path):
    """`--input mind-ssc`: the network computes MIND-SSC of its image input, the weights file records it, and the
    anatomix path rebuilds the same map image -> MIND-SSC -> UNet (fingerprint included)."""
    from maskgen.extract.mind import mind_ssc
    from maskgen.extract.registry import build_extractor

    out = tmp_path / "mind.pt"
    result = _run("--out", str(out), "--steps", "2", "--input", "mind-ssc")
    assert result.exit_code == 0, result.output
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert ckpt["arch"] == {"input_nc": 12, "output_nc": 4, "ngf": 2, "num_downs": 2, "norm": "batch",
                            "input_transform": "mind-ssc"}
    assert ckpt["config"]["input"] == "mind-ssc" and ckpt["state_dict"]["model.0.weight"].shape[1] == 12
    extractor = build_extractor("anatomix", weights=str(out))
    assert extractor.fingerprint()["arch"]["input_transform"] == "mind-ssc"
    image = torch.rand(1, 1, 16, 16, 16)
    feats = extractor(image)
    from maskgen.extract.anatomix import AnatomixUNet

    plain = AnatomixUNet(input_nc=12, output_nc=4, ngf=2, num_downs=2).eval()   # the same UNet, no transform
    plain.load_state_dict(extractor.net.state_dict())
    with torch.no_grad():
        expected = plain(mind_ssc(image))
    assert feats.shape == (1, 4, 16, 16, 16)
    torch.testing.assert_close(feats, expected)
    # an image-input network on the same file would be a different extractor: the fingerprints differ
    image_out = tmp_path / "image.pt"
    assert _run("--out", str(image_out), "--steps", "1").exit_code == 0
    assert build_extractor("anatomix", weights=str(image_out)).fingerprint()["arch"].get("input_transform") is None


def test_mind_ssc_input_arch_errors_name_the_bad_value(tmp_path):
    from maskgen.errors import MaskgenError
    from maskgen.extract.anatomix import AnatomixUNet
    from maskgen.extract.weights import load_anatomix_net, save_anatomix_checkpoint

    with pytest.raises(ValueError, match="input_nc must be 12, got 1"):
        AnatomixUNet(input_nc=1, input_transform="mind-ssc")
    with pytest.raises(ValueError, match="'sobel'"):
        AnatomixUNet(input_nc=1, input_transform="sobel")
    result = _run("--out", str(tmp_path / "w.pt"), "--steps", "1", "--input", "mind")
    assert result.exit_code != 0 and "input must be one of ('image', 'mind-ssc'), got 'mind'" in result.output
    # a file whose recorded transform is unknown fails to load with its path in the message
    path = tmp_path / "bad.pt"
    save_anatomix_checkpoint(AnatomixUNet(input_nc=12, output_nc=4, ngf=2, num_downs=2, input_transform="mind-ssc"),
                             path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["arch"]["input_transform"] = "sobel"
    torch.save(ckpt, path)
    with pytest.raises(MaskgenError, match="bad.pt.*sobel"):
        load_anatomix_net(path)


def test_append_input_features_are_the_unet_output_then_the_descriptor(tmp_path):
    from maskgen.extract.mind import mind_ssc
    from maskgen.extract.registry import build_extractor

    out = tmp_path / "append.pt"
    result = _run("--out", str(out), "--steps", "2", "--input", "mind-ssc", "--append-input")
    assert result.exit_code == 0, result.output
    extractor = build_extractor("anatomix", weights=str(out))
    assert extractor.out_channels == 4 + 12 and extractor.fingerprint()["arch"]["append_input"] is True
    image = torch.rand(1, 1, 16, 16, 16)
    feats = extractor(image)
    assert feats.shape == (1, 16, 16, 16, 16)
    torch.testing.assert_close(feats[:, 4:], mind_ssc(image))
    torch.testing.assert_close(feats[:, :4], extractor.net.forward(image)[:, :4])
    bad = _run("--out", str(tmp_path / "bad.pt"), "--steps", "1", "--append-input")
    assert bad.exit_code != 0 and "append_input needs input 'mind-ssc'" in bad.output


def test_a_state_saved_before_the_input_settings_existed_still_resumes(tmp_path):
    out = tmp_path / "w.pt"
    assert _run("--out", str(out), "--steps", "2", "--stop-after", "1").exit_code == 0
    last = tmp_path / "w.pt.state" / "last.pt"
    state = torch.load(last, weights_only=True)
    del state["config"]["input"], state["config"]["append_input"]      # as written by maskgen <= this change
    torch.save(state, last)
    result = _run("--out", str(out), "--steps", "2", "--resume")
    assert result.exit_code == 0, result.output
    assert out.is_file()
    other = _run("--out", str(out), "--steps", "2", "--resume", "--input", "mind-ssc")   # it saw the image
    assert other.exit_code != 0 and "input: saved 'image', now 'mind-ssc'" in other.output


def test_progress_lines_show_a_loss_from_the_first_step(tmp_path, monkeypatch):
    """The progress line of a fresh run shows the running mean loss before the first logged step (log_every 10),
    not 'loss nan'."""
    monkeypatch.setenv("MASKGEN_PROGRESS", "lines")
    args = [a for a in TINY if a != "--quiet"]
    result = CliRunner().invoke(app, ["pretrain", "--out", str(tmp_path / "w.pt"), "--steps", "3", *args,
                                      "--log-interval", "0.001"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("pretrain step")]
    assert lines and lines[0].startswith("pretrain step 1/3"), result.output
    losses = [float(line.split("loss ")[1].split()[0]) for line in lines]
    assert all(math.isfinite(v) and v > 0 for v in losses), lines
