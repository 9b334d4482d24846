"""`maskgen pretrain --device / --num-workers`: synthesis workers change nothing but speed, bf16 autocast keeps the
loss in float32, a missing GPU is a clear error, and (on a machine with one) a tiny CUDA run works."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from maskgen.cli import app

TINY = ["--crop-size", "32", "--batch-size", "1", "--ngf", "2", "--num-downs", "2", "--out-channels", "4",
        "--voxels", "32", "--warmup-steps", "2", "--checkpoint-every", "2", "--quiet", "--steps", "4"]


def _run(out, *args: str):
    return CliRunner().invoke(app, ["pretrain", "--out", str(out), *TINY, *args])


def _weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_synthesis_workers_and_resume_with_them_give_the_same_weights(tmp_path):
    plain = tmp_path / "a" / "w.pt"
    assert _run(plain, "--device", "cpu").exit_code == 0
    split = tmp_path / "b" / "w.pt"
    first = _run(split, "--num-workers", "1", "--stop-after", "2")     # resumed at step 2: workers start there
    assert first.exit_code == 0, first.output
    second = _run(split, "--num-workers", "2", "--resume")
    assert second.exit_code == 0, second.output
    a, b = _weights(plain), _weights(split)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.load(split, weights_only=True)["device"] == "cpu"


def test_bf16_autocast_runs_the_network_in_bf16_and_the_loss_in_float32(tmp_path, monkeypatch):
    import maskgen.pretrain.loop as loop

    seen = []
    real_loss = loop.VoxelContrastiveLoss.forward

    def spy(self, f1, f2, *args, **kwargs):
        seen.append((f1.dtype, f2.dtype))
        return real_loss(self, f1, f2, *args, **kwargs)

    monkeypatch.setattr(loop, "autocast", lambda device: torch.autocast("cpu", dtype=torch.bfloat16))
    monkeypatch.setattr(loop.VoxelContrastiveLoss, "forward", spy)
    captured = []
    real_forward = loop.build_network

    def build(cfg):
        net = real_forward(cfg)
        net.register_forward_hook(lambda m, i, o: captured.append(o.dtype))
        return net

    monkeypatch.setattr(loop, "build_network", build)
    out = tmp_path / "w.pt"
    result = _run(out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert captured and set(captured) == {torch.bfloat16}
    assert seen and set(seen) == {(torch.float32, torch.float32)}
    assert all(torch.isfinite(v).all() for v in _weights(out).values() if v.is_floating_point())


def test_cuda_without_a_gpu_and_bad_workers_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = _run(tmp_path / "w.pt", "--device", "cuda")
    assert result.exit_code == 1 and "--device cuda" in result.stderr and "no CUDA device" in result.stderr
    bad = _run(tmp_path / "x.pt", "--device", "tpu")
    assert bad.exit_code == 1 and "device must be one of" in bad.stderr and "'tpu'" in bad.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiny_cuda_run_writes_cpu_weights_that_load(tmp_path):
    from maskgen.extract.registry import build_extractor

    out = tmp_path / "w.pt"
    result = _run(out, "--device", "cuda", "--num-workers", "2")
    assert result.exit_code == 0, result.output
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert ckpt["device"] == "cuda" and all(v.device.type == "cpu" for v in ckpt["state_dict"].values())
    resumed = _run(tmp_path / "r.pt", "--device", "cuda", "--stop-after", "2")
    assert resumed.exit_code == 0 and _run(tmp_path / "r.pt", "--device", "cuda", "--resume").exit_code == 0
    assert build_extractor("anatomix", weights=str(out)).out_channels == 4
