"""End to end on the real modules: synthetic data -> `mind` store -> `maskgen sweep` (tiny UNets, a few steps) ->
evaluate, predict, analyze sensitivity / robustness / stability."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from _helpers import synthetic_store
from maskgen.cli import app
from maskgen.demo.synthetic import synthetic_labels
from maskgen.errors import MaskgenError

runner = CliRunner()

TINY = ["--steps", "4", "--batch-size", "2", "--channels", "4", "--depth", "2", "--crop-size", "16,16,16",
        "--val-every", "2", "--num-workers", "0", "--device", "cpu", "--quiet"]
#: the `sweep_dir` runs use the Table 15 network: 4 steps of the (smaller) default public UNet at width 4 leave a
#: near-constant prediction on this store, and test_predict_round_trip needs one with structure
SWEEP_TINY = [*TINY, "--unet", "table15"]


def invoke(args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """5 subjects of 24^3 (train 2 x contrast a, val 1 x b, test 2 x a+b), MIND features (12 channels)."""
    return synthetic_store(tmp_path_factory.mktemp("evaldata"), n_cases=5, size=24)


@pytest.fixture(scope="module")
def sweep_dir(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "sw"
    res = invoke(["sweep", "--features", store, "--out", out, "--mask-rate", "0.5", "--inputs", "image,both",
                  "--seeds", "0", *SWEEP_TINY])
    assert res.exit_code == 0, res.output
    return out


def test_sweep_writes_results(sweep_dir):
    for name in ("image-s0", "both-mr50-s0"):
        for split in ("val", "test"):
            assert (sweep_dir / name / f"eval-{split}.json").is_file()
    md = (sweep_dir / "results.md").read_text()
    assert "| method | seeds | val: b | test: a | test: b | test: all |" in md
    assert "| Image only | 0 |" in md and "| MR=50% | 0 |" in md
    rows = (sweep_dir / "results.csv").read_text().splitlines()
    # 2 variants x (val: b, all; test: a, b, all)
    assert len(rows) == 1 + 2 * 5
    assert rows[0].endswith(",empty_class") and all(r.endswith(",ignore") for r in rows[1:])
    assert "Dice convention (ignore: a class absent from the reference is not scored" in md
    assert (sweep_dir / "results.png").stat().st_size > 1000
    from PIL import Image

    with Image.open(sweep_dir / "results.png") as png:  # the note printed under the bars is also its Description
        assert "Error bars: \u00b11 standard error (s.e.) of the mean over cases" in png.text["Description"]


def test_sweep_second_invocation_trains_nothing(sweep_dir, store, monkeypatch):
    import maskgen.train.loop as loop

    def no_training(*args, **kwargs):
        raise AssertionError("the second invocation must not train")

    monkeypatch.setattr(loop, "train", no_training)
    before = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/last.pt")}
    res = invoke(["sweep", "--features", store, "--out", sweep_dir, "--mask-rate", "0.5", "--inputs", "image,both",
                  "--seeds", "0", *SWEEP_TINY])
    assert res.exit_code == 0, res.output
    assert res.output.count("finished earlier, skipped") == 2
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/last.pt")} == before


def test_sweep_refuses_a_folder_trained_otherwise(sweep_dir, store):
    args = [a if a != "4" else "6" for a in SWEEP_TINY]  # --steps 6
    res = invoke(["sweep", "--features", store, "--out", sweep_dir, "--mask-rate", "0.5", "--inputs", "image",
                  "--seeds", "0", *args])
    assert res.exit_code == 1
    assert "trained with other options" in res.stderr and "steps" in res.stderr
    res = invoke(["sweep", "--features", store, "--out", sweep_dir, "--mask-rate", "0.5", "--inputs", "image",
                  "--seeds", "0", "--empty-class", "zero", *TINY])
    assert res.exit_code == 1
    assert "trained with other options" in res.stderr and "empty_class 'ignore' there, 'zero' now" in res.stderr


def test_sweep_resumes_a_half_trained_variant(store, tmp_path):
    from maskgen.train.checkpoint import load_checkpoint
    from maskgen.train.config import TrainConfig
    from maskgen.train.loop import train

    out = tmp_path / "sw"
    cfg = TrainConfig(features=str(store), out=str(out / "both-mr50-s0"), inputs="both", mask_rate=0.5, steps=4,
                      batch_size=2, channels=4, depth=2, crop_zyx=(16, 16, 16), val_every=2, num_workers=0,
                      device="cpu", seed=0)
    train(cfg, stop_at=2, progress=False)  # interrupted half way
    assert int(load_checkpoint(out / "both-mr50-s0" / "last.pt")["step"]) == 2
    res = invoke(["sweep", "--features", store, "--out", out, "--mask-rate", "0.5", "--inputs", "both",
                  "--seeds", "0", "--splits", "test", *TINY])
    assert res.exit_code == 0, res.output
    assert "continuing from" in res.output
    assert int(load_checkpoint(out / "both-mr50-s0" / "last.pt")["step"]) == 4
    steps = [json.loads(line)["step"] for line in (out / "both-mr50-s0" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4]
    assert (out / "both-mr50-s0" / "eval-test.json").is_file()


def test_evaluate_cli_matches_independent_dice(sweep_dir):
    from maskgen.evaluate.evaluate import load_eval
    from maskgen.store.reader import FeatureStore
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    from maskgen.train.inference import predict_volume
    from maskgen.train.checkpoint import load_run

    run = sweep_dir / "both-mr50-s0"
    res = invoke(["evaluate", run, "--split", "test", "--checkpoint", "last", "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "Dice" in res.output and "eval-test.json" in res.output
    doc = json.loads((run / "eval-test.json").read_text())
    assert doc["checkpoint"] == "last" and doc["step"] == 4 and doc["classes"] == ["class1", "class2"]
    assert [c["case_id"] for c in doc["cases"]] == ["sub-003_a", "sub-003_b", "sub-004_a", "sub-004_b"]
    assert set(doc["summary"]["by_domain"]) == {"a", "b"}
    assert doc["empty_class"] == "ignore" and "not scored (NaN) even if predicted" in doc["convention"]
    # every case's Dice against the paper's metric, computed here: MONAI DiceMetric(ignore_empty=True) on one-hot maps
    model, cfg, _ = load_run(run, "last")
    store = FeatureStore(doc["store"])
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    for case in doc["cases"]:
        data = store.read_case(case["case_id"])
        pred = predict_volume(model, data["image"], data["features"], cfg, "cpu", 0.5).argmax(0)
        ref = metric(one_hot(pred[None, None], 3), one_hot(torch.from_numpy(data["label"])[None, None].long(), 3))
        got = [math.nan if case["dice"][k] is None else case["dice"][k] for k in ("class1", "class2")]
        np.testing.assert_allclose(got, ref[0].numpy(), atol=1e-6)
    # the summary is the mean and s.e. of the per-case means in the CSV
    lines = (run / "eval-test.csv").read_text().splitlines()
    assert lines[0] == "case_id,domain,mean,dice_class1,dice_class2,empty_class"
    assert all(line.endswith(",ignore") for line in lines[1:])
    means = np.array([float(l.split(",")[2]) for l in lines[1:]])
    overall = doc["summary"]["all"]["overall"]
    assert overall["mean"] == pytest.approx(means.mean(), abs=1e-5)
    assert overall["se"] == pytest.approx(means.std(ddof=1) / math.sqrt(len(means)), abs=1e-5)
    assert overall["n"] == 4
    assert load_eval(run / "eval-test.json").overall.overall.mean == pytest.approx(overall["mean"])


def test_evaluate_writes_an_nnunet_style_summary_with_distances(sweep_dir, tmp_path):
    import shutil
    import warnings

    from monai.metrics import compute_hausdorff_distance

    from maskgen.store.reader import FeatureStore
    from maskgen.train.checkpoint import load_run
    from maskgen.train.inference import predict_volume

    run = tmp_path / "run"
    shutil.copytree(sweep_dir / "both-mr50-s0", run)
    res = invoke(["evaluate", run, "--split", "test", "--checkpoint", "last", "--metrics", "dice,hd95,nsd",
                  "--nsd-tolerance", "1.5", "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "HD95" in res.output and "summary-test.json" in res.output.replace("\n", "")
    doc = json.loads((run / "summary-test.json").read_text())
    ev = json.loads((run / "eval-test.json").read_text())
    assert doc["labels"] == {"1": "class1", "2": "class2"} and doc["nsd_tolerance_mm"] == 1.5
    assert doc["empty_class"] == "ignore" and doc["metrics"] == ["dice", "hd95", "nsd"]
    assert set(doc["mean_by_domain"]) == {"a", "b"} and set(doc["foreground_mean"]) >= {"Dice", "IoU", "HD95", "NSD"}
    model, cfg, _ = load_run(run, "last")
    store = FeatureStore(ev["store"])
    for case, scored in zip(ev["cases"], doc["metric_per_case"]):
        assert scored["case_id"] == case["case_id"] and scored["domain"] == case["domain"]
        data = store.read_case(case["case_id"])
        pred = predict_volume(model, data["image"], data["features"], cfg, "cpu", 0.5).argmax(0).numpy()
        for label, name in (("1", "class1"), ("2", "class2")):
            m = scored["metrics"][label]
            assert m["Dice"] == pytest.approx(case["dice"][name], abs=1e-9)
            p, r = pred == int(label), data["label"] == int(label)
            assert (m["TP"], m["FP"], m["FN"]) == ((p & r).sum(), (p & ~r).sum(), (~p & r).sum())
            assert m["n_pred"] == p.sum() and m["n_ref"] == r.sum()
            assert m["IoU"] == pytest.approx(m["TP"] / (m["TP"] + m["FP"] + m["FN"]))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                hd = compute_hausdorff_distance(torch.from_numpy(p)[None, None], torch.from_numpy(r)[None, None],
                                                include_background=True, percentile=95,
                                                spacing=list(store.case(case["case_id"]).spacing_zyx))
            assert m["HD95"] == pytest.approx(float(hd[0, 0]))
            assert 0.0 <= m["NSD"] <= 1.0
    assert doc["mean"]["1"]["Dice"] == pytest.approx(ev["summary"]["all"]["per_class"]["class1"]["mean"])


def test_evaluate_cli_errors(sweep_dir, tmp_path):
    res = invoke(["evaluate", sweep_dir / "image-s0", "--split", "holdout"])
    assert res.exit_code == 1 and "--split 'holdout'" in res.stderr
    res = invoke(["evaluate", tmp_path / "nope"])
    assert res.exit_code == 1 and "does not exist" in res.stderr
    res = invoke(["evaluate", sweep_dir / "image-s0", "--overlap", "1.0"])
    assert res.exit_code == 1 and "--overlap 1.0" in res.stderr


@pytest.fixture(scope="module")
def store_without_class2(tmp_path_factory):
    """The `store` data with class 2 erased (set to background) from the val case and test case sub-003_a."""
    from maskgen.demo.synthetic import make_synthetic_dataset
    from maskgen.extract.run import ExtractConfig, run_extract

    root = tmp_path_factory.mktemp("noclass2")
    data = make_synthetic_dataset(root / "data", n_cases=5, size=24)
    for case in ("sub-002_b", "sub-003_a"):
        path = data / "labelsTr" / f"{case}.nii.gz"
        img = nib.load(path)
        label = np.asarray(img.dataobj).copy()
        label[label == 2] = 0
        nib.save(nib.Nifti1Image(label, img.affine, img.header), path)
    run_extract(ExtractConfig(dataset=str(data / "pipeline.toml"), out=str(root / "store.zarr"), extractor="mind"),
                progress=False)
    return root / "store.zarr"


def _case(doc, case_id):
    return next(c for c in doc["cases"] if c["case_id"] == case_id)


def test_evaluate_empty_class_conventions(sweep_dir, store_without_class2, tmp_path):
    """A test case without class 2: the paper's convention leaves the class out of that case's Dice even where it
    is predicted; nnU-Net's (--empty-class zero) scores the false positives 0. Both record their convention."""
    import shutil

    docs = {}
    for convention in ("ignore", "zero"):
        run = tmp_path / convention
        shutil.copytree(sweep_dir / "both-mr50-s0", run)
        res = invoke(["evaluate", run, "--split", "test", "--checkpoint", "last", "--features", store_without_class2,
                      "--empty-class", convention, "--device", "cpu", "--quiet"])
        assert res.exit_code == 0, res.output
        docs[convention] = json.loads((run / "eval-test.json").read_text())
        assert docs[convention]["empty_class"] == convention
        assert (run / "eval-test.csv").read_text().splitlines()[1].endswith(f",{convention}")
    ignore, zero = _case(docs["ignore"], "sub-003_a"), _case(docs["zero"], "sub-003_a")
    assert ignore["dice"]["class2"] is None and ignore["mean"] == pytest.approx(ignore["dice"]["class1"])
    assert zero["dice"]["class2"] == 0.0  # the untrained model predicts class 2 somewhere
    assert zero["mean"] == pytest.approx(zero["dice"]["class1"] / 2)
    assert zero["dice"]["class1"] == pytest.approx(ignore["dice"]["class1"])
    for other in ("sub-003_b", "sub-004_a"):  # cases with every class: the same in both conventions
        assert _case(docs["ignore"], other) == _case(docs["zero"], other)
    res = invoke(["evaluate", sweep_dir / "both-mr50-s0", "--empty-class", "nnunet"])
    assert res.exit_code == 1 and "--empty-class 'nnunet' is not one of ignore, zero" in res.stderr


def test_validation_records_its_dice_convention(store_without_class2, tmp_path):
    """Validation (the val case lacks class 2) scores with the run's convention and writes it into metrics.jsonl."""
    from maskgen.train.config import TrainConfig
    from maskgen.train.loop import train

    vals = {}
    for convention in ("ignore", "zero"):
        cfg = TrainConfig(features=str(store_without_class2), out=str(tmp_path / convention), inputs="both",
                          mask_rate=0.5, steps=2, batch_size=2, channels=4, depth=2, crop_zyx=(16, 16, 16),
                          num_workers=0, device="cpu", empty_class=convention)
        train(cfg, progress=False)
        lines = [json.loads(line) for line in (tmp_path / convention / "metrics.jsonl").read_text().splitlines()]
        vals[convention] = next(r for r in lines if "val_dice" in r)
        assert vals[convention]["val_empty_class"] == convention
    assert vals["ignore"]["val_dice_per_class"][1] is None
    assert vals["zero"]["val_dice_per_class"][1] == 0.0  # predicted somewhere, absent from the reference
    assert vals["ignore"]["val_dice"] == pytest.approx(vals["ignore"]["val_dice_per_class"][0])
    assert vals["zero"]["val_dice"] == pytest.approx(vals["zero"]["val_dice_per_class"][0] / 2)


def test_sensitivity_table_has_one_row_per_input_channel(sweep_dir):
    run = sweep_dir / "both-mr50-s0"
    res = invoke(["analyze", "sensitivity", run, "--checkpoint", "last", "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    lines = (run / "analysis" / "sensitivity-val.csv").read_text().splitlines()
    assert lines[0] == "channel,dice,dice_se,delta_dice,delta_dice_se,cases"
    names = [l.split(",")[0] for l in lines[1:]]
    assert names == ["image"] + [f"feature {c}" for c in range(12)]
    doc = json.loads((run / "analysis" / "sensitivity-val.json").read_text())
    assert [g["channel"] for g in doc["groups"]] == ["image", "all features"]
    # the image group is the image channel row; delta = removed - full
    assert doc["groups"][0]["delta"] == doc["channels"][0]["delta"]
    full = doc["full"]["mean"]
    for row in doc["channels"]:
        assert row["delta"]["mean"] == pytest.approx(row["dice"]["mean"] - full, abs=1e-9)
    assert (run / "analysis" / "sensitivity-val.png").stat().st_size > 1000
    res = invoke(["analyze", "sensitivity", sweep_dir / "image-s0", "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    lines = (sweep_dir / "image-s0" / "analysis" / "sensitivity-val.csv").read_text().splitlines()
    assert [l.split(",")[0] for l in lines[1:]] == ["image"]


def test_robustness_runs_side_by_side(sweep_dir, tmp_path):
    runs = [sweep_dir / "image-s0", sweep_dir / "both-mr50-s0"]
    res = invoke(["analyze", "robustness", *runs, "--bias-levels", "0,0.5", "--gamma-levels", "1,2", "--draws", "2",
                  "--max-cases", "2", "--out", tmp_path, "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "robustness-test.csv").read_text().splitlines()
    assert lines[0] == "run,shift,level,dice,dice_se,cases"
    assert len(lines) == 1 + 2 * 4
    doc = json.loads((tmp_path / "robustness-test.json").read_text())
    assert doc["cases"] == ["sub-003_a", "sub-003_b"]
    for name in ("image-s0", "both-mr50-s0"):
        r = doc["results"][name]
        # bias 0 and gamma 1 are both the uncorrupted image: same Dice, case by case
        assert r["bias"][0]["per_case"] == r["gamma"][0]["per_case"]
    # without features involved, the identity level reproduces `maskgen evaluate` exactly
    ev = json.loads((sweep_dir / "image-s0" / "eval-test.json").read_text())
    expected = [c["mean"] for c in ev["cases"][:2]]
    assert doc["results"]["image-s0"]["bias"][0]["per_case"] == pytest.approx(expected, abs=1e-9)
    md = (tmp_path / "robustness-test.md").read_text()
    assert "| bias | image-s0 | both-mr50-s0 |" in md and "| gamma | image-s0 | both-mr50-s0 |" in md


def test_stability_cli(store, tmp_path):
    res = invoke(["analyze", "stability", store, "--out", tmp_path, "--quiet"])
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "stability.csv").read_text().splitlines()
    assert lines[0] == "subject,domain_a,domain_b,case_a,case_b,channel,cka,cosine"
    # 2 test subjects with contrasts a and b; rows: image, 12 channels, all features
    assert len(lines) == 1 + 2 * 14
    rows = [l.split(",") for l in lines[1:]]
    assert {r[0] for r in rows} == {"sub-003", "sub-004"} and {(r[1], r[2]) for r in rows} == {("a", "b")}
    cka = np.array([float(r[6]) for r in rows])
    assert ((cka >= 0) & (cka <= 1 + 1e-9)).all()
    md = (tmp_path / "stability.md").read_text()
    assert "## Linear CKA" in md and "| channel | a vs b |" in md and "| features (all) |" in md


def test_stability_needs_pairs(store, tmp_path, monkeypatch):
    import maskgen.evaluate.stability as S

    monkeypatch.setattr(S, "subject_of", lambda case_id, domain, attrs=None: case_id)
    with pytest.raises(MaskgenError, match="no subject is stored in two domains"):
        S.stability_analysis(store)


def _oblique_input(path, size=(20, 18, 12), spacing=(1.0, 1.5, 2.0)):
    """A label map rendered as a noise-free image (background 0.1, class 1 0.5, class 2 0.9) on an oblique,
    anisotropic grid (rotated about all three axes, voxels 1 x 1.5 x 2 mm, non-zero origin)."""
    from scipy.spatial.transform import Rotation

    label = synthetic_labels(24, 2, np.random.default_rng(7))[: size[0], : size[1], : size[2]]
    image = np.choose(label, [0.1, 0.5, 0.9]).astype(np.float32)
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [20, -15, 30], degrees=True).as_matrix() @ np.diag(spacing)
    affine[:3, 3] = [4.0, -7.0, 11.0]
    nib.save(nib.Nifti1Image(image, affine), path)
    return label, affine


def _nearest_labels_on_original_grid(label_zyx, geometry):
    """Independent reference for `predict`'s way back: for each voxel of the original grid, the set of labels of
    the preprocessed-grid voxels nearest to its centre in world coordinates (several where the centre lies half-way
    between voxels, as happens when a 2 mm input is resampled to 1 mm; indices clamped at the border).
    Returns a boolean array (X, Y, Z, K+1): allowed[x, y, z, k]."""
    shape = geometry.original_shape
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = np.c_[ijk, np.ones(len(ijk))] @ geometry.original_affine_array.T
    xyz = (world @ np.linalg.inv(geometry.resampled_affine_array).T)[:, :3]
    top = np.array(geometry.resampled_shape_xyz) - 1
    allowed = np.zeros((len(ijk), int(label_zyx.max()) + 1), bool)
    lo, hi = np.ceil(xyz - 0.5 - 1e-4).astype(int), np.floor(xyz + 0.5 + 1e-4).astype(int)
    for corner in np.ndindex(2, 2, 2):
        idx = np.clip(np.where(corner, hi, lo), 0, top)
        allowed[np.arange(len(ijk)), label_zyx[idx[:, 2], idx[:, 1], idx[:, 0]]] = True
    return allowed.reshape(*shape, -1)


def test_predict_round_trip_on_an_oblique_anisotropic_input(sweep_dir, tmp_path):
    """The real run (model and its extractor) predicts on the preprocessed grid; the label map written must be that
    prediction carried back onto the oblique, anisotropic input grid with the input's affine."""
    from maskgen.data.preprocess import preprocess_image_file
    from maskgen.evaluate.runs import features_for, open_run, run_extractor

    inp = tmp_path / "in"
    inp.mkdir()
    label, affine = _oblique_input(inp / "obl_0000.nii.gz")
    run_dir = sweep_dir / "both-mr50-s0"
    res = invoke(["predict", run_dir, "--input", inp, "--out", tmp_path / "out", "--checkpoint", "last",
                  "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    out = nib.load(tmp_path / "out" / "obl.nii.gz")
    assert out.shape == label.shape and out.get_data_dtype() == np.uint8
    np.testing.assert_allclose(out.affine, affine, atol=1e-6)
    # what the model says on its own grid, computed here step by step
    run = open_run(run_dir, "last", "cpu")
    pre = preprocess_image_file(inp / "obl_0000.nii.gz", run.store.pipeline)
    assert pre.image.shape[1:] != label.shape[::-1]  # the preprocessed grid differs from the input's
    own = run.segment(pre.image, features_for(run, run_extractor(run), pre.image))
    counts = np.bincount(own.ravel(), minlength=3) / own.size
    assert (np.sort(counts)[-2:] > 0.05).all(), counts  # a prediction with structure, not one constant label
    allowed = _nearest_labels_on_original_grid(own, pre.geometry)
    got = np.asarray(out.dataobj)
    assert np.take_along_axis(allowed, got[..., None].astype(int), -1).all()


def test_predict_with_the_real_model_and_errors(sweep_dir, tmp_path):
    inp = tmp_path / "one_0000.nii.gz"
    label, affine = _oblique_input(inp)
    res = invoke(["predict", sweep_dir / "image-s0", "--input", inp, "--out", tmp_path / "o", "--device", "cpu",
                  "--quiet"])
    assert res.exit_code == 0, res.output
    out = nib.load(tmp_path / "o" / "one.nii.gz")
    assert out.shape == label.shape and set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2}
    empty = tmp_path / "empty"
    empty.mkdir()
    res = invoke(["predict", sweep_dir / "image-s0", "--input", empty, "--out", tmp_path / "o2"])
    assert res.exit_code == 1 and "holds no .nii" in res.stderr


def test_predict_keeps_the_input_xform_codes_and_saves_probabilities(sweep_dir, tmp_path):
    """An input whose sform code is 2 (aligned) and qform code 4 (template), not nibabel's defaults: the label map
    and the softmax keep both codes and matrices; the softmax is on the input grid and agrees with the labels."""
    src = tmp_path / "src.nii.gz"
    label, affine = _oblique_input(src)
    img = nib.load(src)
    img = nib.Nifti1Image(np.asarray(img.dataobj), None, img.header)
    img.set_sform(affine, code=2)
    img.set_qform(affine, code=4)
    inp = tmp_path / "in"
    inp.mkdir()
    nib.save(img, inp / "codes_0000.nii.gz")
    got = {}
    for fmt in ("nifti", "npz"):
        out = tmp_path / fmt
        res = invoke(["predict", sweep_dir / "both-mr50-s0", "--input", inp, "--out", out, "--checkpoint", "last",
                      "--save-probabilities", "--probabilities-format", fmt, "--device", "cpu", "--quiet"])
        assert res.exit_code == 0, res.output
        lab = nib.load(out / "codes.nii.gz")
        assert (int(lab.header["sform_code"]), int(lab.header["qform_code"])) == (2, 4)
        np.testing.assert_allclose(lab.header.get_sform(), affine, atol=1e-5)
        np.testing.assert_allclose(lab.header.get_qform(), affine, atol=1e-5)
        got["label"] = np.asarray(lab.dataobj)
        if fmt == "nifti":
            prob = nib.load(out / "codes_probabilities.nii.gz")
            assert prob.shape == (*label.shape, 3) and prob.get_data_dtype() == np.float32
            assert (int(prob.header["sform_code"]), int(prob.header["qform_code"])) == (2, 4)
            np.testing.assert_allclose(prob.affine, affine, atol=1e-5)
            got["nifti"] = np.asarray(prob.dataobj)
        else:
            with np.load(out / "codes.npz") as z:
                got["npz"] = z["probabilities"]  # nnU-Net's layout: (class, z, y, x)
    assert got["npz"].shape == (3, *label.shape[::-1])
    np.testing.assert_allclose(got["npz"], got["nifti"].transpose(3, 2, 1, 0), atol=1e-6)
    np.testing.assert_allclose(got["nifti"].sum(-1), 1.0, atol=1e-4)
    # linear resampling of the softmax vs nearest resampling of its argmax: equal away from boundaries
    assert (got["nifti"].argmax(-1) == got["label"]).mean() > 0.9


def test_predict_refuses_an_extractor_with_other_weights(sweep_dir):
    from maskgen.evaluate.runs import open_run, run_extractor

    run = open_run(sweep_dir / "both-mr50-s0", "last", "cpu")
    assert run_extractor(run).fingerprint()["name"] == "mind"
    run.store.attrs["extractor"] = {**run.store.extractor, "weights_sha256": "0" * 64}
    with pytest.raises(MaskgenError, match="weights sha256 000000000000.*--weights"):
        run_extractor(run)


def test_sweep_channel_dropout_baseline_trains_with_dropout_on_every_block(store, tmp_path):
    from maskgen.train.checkpoint import load_run

    res = invoke(["sweep", "--features", store, "--out", tmp_path / "cd", "--method", "channel-dropout",
                  "--dropout-rate", "0.25", "--splits", "test", *TINY])
    assert res.exit_code == 0, res.output
    run = tmp_path / "cd" / "chdrop-p25-s0"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["inputs"] == "image" and cfg["dropout"] == 0.25 and cfg["mask_rate"] == 0.0
    # the network the sweep trained, rebuilt from its checkpoint: Dropout3d(0.25) closes every Conv-BN-ReLU block
    model, _, ckpt = load_run(run, "last")
    assert ckpt["model_config"]["dropout"] == 0.25
    blocks = [m for m in model.modules() if isinstance(m, torch.nn.Sequential) and isinstance(m[0], torch.nn.Conv3d)]
    assert blocks and all(isinstance(b[-1], torch.nn.Dropout3d) and b[-1].p == 0.25 for b in blocks)
    # and it is active in training mode only: two training-mode passes differ, eval-mode passes do not
    x = torch.rand(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))
    assert "Channel dropout (p=0.25)" in (tmp_path / "cd" / "results.md").read_text()


def test_sweep_checks_splits_before_training(store, tmp_path):
    res = invoke(["sweep", "--features", store, "--out", tmp_path / "x", "--splits", "val,holdout", *TINY])
    assert res.exit_code == 1 and "--splits 'holdout'" in res.stderr
    assert not (tmp_path / "x").exists()
