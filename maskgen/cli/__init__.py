"""The `maskgen` command line. Each stage registers its commands from its own light module;
heavy imports (torch, zarr, monai) happen inside command bodies so `maskgen --help` is instant."""

from __future__ import annotations

import typer

from maskgen import __version__

HELP = ("Domain-generalising 3D segmentation: extract frozen features once, train many view-masked UNets.\n\n"
        "Sizes (--crop-size, --chunks, ...) are N (cubic) or X,Y,Z, in x,y,z order as pipelines and the paper write "
        "them (stores hold arrays z,y,x).")

app = typer.Typer(
    name="maskgen",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"maskgen {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Domain-generalising 3D segmentation: extract frozen features once, train many view-masked UNets.

    Sizes (--crop-size, --chunks, ...) are N (cubic) or X,Y,Z, in x,y,z order as pipelines and the paper write them
    (stores hold arrays z,y,x).
    """


# Order follows the data flow: data -> extract/store -> train -> evaluate -> pretrain -> demo.
from maskgen.cli import data as _data  # noqa: E402
from maskgen.cli import extract as _extract  # noqa: E402
from maskgen.cli import cache as _cache  # noqa: E402
from maskgen.cli import train as _train  # noqa: E402
from maskgen.cli import evaluate as _evaluate  # noqa: E402
from maskgen.cli import pretrain as _pretrain  # noqa: E402
from maskgen.cli import demo as _demo  # noqa: E402

for _module in (_data, _extract, _cache, _train, _evaluate, _pretrain, _demo):
    _module.register(app)

from maskgen.cli import _help  # noqa: E402

_help.install()
_help.escape_markup(app)


def main() -> None:
    try:
        app()
    finally:
        # The process ends next: spare it the interpreter's final garbage collection over everything torch, MONAI
        # and co. allocated (8 s of a 9 s exit on a loaded 2-core machine; Ctrl-C should stop within a second or two).
        import gc

        gc.freeze()
