"""`benchmarks/extractor_shift_factors.py` (issue 15): the demo's shifts split into one-factor variants.

The variants must change exactly one factor of the demo's FLAIR / T2 against T1 (else the benchmark attributes a
loss of stability to the wrong cause), and a tiny real run must render them, extract them and record every variant.
"""

from __future__ import annotations

import json

import numpy as np

from benchmarks import extractor_shift_factors as bench
from maskgen.demo.contrast import FLAIR, T1, T2

ACQUISITION = ("noise_std", "bias_std", "texture_std", "gain")


def test_each_variant_changes_only_its_factor():
    specs = {s.name: s for s in bench.factor_contrasts()}
    assert next(iter(specs)) == "t1" and specs["t1"] == T1          # the source (training) contrast comes first
    assert specs["flair"] == FLAIR and specs["t2"] == T2
    assert specs["t1_repeat"].tissue_means is None and specs["t1_repeat"].slice_thickness_mm == T1.slice_thickness_mm
    for target in (FLAIR, T2):
        hr, contrast = specs[f"{target.name}_hr"], specs[f"{target.name}_contrast"]
        for spec in (hr, contrast):                             # the target's intensities at T1's resolution
            assert spec.tissue_means == target.tissue_means and spec.detail_weight == target.detail_weight
            assert spec.slice_thickness_mm == (0.0, 0.0) and spec.blur_fwhm_mm == T1.blur_fwhm_mm
        assert all(getattr(hr, k) == getattr(target, k) for k in ACQUISITION)      # _hr keeps its acquisition
        assert all(getattr(contrast, k) == getattr(T1, k) for k in ACQUISITION)    # _contrast takes T1's
    lr = specs["t1_lr"]
    assert lr.tissue_means is None and all(getattr(lr, k) == getattr(T1, k) for k in ACQUISITION)
    assert (lr.blur_fwhm_mm, lr.slice_thickness_mm, lr.slice_axis) == (
        FLAIR.blur_fwhm_mm, FLAIR.slice_thickness_mm, FLAIR.slice_axis)


def test_tiny_run_renders_every_variant_and_records_it(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results.jsonl"
    monkeypatch.setattr(bench, "RESULTS", results)
    data = tmp_path / "factors"
    assert bench.main(["--data", str(data), "--subjects", "4", "--spacing", "4", "--extractors", "image,mind"]) == 0

    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["extractor"] for r in records] == ["image", "mind"]
    names = {s.name for s in bench.factor_contrasts()} - {"t1"}
    for r in records:
        assert r["benchmark"] == "extractor_shift_factors"
        assert set(r["cka_vs_t1"]) == names
        assert all(0.0 <= v <= 1.0 + 1e-9 for v in r["cka_vs_t1"].values())
    assert "t1_repeat" in capsys.readouterr().out

    # the data were rendered with the variants: each test subject's recorded draw lies in its variant's ranges
    meta = json.loads((data / "dataset.json").read_text())["maskgen"]["subjects"]
    tests = [m["contrasts"] for m in meta.values() if m["split"] == "test"]
    assert tests and all(set(c) == names | {"t1"} for c in tests)
    for c in tests:
        assert c["t1_lr"]["tissue_means"] is None
        assert FLAIR.slice_thickness_mm[0] <= c["t1_lr"]["slice_thickness_mm"] <= FLAIR.slice_thickness_mm[1]
        assert c["flair_contrast"]["slice_thickness_mm"] == 0.0
        assert all(lo <= v <= hi for v, (lo, hi) in zip(c["flair_contrast"]["tissue_means"], FLAIR.tissue_means))
        assert T1.noise_std[0] <= c["flair_contrast"]["noise_std"] <= T1.noise_std[1]
        assert c["t1_repeat"]["seed"] != c["t1"]["seed"]

    from benchmarks.extractor_quality import load_demo

    images = {c["domain"]: c["image"] for c in load_demo(data).values() if c["split"] == "test"}
    assert not np.allclose(images["t1_repeat"], images["t1"])
