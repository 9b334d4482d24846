"""Every size option reads `N` (cubic) or `X,Y,Z` in x,y,z order through one parser (`maskgen.config.parse_size`) and
hands the command (z, y, x); a malformed value is a usage error naming the option and the value (issue 14)."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from maskgen.cli import app
from maskgen.config import parse_size, xyz_text
from maskgen.errors import OptionError

runner = CliRunner()
WIDE = {"COLUMNS": "250", "TERMINAL_WIDTH": "250", "NO_COLOR": "1"}
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

#: (command path, flag, required arguments, cubic only)
SIZE_OPTIONS = [
    (("train",), "--crop-size", ["--features", "s.zarr"], False),
    (("sweep",), "--crop-size", ["--features", "s.zarr", "--out", "sw"], False),
    (("extract",), "--chunks", ["--dataset", "demo"], False),
    (("pretrain",), "--crop-size", ["--out", "w.pt"], True),
    (("demo-data",), "--spacing", [], True),
]
#: flags that are spatial sizes (not counts such as --batch-size)
SIZE_FLAG = re.compile(r"--((crop|patch|roi|window|tile|chunk|voxel)-?size|chunks|spacing|shape)$")


def _command(path):
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def _all_options():
    def walk(group, path):
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                yield from walk(cmd, (*path, name))
            else:
                for p in cmd.params:
                    yield (*path, name), p

    yield from walk(typer.main.get_command(app), ())


def test_every_size_option_uses_the_one_parser():
    """Any option whose name says it is a size is declared with `size_option` (its metavar; the parsing itself is
    checked per option below), so a new one cannot skip the parser unnoticed."""
    found = set()
    for path, param in _all_options():
        flag = next((o for o in param.opts if o.startswith("--")), "")
        if SIZE_FLAG.search(flag):
            found.add((path, flag))
            assert param.metavar in ("N", "N|X,Y,Z"), (path, flag, param.metavar)
    assert found == {(p, f) for p, f, _, _ in SIZE_OPTIONS}


@pytest.mark.parametrize("path,flag,required,cubic", SIZE_OPTIONS, ids=[f"{p[0]} {f}" for p, f, _, _ in SIZE_OPTIONS])
def test_size_option_good_values_arrive_as_zyx(path, flag, required, cubic):
    cmd = _command(path)
    param = next(p for p in cmd.params if flag in p.opts)
    goods = {"32": (32, 32, 32), "32,32,32": (32, 32, 32), "32x32x32": (32, 32, 32)}
    if not cubic:
        goods.update({"64,48,32": (32, 48, 64), " 64, 48 ,32": (32, 48, 64)})
    for text, zyx in goods.items():
        ctx = cmd.make_context(path[-1], [*required, flag, text])
        assert ctx.params[param.name] == zyx, (flag, text)


class _Stop(Exception):
    pass


def _capture(monkeypatch, module: str, name: str, pick, seen: dict) -> None:  # noqa: ANN001
    """Replace `module.name` (the function the command calls after parsing) by one recording what it got."""
    import importlib

    def fake(*args, **kwargs):
        seen["value"] = pick(*args, **kwargs)
        raise _Stop

    monkeypatch.setattr(importlib.import_module(module), name, fake)


#: where each command hands its size on, and how to read it from that call
HANDOFF = {
    ("train", "--crop-size"): ("maskgen.train.loop", "train", lambda cfg, **k: cfg.crop_zyx),
    ("sweep", "--crop-size"): ("maskgen.evaluate.sweep", "run_sweep", lambda *a, **k: a[3]["crop_zyx"]),
    ("extract", "--chunks"): ("maskgen.extract.run", "run_extract", lambda cfg, **k: cfg.chunks),
    ("pretrain", "--crop-size"): ("maskgen.pretrain.loop", "pretrain", lambda cfg, **k: (cfg.crop_size,) * 3),
    ("demo-data", "--spacing"): ("maskgen.demo.console", "build_demo_data", lambda *a, **k: (k["spacing"],) * 3),
}


@pytest.mark.parametrize("path,flag,required,cubic", SIZE_OPTIONS, ids=[f"{p[0]} {f}" for p, f, _, _ in SIZE_OPTIONS])
def test_size_option_reaches_the_stage_as_zyx(path, flag, required, cubic, monkeypatch, tmp_path):
    """Through the real command (CliRunner): the x,y,z value arrives at the stage's function as (z, y, x)."""
    import maskgen.store.kv

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(maskgen.store.kv, "store_exists", lambda path: True)
    seen: dict = {}
    _capture(monkeypatch, *HANDOFF[(path[0], flag)], seen)
    text, zyx = ("32", (32, 32, 32)) if cubic else ("128,96,64", (64, 96, 128))
    if path == ("demo-data",):
        text, zyx = "4", (4, 4, 4)
    result = runner.invoke(app, [*path, *required, flag, text])
    assert isinstance(result.exception, _Stop), result.output
    assert tuple(seen["value"]) == zyx


@pytest.mark.parametrize("path,flag,required,cubic", SIZE_OPTIONS, ids=[f"{p[0]} {f}" for p, f, _, _ in SIZE_OPTIONS])
def test_size_option_bad_values_name_option_and_value(path, flag, required, cubic, tmp_path):
    bads = ["64,48", "a,b,c", "0", "-8", "1.5", "64,,32"] + (["32,32,16"] if cubic else [])
    for bad in bads:
        result = runner.invoke(app, [*path, *required, flag, bad], env=WIDE)
        assert result.exit_code == 2, (flag, bad, result.output)
        text = " ".join(ANSI.sub("", result.output).replace("│", " ").split())
        assert f"Invalid value for '{flag}': '{bad}'" in text, text
        problem = "must be cubic: give one integer N" if bad == "32,32,16" else "is not a size: give"
        assert problem in text, text


def test_size_help_says_xyz():
    for path, flag, _, cubic in SIZE_OPTIONS:
        result = runner.invoke(app, [*path, "--help"], env=WIDE)
        line = next(li for li in ANSI.sub("", result.output).splitlines() if f" {flag} " in li)
        assert ("N " if cubic else "N|X,Y,Z") in line, line
        if not cubic:
            assert "x,y,z order" in line, line
    top = ANSI.sub("", runner.invoke(app, ["--help"], env=WIDE).output)
    assert "in x,y,z order" in top


def test_parse_size_accepts_python_values_and_converts_once():
    assert parse_size((64, 48, 32), "crop_size") == (32, 48, 64)
    assert parse_size(16, "crop_size") == (16, 16, 16)
    assert parse_size("2.5,2,1", "spacing", kind=float) == (1.0, 2.0, 2.5)
    assert xyz_text(parse_size("64,48,32", "crop_size")) == "64,48,32"
    with pytest.raises(OptionError, match=r"^crop_size \(64, 48\) is not a size"):
        parse_size((64, 48), "crop_size")
    with pytest.raises(OptionError, match="must be cubic"):
        parse_size("8,8,4", "crop_size", cubic=True)


def test_extract_chunks_are_xyz_in_the_store(tmp_path):
    """End to end: `--chunks 8,12,16` (x,y,z) makes chunks of 16 (z) x 12 (y) x 8 (x) voxels; cache info shows x,y,z."""
    from maskgen.demo.synthetic import make_synthetic_dataset
    from maskgen.store.inspect import store_info

    data = make_synthetic_dataset(tmp_path / "data", n_cases=3, size=24)
    out = tmp_path / "s.zarr"
    result = runner.invoke(app, ["extract", "--dataset", str(data / "pipeline.toml"), "--out", str(out),
                                 "--extractor", "mind", "--chunks", "8,12,16"])
    assert result.exit_code == 0, result.output
    assert tuple(store_info(str(out)).layout["chunks_zyx"]) == (16, 12, 8)
    info = runner.invoke(app, ["cache", "info", str(out)], env=WIDE)
    assert info.exit_code == 0, info.output
    assert "chunks <= 8,12,16 (x,y,z)" in info.stdout
