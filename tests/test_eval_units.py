"""Pure parts of the evaluate stage: corruptions, subject pairing, sweep planning, tables."""

from __future__ import annotations

import numpy as np
import pytest

from maskgen.errors import MaskgenError
from maskgen.evaluate.corruptions import BiasFieldShift, GammaShift
from maskgen.evaluate.report import markdown_table
from maskgen.evaluate.stability import DomainPair, find_pairs, subject_of
from maskgen.evaluate.sweep import Variant, plan_variants


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
