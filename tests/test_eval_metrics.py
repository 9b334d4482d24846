"""Dice (both empty-class conventions) and its summary (mean, standard error over cases) against hand-computed
values and MONAI's DiceMetric."""

from __future__ import annotations

import math

import numpy as np
import pytest

from maskgen.errors import OptionError
from maskgen.evaluate.metrics import CaseDice, Stat, case_mean, mean_se, summarize_by_domain, summarize_cases
from maskgen.train.dice import dice_per_class


def _maps():
    ref = np.zeros((4, 4, 4), np.uint8)
    pred = np.zeros((4, 4, 4), np.uint8)
    ref[0, :2] = 1          # 8 voxels of class 1
    pred[0, :1] = 1         # 4 voxels, all inside: Dice = 2*4 / (4 + 8) = 2/3
    ref[2, 0, 0] = 2        # class 2 only in the reference: 0 in both conventions
    pred[3, 0, 0] = 3       # class 3 only in the prediction: 0 (zero) or not scored (ignore)
    # class 4 absent from both: not scored in either convention
    return pred, ref


def test_dice_per_class_hand_computed_zero_convention():
    pred, ref = _maps()
    d = dice_per_class(pred, ref, num_foreground=4, empty_class="zero")
    assert d.shape == (4,)
    assert d[0] == pytest.approx(2 / 3)
    assert d[1] == 0.0 and d[2] == 0.0
    assert math.isnan(d[3])
    assert case_mean(d) == pytest.approx((2 / 3 + 0 + 0) / 3)


def test_dice_per_class_hand_computed_ignore_convention_is_the_default():
    pred, ref = _maps()
    d = dice_per_class(pred, ref, num_foreground=4)
    assert d[0] == pytest.approx(2 / 3) and d[1] == 0.0
    assert math.isnan(d[2]) and math.isnan(d[3])   # absent from the reference: not scored, predicted or not
    assert case_mean(d) == pytest.approx((2 / 3 + 0) / 2)
    np.testing.assert_array_equal(d, dice_per_class(pred, ref, 4, empty_class="ignore"))


@pytest.mark.parametrize("empty_class, ignore_empty", [("ignore", True), ("zero", False)])
def test_dice_per_class_matches_monai_dice_metric(empty_class, ignore_empty):
    """The paper's code scores with MONAI DiceMetric(include_background=False, ignore_empty=True); the zero
    convention is MONAI's ignore_empty=False except that a class absent from both maps is not scored."""
    import torch
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    pred, ref = _maps()
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=ignore_empty)
    expected = metric(one_hot(torch.from_numpy(pred)[None, None].long(), 5),
                      one_hot(torch.from_numpy(ref)[None, None].long(), 5))[0].numpy()
    if not ignore_empty:
        expected[3] = np.nan  # MONAI gives 1 to a class absent from both maps; maskgen does not score it
    np.testing.assert_allclose(dice_per_class(torch.from_numpy(pred), torch.from_numpy(ref), 4, empty_class),
                               expected, atol=1e-6)


def test_dice_per_class_overlap_partial():
    ref = np.zeros((2, 3, 5), np.uint8)
    pred = np.zeros_like(ref)
    ref[0, 0, :4] = 1       # |R| = 4
    pred[0, 0, 2:] = 1      # |P| = 3, |P & R| = 2 -> 4 / 7
    for convention in ("ignore", "zero"):
        assert dice_per_class(pred, ref, 1, convention)[0] == pytest.approx(4 / 7)
        assert dice_per_class(ref, ref, 1, convention)[0] == pytest.approx(1.0)


def test_dice_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        dice_per_class(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), 1)
    with pytest.raises(ValueError, match="num_foreground"):
        dice_per_class(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), 0)
    with pytest.raises(OptionError, match="empty_class 'skip' is not one of ignore, zero"):
        dice_per_class(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), 1, "skip")


def test_mean_se_hand_computed():
    s = mean_se([0.5, 0.7, 0.9])
    # mean 0.7; sample std = sqrt(((-.2)^2 + 0 + .2^2) / 2) = 0.2; se = 0.2 / sqrt(3)
    assert s.mean == pytest.approx(0.7)
    assert s.se == pytest.approx(0.2 / math.sqrt(3))
    assert s.n == 3
    one = mean_se([0.4, float("nan"), None])
    assert one.mean == pytest.approx(0.4) and math.isnan(one.se) and one.n == 1
    empty = mean_se([float("nan")])
    assert math.isnan(empty.mean) and empty.n == 0


def test_summary_by_domain_hand_computed():
    nan = float("nan")
    cases = [
        CaseDice("c1", "t2", (0.8, 0.6)),      # case mean 0.7
        CaseDice("c2", "t2", (0.4, nan)),      # class 2 absent in both: case mean 0.4
        CaseDice("c3", "flair", (0.2, 0.0)),   # case mean 0.1
    ]
    overall, by_domain = summarize_by_domain(cases)
    assert list(by_domain) == ["t2", "flair"]
    # overall: case means 0.7, 0.4, 0.1 -> mean 0.4, sample std 0.3, se 0.3 / sqrt(3)
    assert overall.overall.mean == pytest.approx(0.4)
    assert overall.overall.se == pytest.approx(0.3 / math.sqrt(3))
    assert overall.overall.n == 3
    # class 1 over 3 cases: 0.8, 0.4, 0.2 -> mean 0.4667, std sqrt(((.3333)^2+(.0667)^2+(.2667)^2)/2)
    c1 = np.array([0.8, 0.4, 0.2])
    assert overall.per_class[0].mean == pytest.approx(c1.mean())
    assert overall.per_class[0].se == pytest.approx(c1.std(ddof=1) / math.sqrt(3))
    # class 2: NaN excluded -> 0.6, 0.0 over 2 cases
    assert overall.per_class[1].mean == pytest.approx(0.3)
    assert overall.per_class[1].se == pytest.approx(np.std([0.6, 0.0], ddof=1) / math.sqrt(2))
    assert overall.per_class[1].n == 2
    t2 = by_domain["t2"]
    assert t2.overall.mean == pytest.approx(0.55)
    assert t2.overall.se == pytest.approx(np.std([0.7, 0.4], ddof=1) / math.sqrt(2))
    assert by_domain["flair"].overall.n == 1 and math.isnan(by_domain["flair"].overall.se)


def test_case_mean_and_json_forms():
    nan = float("nan")
    c = CaseDice("c", "d", (nan, nan))
    assert math.isnan(c.mean)
    d = c.as_dict(["a", "b"])
    assert d["mean"] is None and d["dice"] == {"a": None, "b": None}
    s = summarize_cases([CaseDice("x", "d", (0.5, nan)), CaseDice("y", "d", (0.7, nan))])
    js = s.as_dict(["a", "b"])
    assert js["per_class"]["b"] == {"mean": None, "se": None, "n": 0}
    assert js["overall"]["mean"] == pytest.approx(0.6)


def test_stat_format_matches_paper_style():
    assert Stat(0.675, 0.009, 10).format() == "67.5 (0.9)"
    assert Stat(0.5, math.nan, 1).format() == "50.0 (-)"
    assert Stat(math.nan, math.nan, 0).format() == "-"
    assert Stat(0.9123, 0.0123, 3).format(scale=1.0, digits=3) == "0.912 (0.012)"
