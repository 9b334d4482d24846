"""The tensorstore read backend (optional package): the same Zarr v3 arrays read in C++, requests issued
concurrently. Its kvstore driver follows the store's location (`kvstore_spec`): a local folder -> "file", `s3://` ->
"s3" (endpoint and region from the same places s3fs takes them), `gs://` -> "gcs"; a location it has no driver for,
or whose credentials only fsspec's configuration holds, reads with zarr-python instead.

tensorstore's thread pools do not survive fork(): a backend that has read in one process refuses to read in a forked
child (`usable()` is False there), and the reader falls back to zarr-python, saying why once.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import numpy as np

from maskgen.store.integrity import ArrayReadError
from maskgen.store.kv import StoreIO
from maskgen.store.meta import case_prefix
from maskgen.store.zarr_backend import DEFAULT_READ_THREADS, READ_THREADS_ENV


def tensorstore_available() -> bool:
    return importlib.util.find_spec("tensorstore") is not None


#: fsspec configuration keys that carry credentials: tensorstore cannot see them, so such stores read with zarr
_FSSPEC_CREDENTIALS = ("key", "secret", "token", "profile", "anon", "session")


def _fsspec_conf(scheme: str) -> dict[str, Any]:
    try:
        import fsspec.config

        return dict(fsspec.config.conf.get(scheme, {}))
    except ImportError:  # pragma: no cover
        return {}


def s3_endpoint() -> str | None:
    """The S3 endpoint s3fs/botocore would use: fsspec configuration, else $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL."""
    conf = _fsspec_conf("s3")
    url = conf.get("endpoint_url") or (conf.get("client_kwargs") or {}).get("endpoint_url")
    return url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _split_bucket(location: str) -> tuple[str, str]:
    rest = location.split("://", 1)[1].strip("/")
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix


def kvstore_spec(io: StoreIO, key: str) -> dict[str, Any] | None:
    """The tensorstore kvstore spec of `key` in the store, or None when tensorstore has no matching driver."""
    from maskgen.store.location import scheme_of

    if io.is_local:
        return {"driver": "file", "path": str(io.local_path() / key)}
    scheme = scheme_of(io.location)
    if scheme not in ("s3", "gs", "gcs") or any(k in _fsspec_conf(scheme) for k in _FSSPEC_CREDENTIALS):
        return None
    bucket, prefix = _split_bucket(io.location)
    path = "/".join(p for p in (prefix, key.strip("/")) if p)
    path = path + "/" if path else ""
    if scheme != "s3":
        return {"driver": "gcs", "bucket": bucket, "path": path}
    spec: dict[str, Any] = {"driver": "s3", "bucket": bucket, "path": path}
    endpoint = s3_endpoint()
    if endpoint:
        spec["endpoint"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        spec["aws_region"] = region
    return spec


class TensorstoreBackend:
    """Reads (array name, selection) requests of a case with tensorstore, all requests of a call concurrently."""

    name = "tensorstore"

    def __init__(self, io: StoreIO, read_threads: int | None = None):
        self.io = io
        self.read_threads = read_threads
        self._arrays: dict[tuple[str, str], Any] = {}
        self._context: Any = None
        self.used_in_pid: int | None = None  # the process whose thread pools this backend started

    def usable(self) -> bool:
        """False in a process forked after this backend read in its parent, when the location has no driver, or
        when the store reads through maskgen's chunk cache (a zarr store wrapper tensorstore cannot use)."""
        if self.used_in_pid is not None and self.used_in_pid != os.getpid():
            return False
        return self.io.chunk_cache is None and kvstore_spec(self.io, "") is not None

    def _open(self, case_id: str, name: str) -> Any:
        import tensorstore as ts

        if self._context is None:
            threads = self.read_threads or int(os.environ.get(READ_THREADS_ENV, DEFAULT_READ_THREADS))
            self._context = ts.Context({
                "cache_pool": {"total_bytes_limit": 0},
                "data_copy_concurrency": {"limit": max(1, threads)},
                "file_io_concurrency": {"limit": max(2, threads)},
            })
        spec = {"driver": "zarr3", "kvstore": kvstore_spec(self.io, f"{case_prefix(case_id)}/{name}"),
                "fill_missing_data_reads": False}  # every chunk is written: a missing one is damage
        return ts.open(spec, read=True, open=True, context=self._context).result()

    def array(self, case_id: str, name: str) -> Any:
        key = (case_id, name)
        arr = self._arrays.get(key)
        if arr is None:
            arr = self._arrays[key] = self._open(case_id, name)
        return arr

    def fetch(self, case_id: str, requests: list[tuple[str, tuple[slice, ...]]]) -> list[np.ndarray]:
        self.used_in_pid = os.getpid()
        futures = []
        for name, sel in requests:
            try:
                futures.append((name, self.array(case_id, name)[sel].read()))
            except Exception as e:
                raise ArrayReadError(name, e) from e
        out = []
        for name, fut in futures:
            try:
                out.append(np.asarray(fut.result()))
            except Exception as e:
                raise ArrayReadError(name, e) from e
        return out
