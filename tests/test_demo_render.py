"""Building blocks of the demo dataset: the template, the random anatomy and the MR contrast renderer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from maskgen.demo.contrast import FLAIR, T1, T2, ContrastSpec, MRContrast
from maskgen.demo.deform import AnatomyParams, RandomAnatomy, upsample_control_grid
from maskgen.demo.template import load_template


@pytest.fixture(scope="module")
def template():
    return load_template(4)


def test_template(template):
    assert template.spacing == 4 and template.affine[0, 0] == 4.0
    np.testing.assert_allclose(template.csf + template.gm + template.wm, template.mask, atol=1e-5)
    assert 0.0 <= template.mask.min() and template.mask.max() <= 1.0
    csf, gm, wm = template.t1_tissue_means
    assert csf < gm < wm  # real T1 contrast of the template
    with pytest.raises(ValueError, match="2.5"):
        load_template(2.5)


def test_identity_anatomy_reproduces_the_template(template):
    anatomy = RandomAnatomy(template, margin_mm=8.0)
    identity = AnatomyParams((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                             np.zeros((3, *anatomy.control_shape), np.float32))
    warped = anatomy.apply(identity)
    # the output grid is the template's brain box grown by 2 voxels: undo that offset
    offset = np.round(np.linalg.solve(template.affine, np.r_[anatomy.grid_affine[:3, 3], 1.0])[:3]).astype(int)
    inside = tuple(slice(max(0, -o), max(0, -o) + min(n - max(0, -o), m - max(0, o)))
                   for o, n, m in zip(offset, warped.mask.shape, template.mask.shape))
    src = tuple(slice(s.start + o, s.stop + o) for s, o in zip(inside, offset))
    np.testing.assert_allclose(warped.t1[inside], template.t1[src], atol=1e-5)
    np.testing.assert_allclose(warped.gm[inside], template.gm[src], atol=1e-5)
    assert warped.mask.sum() == pytest.approx(template.mask.sum(), rel=1e-4)


def test_anatomy_sampling(template):
    anatomy = RandomAnatomy(template)
    a = anatomy.sample(np.random.default_rng(7))
    b = anatomy.sample(np.random.default_rng(7))
    c = anatomy.sample(np.random.default_rng(8))
    assert a == b and np.array_equal(a.displacement_mm, b.displacement_mm)
    assert a != c
    assert all(abs(r) <= 10 for r in a.rotation_deg) and all(0.85 < s < 1.16 for s in a.scale)
    warped_a, warped_c = anatomy.apply(a), anatomy.apply(c)
    assert np.array_equal(warped_a.gm, anatomy.apply(b).gm)
    assert np.abs(warped_a.gm - warped_c.gm).mean() > 0.01
    vol = lambda w: float(w.mask.sum())  # noqa: E731
    assert 0.6 < vol(warped_a) / float(template.mask.sum()) < 1.6


@pytest.mark.parametrize(
    "kwargs, bad",
    [({"max_rotation_deg": 90}, "90"), ({"scale_range": (1.2, 1.1)}, "(1.2, 1.1)"), ({"elastic_std_mm": -1}, "-1"),
     ({"control_spacing_mm": 4}, "got 4")],
)
def test_anatomy_arguments_are_checked(template, kwargs, bad):
    with pytest.raises(ValueError, match=bad.replace("(", r"\(").replace(")", r"\)")):
        RandomAnatomy(template, **kwargs)


def test_contrast_spec_checks():
    with pytest.raises(ValueError, match="'t 2'"):
        ContrastSpec(name="t 2", tissue_means=None)
    with pytest.raises(ValueError, match=r"noise_std.*\(0.3, 0.1\)"):
        dataclasses.replace(T2, noise_std=(0.3, 0.1))
    with pytest.raises(ValueError, match="'w'"):
        dataclasses.replace(T2, slice_axis="w")
    # the shipped contrasts order their tissues differently
    t2 = [np.mean(r) for r in T2.tissue_means]
    flair = [np.mean(r) for r in FLAIR.tissue_means]
    assert t2[0] > t2[1] > t2[2] and flair[1] > flair[2] > flair[0] and T1.tissue_means is None


def test_render_formula_and_determinism(template):
    warped = RandomAnatomy(template, margin_mm=8.0).apply(
        RandomAnatomy(template, margin_mm=8.0).sample(np.random.default_rng(0))
    )
    renderer = MRContrast(T2)
    params = renderer.sample(np.random.default_rng(1))
    assert renderer.sample(np.random.default_rng(1)) == params
    clean = dataclasses.replace(params, detail_weight=0.0, texture_std=0.0, bias_std=0.0, noise_std=0.0,
                                blur_fwhm_mm=0.0, slice_thickness_mm=0.0)
    image = renderer.apply(warped, clean, template.t1_tissue_means, 4.0)
    mix = sum(mu * p for mu, p in zip(clean.tissue_means, (warped.csf, warped.gm, warped.wm)))
    np.testing.assert_allclose(image, mix * clean.gain, rtol=1e-5, atol=1e-3)

    noisy = renderer.apply(warped, params, template.t1_tissue_means, 4.0)
    assert np.array_equal(noisy, renderer.apply(warped, params, template.t1_tissue_means, 4.0))
    other = renderer.apply(warped, dataclasses.replace(params, seed=params.seed + 1), template.t1_tissue_means, 4.0)
    assert not np.array_equal(noisy, other)
    # Rician background: the magnitude of complex Gaussian noise has mean sigma * sqrt(pi / 2)
    background = noisy[warped.mask == 0]
    sigma = params.noise_std * params.gain * max(params.tissue_means)
    assert background.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.08)


def test_thick_slices_are_piecewise_linear():
    params = MRContrast(T2).sample(np.random.default_rng(0))
    params = dataclasses.replace(params, blur_fwhm_mm=0.0, slice_thickness_mm=12.0, slice_axis="z")
    signal = np.random.default_rng(0).random((6, 5, 31)).astype(np.float32)
    out = MRContrast._resolution(signal, params, spacing=4.0)
    assert out.shape == signal.shape
    kinks = np.abs(np.diff(out, 2, axis=2)).max(axis=(0, 1)) > 1e-5
    assert kinks.sum() <= 31 / 3 + 1  # one knot per 12 mm slice, straight lines in between
    assert np.abs(np.diff(out, axis=2)).mean() < 0.5 * np.abs(np.diff(out, axis=0)).mean()


def test_upsample_control_grid():
    control = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    field = upsample_control_grid(control, (9, 10, 11))
    assert field.shape == (2, 9, 10, 11) and field.dtype == np.float32
    np.testing.assert_allclose(field[:, 0, 0, 0], control[:, 0, 0, 0], atol=1e-5)
    np.testing.assert_allclose(field[:, -1, -1, -1], control[:, -1, -1, -1], atol=1e-5)
    np.testing.assert_allclose(upsample_control_grid(np.full((2, 2, 2), 3.0), (5, 6, 7)), 3.0, atol=1e-5)
