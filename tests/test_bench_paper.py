"""`python -m benchmarks paper` (issue 16.5), the paper-size GPU benchmark, run end to end with its tiny CPU sizes.

One run, through maskgen's real extraction, training step, loader, train loop and inference: the report must have
every part with its figures, and a part that raises must be recorded with its error while the parts after it still
run (the loader part is made to raise after doing its real work, whose figures are checked too).
"""

from __future__ import annotations

import json

import pytest

from benchmarks import paper


def test_tiny_paper_benchmark_reports_every_part_and_survives_a_failing_one(tmp_path, monkeypatch, capsys):
    real_loader = paper.PART_FUNCTIONS["loader"]
    loader_figures: dict = {}

    def loader_then_fail(bench):
        loader_figures.update(real_loader(bench))
        raise RuntimeError("injected loader failure")

    monkeypatch.setitem(paper.PART_FUNCTIONS, "loader", loader_then_fail)
    results = tmp_path / "results.jsonl"
    line = paper.main(["--tiny", "--workdir", str(tmp_path / "work"), "--results", str(results)])

    parts = line["parts"]
    assert list(parts) == list(paper.PARTS)
    assert parts["loader"]["status"] == "failed"
    assert "injected loader failure" in parts["loader"]["error"]
    for name in ("extraction", "train_step", "inference", "estimate"):
        assert parts[name]["status"] == "ok", (name, parts[name])
        assert parts[name]["seconds"] > 0

    ext = parts["extraction"]
    assert ext["timed_cases"] == 2 and ext["per_case_s"] > 0 and ext["first_case_s"] > 0
    assert len(ext["resampled_shape_zyx"]) == 3 and ext["preprocess_s"] > 0 and ext["extract_volume_s"] > 0

    steps = parts["train_step"]["per_batch"]
    assert set(steps) == {"1", "2"}
    for r in steps.values():
        assert r["status"] == "ok" and r["crop_zyx"] == [16, 16, 16]
        assert all(r["step"][v]["n"] >= 2 and r["step"][v]["median_s"] > 0 for v in ("erm", "cached", "online"))
        assert {"overhead_vs_erm_pct"} <= set(r["step"]["cached"]) and "overhead_vs_erm_pct" in r["step"]["online"]
        assert r["unet_parameters"]["cached"] > r["unet_parameters"]["erm"]  # the wider first convolution
        assert set(r["peak_gpu_gb"]) == {"erm", "cached", "online"}

    assert loader_figures["loader"]["crops_per_s"] > 0 and loader_figures["num_workers"] >= 0
    assert loader_figures["crop_zyx"] == [16, 16, 16] and loader_figures["headroom"] > 0

    inference = parts["inference"]
    assert inference["evaluate"]["timed_pairs"] >= 2 and inference["evaluate"]["maskgen_overhead_pct"] is not None
    assert inference["predict"]["timed_pairs"] >= 1 and inference["predict"]["extractor_s"] > 0
    for kind in ("evaluate", "predict"):
        assert inference[kind]["per_case"]["erm"]["median_s"] > 0
        assert inference[kind]["per_case"]["maskgen"]["median_s"] > 0

    estimate = parts["estimate"]
    assert set(estimate["per_batch"]) == {"1", "2"} and estimate["loader_crops_per_s"] is None  # the loader failed
    assert estimate["validation_hours"] > 0
    for rows in estimate["per_batch"].values():
        assert all(rows[v]["total_hours"] > rows[v]["train_hours"] > 0 for v in ("erm", "cached", "online"))

    assert json.loads(results.read_text().splitlines()[-1])["parts"] == json.loads(json.dumps(parts))
    table = capsys.readouterr().out.split("== paper-size benchmark")[-1]
    for name in paper.PARTS:
        assert f"[{name}]" in table
    assert "injected loader failure" in table


def test_parts_option_rejects_unknown_parts(tmp_path):
    with pytest.raises(SystemExit):
        paper.parse(["--tiny", "--parts", "extraction,warp"])
