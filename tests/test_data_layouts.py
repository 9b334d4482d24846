"""Each shipped pipeline finds the right cases, domains and splits on a fake folder named exactly like the public
release (files are empty: discovery never reads them)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from maskgen.data.layouts import discover_cases, resolve_data_root
from maskgen.data.pipeline import load_pipeline, parse_pipeline
from maskgen.errors import MaskgenError


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def by_split(cases) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for c in cases:
        out[c.split].append(c.case_id)
    return out


def assert_subject_disjoint(cases) -> None:
    splits_of: dict[str, set[str]] = {}
    for c in cases:
        splits_of.setdefault(c.subject_id, set()).add(c.split)
    shared = {s: v for s, v in splits_of.items() if len(v) > 1}
    assert not shared, f"subjects in several splits: {shared}"


# ----------------------------------------------------------------------------------------------------- nnU-Net
def test_nnunet_folders_give_splits_and_skip_unlabelled_test(tmp_path):
    touch(
        tmp_path,
        "imagesTr/a_0000.nii.gz", "labelsTr/a.nii.gz",
        "imagesTr/b_0000.nii.gz", "labelsTr/b.nii.gz",
        "imagesTr/b_0001.nii.gz",  # second modality: not the configured one
        "imagesTr/._a_0000.nii.gz",  # macOS resource fork from a tarball
        "imagesVal/c_0000.nii.gz", "labelsVal/c.nii.gz",
        "imagesTs/d_0000.nii.gz",  # nnU-Net's unlabelled test images: no labelsTs folder
        "dataset.json",
    )
    cases = discover_cases(load_pipeline("nnunet"), tmp_path)
    assert by_split(cases) == {"train": ["a", "b"], "val": ["c"], "test": []}
    a = cases[0]
    assert a.image == tmp_path.resolve() / "imagesTr/a_0000.nii.gz"
    assert a.label == tmp_path.resolve() / "labelsTr/a.nii.gz"
    assert a.domain == "default" and a.channel is None


def test_nnunet_labelled_test_folder_and_missing_label_path(tmp_path):
    touch(tmp_path, "imagesTr/a_0000.nii.gz", "labelsTr/a.nii.gz", "imagesTr/b_0000.nii", "imagesTs/t_0000.nii.gz",
          "labelsTs/t.nii.gz")
    cases = discover_cases(load_pipeline("nnunet"), tmp_path)
    assert by_split(cases) == {"train": ["a", "b"], "val": [], "test": ["t"]}
    b = [c for c in cases if c.case_id == "b"][0]
    assert b.label == tmp_path.resolve() / "labelsTr/b.nii.gz" and not b.label.exists()  # verify reports it


def test_nnunet_domain_csv_overrides_split_and_defaults_domain(tmp_path):
    touch(tmp_path, *[f"imagesTr/{c}_0000.nii.gz" for c in "abcd"], *[f"labelsTr/{c}.nii.gz" for c in "abcd"])
    (tmp_path / "domains.csv").write_text("case,domain,split,subject\na,t1,train,s1\nb,t2,val,s2\nc,t2,,s3\n")
    toml = tmp_path / "p.toml"
    toml.write_text(
        'layout = { kind = "nnunet", csv = "domains.csv" }\nspacing = [1, 1, 1]\ncrop_size = [8, 8, 8]\n'
        'normalization = "minmax"\nclasses = ["x"]\n'
    )
    cases = {c.case_id: c for c in discover_cases(load_pipeline(str(toml)), tmp_path)}
    assert (cases["a"].domain, cases["a"].split, cases["a"].subject) == ("t1", "train", "s1")
    assert (cases["b"].domain, cases["b"].split) == ("t2", "val")
    assert (cases["c"].domain, cases["c"].split) == ("t2", "train")  # empty split cell: folder's split
    assert (cases["d"].domain, cases["d"].split, cases["d"].subject_id) == ("default", "train", "d")


def test_nnunet_domain_csv_naming_unknown_case_is_an_error(tmp_path):
    touch(tmp_path, "imagesTr/a_0000.nii.gz", "labelsTr/a.nii.gz")
    (tmp_path / "d.csv").write_text("case,domain\na,t1\nghost,t2\n")
    toml = tmp_path / "p.toml"
    toml.write_text('layout = { kind = "nnunet", csv = "d.csv" }\nspacing = [1, 1, 1]\ncrop_size = [8, 8, 8]\n'
                    'normalization = "minmax"\nclasses = ["x"]\n')
    with pytest.raises(MaskgenError, match="ghost"):
        discover_cases(load_pipeline(str(toml)), tmp_path)


def test_nnunet_wrong_file_names_are_explained(tmp_path):
    touch(tmp_path, "imagesTr/a.nii.gz", "labelsTr/a.nii.gz")
    with pytest.raises(MaskgenError, match=r"<case>_0000\.nii\.gz"):
        discover_cases(load_pipeline("nnunet"), tmp_path)


def test_demo_pipeline_reads_the_demo_layout(tmp_path):
    # sub-000/001 train on t1; sub-002 validates on t2 + flair; sub-003 is tested on all three contrasts
    plan = {0: ("train", ["t1"]), 1: ("train", ["t1"]), 2: ("val", ["t2", "flair"]), 3: ("test", ["t1", "t2", "flair"])}
    rows = ["case,domain,split,subject"]
    for i, (split, contrasts) in plan.items():
        for contrast in contrasts:
            case = f"sub-{i:03d}_{contrast}"
            touch(tmp_path, f"imagesTr/{case}_0000.nii.gz", f"labelsTr/{case}.nii.gz")
            rows.append(f"{case},{contrast},{split},sub-{i:03d}")
    (tmp_path / "domains.csv").write_text("\n".join(rows) + "\n")
    pipeline = load_pipeline("demo")
    assert pipeline.spacing == (2.0, 2.0, 2.0) and pipeline.crop_size == (64, 64, 64)
    assert pipeline.classes == ("csf", "grey_matter", "white_matter") and pipeline.normalization == "minmax"
    assert pipeline.allow_flips and pipeline.default_data_root == "cache/demo-data"
    cases = discover_cases(pipeline, tmp_path)
    assert Counter((c.split, c.domain) for c in cases) == {
        ("train", "t1"): 2, ("val", "t2"): 1, ("val", "flair"): 1, ("test", "t1"): 1, ("test", "t2"): 1,
        ("test", "flair"): 1,
    }
    assert by_split(cases)["val"] == ["sub-002_flair", "sub-002_t2"]
    assert {c.subject for c in cases if c.split == "test"} == {"sub-003"}


# --------------------------------------------------------------------------------------------------------- CSV
def test_csv_layout_relative_paths_and_csv_as_data_root(tmp_path):
    touch(tmp_path, "imgs/p1_0000.nii.gz", "segs/p1.nii.gz", "imgs/p2.nii.gz", "segs/p2.nii.gz")
    (tmp_path / "dataset.csv").write_text(
        "image,label,split,domain\nimgs/p1_0000.nii.gz,segs/p1.nii.gz,train,siteA\n"
        f"{tmp_path}/imgs/p2.nii.gz,segs/p2.nii.gz,Test,\n"
    )
    pipeline = load_pipeline("csv")
    for root in (tmp_path, tmp_path / "dataset.csv"):
        cases = discover_cases(pipeline, root)
        assert [(c.case_id, c.split, c.domain) for c in cases] == [("p1", "train", "siteA"), ("p2", "test", "default")]
        assert cases[0].image.resolve() == (tmp_path / "imgs/p1_0000.nii.gz").resolve()
        assert cases[0].label.resolve() == (tmp_path / "segs/p1.nii.gz").resolve()


def test_csv_layout_rejects_bad_split_and_missing_columns(tmp_path):
    (tmp_path / "dataset.csv").write_text("image,label,split\na.nii.gz,b.nii.gz,holdout\n")
    with pytest.raises(MaskgenError, match="holdout"):
        discover_cases(load_pipeline("csv"), tmp_path)
    (tmp_path / "dataset.csv").write_text("image,split\na.nii.gz,train\n")
    with pytest.raises(MaskgenError, match="label"):
        discover_cases(load_pipeline("csv"), tmp_path)


# -------------------------------------------------------------------------------------------------------- AMOS
def test_amos_ct_trains_and_mri_splits_into_val_and_test(tmp_path):
    ct_tr, ct_va, mr_tr, mr_va = [1, 2, 3, 4, 5], [6, 7], [501, 502, 503], [590]
    for i in ct_tr + mr_tr:
        touch(tmp_path, f"imagesTr/amos_{i:04d}.nii.gz", f"labelsTr/amos_{i:04d}.nii.gz")
    for i in ct_va + mr_va:
        touch(tmp_path, f"imagesVa/amos_{i:04d}.nii.gz", f"labelsVa/amos_{i:04d}.nii.gz")
    touch(tmp_path, "imagesTs/amos_0008.nii.gz", "imagesTs/amos_0600.nii.gz", "dataset.json")  # unlabelled
    cases = discover_cases(load_pipeline("amos"), tmp_path)
    splits = by_split(cases)
    assert sorted(splits["train"]) == [f"amos_{i:04d}" for i in ct_tr + ct_va]
    assert len(splits["val"]) == 2 and len(splits["test"]) == 2
    assert sorted(splits["val"] + splits["test"]) == [f"amos_{i:04d}" for i in mr_tr + mr_va]
    assert {c.domain for c in cases if c.split == "train"} == {"ct"}
    assert {c.domain for c in cases if c.split != "train"} == {"mri"}
    amos = load_pipeline("amos")
    assert amos.allow_flips is False
    assert amos.intensity_rule("ct").rule == "ct" and amos.intensity_rule("mri").rule == "minmax"


# ------------------------------------------------------------------------------------------------------- BraTS
def test_brats_channels_become_cases_and_subjects_never_straddle_splits(tmp_path):
    for i in range(1, 21):
        touch(tmp_path, f"imagesTr/BRATS_{i:03d}.nii.gz", f"labelsTr/BRATS_{i:03d}.nii.gz")
    touch(tmp_path, "imagesTr/._BRATS_001.nii.gz", "labelsTr/._BRATS_001.nii.gz", "imagesTs/BRATS_485.nii.gz",
          "dataset.json")
    cases = discover_cases(load_pipeline("brats"), tmp_path)
    assert_subject_disjoint(cases)
    subjects = {s: {c.subject_id for c in cases if c.split == s} for s in ("train", "val", "test")}
    # 20 subjects in the paper's 340:48:96 proportions -> 14 / 2 / 4
    assert [len(subjects[s]) for s in ("train", "val", "test")] == [14, 2, 4]
    train = [c for c in cases if c.split == "train"]
    assert len(train) == 42 and {c.domain for c in train} == {"t1w", "t1gd", "t2w"}
    assert {c.domain for c in cases if c.split != "train"} == {"flair"}
    one = {c.case_id: c for c in cases}
    subject = sorted(subjects["train"])[0]
    assert one[f"{subject}_t1w"].channel == 1 and one[f"{subject}_t1gd"].channel == 2
    assert one[f"{subject}_t2w"].channel == 3 and f"{subject}_flair" not in one
    flair = [c for c in cases if c.split == "val"][0]
    assert flair.channel == 0 and flair.image.name == flair.subject_id + ".nii.gz"
    assert flair.label.parent.name == "labelsTr"
    # deterministic, and the seed changes the assignment
    assert [(c.case_id, c.split) for c in discover_cases(load_pipeline("brats"), tmp_path)] == [
        (c.case_id, c.split) for c in cases
    ]


def test_split_seed_changes_the_subject_assignment(tmp_path):
    for i in range(1, 21):
        touch(tmp_path, f"imagesTr/BRATS_{i:03d}.nii.gz", f"labelsTr/BRATS_{i:03d}.nii.gz")
    text = Path(load_pipeline("brats").source).read_text().replace("seed = 0", "seed = 7")
    (tmp_path / "b.toml").write_text(text)
    a = {c.subject_id for c in discover_cases(load_pipeline("brats"), tmp_path) if c.split == "test"}
    b = {c.subject_id for c in discover_cases(load_pipeline(str(tmp_path / "b.toml")), tmp_path) if c.split == "test"}
    assert len(a) == len(b) == 4 and a != b


# ------------------------------------------------------------------------------------------------------ TopCoW
def test_topcow_cta_trains_mra_evaluates_split_by_patient(tmp_path):
    for i in range(1, 11):
        for mod in ("ct", "mr"):
            touch(tmp_path, f"imagesTr/topcow_{mod}_{i:03d}_0000.nii.gz", f"cow_seg_labelsTr/topcow_{mod}_{i:03d}.nii.gz")
            touch(tmp_path, f"roi_loc_labelsTr/topcow_{mod}_{i:03d}.txt")
    cases = discover_cases(load_pipeline("topcow"), tmp_path)
    assert_subject_disjoint(cases)
    splits = by_split(cases)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [6, 2, 2]  # 75:20:30 of 10 patients
    assert all(cid.startswith("topcow_ct_") for cid in splits["train"])
    assert all(cid.startswith("topcow_mr_") for cid in splits["val"] + splits["test"])
    assert {c.domain for c in cases} == {"cta", "mra"}
    c = cases[0]
    assert c.label == tmp_path.resolve() / "cow_seg_labelsTr" / f"{c.case_id}.nii.gz"
    pipeline = load_pipeline("topcow")
    assert dict(pipeline.label_map) == {15: 13} and len(pipeline.classes) == 13 and not pipeline.allow_flips


# ------------------------------------------------------------------------------------------------------- HVSMR
def test_hvsmr_severity_csv_gives_domains(tmp_path):
    severities = ["mild", "moderate", "severe", "severe", "mild", "severe", "severe", "moderate", "severe", "severe"]
    for i in range(10):
        touch(tmp_path, f"cropped/pat{i}_cropped.nii.gz", f"cropped/pat{i}_cropped_seg.nii.gz",
              f"orig/pat{i}_orig.nii.gz", f"orig/pat{i}_orig_seg.nii.gz")
    (tmp_path / "severity.csv").write_text("Pat,Severity\n" + "".join(f"{i},{s.title()}\n" for i, s in
                                                                      enumerate(severities)))
    cases = discover_cases(load_pipeline("hvsmr"), tmp_path)
    splits = by_split(cases)
    assert sorted(splits["train"]) == ["pat0", "pat1", "pat4", "pat7"]
    assert len(splits["val"]) == 3 and len(splits["test"]) == 3  # 6 severe at 18:19
    assert {c.domain for c in cases if c.split != "train"} == {"severe"}
    pat0 = [c for c in cases if c.case_id == "pat0"][0]
    assert pat0.label == tmp_path.resolve() / "cropped/pat0_cropped_seg.nii.gz" and pat0.domain == "mild"


def test_hvsmr_without_severity_file_says_how_to_make_it(tmp_path):
    touch(tmp_path, "cropped/pat0_cropped.nii.gz", "cropped/pat0_cropped_seg.nii.gz")
    with pytest.raises(MaskgenError, match="pat,severity"):
        discover_cases(load_pipeline("hvsmr"), tmp_path)
    (tmp_path / "severity.csv").write_text("pat,severity\npat1,mild\n")
    with pytest.raises(MaskgenError, match="no row for pat0"):
        discover_cases(load_pipeline("hvsmr"), tmp_path)


# ---------------------------------------------------------------------------------------------------- prostate
def test_prostate_sites_with_varying_casing(tmp_path):
    touch(
        tmp_path,
        "RUNMC/Case00.nii.gz", "RUNMC/Case00_segmentation.nii.gz",
        "RUNMC/Case01.nii.gz", "RUNMC/Case01_segmentation.nii.gz",
        "BMC/Case00.nii.gz", "BMC/Case00_Segmentation.nii.gz",
        "I2CVB/Case00.nii.gz", "I2CVB/Case00_segmentation.nii.gz",
        "UCL/Case01.nii.gz", "UCL/Case01_Segmentation.nii.gz",
        "BIDMC/Case00.nii.gz", "BIDMC/Case00_segmentation.nii.gz",
        "HK/case02.nii.gz", "HK/case02_segmentation.nii.gz",
    )
    cases = discover_cases(load_pipeline("prostate"), tmp_path)
    assert by_split(cases) == {
        "train": ["I2CVB_Case00", "RUNMC_Case00", "RUNMC_Case01"],
        "val": ["HK_case02", "UCL_Case01"],
        "test": ["BIDMC_Case00", "BMC_Case00"],
    }
    bmc = [c for c in cases if c.case_id == "BMC_Case00"][0]
    assert bmc.domain == "BMC" and bmc.label.name == "Case00_Segmentation.nii.gz"
    assert load_pipeline("prostate").binarize_labels


# ------------------------------------------------------------------------------------------------------- PanDG
def test_pandg_phase_domains_and_subject_disjoint_eval(tmp_path):
    for center in ("c1", "c2", "c3"):
        for k in range(4):
            for phase in ("venous", "out_of_phase"):
                touch(tmp_path, f"{center}/{phase}/images/p{k}.nii.gz", f"{center}/{phase}/labels/p{k}.nii.gz")
    cases = discover_cases(load_pipeline("pandg"), tmp_path)
    assert_subject_disjoint(cases)
    assert {c.domain for c in cases if c.split == "train"} == {"venous"}
    assert {c.domain for c in cases if c.split != "train"} == {"out_of_phase"}
    c = [c for c in cases if c.case_id == "c1_out_of_phase_p0"] or [c for c in cases if c.case_id == "c1_venous_p0"]
    assert c and c[0].label.parent.name == "labels"
    counts = Counter(c.split for c in cases)
    assert counts["val"] + counts["test"] + counts["train"] == len(cases) and counts["val"] == counts["test"]


# --------------------------------------------------------------------------------------------------- data root
def test_data_root_precedence_flag_env_default(tmp_path, monkeypatch):
    flag, env, default = tmp_path / "flag", tmp_path / "env", tmp_path / "default"
    for p in (flag, env, default):
        p.mkdir()
    pipeline = parse_pipeline(
        {"layout": "nnunet", "spacing": [1, 1, 1], "crop_size": [8, 8, 8], "normalization": "minmax",
         "classes": ["x"], "default_data_root": str(default)}
    )
    monkeypatch.setenv("MASKGEN_DATA_ROOT", str(env))
    assert resolve_data_root(flag, pipeline) == flag.resolve()
    assert resolve_data_root(None, pipeline) == env.resolve()
    monkeypatch.delenv("MASKGEN_DATA_ROOT")
    assert resolve_data_root(None, pipeline) == default.resolve()
    bare = load_pipeline("nnunet")
    with pytest.raises(MaskgenError, match="--data-root DIR or set MASKGEN_DATA_ROOT"):
        resolve_data_root(None, bare)
    with pytest.raises(MaskgenError, match="does not exist"):
        resolve_data_root(tmp_path / "nope", bare)


def test_relative_default_data_root_is_relative_to_cwd(tmp_path, monkeypatch):
    (tmp_path / "cache/demo-data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MASKGEN_DATA_ROOT", raising=False)
    assert resolve_data_root(None, load_pipeline("demo")) == (tmp_path / "cache/demo-data").resolve()


def test_unsafe_ids_raise_in_strict_discovery(tmp_path):
    touch(tmp_path, "a.nii.gz", "b.nii.gz")
    (tmp_path / "dataset.csv").write_text("case,image,label,split\n.hidden,a.nii.gz,b.nii.gz,train\n"
                                          "x,a.nii.gz,b.nii.gz,train\nx,b.nii.gz,b.nii.gz,val\n")
    with pytest.raises(MaskgenError) as e:
        discover_cases(load_pipeline("csv"), tmp_path)
    assert ".hidden" in str(e.value) and "used twice" in str(e.value)
    assert len(discover_cases(load_pipeline("csv"), tmp_path, strict=False)) == 3


def test_empty_folder_explains_expected_layout(tmp_path):
    with pytest.raises(MaskgenError, match="BRATS_001"):
        discover_cases(load_pipeline("brats"), tmp_path)


# ------------------------------------------------------------------------------------------ the layout registry
def test_registry_checks_layout_options_by_the_defaults_types():
    from maskgen.data.layout_registry import LAYOUTS, check_layout_options, layout_defaults

    assert LAYOUTS[:2] == ("nnunet", "csv") and "amos" in LAYOUTS and "pattern" in LAYOUTS
    check_layout_options("amos", {"mri_first_id": 400, "missing_data_hint": "download it"}, "here")
    assert layout_defaults("amos", {"mri_first_id": 400})["mri_first_id"] == 400
    with pytest.raises(MaskgenError, match=r"here: unknown key\(s\) \['mri_first'\]"):
        check_layout_options("amos", {"mri_first": 400}, "here")
    with pytest.raises(MaskgenError, match="mri_first_id = True must be an integer"):
        check_layout_options("amos", {"mri_first_id": True}, "here")
    with pytest.raises(MaskgenError, match="needs `image_pattern = ...`"):
        check_layout_options("pattern", {"label_pattern": "{case}.nii.gz"}, "here")
    with pytest.raises(MaskgenError, match="must contain {case}"):
        check_layout_options("pandg", {"image_pattern": "{center}/x.nii.gz"}, "here")


def test_hvsmr_severity_reader_accepts_its_column_spellings(tmp_path):
    from maskgen.data.public_layouts import read_severity

    path = tmp_path / "severity.csv"
    path.write_text("Patient_ID,Category\n12,Severe\npat3,mild\n")
    assert read_severity(path) == {"pat12": "severe", "pat3": "mild"}
    path.write_text("pat,grade\npat1,mild\n")
    with pytest.raises(MaskgenError, match="severity column"):
        read_severity(path)


def test_domain_csv_keeps_a_cases_own_domain_when_asked(tmp_path):
    from maskgen.data.cases import Case
    from maskgen.data.generic_layouts import apply_domain_csv

    cases = [Case("a_t1", tmp_path / "a.nii.gz", None, "t1", "train", subject="a"),
             Case("b_t1", tmp_path / "b.nii.gz", None, "t1", "val", subject="b")]
    (tmp_path / "d.csv").write_text("case,domain,split\nb_t1,site2,test\n")
    kept = apply_domain_csv(cases, tmp_path / "d.csv", None)
    assert [(c.domain, c.split, c.subject) for c in kept] == [("t1", "train", "a"), ("site2", "test", "b")]
    replaced = apply_domain_csv(cases, tmp_path / "d.csv", "default")
    assert [(c.domain, c.subject) for c in replaced] == [("default", "a"), ("site2", None)]  # as before
