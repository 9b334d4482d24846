"""Where a feature store lives: a local folder or an fsspec URL (`s3://bucket/amos.zarr`, `gs://...`, `file://...`).

Every command that takes a store (`extract --out`, `train --features`, `evaluate`, `predict`, `sweep`, `cache`) passes
the user's text through here instead of `pathlib.Path`, which would turn `s3://b/x` into `s3:/b/x`.

- A plain path or a `file://` URL is a local store (zarr's LocalStore: atomic renames, no fsspec layer).
- Any other URL is opened with fsspec (zarr's FsspecStore). Credentials and endpoints come only from where the
  filesystem's own library looks: the environment (`AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, `AWS_ENDPOINT_URL`, ...),
  `~/.aws/`, and fsspec's configuration (`~/.config/fsspec/*.json`, `FSSPEC_S3_*` variables). maskgen adds no option
  for them and reads none from the store.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")

#: Options maskgen sets for a scheme's fsspec filesystem unless the user's fsspec configuration sets them.
#: s3: one GET per chunk (s3fs's default `max_concurrency` > 1 sends a HEAD before every GET to decide on ranged
#: reads, which only pays for objects over 50 MB: 2x slower per chunk measured against moto); no listing cache, so a
#: long-lived reader sees cases another process added (s3fs caches listings forever by default).
FS_DEFAULTS: dict[str, dict[str, Any]] = {
    "s3": {"max_concurrency": 1, "use_listings_cache": False},
    "gs": {"use_listings_cache": False},
    "gcs": {"use_listings_cache": False},
}


def scheme_of(location: str | os.PathLike) -> str | None:
    """The URL scheme of `location` ("s3", "gs", "file", ...), or None for a plain path."""
    m = _SCHEME.match(str(location))
    return m.group(1).lower() if m else None


def is_remote(location: str | os.PathLike) -> bool:
    """Whether the store is opened through fsspec (a URL other than `file://`)."""
    return scheme_of(location) not in (None, "file")


def local_path(location: str | os.PathLike) -> Path | None:
    """The folder of a local store (plain path or `file://` URL), None for a remote URL."""
    text = str(location)
    scheme = scheme_of(text)
    if scheme is None:
        return Path(text)
    if scheme == "file":
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(text).path))
    return None


def as_location(location: str | os.PathLike) -> Path | str:
    """A Path for a local store (plain path or `file://` URL), the URL text for a remote one: what commands keep and
    show. Never `Path(url)`: it would turn `s3://b/x` into `s3:/b/x`."""
    path = local_path(location)
    return path if path is not None else str(location).rstrip("/")


def canonical(location: str | os.PathLike) -> str:
    """The form recorded in runs and compared between them: an absolute path for a local store, the URL without a
    trailing slash for a remote one."""
    path = local_path(location)
    if path is not None:
        return str(path.absolute())
    return str(location).rstrip("/")


def same_store(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two locations name the same store (local paths resolved)."""
    pa, pb = local_path(a), local_path(b)
    if pa is not None and pb is not None:
        return pa.resolve() == pb.resolve()
    return canonical(a) == canonical(b)


def name_of(location: str | os.PathLike) -> str:
    """The last component (`s3://b/amos.zarr` -> `amos.zarr`)."""
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def storage_options(location: str | os.PathLike) -> dict[str, Any]:
    """Options for the fsspec filesystem of a remote URL: maskgen's `FS_DEFAULTS` where the user's fsspec
    configuration does not set them (fsspec adds its configuration itself; explicit options would override it)."""
    scheme = scheme_of(location) or ""
    try:
        import fsspec.config

        conf = fsspec.config.conf.get(scheme, {})
    except ImportError:  # pragma: no cover - fsspec comes with dask
        conf = {}
    return {k: v for k, v in FS_DEFAULTS.get(scheme, {}).items() if k not in conf}


def missing_filesystem_message(location: str, err: BaseException) -> str:
    scheme = scheme_of(location)
    package = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}.get(scheme or "", "")
    hint = f"pip install {package}" if package else "install the fsspec filesystem for this scheme"
    return f"{location}: cannot open {scheme}:// stores ({err}); {hint} (or `pip install 'maskgen[s3]'`)"
