"""nnU-Net v2 raw datasets without a pipeline file: `--dataset path/to/Dataset042_Toy` reads dataset.json, takes the
fold of splits_final.json (or the split nnU-Net would make), derives spacing and crop, and turns each channel into a
case of its own domain. The fake folder is built exactly as nnU-Net v2 lays it out."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from maskgen.cli import app
from maskgen.data.layouts import discover, discover_cases
from maskgen.data.nnunet_v2 import crop_size, target_spacing
from maskgen.data.pipeline import available_pipelines, load_pipeline, parse_pipeline
from maskgen.data.pipeline_toml import to_toml
from maskgen.errors import MaskgenError

SHAPE = (16, 14, 10)
SPACINGS = [(1, 1, 1.5), (1, 1, 2), (1.2, 1.2, 1.5), (1, 1, 1.5), (0.8, 0.8, 3), (1, 1, 1.5)]
CHANNELS = {"0": "T1", "1": "FLAIR"}
LABELS = {"background": 0, "lesion": 1, "edema": 2}


def save(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def make_dataset(root: Path, channels: dict = CHANNELS, labels: dict = LABELS, spacings=SPACINGS, test: int = 0,
                 **json_changes) -> Path:
    rng = np.random.default_rng(0)
    label = np.zeros(SHAPE, np.uint8)
    label[4:10, 4:10, 3:7] = 1
    label[5:7, 5:7, 4:6] = 2
    cases = [(f"toy_{i:03d}", "Tr", sp) for i, sp in enumerate(spacings)]
    cases += [(f"toy_{100 + i:03d}", "Ts", (1, 1, 1.5)) for i in range(test)]
    for case, folder, sp in cases:
        affine = np.diag([*sp, 1.0])
        for ch in channels:
            save(root / f"images{folder}/{case}_{int(ch):04d}.nii.gz", rng.random(SHAPE).astype(np.float32), affine)
        save(root / f"labels{folder}/{case}.nii.gz", label, affine)
    meta = {"channel_names": channels, "labels": labels, "numTraining": len(spacings), "file_ending": ".nii.gz",
            **json_changes}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def toy(tmp_path) -> Path:
    return make_dataset(tmp_path / "Dataset042_Toy", test=2)


def test_dataset_json_gives_classes_normalisation_spacing_and_crop(toy):
    p = load_pipeline(str(toy))
    assert p.name == "Dataset042_Toy" and p.layout == "nnunet_v2" and p.classes == ("lesion", "edema")
    assert p.spacing == (1.0, 1.0, 1.5)  # the median of the training spacings
    assert p.crop_size == (16, 16, 16)  # median shape 16 x 14 x 10, multiples of 16, at least 16
    assert p.default_data_root == str(toy.resolve()) and p.source == str(toy.resolve() / "dataset.json")
    assert "median spacing of the 6 training cases" in p.description and "multiple of 16" in p.description
    assert p.intensity_rule("t1").rule == "minmax" and p.intensity_rule("flair").rule == "minmax"
    ct = load_pipeline(str(make_dataset(toy.parent / "Dataset043_Ct", channels={"0": "CT"})))
    assert ct.intensity_rule("ct").describe() == "ct [-1024, 1024]"
    assert [c.case_id for c in discover_cases(ct)][:2] == ["toy_000", "toy_001"]  # one channel: the case id itself


def test_spacing_is_read_in_ras_order_whatever_the_file_orientation(tmp_path):
    root = make_dataset(tmp_path / "Dataset044_Lps", channels={"0": "MRI"}, spacings=[(1, 1, 1.5)] * 5)
    for path in sorted((root / "imagesTr").iterdir()) + sorted((root / "labelsTr").iterdir()):
        img = nib.load(path)
        data = np.asarray(img.dataobj).transpose(2, 0, 1)  # file axes (z, x, y), flipped: spacing 1.5 on axis 0
        affine = np.array([[0, -1.0, 0, 0], [0, 0, -1.0, 0], [1.5, 0, 0, 0], [0, 0, 0, 1]])
        nib.save(nib.Nifti1Image(data, affine), str(path))
    p = load_pipeline(str(root))
    assert p.spacing == (1.0, 1.0, 1.5) and p.crop_size == (16, 16, 16)


def test_planner_rules_for_anisotropic_data_and_the_crop():
    spacings = np.array([[0.8, 0.8, 5.0], [0.8, 0.8, 5.0], [0.8, 0.8, 6.0], [0.7, 0.7, 2.5], [0.8, 0.8, 5.0]])
    shapes = np.array([[256, 256, 40]] * 5, float)
    target, rule = target_spacing(spacings, shapes)
    assert target[2] == pytest.approx(np.percentile(spacings[:, 2], 10)) and "anisotropic" in rule
    iso, rule = target_spacing(spacings[:, [0, 1, 0]], shapes[:, [0, 1, 0]])
    assert np.allclose(iso, [0.8, 0.8, 0.8]) and "anisotropic" not in rule
    crop, _ = crop_size(shapes, spacings, target)
    assert target[2] == pytest.approx(3.5)
    assert crop == [128, 128, 48]  # 256 x 0.8 / 0.8 -> capped at 128; 40 slices x 5 mm / 3.5 mm = 57 -> 48


def test_channels_become_cases_split_by_nnunets_default_fold(toy):
    found = discover(load_pipeline(str(toy)))
    cases = found.cases
    assert {c.domain for c in cases} == {"t1", "flair"} and found.left_out == []
    assert all(c.case_id == f"{c.subject}_{c.domain}" and c.channel is None for c in cases)
    assert all(c.image.name == f"{c.subject}_{'0000' if c.domain == 't1' else '0001'}.nii.gz" for c in cases)
    by_split = {s: sorted({c.subject for c in cases if c.split == s}) for s in ("train", "val", "test")}
    # nnU-Net's generate_crossval_split: KFold(5, shuffle=True, random_state=12345) over the sorted case ids
    assert by_split == {"train": ["toy_000", "toy_001", "toy_002", "toy_004"], "val": ["toy_003", "toy_005"],
                        "test": ["toy_100", "toy_101"]}
    fold4 = {c.subject for c in discover_cases(load_pipeline(str(toy), fold=4)) if c.split == "val"}
    assert len(fold4) == 1 and fold4.isdisjoint(by_split["val"])


def test_splits_final_json_picks_train_and_val(toy, monkeypatch):
    folds = [{"train": ["toy_000", "toy_001"], "val": ["toy_002"]},
             {"train": ["toy_003", "toy_004"], "val": ["toy_005", "toy_000"]}]
    (toy / "splits_final.json").write_text(json.dumps(folds))
    found = discover(load_pipeline(str(toy), fold=1))
    assert sorted({c.subject for c in found.cases if c.split == "val"}) == ["toy_000", "toy_005"]
    assert sorted({c.subject for c in found.left_out}) == ["toy_001", "toy_002"]  # not in fold 1: left out
    with pytest.raises(MaskgenError, match=r"--fold 2 does not exist: splits_final.json .* has folds 0..1"):
        discover(load_pipeline(str(toy), fold=2))
    (toy / "splits_final.json").write_text(json.dumps([{"train": ["toy_000", "ghost"], "val": ["toy_001"]}]))
    with pytest.raises(MaskgenError, match="ghost"):
        discover(load_pipeline(str(toy)))
    # nnU-Net keeps it in nnUNet_preprocessed/<dataset>/
    (toy / "splits_final.json").unlink()
    pre = toy.parent / "preprocessed" / toy.name
    pre.mkdir(parents=True)
    (pre / "splits_final.json").write_text(json.dumps(folds))
    monkeypatch.setenv("nnUNet_preprocessed", str(toy.parent / "preprocessed"))
    assert {c.subject for c in discover_cases(load_pipeline(str(toy))) if c.split == "val"} == {"toy_002"}


@pytest.mark.parametrize("change, needle", [
    ({"labels": {"background": 0, "whole": [1, 2]}}, "regions"),
    ({"labels": {"background": 0, "a": 1, "b": 3}}, "0 (background), 1, ..., K"),
    ({"file_ending": ".mha"}, "file_ending = '.mha'"),
    ({"numTraining": 7}, "numTraining = 7 but"),
    ({"channel_names": {"1": "T1"}}, "0..0"),
])
def test_dataset_json_problems_name_the_file_and_key(tmp_path, change, needle):
    root = make_dataset(tmp_path / "Dataset050_Bad", **change)
    with pytest.raises(MaskgenError, match="dataset.json") as e:
        load_pipeline(str(root))
    assert needle in str(e.value)


def test_a_missing_channel_file_is_named(toy):
    (toy / "imagesTr/toy_002_0001.nii.gz").unlink()
    with pytest.raises(MaskgenError, match=r"toy_002 lacks toy_002_0001.nii.gz"):
        load_pipeline(str(toy))


def test_stacking_channels_is_refused_naming_the_alternative(toy, tmp_path):
    text = to_toml(load_pipeline(str(toy))).replace('kind = "nnunet_v2"', 'kind = "nnunet_v2"\nchannels = "stack"')
    (tmp_path / "stack.toml").write_text(text)
    with pytest.raises(MaskgenError, match='not supported.*channels = "cases"'):
        discover_cases(load_pipeline(str(tmp_path / "stack.toml")))


def test_domain_split_from_the_saved_pipeline(toy, tmp_path):
    saved = tmp_path / "toy.toml"
    result = CliRunner().invoke(app, ["verify", "--dataset", str(toy), "--save-pipeline", str(saved)])
    assert result.exit_code == 0, result.output
    assert load_pipeline(str(saved)) == parse_pipeline(tomllib.loads(saved.read_text()), source=str(saved))
    saved.write_text(saved.read_text() + '\n[splits]\ntrain = ["t1"]\nval = ["flair"]\ntest = ["flair"]\n'
                     "proportions = { train = 4, val = 2, test = 2 }\n")
    cases = discover_cases(load_pipeline(str(saved)))
    assert {c.domain for c in cases if c.split == "train"} == {"t1"}
    assert {c.domain for c in cases if c.split != "train"} == {"flair"}
    splits_of = {}
    for c in cases:
        splits_of.setdefault(c.subject, set()).add(c.split)
    assert all(len(s) == 1 for s in splits_of.values()) and len(splits_of) == 8


def test_verify_and_extract_say_what_the_dataset_gives(toy, tmp_path):
    (toy / "splits_final.json").write_text(json.dumps([{"train": ["toy_000", "toy_001", "toy_002", "toy_003"],
                                                        "val": ["toy_004"]},
                                                       {"train": ["toy_000", "toy_001", "toy_002", "toy_004"],
                                                        "val": ["toy_003"]}]))
    result = CliRunner().invoke(app, ["verify", "--dataset", str(toy), "--fold", "0"])
    text = result.output
    assert result.exit_code == 0, text
    for needle in ("classes: 1 lesion, 2 edema", "spacing (x, y, z): 1 x 1 x 1.5 mm; crop (x, y, z): 16 x 16 x 16",
                   "median spacing of the 6 training cases", "each channel is its own case", "not supported",
                   "fold 0 of splits_final.json", "subjects: the nnU-Net case id",
                   "training: 8 cases of 4 subjects, domains flair, t1",
                   "left out by the split rule / fold: 2 cases (toy_005_flair, toy_005_t1)"):
        assert needle in text, (needle, text)
    rows = [ln for ln in text.splitlines() if "│" in ln]
    assert any("train" in r and "t1" in r and " 4 " in r and "minmax" in r for r in rows), text

    store = tmp_path / "toy.zarr"
    result = CliRunner().invoke(app, ["extract", "--dataset", str(toy), "--fold", "1", "--out", str(store),
                                      "--extractor", "mind"])
    assert result.exit_code == 0, result.output
    assert "median spacing of the 6 training cases" in result.output
    attrs = json.loads((store / "zarr.json").read_text())["attributes"]
    assert attrs["pipeline"]["spacing"] == [1.0, 1.0, 1.5] and attrs["pipeline"]["options"] == [["fold", 1]]
    assert "median spacing" in attrs["pipeline"]["description"]
    from maskgen.store.reader import FeatureStore

    cases = FeatureStore(store).cases()
    assert len(cases) == 14 and {c.domain for c in cases} == {"t1", "flair"}
    assert {c.case_id for c in cases if c.split == "val"} == {"toy_003_t1", "toy_003_flair"}


def test_fold_only_for_nnunet_datasets_and_folders_without_dataset_json(tmp_path):
    with pytest.raises(MaskgenError, match="folds belong to nnU-Net v2 datasets"):
        load_pipeline("amos", fold=1)
    with pytest.raises(MaskgenError, match="folder without dataset.json"):
        load_pipeline(str(tmp_path))


def test_every_shipped_pipeline_survives_the_toml_round_trip():
    for name in available_pipelines():
        p = load_pipeline(name)
        assert parse_pipeline(tomllib.loads(to_toml(p)), source=p.source) == p, name
