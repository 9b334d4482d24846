"""End-to-end training on a real tiny store (synthetic 32^3 volumes, `mind` features, made by run_extract)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _helpers import synthetic_store, tiny_train_config
from maskgen.errors import MaskgenError
from maskgen.train.checkpoint import load_run
from maskgen.train.loop import train

@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return synthetic_store(tmp_path_factory.getbasetemp() / "train-tiny-store")  # shared with test_train_*.py


def _weights(run: Path, name: str = "last.pt") -> dict:
    return torch.load(run / name, weights_only=True)["model"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_gives_the_same_weights_as_one_run(store, tmp_path, workers):
    one = train(tiny_train_config(store, tmp_path / "one", num_workers=workers), progress=False)
    two = tmp_path / "two"
    train(tiny_train_config(store, two, num_workers=workers), stop_at=2, progress=False)
    assert torch.load(two / "last.pt", weights_only=True)["step"] == 2
    train(tiny_train_config(store, two, num_workers=workers), resume=True, progress=False)
    assert _same(_weights(one), _weights(two))
    ck_one = torch.load(one / "last.pt", weights_only=True)
    ck_two = torch.load(two / "last.pt", weights_only=True)
    assert _same(ck_one["optimizer"]["state"][0], ck_two["optimizer"]["state"][0])
    steps = [r["step"] for r in map(json.loads, (two / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == [1, 2, 3, 4]
    # a different seed trains differently (the comparison above can fail)
    other = train(tiny_train_config(store, tmp_path / "other", seed=4), progress=False)
    assert not _same(_weights(one), _weights(other))


def test_run_folder_checkpoints_and_load_run(store, tmp_path):
    from maskgen.store.reader import FeatureStore
    from maskgen.train.inference import predict_volume

    run = train(tiny_train_config(store, tmp_path / "run", n_train=1), progress=False)
    assert {p.name for p in run.iterdir()} >= {"config.json", "metrics.jsonl", "progress.png", "best.pt", "last.pt"}
    config = json.loads((run / "config.json").read_text())
    assert len(config["train_cases"]) == 1 and config["crop_zyx"] == [16, 16, 16] and config["n_train"] == 1
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rec = [r for r in records if "loss" in r]
    val_rec = [r for r in records if "val_dice" in r]
    assert [r["step"] for r in train_rec] == [1, 2, 3, 4] and [r["step"] for r in val_rec] == [2, 4]
    assert all({"loss", "lr", "crops_per_s"} <= set(r) for r in train_rec)
    assert train_rec[0]["lr"] == pytest.approx(2e-4) and all(0 <= r["val_dice"] <= 1 for r in val_rec)
    assert torch.load(run / "last.pt", weights_only=True)["optimizer"]["param_groups"][0]["weight_decay"] == 1e-4
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert {"model", "optimizer", "step", "rng", "config", "model_config", "store", "best_val_dice"} <= set(ckpt)
    assert {"torch", "cuda"} == set(ckpt["rng"]) and ckpt["step"] == 4
    assert ckpt["store"]["extractor"]["name"] == "mind" and ckpt["model_config"]["in_channels"] == 13

    model, cfg, best = load_run(run, "best")
    assert not model.training and cfg.train_cases == tuple(config["train_cases"])
    assert best["best_val_dice"] == max(r["val_dice"] for r in val_rec)
    fs = FeatureStore(store)
    case = fs.cases(split="val")[0]
    data = fs.read_case(case.case_id)
    probs = predict_volume(model, data["image"], data["features"], cfg, "cpu")
    assert probs.shape == (3, 32, 32, 32)
    torch.testing.assert_close(probs.sum(0), torch.ones(32, 32, 32))
    with pytest.raises(MaskgenError, match="does not exist"):
        load_run(tmp_path / "missing")


def test_new_run_refuses_a_non_empty_folder_and_resume_needs_a_checkpoint(store, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(MaskgenError, match="not empty.*--resume.*--overwrite"):
        train(tiny_train_config(store, run, steps=1), progress=False)
    train(tiny_train_config(store, run, steps=1), overwrite=True, progress=False)
    assert (run / "notes.txt").exists() and (run / "last.pt").exists()  # --overwrite removes only run files
    with pytest.raises(MaskgenError, match="no checkpoint"):
        train(tiny_train_config(store, tmp_path / "fresh"), resume=True, progress=False)
    with pytest.raises(MaskgenError, match="mask_rate: run has 0.5, given 0.25"):
        train(tiny_train_config(store, run, steps=1, mask_rate=0.25), resume=True, progress=False)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(store, tmp_path, monkeypatch):
    import maskgen.train.step as loop

    real = loop.assemble_inputs
    calls = {"n": 0}

    def poisoned(*args, **kwargs):  # the training step's input assembly (validation imports its own)
        calls["n"] += 1
        z = real(*args, **kwargs)
        return z * float("nan") if calls["n"] == 3 else z

    monkeypatch.setattr(loop, "assemble_inputs", poisoned)
    run = tmp_path / "run"
    with pytest.raises(MaskgenError, match=r"non-finite \(nan; the update was not applied\) at step 3.*step 2\) is untouched"):
        train(tiny_train_config(store, run), progress=False)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    digest = hashlib.sha256((run / "last.pt").read_bytes()).hexdigest()
    monkeypatch.setattr(loop, "assemble_inputs", real)
    assert hashlib.sha256((run / "last.pt").read_bytes()).hexdigest() == digest


def test_training_never_runs_the_extractor_unless_online(store, tmp_path, monkeypatch):
    import maskgen.extract.base as base
    import maskgen.extract.inference as inference
    import maskgen.extract.registry as registry

    def forbidden(*args, **kwargs):
        raise AssertionError("the extractor ran during cached-feature training")

    monkeypatch.setattr(registry, "build_extractor", forbidden)
    monkeypatch.setattr(inference, "extract_batch", forbidden)
    monkeypatch.setattr(base.Extractor, "forward", forbidden)
    train(tiny_train_config(store, tmp_path / "cached", steps=2), progress=False)
    monkeypatch.undo()

    calls = {"build": 0, "batch": 0}
    real_build, real_batch = registry.build_extractor, inference.extract_batch

    def build(*args, **kwargs):
        calls["build"] += 1
        return real_build(*args, **kwargs)

    def batch(extractor, crops):
        calls["batch"] += 1
        assert crops.shape == (2, 1, 16, 16, 16)
        return real_batch(extractor, crops)

    monkeypatch.setattr(registry, "build_extractor", build)
    monkeypatch.setattr(inference, "extract_batch", batch)
    run = train(tiny_train_config(store, tmp_path / "online", steps=2, online_features=True), progress=False)
    assert calls == {"build": 1, "batch": 2}
    assert json.loads((run / "config.json").read_text())["online_features"] is True


@pytest.mark.parametrize(
    "inputs,norm,aug_device", [("image", "crop", "cpu"), ("features", "volume", "device"), ("both", "volume", "device")]
)
def test_input_modes_normalisations_and_device_augmentation(store, tmp_path, inputs, norm, aug_device):
    run = train(tiny_train_config(store, tmp_path / "run", steps=2, val_every=0, inputs=inputs, feature_norm=norm,
                     aug_device=aug_device), progress=False)
    model, cfg, ckpt = load_run(run, "last")
    assert ckpt["model_config"]["in_channels"] == {"image": 1, "features": 12, "both": 13}[inputs]
    assert cfg.feature_norm == norm and np.isfinite(ckpt["val_dice"])


def _record_training_inputs(monkeypatch) -> dict[str, list]:
    """Record, in the real training loop, the network input before view masking (`assemble_inputs` in the step)
    and what the model receives (a forward pre-hook on the model `setup` builds), training forwards only."""
    import maskgen.train.setup as setup
    import maskgen.train.step as step

    seen: dict[str, list] = {"assembled": [], "model": []}
    real_assemble, real_build = step.assemble_inputs, setup.build_model

    def assemble(*args, **kwargs):
        z = real_assemble(*args, **kwargs)
        seen["assembled"].append(z.detach().clone())
        return z

    def build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        model.register_forward_pre_hook(
            lambda m, inputs: seen["model"].append(inputs[0].detach().clone()) if m.training else None)
        return model

    monkeypatch.setattr(step, "assemble_inputs", assemble)
    monkeypatch.setattr(setup, "build_model", build)
    return seen


@pytest.mark.parametrize("rate", [0.9, 0.0])
def test_the_training_loop_masks_whole_input_channels_at_the_rate(store, tmp_path, monkeypatch, rate):
    """Issue 11.6: the model receives z with whole channels zeroed at --mask-rate (survivors scaled by 1/(1-p)),
    and z untouched at rate 0."""
    seen = _record_training_inputs(monkeypatch)
    train(tiny_train_config(store, tmp_path / "run", steps=6, batch_size=4, val_every=0, mask_rate=rate),
          progress=False)
    assert len(seen["model"]) == len(seen["assembled"]) == 6
    before, after = torch.cat(seen["assembled"]), torch.cat(seen["model"])
    assert after.shape == before.shape == (24, 13, 16, 16, 16)
    live = before.flatten(2).abs().amax(2) > 0                 # channels with content before masking
    zeroed = (after.flatten(2) == 0).all(2) & live
    kept = ~zeroed & live
    n = int(live.sum())
    assert n > 250
    if rate == 0:
        assert torch.equal(after, before)
        return
    observed = zeroed.sum().item() / n
    assert abs(observed - rate) < 4 * (rate * (1 - rate) / n) ** 0.5, observed
    survivors = kept[:, :, None, None, None].expand_as(before)
    torch.testing.assert_close(after[survivors], before[survivors] / (1 - rate), rtol=1e-5, atol=1e-6)
    assert zeroed[:, 0].any()  # the image channel is masked too, as in the official code


def test_default_crops_are_uniform(store, tmp_path, monkeypatch):
    """Issue 11.4: by default (the paper) no crop is centred on foreground; --fg-fraction 1 centres them all."""
    from maskgen.train.sampling import CropSampler

    picked: list[int] = []
    real = CropSampler.sample

    def sample(self, rng):
        choice = real(self, rng)
        picked.append(choice.foreground_class)
        return choice

    monkeypatch.setattr(CropSampler, "sample", sample)
    train(tiny_train_config(store, tmp_path / "uniform", steps=5, val_every=0), progress=False)
    assert len(picked) == 10 and set(picked) == {0}
    picked.clear()
    train(tiny_train_config(store, tmp_path / "fg", steps=5, val_every=0, fg_fraction=1.0), progress=False)
    assert len(picked) == 10 and 0 not in picked
