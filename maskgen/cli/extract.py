"""CLI command of the 'extract' stage: `maskgen extract` (the store's `maskgen cache` commands: cli/cache.py).

Light module: heavy imports (torch, zarr, numpy, dask) happen inside command bodies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


from maskgen.cli._common import handle_errors, size_option, threads_option, use_threads
from maskgen.extract.registry import choices_help

def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main app."""

    @app.command("extract")
    @handle_errors
    def extract(
        dataset: str = typer.Option(
            ..., "--dataset", "-d", help="Shipped pipeline name (e.g. demo, amos), path/to/pipeline.toml, or an "
            "nnU-Net v2 dataset folder path/to/Dataset123_Name (with dataset.json; no pipeline file needed)."
        ),
        fold: Optional[int] = typer.Option(
            None, "--fold", min=0, help="nnU-Net v2 datasets: the fold of splits_final.json (or of nnU-Net's default "
            "5-fold split) whose train / val cases to use [default: 0]."
        ),
        data_root: Optional[Path] = typer.Option(
            None, "--data-root", help="Dataset folder (default: $MASKGEN_DATA_ROOT or the pipeline's default)."
        ),
        out: Optional[str] = typer.Option(
            None, "--out", "-o", help="Store to create or complete: a folder or an fsspec URL such as "
            "s3://bucket/amos.zarr (default: cache/<pipeline name>.zarr)."
        ),
        extractor: str = typer.Option(
            "auto", "--extractor", help=f"{choices_help()}. auto: anatomix if its weights are found, else "
            "a fallback (named on stderr)."
        ),
        weights: Optional[Path] = typer.Option(
            None, "--weights", help="anatomix weights (default: $MASKGEN_ANATOMIX_WEIGHTS or the Hugging Face hub)."
        ),
        layer: Optional[str] = typer.Option(
            None, "--layer", help="anatomix feature layer: final (official code, default) | penultimate (paper text)."
        ),
        pad_multiple: Optional[int] = typer.Option(
            None, "--pad-multiple", min=1, help="torchscript/onnx models: pad each spatial size to a multiple of this "
            "[default: 16]."
        ),
        dtype: Optional[str] = typer.Option(
            None, "--dtype", help="Stored feature dtype: int8 (per-channel scale; default, chosen by measurement: "
            "half the bytes, reads 2x faster, no measurable Dice change) | float16 [default: an existing store's, "
            "else int8]."
        ),
        chunks: Optional[str] = size_option(  # the command receives (z, y, x)
            None, "--chunks", help="Largest spatial chunk, N (cubic) or X,Y,Z (x,y,z order) [default: an existing "
            "store's, else 3/4 of the pipeline's crop within 32..64, as measured by benchmarks/store_layout.py]."
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
        redo: Optional[list[str]] = typer.Option(
            None, "--redo", help="Re-extract these cases even if complete: CASE[,CASE] (repeatable), e.g. ones "
            "`maskgen cache verify` found damaged."
        ),
        allow_constant: bool = typer.Option(
            False, "--allow-constant", help="Extract images that are constant after preprocessing (an error without it)."
        ),
        wait: bool = typer.Option(
            False, "--wait", help="If another process is writing the store, wait for it instead of exiting."
        ),
        views: Optional[int] = typer.Option(
            None, "--views", min=0, help="Intensity-augmented views stored per train case (image + its features, "
            "paper C.2 transforms; training draws one per crop) [default: an existing store's, else 0, by measurement: README]."
        ),
        threads: Optional[int] = threads_option(),
    ) -> None:
        """Run a frozen feature extractor once per case and cache image, features and label in a Zarr store."""
        from rich.console import Console

        from maskgen.extract.run import ExtractConfig, ExtractFailed, run_extract

        use_threads(threads)  # shared by the --workers cases when they start (maskgen.extract.run)
        config = ExtractConfig(
            dataset=dataset,
            fold=fold,
            out=out,
            data_root=None if data_root is None else str(data_root),
            extractor=extractor,
            weights=None if weights is None else str(weights),
            layer=layer,
            pad_multiple=pad_multiple,
            dtype=dtype,
            chunks=chunks,
            codec=codec,
            workers=workers,
            parallel=parallel,
            scheduler=scheduler,
            overwrite=overwrite,
            device=device,
            redo=tuple(redo or ()),
            wait=wait,
            allow_constant=allow_constant,
            views=views,
        )
        console = Console(highlight=False, soft_wrap=True)
        _print_derived_pipeline(console, dataset, fold)
        try:
            summary = run_extract(config)
        except ExtractFailed as e:
            _print_summary(console, e.summary)
            raise
        _print_summary(console, summary)



def _print_derived_pipeline(console, dataset: str, fold: Optional[int]) -> None:  # noqa: ANN001 - rich Console
    """For an nnU-Net v2 folder: the spacing and crop maskgen derived (also recorded in the store's pipeline)."""
    from maskgen.data.nnunet_v2 import is_nnunet_v2_folder

    if is_nnunet_v2_folder(dataset):
        from maskgen.data.pipeline import load_pipeline

        console.print(load_pipeline(dataset, fold=fold).description, markup=False)


def _print_summary(console, summary) -> None:  # noqa: ANN001 - rich Console, ExtractSummary
    failed = len(summary.failed)
    style = "red" if failed else "green"
    console.print(
        f"[bold {style}]{summary.cases_written} case(s) written[/]"
        + (f" ({len(summary.stale)} re-extracted: inputs changed)" if summary.stale else "")
        + f", {summary.cases_skipped} skipped (already complete"
        + (f"; {summary.updated} with domain/split updated" if summary.updated else "") + "), "
        f"{failed} failed, of {summary.cases_total} in {summary.seconds:.1f} s; "
        f"{summary.gb_written:.3f} GB written"
        + (f", {summary.bytes_per_voxel:.2f} bytes/voxel" if summary.voxels_written else "")
        + f" ({summary.extractor} features) -> {summary.store}"
    )
