"""CLI commands of the 'extract' stage: `maskgen extract` and `maskgen cache info|verify`.

Light module: heavy imports (torch, zarr, numpy, dask) happen inside command bodies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from maskgen.cli._common import handle_errors

cache_app = typer.Typer(
    name="cache",
    help="Inspect and check feature stores made by `maskgen extract`.",
    no_args_is_help=True,
    add_completion=False,
)


def _parse_chunks(text: str) -> tuple[int, int, int]:
    from maskgen.errors import MaskgenError

    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or min(values) < 1:
        raise MaskgenError(f"--chunks {text!r}: give one or three positive integers (z,y,x), e.g. 32 or 32,32,32")
    return values  # type: ignore[return-value]


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000.0
    return f"{n:.2f} TB"


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main app."""

    @app.command("extract")
    @handle_errors
    def extract(
        dataset: str = typer.Option(
            ..., "--dataset", "-d", help="Shipped pipeline name (e.g. demo, amos) or path/to/pipeline.toml."
        ),
        data_root: Optional[Path] = typer.Option(
            None, "--data-root", help="Dataset folder (default: $MASKGEN_DATA_ROOT or the pipeline's default)."
        ),
        out: Optional[Path] = typer.Option(
            None, "--out", "-o", help="Store to create or complete (default: cache/<pipeline name>.zarr)."
        ),
        extractor: str = typer.Option(
            "auto", "--extractor", help="auto (anatomix if its weights are found, else a fallback) | anatomix | mind."
        ),
        weights: Optional[Path] = typer.Option(
            None, "--weights", help="anatomix weights (default: $MASKGEN_ANATOMIX_WEIGHTS or the Hugging Face hub)."
        ),
        layer: str = typer.Option(
            "final", "--layer", help="anatomix feature layer: final (official code) | penultimate (paper text)."
        ),
        dtype: str = typer.Option(
            "float16", "--dtype", help="Stored feature dtype: float16 | int8 (per-channel scale, half the bytes)."
        ),
        chunks: Optional[str] = typer.Option(
            None, "--chunks", help="Largest spatial chunk edge(s) z,y,x [default: an existing store's, else 3/4 of the "
            "pipeline's crop within 32..64, as measured by benchmarks/store_layout.py]."
        ),
        codec: Optional[str] = typer.Option(
            None, "--codec", help="Chunk codec: none (fastest crops) | blosc-lz4 | blosc-zstd | zstd "
            "[default: an existing store's, else none]."
        ),
        workers: int = typer.Option(1, "--workers", "-j", min=1, help="Cases processed in parallel (local dask)."),
        parallel: str = typer.Option(
            "threads", "--parallel", help="Local workers are threads (measured faster here) | processes."
        ),
        scheduler: Optional[str] = typer.Option(
            None, "--scheduler", help="Address of a running dask.distributed scheduler (e.g. tcp://host:8786)."
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Delete the store and redo every case (default: skip complete cases)."
        ),
        device: str = typer.Option("cpu", "--device", help="cpu | cuda."),
    ) -> None:
        """Run a frozen feature extractor once per case and cache image, features and label in a Zarr store."""
        from rich.console import Console

        from maskgen.extract.run import ExtractConfig, ExtractFailed, run_extract

        config = ExtractConfig(
            dataset=dataset,
            out=None if out is None else str(out),
            data_root=None if data_root is None else str(data_root),
            extractor=extractor,
            weights=None if weights is None else str(weights),
            layer=layer,
            dtype=dtype,
            chunks=None if chunks is None else _parse_chunks(chunks),
            codec=codec,
            workers=workers,
            parallel=parallel,
            scheduler=scheduler,
            overwrite=overwrite,
            device=device,
        )
        console = Console(highlight=False, soft_wrap=True)
        try:
            summary = run_extract(config)
        except ExtractFailed as e:
            _print_summary(console, e.summary)
            raise
        _print_summary(console, summary)

    @cache_app.command("info")
    @handle_errors
    def info(path: Path = typer.Argument(..., help="Feature store (.zarr folder).")) -> None:
        """Show a feature store's cases per split and domain, extractor, layout and size on disk."""
        from rich.console import Console
        from rich.table import Table

        from maskgen.store.inspect import store_info

        s = store_info(path)
        console = Console(highlight=False, soft_wrap=True)
        ex = s.extractor
        weights = ex.get("weights_sha256")
        console.print(
            f"[bold]{s.path}[/]  (format {s.format_version}, maskgen {s.maskgen_version}, created {s.created})"
        )
        console.print(
            f"pipeline      {s.pipeline}   spacing (z,y,x) {tuple(s.spacing_zyx)} mm   normalisation {s.normalization}"
        )
        console.print(
            f"extractor     {ex.get('name')}  layer {ex.get('layer')}  {s.num_features} channels  "
            f"weights sha256 {weights[:16] + '...' if weights else '-'}"
        )
        if s.normalization_by_domain:
            rules = "; ".join(f"{d}: {r}" for d, r in s.normalization_by_domain.items())
            console.print(f"normalised    {rules} (domain: rule (cases), from the case records)", markup=False)
        lay = s.layout
        shards = lay.get("shards_zyx")
        console.print(
            f"layout        {lay.get('dtype')} features, chunks <= {tuple(lay.get('chunks_zyx') or ())} "
            f"({'balanced' if lay.get('balance', True) else 'clipped'}), codec {lay.get('codec')}"
            + (f", shards {tuple(shards)}" if shards else "")
        )
        console.print(
            f"size on disk  {_fmt_bytes(s.size_bytes)}   {s.bytes_per_voxel:.2f} bytes/voxel over "
            f"{s.voxels:,} voxels   metadata {'consolidated' if s.consolidated else 'not consolidated'}"
        )
        table = Table(title=f"{s.cases} complete case(s)", show_edge=False)
        domains = sorted(s.by_domain)
        table.add_column("split")
        for d in domains:
            table.add_column(d or "-", justify="right")
        table.add_column("total", justify="right", style="bold")
        order = {"train": 0, "val": 1, "test": 2}
        for split in sorted(s.by_split, key=lambda x: (order.get(x, 9), x)):
            row = [str(s.by_split_domain.get((split, d), 0)) for d in domains]
            table.add_row(split, *row, str(s.by_split[split]))
        table.add_row("total", *[str(s.by_domain[d]) for d in domains], str(s.cases), style="bold")
        console.print(table)
        if s.incomplete:
            console.print(
                f"[yellow]{len(s.incomplete)} incomplete case(s)[/] (re-run the same `maskgen extract` to finish): "
                + ", ".join(s.incomplete[:10])
                + (" ..." if len(s.incomplete) > 10 else "")
            )

    @cache_app.command("verify")
    @handle_errors
    def verify(path: Path = typer.Argument(..., help="Feature store (.zarr folder).")) -> None:
        """Read every complete case of a store: shapes, chunk files, finite values; exit 1 naming broken cases."""
        from rich.console import Console
        from rich.progress import Progress

        from maskgen.errors import MaskgenError
        from maskgen.store.inspect import verify_store
        from maskgen.store.reader import FeatureStore

        console = Console(highlight=False, soft_wrap=True)
        total = len(FeatureStore(path).cases())
        with Progress(console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("verify", total=total)
            report = verify_store(path, on_case=lambda cid, problems: bar.advance(task))
        if report.incomplete:
            console.print(
                f"[yellow]{len(report.incomplete)} incomplete case(s) ignored[/] "
                "(re-run `maskgen extract` to finish): "
                + ", ".join(report.incomplete[:10])
                + (" ..." if len(report.incomplete) > 10 else "")
            )
        if report.ok:
            console.print(f"[green]OK[/]: {report.checked} complete case(s) of {report.path} are readable and finite")
            return
        broken = sorted({cid for cid, _ in report.problems})
        lines = "\n".join(f"  - {cid}: {why}" for cid, why in report.problems)
        raise MaskgenError(
            f"{len(broken)} of {report.checked} case(s) of {report.path} are broken:\n{lines}\n"
            "Re-extract them: delete their folders under cases/ and re-run the same `maskgen extract` command."
        )

    app.add_typer(cache_app, name="cache")


def _print_summary(console, summary) -> None:  # noqa: ANN001 - rich Console, ExtractSummary
    failed = len(summary.failed)
    style = "red" if failed else "green"
    console.print(
        f"[bold {style}]{summary.cases_written} case(s) written[/], "
        f"{summary.cases_skipped} skipped (already complete), "
        f"{failed} failed, of {summary.cases_total} in {summary.seconds:.1f} s; "
        f"{summary.gb_written:.3f} GB written"
        + (f", {summary.bytes_per_voxel:.2f} bytes/voxel" if summary.voxels_written else "")
        + f" ({summary.extractor} features) -> {summary.store}"
    )
