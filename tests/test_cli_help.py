"""`--help` of every command reads as it parses: flags without a value type, defaults shown literally and readably,
`train`'s options in panels (issue 14, "A CLI without traps")."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from maskgen.cli import app

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200", "NO_COLOR": "1"}


def _commands(group=None, path=()):
    """(path, click command) of every command of the app, sub-commands included."""
    group = group if group is not None else typer.main.get_command(app)
    out = []
    for name, cmd in sorted(group.commands.items()):
        if hasattr(cmd, "commands"):
            out += _commands(cmd, (*path, name))
        else:
            out.append(((*path, name), cmd))
    return out


COMMANDS = _commands()


def help_text(*path: str) -> str:
    result = runner.invoke(app, [*path, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return ANSI.sub("", result.output)


def test_every_command_is_checked():
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"train", "extract", "predict", "evaluate", "cache info", "analyze robustness", "demo"} <= names


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=[" ".join(p) for p, _ in COMMANDS])
def test_flags_render_and_parse_as_flags(path):
    text = help_text(*path)
    assert "<bool>" not in text
    cmd = dict(COMMANDS)[path]
    flags = [p for p in cmd.params if getattr(p, "is_flag", False)]
    for param in flags:
        flag = param.opts[0]
        line = next(line for line in text.splitlines() if re.search(rf"\s{re.escape(flag)}(\s|$)", line))
        assert re.search(rf"{re.escape(flag)}\s+<", line) is None, line  # no value type after the flag
        # and it parses as a flag: no value is taken from the next word
        ctx = cmd.make_context(path[-1], [flag], resilient_parsing=True)
        assert ctx.params[param.name] is True, (path, flag)


def test_train_bool_flag_takes_no_value():
    cmd = dict(COMMANDS)[("train",)]
    ctx = cmd.make_context("train", ["--resume", "--features", "s.zarr"], resilient_parsing=True)
    assert ctx.params["resume"] is True and ctx.params["features"] == "s.zarr"


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=[" ".join(p) for p, _ in COMMANDS])
def test_help_texts_are_not_eaten_by_markup(path):
    """Rich markup would take `[default: none]` or `[splits]` as a style tag; every help text renders literally."""
    from rich.text import Text

    cmd = dict(COMMANDS)[path]
    for text in [p.help for p in cmd.params if getattr(p, "help", None)] + [cmd.help or ""]:
        literal = text.replace("\\[", "[")
        assert Text.from_markup(text).plain == literal, text


def test_extract_defaults_in_brackets_appear_literally():
    text = " ".join(help_text("extract").split())
    text = re.sub(r" ?│ ?", " ", text)
    text = " ".join(text.split())
    assert "zstd [default: an existing store's, else none]." in text  # --codec
    assert "[default: an existing store's, else 3/4 of the pipeline's crop" in text  # --chunks
    assert "cases to use [default: 0]." in text  # --fold
    assert "a multiple of this [default: 16]." in text  # --pad-multiple


def test_verify_help_keeps_bracketed_words():
    assert "[splits] table" in help_text("verify")


def test_float_defaults_print_readably():
    from maskgen.cli._help import install, readable_default

    assert readable_default(1 / 3) == 0.333 and readable_default(2e-4) == 2e-4 and readable_default(0.33) == 0.33
    install()
    demo = typer.Typer()

    @demo.command()
    def cmd(fg_fraction: float = typer.Option(1 / 3, "--fg-fraction", help="Fraction."),
            quiet: bool = typer.Option(False, "--quiet", help="Quiet.")) -> None:
        """A command."""

    result = runner.invoke(demo, ["--help"], env=WIDE)
    text = ANSI.sub("", result.output)
    assert "[default: 0.333]" in text and "0.3333" not in text
    assert "<bool>" not in text
    for path, cmd_ in COMMANDS:  # and no real command prints a long float
        assert not re.search(r"default: \d\.\d{5,}", help_text(*path)), path


def test_train_help_groups_options_in_panels():
    text = help_text("train")
    titles = re.findall(r"╭─ ([A-Za-z ]+?) ─", text)
    panels = ["Data", "Model", "Optimisation", "Augmentation", "Run control"]
    assert [t for t in titles if t in panels] == panels, titles
    sections = {t: body for t, body in re.findall(r"╭─ ([A-Za-z ]+?) ─+╮\n(.*?)╰", text, flags=re.S)}
    expected = {
        "Data": ["--features", "--crop-size", "--fg-fraction", "--n-train"],
        "Model": ["--inputs", "--channels", "--depth", "--unet"],
        "Optimisation": ["--steps", "--batch-size", "--lr", "--weight-decay"],
        "Augmentation": ["--mask-rate", "--aug-prob"],
        "Run control": ["--out", "--resume", "--overwrite", "--val-every", "--seed"],
    }
    for panel, flags in expected.items():
        for flag in flags:
            assert re.search(rf"\s{re.escape(flag)}\s", sections[panel]), (panel, flag)


def test_every_train_option_is_in_a_panel():
    """New train options must pick a panel (maskgen.cli.train: DATA, MODEL, OPTIMISATION, AUGMENTATION, RUN)."""
    cmd = dict(COMMANDS)[("train",)]
    loose = [p.opts[0] for p in cmd.params if getattr(p, "rich_help_panel", None) is None and p.name != "help"]
    assert not loose, f"train options without rich_help_panel=...: {loose}"
