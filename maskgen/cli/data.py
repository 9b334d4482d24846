"""CLI commands of the 'data' stage (light module: heavy imports go inside command bodies)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from maskgen.cli._common import fail, handle_errors

DATASET_HELP = ("Shipped pipeline name (see `maskgen pipelines`), path/to/pipeline.toml, or an nnU-Net v2 dataset "
                "folder path/to/Dataset123_Name (with dataset.json; no pipeline file needed).")
FOLD_HELP = ("nnU-Net v2 datasets: the fold of splits_final.json (or of nnU-Net's default 5-fold split) whose train / "
             "val cases to use (default 0).")
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
        fold: Optional[int] = typer.Option(None, "--fold", min=0, help=FOLD_HELP),
        save_pipeline: Optional[Path] = typer.Option(
            None, "--save-pipeline", help="Also write the pipeline as a TOML file (e.g. to add a [splits] table to "
            "the one derived from an nnU-Net dataset, then pass --dataset FILE)."),
    ) -> None:
        """Check every case of a dataset and report all problems at once (exit 1 on any error)."""
        from maskgen.data.pipeline import load_pipeline

        pipeline = load_pipeline(dataset, fold=fold)
        if save_pipeline is not None:
            from maskgen.atomic import write_text_atomic
            from maskgen.data.pipeline_toml import to_toml

            write_text_atomic(save_pipeline, to_toml(pipeline))
        report = _verify_with_progress(pipeline, data_root, workers)
        _print_report(report, list_cases)
        if json_out is not None:
            _write_report_json(report, json_out)
        n_err, n_warn = len(report.errors), len(report.warnings)
        if n_err:
            raise fail(
                f"dataset {pipeline.name!r}: {n_err} error(s), {n_warn} warning(s) in {len(report.cases)} cases; "
                "fix the files named above and run `maskgen verify` again"
            )
        _console().print(f"[green]OK[/]: {len(report.cases)} cases, {n_warn} warning(s)")

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


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _verify_with_progress(pipeline, data_root: Optional[Path], workers: int):
    """`verify_dataset` with a progress bar on stderr (when it is a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from maskgen.data.verify import verify_dataset

    err = Console(stderr=True, highlight=False)
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
        return verify_dataset(
            pipeline,
            data_root,
            workers=workers or None,
            on_file_done=lambda: progress.advance(task),
            on_cases=lambda n: progress.update(task, total=n),
        )


def _print_report(report, list_cases: bool) -> None:
    """Cases per split and domain, optionally every case, then every problem (one line each)."""
    from rich.markup import escape
    from rich.table import Table

    from maskgen.data.verify import ERROR

    out = _console()
    table = Table(title=escape(f"{report.pipeline.name}: {len(report.cases)} cases in {report.data_root}"))
    table.add_column("split")
    table.add_column("domain")
    table.add_column("cases", justify="right")
    table.add_column("subjects", justify="right")
    table.add_column("normalisation")
    order = {"train": 0, "val": 1, "test": 2}
    rule = report.pipeline.intensity_rule
    subjects = report.subjects()
    for (split, domain), n in sorted(report.counts().items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        table.add_row(split, escape(domain), str(n), str(subjects[split, domain]), escape(rule(domain).describe()))
    out.print(table)
    for line in report.summary_lines():
        out.print(line, markup=False)
    if list_cases:
        for c in report.cases:
            channel = "" if c.channel is None else f" channel={c.channel}"
            out.print(f"{c.split:5s}  {c.domain:12s}  {c.case_id}  {c.image}{channel}  "
                      f"normalisation {rule(c.domain).describe()}", markup=False)
    for p in report.problems:
        tag = "[bold red]error[/]" if p.severity == ERROR else "[yellow]warning[/]"
        out.print(f"{tag} case {escape(p.case_id)}: ", end="")
        out.print(p.message, markup=False)


def _write_report_json(report, path: Path) -> None:
    from maskgen.config import to_dict, write_json_atomic

    write_json_atomic(
        path,
        {
            "dataset": report.pipeline.name,
            "data_root": str(report.data_root),
            "normalization": report.pipeline.normalization_spec(),
            "summary": report.summary_lines(),
            "left_out": [c.case_id for c in report.left_out],
            "cases": [{**to_dict(c), "normalization": report.pipeline.intensity_rule(c.domain).to_record()}
                      for c in report.cases],
            "problems": [to_dict(p) for p in report.problems],
            "ok": report.ok,
        },
    )
