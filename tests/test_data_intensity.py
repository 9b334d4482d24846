"""maskgen.data.intensity: the normalisation rules (CT window, min-max, robust percentiles) and their records."""

from __future__ import annotations

import numpy as np
import pytest

from maskgen.data.intensity import IntensityRule, normalize


def mri_with_outliers() -> np.ndarray:
    rng = np.random.default_rng(0)
    image = np.zeros((20, 20, 20), np.float32)  # air background 0
    image[4:16, 4:16, 4:16] = rng.uniform(100, 200, size=(12, 12, 12))
    image[5, 5, 5:8] = 10_000.0  # three hot voxels (vessel inflow, a fat spike)
    return image


def test_ct_window_clips_and_scales():
    hu = np.array([-3000.0, -1024.0, 0.0, 512.0, 1024.0, 3000.0], np.float32)
    out, record = normalize(hu, IntensityRule("ct"))
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 0.75, 1.0, 1.0])
    assert record == {"rule": "ct", "window": [-1024.0, 1024.0], "range": [-1024.0, 1024.0]}
    out, record = normalize(hu, IntensityRule("ct", window=(-100.0, 300.0)))
    assert out[2] == pytest.approx(0.25) and record["window"] == [-100.0, 300.0]


def test_percentile_rule_resists_bright_outliers_and_keeps_the_background_at_zero():
    image = mri_with_outliers()
    minmax, _ = normalize(image, IntensityRule("minmax"))
    robust, record = normalize(image, IntensityRule("percentile"))
    inside = image > 0
    assert minmax[inside & (image < 1000)].max() < 0.03  # min-max squashes the tissue under the outliers
    assert robust[~inside].max() == 0.0 and robust.max() == 1.0 and robust.min() == 0.0
    tissue = robust[inside & (image < 1000)]
    assert tissue.min() < 0.02 and tissue.max() > 0.98  # the tissue spans the range
    assert record["rule"] == "percentile" and record["percentiles"] == [0.5, 99.5]
    lo, hi = record["range"]
    assert 100 <= lo < 102 and 198 < hi <= 200  # percentiles of the voxels above the background, not of the air


def test_percentile_rule_on_an_image_without_background_and_a_constant_image():
    ramp = np.linspace(0, 1000, 1000, dtype=np.float32)
    out, record = normalize(ramp, IntensityRule("percentile", percentiles=(10.0, 90.0)))
    assert record["range"] == pytest.approx([100.0, 900.0], rel=0.01)
    assert out[0] == 0.0 and out[-1] == 1.0 and out[500] == pytest.approx(0.5, abs=0.01)
    flat, record = normalize(np.full((3, 3, 3), 7.0, np.float32), IntensityRule("minmax"))
    assert not flat.any() and record["range"] == [7.0, 7.0]


def test_rules_are_checked_and_described():
    with pytest.raises(ValueError, match="zscore"):
        IntensityRule("zscore")
    assert IntensityRule("minmax", window=(0.0, 1.0)).to_record() == {"rule": "minmax"}
    assert IntensityRule("percentile").describe() == "percentile [0.5, 99.5]"
    assert IntensityRule("ct").describe() == "ct [-1024, 1024]"
