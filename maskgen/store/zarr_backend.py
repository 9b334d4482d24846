"""The zarr-python read backend: arrays opened once from the store's zarr Store object, chunks decoded by zarr; the
arrays of one request are read concurrently."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from maskgen.store.integrity import ArrayReadError, strict_chunks
from maskgen.store.kv import StoreIO
from maskgen.store.meta import case_prefix

# zarr-python decodes chunks in a thread pool created on the first read. Measured on 2 cores
# (benchmarks/store_layout.py), one decode thread per process is as fast as more for uncompressed
# float16 crops; parallelism comes from DataLoader worker processes instead.
READ_THREADS_ENV = "MASKGEN_ZARR_THREADS"
DEFAULT_READ_THREADS = 1


def configure_zarr_threads(threads: int | None = None) -> None:
    """Set zarr's decode thread pool size for this process, unless zarr or the user configured it already.

    Takes effect only before zarr's first read or write in the process (zarr creates the pool lazily), so call it
    (or open a FeatureStore) inside each DataLoader worker before reading.
    """
    import zarr
    import zarr.core.sync as zsync

    if zarr.config.get("threading.max_workers", None) is not None or getattr(zsync, "_executor", None) is not None:
        return
    if threads is None:
        threads = int(os.environ.get(READ_THREADS_ENV, DEFAULT_READ_THREADS))
    zarr.config.set({"threading.max_workers": max(1, int(threads))})


class ZarrBackend:
    """Reads (array name, selection) requests of a case with zarr-python; a missing chunk raises (`strict_chunks`)."""

    name = "zarr"

    def __init__(self, io: StoreIO, read_threads: int | None = None):
        self.io = io
        self.read_threads = read_threads
        self._arrays: dict[tuple[str, str], Any] = {}
        self._strict: Any = None

    def array(self, case_id: str, name: str) -> Any:
        """The zarr array `name` of a case, opened once and cached."""
        key = (case_id, name)
        arr = self._arrays.get(key)
        if arr is None:
            import zarr

            configure_zarr_threads(self.read_threads)
            if self._strict is None:
                self._strict = strict_chunks(self.io.store)
            arr = zarr.open_array(self._strict, path=f"{case_prefix(case_id)}/{name}", mode="r", zarr_format=3)
            self._arrays[key] = arr
        return arr

    def fetch(self, case_id: str, requests: list[tuple[str, tuple[slice, ...]]]) -> list[np.ndarray]:
        """All requests of a call in one pass on zarr's event loop: the chunks of every array are fetched
        concurrently (one round trip's latency per crop on an object store, instead of one per array)."""
        import asyncio

        from zarr.core.sync import sync

        arrays = []
        for name, _ in requests:
            try:
                arrays.append(self.array(case_id, name).async_array)
            except Exception as e:
                raise ArrayReadError(name, e) from e

        async def gather() -> list[Any]:
            return await asyncio.gather(*(a.getitem(sel) for a, (_, sel) in zip(arrays, requests)),
                                        return_exceptions=True)

        out = []
        for (name, _), got in zip(requests, sync(gather())):
            if isinstance(got, BaseException):
                raise ArrayReadError(name, got) from got
            out.append(np.asarray(got))
        return out
