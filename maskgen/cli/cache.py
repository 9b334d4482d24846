"""CLI commands of the store: `maskgen cache info|verify`.

Light module: heavy imports (zarr, numpy) happen inside command bodies.
"""

from __future__ import annotations

import typer

from maskgen.cli._common import handle_errors
from maskgen.config import xyz_text

cache_app = typer.Typer(
    name="cache",
    help="Inspect and check feature stores made by `maskgen extract`.",
    no_args_is_help=True,
    add_completion=False,
)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000.0
    return f"{n:.2f} TB"


def _print_views(console, s, listed: int = 10) -> None:  # noqa: ANN001 - rich Console, StoreInfo
    """The store's augmented views (`maskgen extract --views`): settings, storage cost, each case's view seeds and
    the intensity transforms that fired in each view."""
    v = s.views
    if not v:
        console.print("views         none (extract with --views K to store intensity-augmented views)")
        return
    console.print(
        f"views         {v.get('count')} per {'/'.join(v.get('splits') or ['train'])} case on {len(s.view_cases)} "
        f"case(s) (paper C.2 intensity transforms, each p={v.get('prob')}; seed {v.get('seed')}); "
        f"{_fmt_bytes(s.bytes_per_view)} per view per case ({s.view_bytes_per_voxel:.2f} bytes/voxel), "
        f"{_fmt_bytes(s.view_bytes)} in all", markup=False
    )
    for cid, records in s.view_cases[:listed]:
        parts = [f"view{k} seed {r.get('seed')} [{', '.join(r.get('transforms') or {})}]"
                 for k, r in enumerate(records, start=1)]
        console.print(f"  {cid}: " + "; ".join(parts), markup=False)
    if len(s.view_cases) > listed:
        console.print(f"  ... and {len(s.view_cases) - listed} more case(s) with views")


def register(app: typer.Typer) -> None:
    """Add the `cache` command group to the main app."""

    @cache_app.command("info")
    @handle_errors
    def info(path: str = typer.Argument(..., help="Feature store (.zarr folder).")) -> None:
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
            f"pipeline      {s.pipeline}   spacing {xyz_text(s.spacing_zyx)} mm (x,y,z)   normalisation {s.normalization}"
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
            f"layout        {lay.get('dtype')} features, chunks <= {xyz_text(lay.get('chunks_zyx') or ())} (x,y,z) "
            f"({'balanced' if lay.get('balance', True) else 'clipped'}), codec {lay.get('codec')}"
            + (f", shards {xyz_text(shards)}" if shards else "")
        )
        console.print(
            f"size on disk  {_fmt_bytes(s.size_bytes)}   {s.bytes_per_voxel:.2f} bytes/voxel over "
            f"{s.voxels:,} voxels   metadata {'consolidated' if s.consolidated else 'not consolidated'}"
        )
        _print_views(console, s)
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
    def verify(path: str = typer.Argument(..., help="Feature store (.zarr folder).")) -> None:
        """Read every complete case of a store: shapes, chunk files, checksums, values; exit 1 naming broken cases."""
        from rich.console import Console
        from rich.progress import Progress

        from rich.markup import escape

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
                + escape(", ".join(report.incomplete[:10]))
                + (" ..." if len(report.incomplete) > 10 else "")
            )
        if report.unchecksummed:
            console.print(
                f"[yellow]{len(report.unchecksummed)} case(s) without checksums[/] (made before maskgen stored them): "
                "chunks overwritten with finite values cannot be detected there; rebuild the store with "
                "`maskgen extract --overwrite` to add them"
            )
        if report.ok:
            console.print(f"[green]OK[/]: {report.checked} complete case(s) of {escape(str(report.path))} are readable, "
                          "checksums match and values are valid")
            return
        broken = sorted({cid for cid, _ in report.problems})
        lines = "\n".join(f"  - {cid}: {why}" for cid, why in report.problems)
        redo = " ".join(f"--redo {cid}" for cid in broken)
        raise MaskgenError(
            f"{len(broken)} of {report.checked} case(s) of {report.path} are broken:\n{lines}\n"
            f"Re-extract them: `maskgen extract {redo}` with the same --dataset and --out."
        )

    app.add_typer(cache_app, name="cache")
