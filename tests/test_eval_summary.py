"""The nnU-Net-style summary (counts, IoU, HD95, NSD per case and class; means) against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from maskgen.errors import OptionError
from maskgen.evaluate.summary import CaseMetrics, case_metrics, parse_metrics, summary_document


def _cube_pair(shift_axis=0):
    """Class 1: a 3x3x3 cube in the reference, the same cube moved by one voxel along `shift_axis` (z, y or x) in
    the prediction. Class 2: only in the prediction (one voxel)."""
    ref = np.zeros((10, 10, 10), np.uint8)
    pred = np.zeros_like(ref)
    ref[2:5, 2:5, 2:5] = 1
    sl = [slice(2, 5)] * 3
    sl[shift_axis] = slice(3, 6)
    pred[tuple(sl)] = 1
    pred[8, 8, 8] = 2
    return pred, ref


def test_counts_dice_and_iou_hand_computed():
    pred, ref = _cube_pair()
    m = case_metrics(pred, ref, 2, "zero")
    # class 1: 27 voxels each, overlap 2 slices of 9 = 18
    assert {k: m["1"][k] for k in ("TP", "FP", "FN", "n_pred", "n_ref")} == {"TP": 18, "FP": 9, "FN": 9,
                                                                            "n_pred": 27, "n_ref": 27}
    assert m["1"]["TN"] == 1000 - 36
    assert m["1"]["Dice"] == pytest.approx(2 * 18 / 54) and m["1"]["IoU"] == pytest.approx(18 / 36)
    # class 2 is a false positive of a class absent from the reference: 0 for nnU-Net, not scored for the paper
    assert m["2"]["Dice"] == 0.0 and m["2"]["IoU"] == 0.0 and m["2"]["FP"] == 1
    ignore = case_metrics(pred, ref, 2)
    assert math.isnan(ignore["2"]["Dice"]) and math.isnan(ignore["2"]["IoU"]) and ignore["2"]["FP"] == 1
    assert ignore["1"] == m["1"]


def test_hd95_and_nsd_are_in_millimetres():
    pred, ref = _cube_pair(shift_axis=0)  # moved by one voxel along z
    mm = case_metrics(pred, ref, 2, "ignore", ("dice", "hd95", "nsd"), spacing_zyx=(2.0, 1.0, 1.0),
                      nsd_tolerance_mm=2.0)
    assert mm["1"]["HD95"] == pytest.approx(2.0)       # one voxel of 2 mm
    assert mm["1"]["NSD"] == pytest.approx(1.0)        # every boundary voxel within 2 mm
    strict = case_metrics(pred, ref, 2, "ignore", ("nsd",), spacing_zyx=(2.0, 1.0, 1.0), nsd_tolerance_mm=1.5)
    assert 0 < strict["1"]["NSD"] < 1                  # the moved faces are 2 mm away: beyond 1.5 mm
    iso = case_metrics(pred, ref, 2, "ignore", ("hd95", "nsd"), spacing_zyx=(1.0, 1.0, 1.0), nsd_tolerance_mm=1.0)
    assert iso["1"]["HD95"] == pytest.approx(1.0) and iso["1"]["NSD"] == pytest.approx(1.0)
    # class 2 (reference empty): HD95 undefined; NSD follows the convention
    assert math.isnan(mm["2"]["HD95"]) and math.isnan(mm["2"]["NSD"])
    zero = case_metrics(pred, ref, 2, "zero", ("hd95", "nsd"))
    assert math.isnan(zero["2"]["HD95"]) and zero["2"]["NSD"] == 0.0
    missed = case_metrics(np.zeros_like(ref), ref, 1, "ignore", ("hd95", "nsd"))
    assert math.isnan(missed["1"]["HD95"]) and missed["1"]["NSD"] == 0.0 and missed["1"]["Dice"] == 0.0
    assert "HD95" not in case_metrics(pred, ref, 2)["1"]


def test_summary_document_means_like_nnunet():
    nan = float("nan")
    c1 = CaseMetrics("a", "t1", {"1": {"Dice": 0.8, "TP": 8}, "2": {"Dice": 0.4, "TP": 2}})
    c2 = CaseMetrics("b", "t1", {"1": {"Dice": 0.6, "TP": 6}, "2": {"Dice": nan, "TP": 0}})
    c3 = CaseMetrics("c", "t2", {"1": {"Dice": 0.1, "TP": 1}, "2": {"Dice": 0.3, "TP": 3}})
    doc = summary_document([c1, c2, c3], ["liver", "spleen"], {"empty_class": "ignore"})
    assert doc["labels"] == {"1": "liver", "2": "spleen"} and doc["empty_class"] == "ignore"
    assert doc["mean"]["1"]["Dice"] == pytest.approx(0.5) and doc["mean"]["2"]["Dice"] == pytest.approx(0.35)
    assert doc["mean"]["1"]["TP"] == pytest.approx(5.0)
    assert doc["foreground_mean"]["Dice"] == pytest.approx((0.5 + 0.35) / 2)
    assert doc["mean_by_domain"]["t1"]["2"]["Dice"] == pytest.approx(0.4)
    assert doc["foreground_mean_by_domain"]["t2"]["Dice"] == pytest.approx(0.2)
    per_case = doc["metric_per_case"]
    assert [c["case_id"] for c in per_case] == ["a", "b", "c"]
    assert per_case[1]["metrics"]["2"]["Dice"] is None  # JSON-safe


def test_parse_metrics():
    assert parse_metrics("nsd, HD95") == ("dice", "hd95", "nsd")
    assert parse_metrics("dice") == ("dice",)
    with pytest.raises(OptionError, match="metrics 'asd' is not one of dice, hd95, nsd"):
        parse_metrics("dice,asd")
