"""maskgen.data.labels: remapping raw label values and the checks that make a label usable."""

from __future__ import annotations

import numpy as np

from maskgen.data.labels import affine_mismatch, check_label, remap_labels
from maskgen.data.pipeline import Pipeline


def pipe(**changes) -> Pipeline:
    base = dict(name="t", layout="nnunet", spacing=(1, 1, 1), crop_size=(8, 8, 8), normalization="minmax",
                classes=("a", "b"))
    base.update(changes)
    return Pipeline(**base)


def test_remap_with_label_map_and_binarize():
    values = np.array([0, 1, 15, 2])
    np.testing.assert_array_equal(remap_labels(values, pipe(label_map=((15, 2),))), [0, 1, 2, 2])
    np.testing.assert_array_equal(remap_labels(values, pipe(classes=("fg",), binarize_labels=True)), [0, 1, 1, 1])
    assert remap_labels(values, pipe()) is values  # nothing to do: no copy


def test_check_label_accepts_whole_floats_and_maps_values():
    raw = np.array([[[0.0, 1.0], [2.0, 15.0]]])
    label, problems = check_label(raw, pipe(label_map=((15, 1),)))
    assert problems == [] and label.dtype == np.uint8
    np.testing.assert_array_equal(label, [[[0, 1], [2, 1]]])
    negative, problems = check_label(np.array([[[-1, 0, 2]]]), pipe(label_map=((-1, 1),)))
    assert problems == [] and negative.tolist() == [[[1, 0, 2]]]


def test_check_label_problems_say_what_to_do():
    _, problems = check_label(np.array([0.0, 0.5, 1.0]), pipe())
    assert "non-integer values [0.5]" in problems[0] and "nearest-neighbour" in problems[0]
    _, problems = check_label(np.array([0.0, np.nan]), pipe())
    assert "1 NaN/Inf" in problems[0]
    _, problems = check_label(np.array([0, 255], dtype=np.uint8), pipe(classes=("fg",)))
    assert "undeclared values [255]" in problems[0] and "divide it by 255" in problems[0]
    _, problems = check_label(np.array([0, 3]), pipe())
    assert "0..2" in problems[0] and "divide" not in problems[0]
    _, problems = check_label(np.array(["a"]), pipe())
    assert "unsupported data type" in problems[0]


def test_affine_mismatch_tolerance_scales_with_the_voxel():
    a = np.diag([0.5, 0.5, 2.0, 1.0])
    b = a.copy()
    b[:3, 3] = 0.004  # < 1% of the smallest voxel (0.5 mm)
    assert affine_mismatch(a, b) is None
    b[:3, 3] = 0.01
    assert "origins by 0.01 mm" in affine_mismatch(a, b)
    c = a.copy()
    c[0, 0] = 0.5006  # axes differ by more than 0.1% of 0.5 mm
    assert "voxel axes differ" in affine_mismatch(a, c)
