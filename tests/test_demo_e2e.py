"""`maskgen demo` end to end on a tiny schedule: data -> store -> ERM and MaskGen -> comparison table."""

from __future__ import annotations

import csv

from typer.testing import CliRunner

from maskgen.cli import app
from maskgen.demo.run import DemoSettings, run_demo

runner = CliRunner()


def tiny(tmp_path, **changes):
    base = dict(data_dir=str(tmp_path / "data"), store=str(tmp_path / "demo.zarr"), out=str(tmp_path / "runs"),
                subjects=4, spacing=4, steps=2, batch_size=2, channels=4, depth=2, crop_xyz=(16, 16, 16),
                val_every=2, device="cpu", num_workers=0, extractor="mind")
    base.update(changes)
    return DemoSettings(**base)


def test_demo_runs_every_stage_and_compares_erm_with_maskgen(tmp_path):
    result = run_demo(tiny(tmp_path))
    assert sorted(result["sweep"]["trained"]) == ["both-mr25-s0", "image-s0"]
    rows = list(csv.DictReader(open(result["results"]["csv"])))
    methods = {r["method"] for r in rows}
    assert methods == {"Image only", "MR=25%"}
    domains = {r["domain"] for r in rows if r["split"] == "test"}
    assert {"t1", "t2", "flair"} <= domains
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    assert result["results"]["png"].is_file()
    # the store was made once, by the offline extractor, at the schedule's spacing
    import json

    meta = json.loads((tmp_path / "demo.zarr" / "zarr.json").read_text())["attributes"]
    assert meta["extractor"]["name"] == "mind"

    # resumable: a second run reuses data, store and runs
    again = run_demo(tiny(tmp_path))
    assert again["sweep"]["trained"] == [] and sorted(again["sweep"]["skipped"]) == ["both-mr25-s0", "image-s0"]


def test_demo_cli_rejects_bad_options():
    res = runner.invoke(app, ["demo", "--seeds", "a,b"])
    assert res.exit_code == 1 and "--seeds 'a,b'" in res.stderr
    res = runner.invoke(app, ["demo", "--mask-rate", "1.5"])
    assert res.exit_code == 1 and "--mask-rate 1.5" in res.stderr
