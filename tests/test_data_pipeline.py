"""Pipeline files: every shipped one loads with the paper's settings; bad files fail with messages naming the value;
the domain split rule divides subjects reproducibly and never shares one between splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maskgen.cli import app
from maskgen.config import from_dict, to_dict
from maskgen.data.cases import Case
from maskgen.data.pipeline import Pipeline, available_pipelines, load_pipeline, split_rule
from maskgen.data.splits import assign_splits, split_counts
from maskgen.errors import MaskgenError

# paper Table 16 (x, y, z)
TABLE16 = {
    "amos": ((1.0, 1.0, 1.5), (192, 192, 128)),
    "brats": ((1.0, 1.0, 1.0), (128, 128, 128)),
    "topcow": ((0.3, 0.3, 0.6), (192, 160, 128)),
    "hvsmr": ((0.74, 0.74, 0.8), (128, 160, 128)),
    "pandg": ((1.09, 1.09, 4.4), (256, 224, 64)),
    "prostate": ((0.52, 0.51, 1.25), (224, 256, 64)),
}
BASE = 'spacing = [1, 1, 2]\ncrop_size = [8, 8, 4]\nnormalization = "minmax"\nclasses = ["a", "b"]\n'


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "p.toml"
    path.write_text(text)
    return str(path)


def test_shipped_pipelines_match_the_paper():
    names = available_pipelines()
    assert set(names) >= {"amos", "brats", "topcow", "hvsmr", "prostate", "pandg", "nnunet", "csv", "demo"}
    for name, (spacing, crop) in TABLE16.items():
        p = load_pipeline(name)
        assert (p.spacing, p.crop_size) == (spacing, crop), name
        assert p.spacing_zyx == spacing[::-1] and p.crop_zyx == crop[::-1]
        assert p.normalization == "minmax", name  # the paper's code: min-max for everything but CT
        assert p.allow_flips == (name not in ("amos", "topcow")), name
        assert split_rule(p) is not None, name
    assert load_pipeline("amos").num_classes == 16 and load_pipeline("brats").num_classes == 4
    assert load_pipeline("amos").ct_window == (-1024.0, 1024.0)
    for name, ct, other in (("amos", "ct", "mri"), ("topcow", "cta", "mra")):
        p = load_pipeline(name)
        assert p.intensity_rule(ct).describe() == "ct [-1024, 1024]", name
        assert p.intensity_rule(other).rule == "minmax" and p.intensity_rule(None).rule == "minmax", name
    rule = split_rule(load_pipeline("brats"))
    assert rule["domains"]["train"] == ("t1w", "t1gd", "t2w") and rule["domains"]["test"] == ("flair",)


def test_pipeline_survives_the_store_round_trip():
    for name in available_pipelines():
        p = load_pipeline(name)
        back = from_dict(Pipeline, json.loads(json.dumps(to_dict(p))))
        assert back == p and hash(back) == hash(p) and back.option("csv") == p.option("csv")


def test_normalization_per_domain_table(tmp_path):
    text = ('layout = "csv"\npercentiles = [1, 99]\n' + BASE.replace('normalization = "minmax"\n', "")
            + '[normalization]\nct = "ct"\nmri = "percentile"\ndefault = "minmax"\n')
    p = load_pipeline(write(tmp_path, text))
    assert p.normalization == "minmax" and p.normalization_by_domain == (("ct", "ct"), ("mri", "percentile"))
    assert p.intensity_rule("mri").percentiles == (1.0, 99.0) and p.intensity_rule("pet").rule == "minmax"
    assert p.describe_normalization() == "ct: ct [-1024, 1024]; mri: percentile [1, 99]; other domains: minmax"
    assert p.normalization_spec() == {"default": "minmax",
                                      "domains": {"ct": "ct [-1024, 1024]", "mri": "percentile [1, 99]"}}
    no_default = load_pipeline(write(tmp_path, text.replace('default = "minmax"\n', "").replace('"csv"', '"nnunet"')))
    assert no_default.normalization == "minmax"


def test_pipeline_by_path_and_layout_string(tmp_path):
    p = load_pipeline(write(tmp_path, 'name = "mine"\nlayout = "csv"\n' + BASE))
    assert p.name == "mine" and p.layout == "csv" and p.options == () and p.source.endswith("p.toml")


@pytest.mark.parametrize(
    "text, needle",
    [
        ('layout = "csv"\nspacing = [1, 1]\ncrop_size = [8, 8, 8]\nnormalization = "minmax"\nclasses = ["a"]\n',
         "spacing = [1, 1]"),
        ('layout = "csv"\nspacing = [1, 1, 0]\ncrop_size = [8, 8, 8]\nnormalization = "minmax"\nclasses = ["a"]\n',
         "spacing"),
        ('layout = "csv"\nspacing = [1, 1, 1]\ncrop_size = [8, 8.5, 8]\nnormalization = "minmax"\nclasses = ["a"]\n',
         "crop_size"),
        ('layout = "csv"\n' + BASE.replace('"minmax"', '"zscore"'), "zscore"),
        ('layout = "nifty"\n' + BASE, "nifty"),
        ('layout = "csv"\nspacng = 3\n' + BASE, "spacng"),
        ('layout = "csv"\n' + BASE.replace('["a", "b"]', '["a", "a"]'), "classes"),
        ('layout = "csv"\nct_window = [100, -100]\n' + BASE, "ct_window"),
        ('layout = "csv"\nbinarize_labels = true\n' + BASE, "binarize_labels"),
        ('layout = "csv"\n' + BASE + '[label_map]\n"15" = 9\n', "label_map"),
        (BASE + '[layout]\nkind = "nnunet"\nfolder = "x"\n', "folder"),
        (BASE + '[layout]\nkind = "nnunet"\nmodality = 0\n', "modality = 0"),
        (BASE + '[layout]\nfolders = []\n', "kind"),
        (BASE + '[layout]\nkind = "amos"\n', "[splits]"),
        ('layout = "csv"\n' + BASE + '[splits]\nval = ["x"]\n', "train"),
        ('layout = "csv"\n' + BASE + '[splits]\ntrain = ["x"]\nproportions = { holdout = 1 }\n', "holdout"),
        (BASE + '[layout]\nkind = "pattern"\nimage_pattern = "{site}/{case}.nii.gz"\n'
         'label_pattern = "{site}/{cas}_seg.nii.gz"\n[splits]\ntrain = ["a"]\n', "cas"),
        ('layout = "csv"\nspacing = [1, 1, 1\n', "not valid TOML"),
        ('layout = "csv"\n' + BASE.replace('normalization = "minmax"\n', "") + '[normalization]\nmri = "z"\n',
         "[normalization] mri = 'z'"),
        ('layout = "csv"\npercentiles = [1, 101]\n' + BASE, "percentiles"),
    ],
)
def test_bad_pipeline_files_name_the_problem(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(MaskgenError) as e:
        p = load_pipeline(path)
        if needle == "[splits]":  # layouts without their own splits need the [splits] table
            (tmp_path / "imagesTr").mkdir()
            from maskgen.data.layouts import discover_cases

            discover_cases(p, tmp_path)
    assert needle in str(e.value) and (needle == "[splits]" or "p.toml" in str(e.value))


def test_unknown_dataset_lists_the_shipped_ones():
    with pytest.raises(MaskgenError, match="amos"):
        load_pipeline("amoss")
    with pytest.raises(MaskgenError, match="does not exist"):
        load_pipeline("nowhere/p.toml")


def test_pipelines_command_lists_all():
    result = CliRunner().invoke(app, ["pipelines"])
    assert result.exit_code == 0, result.output
    for name in ("amos", "brats", "topcow", "hvsmr", "prostate", "pandg", "nnunet", "csv", "demo"):
        assert name in result.output


# ------------------------------------------------------------------------------------------------- split rule
def test_split_counts_largest_remainder():
    assert split_counts(484, {"train": 340, "val": 48, "test": 96}, ("train", "val", "test")) == {
        "train": 340, "val": 48, "test": 96}
    assert split_counts(37, {"val": 18, "test": 19}, ("val", "test")) == {"val": 18, "test": 19}
    assert split_counts(5, {}, ("val", "test")) == {"val": 3, "test": 2}
    assert split_counts(0, {"val": 1}, ("val",)) == {"val": 0}
    with pytest.raises(MaskgenError):
        split_counts(3, {"val": 0, "test": 0}, ("val", "test"))


def _cases(n_subjects: int, domains: tuple[str, ...]) -> list[Case]:
    return [
        Case(case_id=f"s{i:02d}_{d}", image=Path(f"s{i}.nii.gz"), label=None, domain=d, split="", subject=f"s{i:02d}")
        for i in range(n_subjects)
        for d in domains
    ]


def test_assign_splits_is_subject_disjoint_deterministic_and_stable():
    rule = {"domains": {"train": ("a",), "val": ("b",), "test": ("b",)},
            "proportions": {"train": 2, "val": 1, "test": 1}, "seed": 3}
    cases = _cases(40, ("a", "b"))
    out = assign_splits(cases, rule)
    def key(c: Case) -> str:
        return c.case_id

    assert sorted(out, key=key) == sorted(assign_splits(list(reversed(cases)), rule), key=key)  # order-independent
    subjects = {s: {c.subject_id for c in out if c.split == s} for s in ("train", "val", "test")}
    assert [len(subjects[s]) for s in ("train", "val", "test")] == [20, 10, 10]
    assert not (subjects["train"] & subjects["val"]) and not (subjects["val"] & subjects["test"])
    assert all(c.domain == "a" for c in out if c.split == "train")
    assert all(c.domain == "b" for c in out if c.split != "train")
    # adding subjects leaves most earlier subjects where they were (hash order, not a reshuffle)
    more = assign_splits(_cases(44, ("a", "b")), rule)
    before = {c.case_id: c.split for c in out}
    moved = sum(before[c.case_id] != c.split for c in more if c.case_id in before)
    assert moved <= 6


def test_assign_splits_needs_a_share_for_every_possible_split():
    rule = {"domains": {"train": ("a",), "val": ("b",), "test": ("b",)}, "proportions": {"val": 1, "test": 1},
            "seed": 0}
    with pytest.raises(MaskgenError, match="train = ..."):
        assign_splits(_cases(4, ("a", "b")), rule)
    # single-domain subjects (AMOS: one scan each) need no train share
    amos = _cases(6, ("a",)) + [Case(f"m{i}", Path("m.nii.gz"), None, "b", "") for i in range(4)]
    out = assign_splits(amos, rule)
    assert sum(c.split == "train" for c in out) == 6 and sum(c.split == "val" for c in out) == 2
