"""`maskgen.extract(...)`: the Python form of `maskgen extract` (docs/python-api.md). Heavy imports happen inside."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def extract(dataset: str | Path, out: str | Path | None = None, *, data_root: str | Path | None = None,
            extractor: str = "auto", chunks: Any = None, progress: bool = True, **options: Any) -> Any:
    """Run a frozen feature extractor once per case of `dataset` and cache image, features and label in a Zarr store,
    exactly as `maskgen extract` does (cases already complete are skipped, so a re-run resumes).

    Args:
        dataset: a shipped pipeline name ("demo", "amos"), a pipeline TOML file, or an nnU-Net v2 dataset folder.
        out: the store to create or complete, a folder or an fsspec URL (default: cache/<pipeline name>.zarr).
        data_root: the dataset folder (default: $MASKGEN_DATA_ROOT, then the pipeline's default_data_root).
        extractor: "auto" | "anatomix" | "mind" | "torchscript:PATH" | ... (see `maskgen extract --help`).
        chunks: largest spatial chunk, N or (x, y, z) like `--chunks` (default: the store's, else from the crop).
        progress: show a progress bar on stderr.
        **options: any other field of `maskgen.extract.run.ExtractConfig` (weights, layer, dtype, codec, workers,
            device, overwrite, redo, fold, ...).

    Returns:
        The `ExtractSummary` (cases written, skipped and failed, the store path, bytes written).

    Raises:
        MaskgenError: for a problem the message names (unknown dataset, missing weights, ...); `ExtractFailed`
        (a MaskgenError carrying the summary) when cases failed.
    """
    from maskgen.config import parse_size
    from maskgen.extract.run import ExtractConfig, run_extract

    config = ExtractConfig(
        dataset=str(dataset), out=None if out is None else str(out),
        data_root=None if data_root is None else str(data_root), extractor=extractor,
        chunks=None if chunks is None else parse_size(chunks, "chunks"), **options,
    )
    return run_extract(config, progress=progress)
