"""Pure parts of the evaluate stage: corruptions, subject pairing, sweep planning, tables."""

from __future__ import annotations

import numpy as np
import pytest

from maskgen.errors import MaskgenError
from maskgen.evaluate.corruptions import BiasFieldShift, GammaShift
from maskgen.evaluate.report import markdown_table
from maskgen.evaluate.stability import DomainPair, find_pairs, subject_of
from maskgen.evaluate.sweep_plan import Variant, plan_variants


def _image(seed=0, shape=(1, 12, 10, 8)):
    return np.random.default_rng(seed).uniform(0.05, 1.0, shape).astype(np.float32)


# -- corruptions ---------------------------------------------------------------------------------------------
def test_bias_field_sample_apply_deterministic_and_scaled():
    img = _image()
    shift = BiasFieldShift(0.4)
    p1 = shift.sample(np.random.default_rng(1))
    p2 = shift.sample(np.random.default_rng(1))
    assert p1 == p2
    a, b = shift.apply(img, p1), shift.apply(img, p1)
    np.testing.assert_array_equal(a, b)
    assert a.shape == img.shape and a.dtype == np.float32
    assert a.min() == pytest.approx(0.0) and a.max() == pytest.approx(1.0)
    other = shift.apply(img, shift.sample(np.random.default_rng(2)))
    assert not np.allclose(a, other)
    # the field is smooth and multiplicative: the ratio to the (rescaled) input varies slowly, not voxel-wise
    assert np.corrcoef(a.ravel(), img.ravel())[0, 1] > 0.5


def test_bias_strength_increases_distortion():
    img = _image(3)
    base = (img - img.min()) / (img.max() - img.min())
    errs = []
    for s in (0.1, 0.5, 1.0):
        sh = BiasFieldShift(s)
        errs.append(np.mean([np.abs(sh.apply(img, sh.sample(np.random.default_rng(d))) - base).mean()
                             for d in range(3)]))
    assert errs[0] < errs[1] < errs[2]


def test_identity_levels_and_gamma():
    img = _image(4)
    np.testing.assert_array_equal(BiasFieldShift(0.0).apply(img, {"seed": 5}), img)
    np.testing.assert_array_equal(GammaShift(1.0).apply(img, {}), img)
    x = np.linspace(0, 1, 11, dtype=np.float32).reshape(1, 1, 1, 11)
    np.testing.assert_allclose(GammaShift(2.0).apply(x, GammaShift(2.0).sample(np.random.default_rng(0))),
                               x**2, atol=1e-5)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_bias_rejects_bad_strength(bad):
    with pytest.raises(ValueError, match="strength"):
        BiasFieldShift(bad)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_gamma_rejects_bad_value(bad):
    with pytest.raises(ValueError, match="gamma"):
        GammaShift(bad)


# -- stability pairing ---------------------------------------------------------------------------------------
class _Info:
    def __init__(self, case_id, domain, shape=(8, 8, 8)):
        self.case_id, self.domain, self.shape_zyx = case_id, domain, shape


def test_subject_of():
    assert subject_of("sub-003_t2", "t2") == "sub-003"
    assert subject_of("sub-003-flair", "flair") == "sub-003"
    assert subject_of("case7", "t1") == "case7"
    assert subject_of("anything", "t1", {"subject": "p9"}) == "p9"


def test_find_pairs_orders_domains_and_skips_other_grids():
    infos = [_Info("s1_t1", "t1"), _Info("s1_t2", "t2"), _Info("s1_flair", "flair"),
             _Info("s2_t1", "t1"), _Info("s2_t2", "t2", shape=(8, 8, 9)), _Info("s3_t1", "t1")]
    subjects = {i.case_id: subject_of(i.case_id, i.domain) for i in infos}
    pairs, notes = find_pairs(infos, subjects)
    assert pairs == [
        DomainPair("s1", "t1", "s1_t1", "t2", "s1_t2"),
        DomainPair("s1", "t1", "s1_t1", "flair", "s1_flair"),
        DomainPair("s1", "t2", "s1_t2", "flair", "s1_flair"),
    ]
    assert len(notes) == 1 and "s2_t2" in notes[0] and "different grids" in notes[0]


# -- sweep planning -------------------------------------------------------------------------------------------
def test_plan_deduplicates_and_collapses_single_source_inputs():
    variants, notes = plan_variants([0, 0.25, 0.25, 0.5], ["both", "image", "features"], [0, 1, 0])
    keys = [v.name for v in variants]
    assert keys == ["image-s0", "image-s1", "features-s0", "features-s1",
                    "both-mr00-s0", "both-mr00-s1", "both-mr25-s0", "both-mr25-s1", "both-mr50-s0", "both-mr50-s1"]
    assert all(v.mask_rate == 0 for v in variants if v.inputs != "both")
    assert len(notes) == 2 and all("mask rate 0 only" in n for n in notes)
    labels = list(dict.fromkeys(v.label for v in variants))
    assert labels == ["Image only", "Reps. only", "MR=0%", "MR=25%", "MR=50%"]


def test_plan_channel_dropout():
    variants, _ = plan_variants([0, 0.5], ["both"], [0], methods=["maskgen", "channel-dropout"])
    cd = [v for v in variants if v.method == "channel-dropout"]
    assert [(v.inputs, v.mask_rate, v.dropout, v.name) for v in cd] == [("image", 0.0, 0.5, "chdrop-p50-s0")]
    assert cd[0].train_changes() == {"inputs": "image", "mask_rate": 0.0, "seed": 0, "dropout": 0.5}
    with pytest.raises(MaskgenError, match="dropout rate"):
        plan_variants([0], ["both"], [0], methods=["channel-dropout"])
    variants, _ = plan_variants([0], [], [0], methods=["channel-dropout"], dropout_rates=[0.1, 0.2])
    assert [v.name for v in variants] == ["chdrop-p10-s0", "chdrop-p20-s0"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"inputs": ["pixels"]}, "--inputs 'pixels'"),
        ({"seeds": []}, "--seeds"),
        ({"methods": ["mixup"]}, "--method 'mixup'"),
    ],
)
def test_plan_rejects_bad_values(kwargs, match):
    args = {"mask_rates": [0.5], "inputs": ["both"], "seeds": [0]} | kwargs
    with pytest.raises(MaskgenError, match=match):
        plan_variants(**args)


def test_variant_names_are_stable():
    assert Variant("maskgen", "both", 0.75, 0.0, 3).name == "both-mr75-s3"
    assert Variant("maskgen", "image", 0.0, 0.0, 0).label == "Image only"


def test_markdown_table_layout():
    text = markdown_table(["method", "t2"], [["ERM", "57.4 (1.7)"], ["a|b", "1"]])
    lines = text.strip().splitlines()
    assert lines[0] == "| method | t2 |"
    assert lines[1] == "|:---|---:|"
    assert lines[3] == "| a\\|b | 1 |"


# -- case selection shared by evaluate, sensitivity and robustness ----------------------------------------------
def test_labelled_cases_keeps_labelled_cases_and_names_the_splits_present():
    from types import SimpleNamespace

    from maskgen.evaluate.runs import labelled_cases

    infos = [SimpleNamespace(case_id="a", split="val", has_label=True),
             SimpleNamespace(case_id="b", split="val", has_label=False),
             SimpleNamespace(case_id="c", split="train", has_label=True)]

    class Store:
        path = "s.zarr"

        def cases(self, split=None):
            return [c for c in infos if split is None or c.split == split]

    assert [c.case_id for c in labelled_cases(Store(), "val")] == ["a"]
    with pytest.raises(MaskgenError, match=r"s\.zarr has no labelled complete case in split 'test' "
                                           r"\(splits present: train, val\); choose another --split"):
        labelled_cases(Store(), "test")


def test_robustness_rejects_max_cases_below_one():
    from maskgen.evaluate.robustness import robustness_analysis

    with pytest.raises(MaskgenError, match="--max-cases 0 must be >= 1"):
        robustness_analysis(["no-such-run"], max_cases=0)


# -- predict: inputs and output names -------------------------------------------------------------------------------
def test_predict_inputs_and_output_names(tmp_path):
    from maskgen.evaluate.predict import input_files, output_name, output_names

    for name in ("b_0000.nii.gz", "a.nii", "._a.nii.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    files = input_files(tmp_path)
    assert [f.name for f in files] == ["a.nii", "b_0000.nii.gz"]  # sorted, hidden and non-NIfTI files skipped
    assert input_files(tmp_path / "a.nii") == [tmp_path / "a.nii"]
    assert [output_name(f) for f in files] == ["a.nii.gz", "b.nii.gz"]  # nnU-Net's channel suffix dropped
    assert output_name(tmp_path / "c_0001.nii.gz") == "c_0001.nii.gz"    # only channel 0000 is the image itself
    with pytest.raises(MaskgenError, match="is not a NIfTI file"):
        input_files(tmp_path / "notes.txt")
    with pytest.raises(MaskgenError, match="does not exist"):
        input_files(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MaskgenError, match="holds no .nii"):
        input_files(empty)
    clash = [tmp_path / "x_0000.nii.gz", tmp_path / "x.nii"]
    with pytest.raises(MaskgenError, match=r"x_0000\.nii\.gz and .*x\.nii would both be written to .*x\.nii\.gz"):
        output_names(clash, tmp_path / "out")
    assert output_names(files, tmp_path) == ["a.nii.gz", "b.nii.gz"]


# -- runs: statistics of freshly computed features --------------------------------------------------------------------
def test_fresh_stats_only_for_volume_normalised_runs():
    from types import SimpleNamespace

    from maskgen.evaluate.runs import LoadedRun

    feats = np.stack([np.full((2, 2, 2), 3.0), np.arange(8.0).reshape(2, 2, 2)]).astype(np.float32)

    def run(norm):
        return LoadedRun(None, "last", None, SimpleNamespace(feature_norm=norm), {}, None, None)

    assert run("crop").fresh_stats(feats) is None
    assert run("volume").fresh_stats(None) is None
    mean, std = run("volume").fresh_stats(feats)
    np.testing.assert_allclose(mean, [3.0, 3.5], atol=1e-6)
    np.testing.assert_allclose(std, [0.0, np.arange(8.0).std()], atol=1e-3)


# -- sensitivity: zeroing channels and the tables -----------------------------------------------------------------
def test_zero_channels_zeroes_exactly_the_given_channels():
    import torch

    from maskgen.evaluate.sensitivity import ZeroChannels

    seen = []
    wrapped = ZeroChannels(lambda z: seen.append(z) or z.sum(), [0, 2])
    x = torch.ones(2, 4, 3, 3, 3)
    wrapped(x)
    z = seen[0]
    assert (z[:, [0, 2]] == 0).all() and (z[:, [1, 3]] == 1).all()
    assert (x == 1).all()  # the caller's tensor is untouched


def test_sensitivity_tables_and_files(tmp_path):
    from maskgen.evaluate.metrics import Stat
    from maskgen.evaluate.sensitivity import SensitivityResult, SensitivityRow, sensitivity_table, write_sensitivity

    full = Stat(0.8, 0.01, 3)
    rows = [SensitivityRow("image", (0,), Stat(0.5, 0.02, 3), Stat(-0.3, 0.015, 3)),
            SensitivityRow("feature 0", (1,), Stat(0.81, 0.01, 3), Stat(0.01, float("nan"), 3))]
    groups = [SensitivityRow("image", (0,), rows[0].dice, rows[0].delta),
              SensitivityRow("all features", (1,), Stat(0.7, 0.0, 3), Stat(-0.1, 0.0, 3))]
    result = SensitivityResult("val", full, rows, groups, {"run": "r"})
    header, table = sensitivity_table(result)
    assert header == ["channel", "Dice", "Delta Dice"]
    assert table == [["image", "50.0 (2.0)", "-30.0 (1.5)"], ["feature 0", "81.0 (1.0)", "+1.0 (-)"]]
    paths = write_sensitivity(result, tmp_path)
    assert sorted(p.name for p in paths.values()) == [f"sensitivity-val.{e}" for e in ("csv", "json", "md", "png")]
    csv_lines = paths["csv"].read_text().splitlines()
    assert csv_lines[1] == "image,0.5,0.02,-0.3,0.015,3"
    md = paths["md"].read_text()
    assert "Full input: Dice 80.0 (1.0) over 3 cases" in md and "| all features | 70.0 (0.0) | -10.0 (0.0) |" in md


# -- robustness: the plan of shifts and the series names ------------------------------------------------------------
def test_robustness_shift_plan_and_series_names(tmp_path):
    from pathlib import Path

    from maskgen.evaluate.robustness import _level, _shift_plan, series_names

    plan = _shift_plan([0, 0.2], [1, 2], draws=3)
    assert [(n, [_level(s) for s in shs], d) for n, shs, d in plan] == [("bias", [0.0, 0.2], 3),
                                                                          ("gamma", [1.0, 2.0], 1)]
    assert [n for n, _, _ in _shift_plan([], [0.5], 3)] == ["gamma"]
    assert series_names([Path("a/erm"), Path("a/mg")]) == ["erm", "mg"]
    assert series_names([Path("a/run"), Path("b/run")]) == ["a/run", "b/run"]


# -- evaluate: the printed summary table ---------------------------------------------------------------------------
def test_summary_table_rows_per_domain_then_all():
    from maskgen.evaluate.evaluate import EvalResult, summary_table
    from maskgen.evaluate.metrics import CaseDice, summarize_by_domain

    cases = [CaseDice("c1", "t2", (0.8, 0.6)), CaseDice("c2", "t2", (0.4, 0.2)), CaseDice("c3", "flair", (0.5, 0.5))]
    overall, by_domain = summarize_by_domain(cases)
    header, rows = summary_table(EvalResult("test", ("a", "b"), cases, overall, by_domain))
    assert header == ["domain", "cases", "Dice", "a", "b"]
    assert [r[:3] for r in rows] == [["t2", "2", "50.0 (20.0)"], ["flair", "1", "50.0 (-)"], ["all", "3", "50.0 (11.5)"]]
    one = summarize_by_domain(cases[:2])
    assert [r[0] for r in summary_table(EvalResult("test", ("a", "b"), cases[:2], *one))[1]] == ["t2"]


# -- sweep results: seeds pooled per case, then mean (s.e.) over cases -----------------------------------------------
def test_sweep_results_pool_seeds_per_case(tmp_path):
    from maskgen.config import write_json_atomic
    from maskgen.evaluate.evaluate import EvalResult
    from maskgen.evaluate.metrics import CaseDice, summarize_by_domain
    from maskgen.evaluate.sweep_results import collect_results, results_markdown_rows

    variants = [Variant("maskgen", "both", 0.5, 0.0, 0), Variant("maskgen", "both", 0.5, 0.0, 1)]
    case_dice = {0: {"c1": 0.6, "c2": 0.2}, 1: {"c1": 0.8, "c2": 0.4}}   # seed -> case -> Dice (one class)
    for v in variants:
        cases = [CaseDice(c, "t2", (d,)) for c, d in case_dice[v.seed].items()]
        result = EvalResult("test", ("organ",), cases, *summarize_by_domain(cases), {"step": 10})
        write_json_atomic(tmp_path / v.name / "eval-test.json", result.as_dict())
    table = collect_results(tmp_path, variants, ["test"])
    # per case over seeds: c1 0.7, c2 0.3 -> mean 0.5, s.e. std([0.7, 0.3]) / sqrt(2) = 0.2
    cell = table.cells[("MR=50%", "test", "t2")]
    assert cell.mean == pytest.approx(0.5) and cell.se == pytest.approx(0.2) and cell.n == 2
    assert table.seeds == {"MR=50%": [0, 1]} and table.columns == [("test", "t2")]
    assert [(r["variant"], r["domain"], r["dice"]) for r in table.rows] == [
        ("both-mr50-s0", "t2", pytest.approx(0.4)), ("both-mr50-s0", "all", pytest.approx(0.4)),
        ("both-mr50-s1", "t2", pytest.approx(0.6)), ("both-mr50-s1", "all", pytest.approx(0.6))]
    assert all(r["empty_class"] == "ignore" for r in table.rows)
    assert results_markdown_rows(table) == (["method", "seeds", "test: t2"], [["MR=50%", "0,1", "50.0 (20.0)"]])
    assert collect_results(tmp_path, [Variant("maskgen", "image", 0, 0, 5)], ["test"]).rows == []  # not run yet
