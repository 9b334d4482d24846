"""CLI commands of the 'demo' stage (light module: heavy imports go inside command bodies)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from maskgen.cli._common import handle_errors

DEFAULT_DEMO_DIR = "cache/demo-data"


def build_demo_data(out: Path, subjects: int = 12, seed: int = 0, spacing: int = 2, overwrite: bool = False) -> Any:
    """Generate (or reuse) the demo dataset with a progress bar and print its summary; returns the DemoSummary.
    Shared by `maskgen demo-data` and the end-to-end `maskgen demo`."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from maskgen.data.demo import DemoConfig, generate_demo_dataset
    from maskgen.errors import MaskgenError

    try:
        config = DemoConfig(subjects=subjects, seed=seed, spacing=spacing)
    except ValueError as e:
        raise MaskgenError(str(e)) from None
    err = Console(stderr=True)
    with Progress(
        TextColumn("[bold]demo-data[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("subjects"),
        TimeElapsedColumn(), console=err, transient=True, disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task("subjects", total=subjects)
        summary = generate_demo_dataset(
            out, config, overwrite=overwrite, progress=lambda done, total: bar.update(task, completed=done)
        )
    print_demo_summary(summary, [c.name for c in config.contrasts])
    return summary


def print_demo_summary(summary: Any, contrasts: list[str]) -> None:
    """Subjects, cases and domains per split, volume shapes and seconds (stdout, rich)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    out = Console(soft_wrap=True)
    state = "up to date, reused (--overwrite regenerates it)" if summary.reused else "written"
    out.print(f"demo dataset {state}: [bold]{escape(str(summary.out_dir))}[/]", highlight=False)
    table = Table()
    for name, justify in (("split", "left"), ("subjects", "right"), ("cases", "right"), ("domains", "left")):
        table.add_column(name, justify=justify)
    for split in ("train", "val", "test"):
        records = [r for r in summary.records if r.split == split]
        domains = sorted({r.domain for r in records}, key=contrasts.index)
        table.add_row(split, str(summary.subjects_per_split.get(split, 0)), str(len(records)), ", ".join(domains))
    out.print(table)
    if summary.shapes:
        lo = [min(s[i] for s in summary.shapes) for i in range(3)]
        hi = [max(s[i] for s in summary.shapes) for i in range(3)]
        shape_text = " x ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in zip(lo, hi))
        out.print(f"volumes: {shape_text} voxels (x, y, z) at {summary.spacing} mm; "
                  f"{len(summary.records)} cases in {summary.seconds:.1f} s", highlight=False)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main app."""

    @app.command("demo-data")
    @handle_errors
    def demo_data(
        out: Path = typer.Option(Path(DEFAULT_DEMO_DIR), "--out", "-o", help="Folder to write (nnU-Net style)."),
        subjects: int = typer.Option(12, "--subjects", min=4, help="Number of subjects (>= 4): half train, "
                                     "a sixth val, the rest test."),
        seed: int = typer.Option(0, "--seed", min=0, help="Seed: the dataset is reproducible from it."),
        spacing: int = typer.Option(2, "--spacing", min=1, max=8, help="Voxel size in mm (2: volumes about 90^3; "
                                    "4: a quick, coarse version)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Regenerate even if up to date, and replace a "
                                       "folder that is not a demo dataset."),
    ) -> None:
        """Build the offline demo dataset: MNI152 anatomy, 3 MR contrasts (train T1, test T2/FLAIR)."""
        import shlex

        from rich.console import Console

        build_demo_data(out, subjects=subjects, seed=seed, spacing=spacing, overwrite=overwrite)
        same_as_default = out.resolve() == Path(DEFAULT_DEMO_DIR).resolve()
        root_arg = "" if same_as_default else f" --data-root {shlex.quote(str(out))}"
        Console(soft_wrap=True).print(f"next: maskgen verify --dataset demo{root_arg}", markup=False, highlight=False)
