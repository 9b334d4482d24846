"""`maskgen demo-data`: exit codes, messages, and the hand-over to `maskgen verify --dataset demo`."""

from __future__ import annotations

from typer.testing import CliRunner

from maskgen.cli import app

runner = CliRunner()
SMALL = ["--subjects", "4", "--spacing", "4"]


def test_default_folder_then_verify_passes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MASKGEN_DATA_ROOT", raising=False)
    result = runner.invoke(app, ["demo-data", *SMALL])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cache/demo-data/domains.csv").is_file()
    assert "written" in result.stdout and "7 cases" in result.stdout
    assert "maskgen verify --dataset demo" in result.stdout and "--data-root" not in result.stdout

    verify = runner.invoke(app, ["verify", "--dataset", "demo"])  # default_data_root = cache/demo-data
    assert verify.exit_code == 0, verify.output
    assert "7 cases" in verify.stdout

    again = runner.invoke(app, ["demo-data", *SMALL])
    assert again.exit_code == 0 and "up to date" in again.stdout


def test_refuses_a_foreign_folder(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "scan.nii.gz").write_bytes(b"not mine to delete")
    result = runner.invoke(app, ["demo-data", "--out", str(target), *SMALL])
    assert result.exit_code == 1
    assert "Error:" in result.stderr and "--overwrite" in result.stderr and "mine" in result.stderr
    assert "Traceback" not in result.output
    assert (target / "scan.nii.gz").read_bytes() == b"not mine to delete"

    result = runner.invoke(app, ["demo-data", "--out", str(target), "--overwrite", *SMALL])
    assert result.exit_code == 0, result.output
    assert not (target / "scan.nii.gz").exists()
    assert f"--data-root {target}" in result.stdout


def test_bad_options_exit_2(tmp_path):
    for args in (["--subjects", "3"], ["--seed", "-1"], ["--spacing", "0"]):
        result = runner.invoke(app, ["demo-data", "--out", str(tmp_path / "x"), *args])
        assert result.exit_code == 2, (args, result.output)
    assert not (tmp_path / "x").exists()


def test_help_lists_demo_data():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "demo-data" in result.stdout


def test_build_demo_data_turns_bad_settings_into_a_message(tmp_path):
    import pytest

    from maskgen.demo.console import build_demo_data
    from maskgen.errors import MaskgenError

    with pytest.raises(MaskgenError, match="subjects must be an integer >= 4"):
        build_demo_data(tmp_path / "x", subjects=3)
    assert not (tmp_path / "x").exists()


def test_demo_command_runs_the_documented_schedule(tmp_path, monkeypatch):
    """`maskgen demo` hands run_demo the schedule of DemoSettings (the README's run: 3 mm, 32^3 crops, mask rate
    chosen on validation) unless an option changes it; `--mask-rate` overrides only the rate."""
    import maskgen.demo.run as demo_run
    from maskgen.errors import MaskgenError

    seen = []

    def capture(settings, overwrite=False, log=None):
        seen.append(settings)
        raise MaskgenError("stopped by the test")

    monkeypatch.setattr(demo_run, "run_demo", capture)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 1 and "stopped by the test" in result.stderr
    assert seen[-1] == demo_run.DemoSettings()
    assert (seen[-1].spacing, seen[-1].crop_xyz, seen[-1].mask_rate, seen[-1].steps) == (3, (32, 32, 32), 0.25, 500)

    result = runner.invoke(app, ["demo", "--mask-rate", "0.5", "--quick"])
    assert result.exit_code == 1
    assert seen[-1] == demo_run.DemoSettings.quick(mask_rate=0.5)
