"""CLI commands of the 'data' stage (light module: heavy imports go inside command bodies)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from maskgen.cli._common import fail, handle_errors

DATASET_HELP = "Shipped pipeline name (see `maskgen pipelines`) or path/to/pipeline.toml."
DATA_ROOT_HELP = "Dataset folder (default: $MASKGEN_DATA_ROOT, then the pipeline's default_data_root)."


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main app."""

    @app.command("verify")
    @handle_errors
    def verify(
        dataset: str = typer.Option(..., "--dataset", "-d", help=DATASET_HELP),
        data_root: Optional[Path] = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
        workers: int = typer.Option(0, "--workers", min=0, help="Files read in parallel (0: up to 4, by CPU count)."),
        list_cases: bool = typer.Option(False, "--list", help="Also list every case with its split and domain."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON to this file."),
    ) -> None:
        """Check every case of a dataset and report all problems at once (exit 1 on any error)."""
        from rich.console import Console
        from rich.markup import escape
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.table import Table

        from maskgen.config import to_dict, write_json_atomic
        from maskgen.data.pipeline import load_pipeline
        from maskgen.data.verify import ERROR, verify_dataset

        out = Console(highlight=False, soft_wrap=True)
        err = Console(stderr=True, highlight=False)
        pipeline = load_pipeline(dataset)
        progress = Progress(
            TextColumn("verifying {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,
        )
        with progress:
            task = progress.add_task(pipeline.name, total=None)
            report = verify_dataset(
                pipeline,
                data_root,
                workers=workers or None,
                on_file_done=lambda: progress.advance(task),
                on_cases=lambda n: progress.update(task, total=n),
            )

        table = Table(title=f"{pipeline.name}: {len(report.cases)} cases in {report.data_root}")
        table.add_column("split")
        table.add_column("domain")
        table.add_column("cases", justify="right")
        order = {"train": 0, "val": 1, "test": 2}
        for (split, domain), n in sorted(report.counts().items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
            table.add_row(split, domain, str(n))
        out.print(table)
        if list_cases:
            for c in report.cases:
                channel = "" if c.channel is None else f" channel={c.channel}"
                out.print(f"{c.split:5s}  {c.domain:12s}  {c.case_id}  {c.image}{channel}", markup=False)
        for p in report.problems:
            tag = "[bold red]error[/]" if p.severity == ERROR else "[yellow]warning[/]"
            out.print(f"{tag} case {escape(p.case_id)}: ", end="")
            out.print(p.message, markup=False)
        if json_out is not None:
            write_json_atomic(
                json_out,
                {
                    "dataset": pipeline.name,
                    "data_root": str(report.data_root),
                    "cases": [to_dict(c) for c in report.cases],
                    "problems": [to_dict(p) for p in report.problems],
                    "ok": report.ok,
                },
            )
        n_err, n_warn = len(report.errors), len(report.warnings)
        if n_err:
            raise fail(
                f"dataset {pipeline.name!r}: {n_err} error(s), {n_warn} warning(s) in {len(report.cases)} cases; "
                "fix the files named above and run `maskgen verify` again"
            )
        out.print(f"[green]OK[/]: {len(report.cases)} cases, {n_warn} warning(s)")

    @app.command("pipelines")
    @handle_errors
    def pipelines() -> None:
        """List the shipped dataset pipelines (usable as --dataset NAME)."""
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        from maskgen.data.pipeline import available_pipelines, load_pipeline

        table = Table(caption="spacing and crop in (x, y, z) order")
        for col in ("name", "layout", "spacing mm", "crop", "classes"):
            table.add_column(col, no_wrap=True)
        table.add_column("description")
        for name in available_pipelines():
            p = load_pipeline(name)
            table.add_row(
                name,
                p.layout,
                "×".join(f"{s:g}" for s in p.spacing),
                "×".join(str(s) for s in p.crop_size),
                str(len(p.classes)),
                escape(p.description),
            )
        Console(highlight=False).print(table)
