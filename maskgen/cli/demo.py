"""CLI commands of the 'demo' stage (light module: heavy imports go inside command bodies)."""

from __future__ import annotations

from pathlib import Path

import typer

from maskgen.cli._common import handle_errors

DEFAULT_DEMO_DIR = "cache/demo-data"


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
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.table import Table

        from maskgen.data.demo import DemoConfig, generate_demo_dataset

        try:
            config = DemoConfig(subjects=subjects, seed=seed, spacing=spacing)
        except ValueError as e:
            from maskgen.errors import MaskgenError

            raise MaskgenError(str(e)) from None
        console = Console(stderr=True)
        with Progress(
            TextColumn("[bold]demo-data[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("subjects"),
            TimeElapsedColumn(), console=console, transient=True,
        ) as bar:
            task = bar.add_task("subjects", total=subjects)
            summary = generate_demo_dataset(
                out, config, overwrite=overwrite, progress=lambda done, total: bar.update(task, completed=done)
            )

        out_console = Console()
        state = "up to date, reused (--overwrite regenerates it)" if summary.reused else "written"
        out_console.print(f"demo dataset {state}: [bold]{out}[/]", highlight=False)
        table = Table()
        table.add_column("split")
        table.add_column("subjects", justify="right")
        table.add_column("cases", justify="right")
        table.add_column("domains")
        for split in ("train", "val", "test"):
            recs = [r for r in summary.records if r.split == split]
            domains = sorted({r.domain for r in recs}, key=[c.name for c in config.contrasts].index)
            table.add_row(split, str(summary.subjects_per_split.get(split, 0)), str(len(recs)), ", ".join(domains))
        out_console.print(table)
        if summary.shapes:
            lo = [min(s[i] for s in summary.shapes) for i in range(3)]
            hi = [max(s[i] for s in summary.shapes) for i in range(3)]
            shape_text = " x ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in zip(lo, hi))
            out_console.print(f"volumes: {shape_text} voxels (x, y, z) at {summary.spacing} mm; "
                              f"{len(summary.records)} cases in {summary.seconds:.1f} s")
        same_as_default = out.resolve() == Path(DEFAULT_DEMO_DIR).resolve()
        root_arg = "" if same_as_default else f" --data-root {out}"
        out_console.print(f"next: maskgen verify --dataset demo{root_arg}")
