"""An opt-in local disk cache of the chunks read from a remote store (S3, GCS, ...), with a size limit.

Training reads random crops of the same cases over and over; from an object store every chunk costs a round trip.
With `MASKGEN_CHUNK_CACHE=/fast/disk/folder` (and optionally `MASKGEN_CHUNK_CACHE_SIZE=50G`, default 20G) a
read-only store opened from a URL keeps each chunk it fetched as one file under that folder and reads it from there
next time. It is shared by the DataLoader worker processes, by later runs and by other stores (one sub-folder per
store URL).

Why not fsspec's caching filesystems or zarr's experimental `CacheStore`: fsspec's `filecache`/`simplecache` have no
size limit and are synchronous (zarr would wrap them and lose concurrent fetches); zarr's `CacheStore` keeps its size
accounting and LRU order in the memory of one process, so N worker processes (and every later run) each believe they
own the whole budget and do not see the others' files, and it would keep serving a case's old chunks after `maskgen
extract --redo` rewrote it. This cache:
- caches only chunk data of complete cases, under `<store>/<case>/<version>/...`, where the version is the case
  group's `write_id` (a fresh random id per write; older stores: a hash of the case attributes), so a rewritten case
  never hits the old files;
- writes each file to a temporary name and renames it (readers never see half a chunk; concurrent workers caching the
  same chunk is harmless);
- bounds the folder's size: each process counts what it added and, every tenth of the limit, scans the folder and
  deletes the least recently used files (by modification time, refreshed on every hit) down to 80% of the limit.
  Between scans the folder may exceed the limit by a tenth of it per process.
Checksummed chunks are checked when decoded, whether they come from the store or from the cache.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskgen.errors import MaskgenError
from maskgen.store.integrity import is_chunk_key

CACHE_ENV = "MASKGEN_CHUNK_CACHE"
SIZE_ENV = "MASKGEN_CHUNK_CACHE_SIZE"
DEFAULT_SIZE = 20 * 10**9
_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
          "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SCAN_FRACTION = 0.1   # scan the folder after each process added this share of the limit
_KEEP_FRACTION = 0.8   # evict down to this share of the limit


def parse_size(text: str) -> int:
    """'20G', '500MB', '1.5GiB', '1000000' -> bytes; MaskgenError naming the bad value."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else ""
    if m is None or unit not in _UNITS:
        raise MaskgenError(f"{SIZE_ENV}={text!r} is not a size; write e.g. 20G, 500MB or 1.5GiB")
    size = int(float(m.group(1)) * _UNITS[unit])
    if size <= 0:
        raise MaskgenError(f"{SIZE_ENV}={text!r} must be positive")
    return size


@dataclass(frozen=True)
class CacheSettings:
    """Where the chunk cache lives and its size limit in bytes."""

    folder: str
    max_bytes: int = DEFAULT_SIZE

    def __post_init__(self) -> None:
        if not self.folder:
            raise MaskgenError("the chunk cache needs a folder")
        if self.max_bytes <= 0:
            raise MaskgenError(f"chunk cache size must be positive, got {self.max_bytes}")

    @classmethod
    def from_env(cls) -> "CacheSettings | None":
        """$MASKGEN_CHUNK_CACHE (folder) and $MASKGEN_CHUNK_CACHE_SIZE, or None when the folder is not set."""
        folder = os.environ.get(CACHE_ENV, "").strip()
        if not folder:
            return None
        size = os.environ.get(SIZE_ENV, "").strip()
        return cls(folder=folder, max_bytes=parse_size(size) if size else DEFAULT_SIZE)


def case_version(attrs: dict[str, Any]) -> str:
    """The token that changes whenever a case group is rewritten: its `write_id`, else a hash of its attributes."""
    write_id = attrs.get("write_id")
    if write_id:
        return str(write_id)
    import json

    return hashlib.sha1(json.dumps(attrs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def store_folder(settings: CacheSettings, location: str) -> Path:
    from maskgen.store.location import canonical

    return Path(settings.folder) / hashlib.sha1(canonical(location).encode()).hexdigest()[:16]


def _wrapper_base() -> Any:
    from zarr.storage import WrapperStore

    return WrapperStore


class ChunkCache(_wrapper_base()):  # type: ignore[misc]
    """A zarr store wrapper that serves chunk keys of known case versions from a local folder (see module doc).

    `versions` maps case id -> version token (`case_version`); the reader fills it from the case list. Chunks of
    cases not in it are read through without caching."""

    def __init__(self, store: Any, settings: CacheSettings, root: Path, versions: dict[str, str] | None = None):
        super().__init__(store)
        self.settings = settings
        self.root = Path(root)
        self.versions: dict[str, str] = versions if versions is not None else {}
        self.added = 0
        self.hits = 0
        self.misses = 0

    @classmethod
    def of(cls, store: Any, settings: CacheSettings, location: str, versions: dict[str, str]) -> "ChunkCache":
        """The cache of the store at `location` (its own sub-folder of the cache folder)."""
        return cls(store, settings, store_folder(settings, location), versions)

    def _with_store(self, store: Any) -> "ChunkCache":
        return type(self)(store, self.settings, self.root, self.versions)

    def __repr__(self) -> str:
        return f"ChunkCache({self._store!r}, {str(self.root)!r})"

    def cache_path(self, key: str) -> Path | None:
        """Where chunk `key` is cached, or None when it is not cached (not a chunk, or its case version unknown)."""
        if not is_chunk_key(key):
            return None
        parts = key.split("/")
        if len(parts) < 4 or parts[0] != "cases":
            return None
        version = self.versions.get(parts[1])
        if version is None:
            return None
        return self.root.joinpath(parts[1], version, *parts[2:])

    async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
        path = None if byte_range is not None else self.cache_path(key)
        if path is None:
            return await self._store.get(key, prototype, byte_range)
        try:
            data = path.read_bytes()
        except OSError:
            data = None
        if data is not None:
            self.hits += 1
            try:
                os.utime(path)  # LRU order: the most recently used files survive an eviction
            except OSError:
                pass
            return _prototype(prototype).buffer.from_bytes(data)
        self.misses += 1
        buf = await self._store.get(key, prototype, byte_range)
        if buf is not None:
            self._save(path, buf.to_bytes())
        return buf

    def _save(self, path: Path, data: bytes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError:
            return  # a full or read-only cache disk only costs speed
        self.added += len(data)
        if self.added >= _SCAN_FRACTION * self.settings.max_bytes:
            self.added = 0
            evict(self.settings)


def _prototype(prototype: Any) -> Any:
    if prototype is not None:
        return prototype
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype()


def cache_files(folder: str | os.PathLike) -> list[tuple[float, int, str]]:
    """(modification time, size, path) of every cached file under `folder`."""
    out = []
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            p = os.path.join(dirpath, name)
            try:
                st = os.stat(p)
            except OSError:
                continue
            out.append((st.st_mtime, st.st_size, p))
    return out


def evict(settings: CacheSettings) -> int:
    """Delete the least recently used files until the folder holds at most 80% of the limit (only when it is over
    the limit). Returns the bytes deleted."""
    files = cache_files(settings.folder)
    total = sum(size for _, size, _ in files)
    if total <= settings.max_bytes:
        return 0
    goal = _KEEP_FRACTION * settings.max_bytes
    freed = 0
    for _mtime, size, path in sorted(files):
        if total - freed <= goal:
            break
        try:
            os.unlink(path)
            freed += size
        except OSError:
            continue  # another process removed it first
    return freed
