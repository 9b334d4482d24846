"""One zarr `Store` object per feature store: every byte maskgen reads or writes in a store goes through it.

zarr reads and writes the arrays through this object; maskgen's own keys (the root `zarr.json`, case listings,
deletions, the foreground-location cache, the writer lock) go through the small synchronous helpers of `StoreIO`,
which call the same object's async API on zarr's event loop. So a store on a local disk (zarr's `LocalStore`) and
one behind an fsspec URL (`s3://`, `gs://`, ...: zarr's `FsspecStore`, see `maskgen.store.location`) behave the
same. A read-only StoreIO of a remote store may keep chunks in a local cache (`maskgen.store.chunk_cache`).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Iterable

from maskgen.errors import MaskgenError
from maskgen.store import location as location_mod

StoreLike = "str | os.PathLike | StoreIO"
#: URL schemes whose fsspec filesystem makes `set_if_not_exists` a conditional write (checked against moto's S3)
CONDITIONAL_PUT_SCHEMES = ("s3",)


def _is_access_error(e: BaseException) -> bool:
    return isinstance(e, PermissionError) or "Credentials" in type(e).__name__ or "AccessDenied" in str(e)


def _buffer(data: bytes) -> Any:
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype().buffer.from_bytes(data)


def _run(coro: Any) -> Any:
    from zarr.core.sync import sync

    return sync(coro)


class StoreIO:
    """A store location (local folder or fsspec URL) and the one zarr Store object that reads and writes it.

    `location` is what the user gave (shown in messages); `store` is the zarr Store (pass it to `zarr.open_group`,
    `zarr.open_array`, `zarr.consolidate_metadata`). `chunk_cache` (read-only remote stores only): a
    `maskgen.store.chunk_cache.CacheSettings` keeping fetched chunks on the local disk. Pickles as its location (and
    cache settings), so DataLoader workers reopen it.
    """

    def __init__(self, location: str | os.PathLike, read_only: bool = False, chunk_cache: Any = None):
        self.location = str(location)
        self.read_only = bool(read_only)
        self.chunk_cache = chunk_cache if (read_only and location_mod.is_remote(self.location)) else None
        self.case_versions: dict[str, str] = {}  # case id -> version, for the chunk cache (filled by the reader)
        self._store: Any = None
        self._writable: StoreIO | None = None

    # -- the zarr Store ---------------------------------------------------------------------------------
    @property
    def store(self) -> Any:
        if self._store is None:
            from maskgen.store.crc import use_fast_crc32c

            use_fast_crc32c()  # every zarr read and write of a store goes through here
            self._store = self._open()
        return self._store

    def _open(self) -> Any:
        path = location_mod.local_path(self.location)
        if path is not None:
            from zarr.storage import LocalStore

            return LocalStore(path, read_only=self.read_only)
        from zarr.storage import FsspecStore

        try:
            store = FsspecStore.from_url(self.location, storage_options=location_mod.storage_options(self.location),
                                         read_only=self.read_only)
        except (ImportError, ValueError) as e:
            raise MaskgenError(location_mod.missing_filesystem_message(self.location, e)) from None
        if self.chunk_cache is not None:
            from maskgen.store.chunk_cache import ChunkCache

            store = ChunkCache.of(store, self.chunk_cache, self.location, self.case_versions)
        return store

    @property
    def is_local(self) -> bool:
        return location_mod.local_path(self.location) is not None

    def local_path(self) -> Path:
        """The folder of a local store (MaskgenError for a remote one)."""
        path = location_mod.local_path(self.location)
        if path is None:
            raise MaskgenError(f"{self.location} is not a local folder")
        return path

    @property
    def atomic_create(self) -> bool:
        """Whether `set_if_not_exists` is atomic: on a local disk (exclusive create) and on S3 (a conditional PUT,
        `If-None-Match: *`); elsewhere it is check-then-write and callers must settle races themselves."""
        return self.is_local or location_mod.scheme_of(self.location) in CONDITIONAL_PUT_SCHEMES

    def writable(self) -> "StoreIO":
        """The same location opened for writing (shares nothing with this object)."""
        if not self.read_only:
            return self
        if self._writable is None:
            self._writable = type(self)(self.location, read_only=False)
        return self._writable

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_store": None, "_writable": None}

    def __repr__(self) -> str:
        return f"StoreIO({self.location!r}{', read_only=True' if self.read_only else ''})"

    def __str__(self) -> str:
        return self.location

    def _run(self, coro: Any) -> Any:
        """Run a coroutine of the store on zarr's loop; credential and permission failures of a remote store become
        a MaskgenError that says where credentials come from."""
        try:
            return _run(coro)
        except Exception as e:
            if self.is_local or not _is_access_error(e):
                raise
            raise MaskgenError(
                f"{self.location}: access denied or no credentials ({type(e).__name__}: {e}); maskgen takes "
                "credentials and endpoints only from the environment (e.g. AWS_PROFILE, AWS_ACCESS_KEY_ID, "
                "AWS_ENDPOINT_URL), ~/.aws/ and fsspec's configuration (~/.config/fsspec/)"
            ) from None

    # -- keys ---------------------------------------------------------------------------------------------
    def root_exists(self) -> bool:
        """Whether the store's root exists at all (a folder, or any key under a URL)."""
        if self.is_local:
            return self.local_path().is_dir()
        return bool(self.list_dir(""))

    def get(self, key: str) -> bytes | None:
        """The bytes under `key`, or None if there are none."""
        return self._run(self._get(key))

    async def _get(self, key: str) -> bytes | None:
        from zarr.core.buffer import default_buffer_prototype

        try:
            buf = await self.store.get(key, prototype=default_buffer_prototype())
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return None if buf is None else buf.to_bytes()

    def get_many(self, keys: Iterable[str]) -> list[bytes | None]:
        """Several keys fetched concurrently (one round trip's latency on an object store)."""
        keys = list(keys)

        async def gather() -> list[bytes | None]:
            return list(await asyncio.gather(*(self._get(k) for k in keys)))

        return self._run(gather()) if keys else []

    def set(self, key: str, data: bytes) -> None:
        """Write `key` (zarr's LocalStore writes a temporary file and renames it; an object store PUT is atomic)."""
        self._run(self.store.set(key, _buffer(data)))

    def set_if_not_exists(self, key: str, data: bytes) -> None:
        """Create `key` unless it exists: an exclusive create on a local disk, a conditional PUT (`If-None-Match: *`)
        on S3, exists-then-write elsewhere (see `atomic_create`)."""
        store = self.store
        if not self.is_local and location_mod.scheme_of(self.location) in CONDITIONAL_PUT_SCHEMES:
            remote = _unwrap(store)
            path = f"{remote.path.rstrip('/')}/{key}"

            async def create() -> None:
                try:
                    await remote.fs._pipe_file(path, data, mode="create")
                except FileExistsError:
                    pass

            self._run(create())
            return
        self._run(store.set_if_not_exists(key, _buffer(data)))

    def exists(self, key: str) -> bool:
        return bool(self._run(self.store.exists(key)))

    def delete(self, key: str) -> None:
        """Remove one key (no error if it is absent)."""
        try:
            self._run(self.store.delete(key))
        except FileNotFoundError:
            pass

    def delete_dir(self, prefix: str) -> None:
        """Remove every key under `prefix` ("" clears the whole store)."""
        if not prefix:
            self._run(self.store.clear())
            return
        self._run(self.store.delete_dir(prefix.rstrip("/")))

    def _collect(self, aiter_of: Any) -> list[str]:
        async def collect() -> list[str]:
            try:
                return [k async for k in aiter_of()]
            except (FileNotFoundError, NotADirectoryError):
                return []

        return self._run(collect())

    def list_dir(self, prefix: str) -> list[str]:
        """Names directly under `prefix` (keys and sub-prefixes), sorted."""
        names = self._collect(lambda: self.store.list_dir(prefix.rstrip("/")))
        return sorted({n.rstrip("/") for n in names})

    def list_prefix(self, prefix: str) -> list[str]:
        """Every key under `prefix`, sorted."""
        return sorted(self._collect(lambda: self.store.list_prefix(prefix.rstrip("/"))))

    def size_prefix(self, prefix: str) -> int:
        """Total bytes of the keys under `prefix` ("" for the whole store); one listing on an object store."""
        if not self.is_local:
            remote = _unwrap(self.store)
            path = f"{remote.path.rstrip('/')}/{prefix.rstrip('/')}".rstrip("/")

            async def du() -> int:
                try:
                    return int(await remote.fs._du(path, total=True))
                except FileNotFoundError:
                    return 0

            return int(self._run(du()))
        keys = self.list_prefix(prefix)

        async def sizes() -> int:
            got = await asyncio.gather(*(self.store.getsize(k) for k in keys), return_exceptions=True)
            return sum(int(s) for s in got if not isinstance(s, BaseException))

        return int(self._run(sizes())) if keys else 0


def store_exists(location: str | os.PathLike) -> bool:
    """Whether anything is at the location (a folder, or any key under a URL)."""
    path = location_mod.local_path(location)
    if path is not None:
        return path.exists()
    return StoreIO(str(location), read_only=True).root_exists()


def _unwrap(store: Any) -> Any:
    """The innermost zarr Store under wrappers (the chunk cache, the reader's strict-chunks check)."""
    while hasattr(store, "_store") and not hasattr(store, "fs"):
        store = store._store
    return store


def as_io(location: Any, read_only: bool = False) -> StoreIO:
    """`location` as a StoreIO (a StoreIO is returned as it is, or opened for writing when asked)."""
    if isinstance(location, StoreIO):
        return location if read_only or not location.read_only else location.writable()
    return StoreIO(location, read_only=read_only)
