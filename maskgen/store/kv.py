"""One zarr `Store` object per feature store: every byte maskgen reads or writes in a store goes through it.

zarr reads and writes the arrays through this object; maskgen's own keys (the root `zarr.json`, case listings,
deletions, the foreground-location cache, the writer lock) go through the small synchronous helpers of `StoreIO`,
which call the same object's async API on zarr's event loop. So a store on a local disk (zarr's `LocalStore`) and
one behind an fsspec URL (`s3://`, `gs://`, ...) behave the same.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Iterable

StoreLike = "str | os.PathLike | StoreIO"


def _buffer(data: bytes) -> Any:
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype().buffer.from_bytes(data)


def _run(coro: Any) -> Any:
    from zarr.core.sync import sync

    return sync(coro)


class StoreIO:
    """A store location (local folder) and the one zarr Store object that reads and writes it.

    `location` is what the user gave (shown in messages); `store` is the zarr Store (pass it to `zarr.open_group`,
    `zarr.open_array`, `zarr.consolidate_metadata`). Pickles as its location, so DataLoader workers reopen it.
    """

    def __init__(self, location: str | os.PathLike, read_only: bool = False):
        self.location = str(location)
        self.read_only = bool(read_only)
        self._store: Any = None
        self._writable: StoreIO | None = None

    # -- the zarr Store ---------------------------------------------------------------------------------
    @property
    def store(self) -> Any:
        if self._store is None:
            from zarr.storage import LocalStore

            from maskgen.store.crc import use_fast_crc32c

            use_fast_crc32c()  # every zarr read and write of a store goes through here
            self._store = LocalStore(self.local_path(), read_only=self.read_only)
        return self._store

    def local_path(self) -> Path:
        """The folder of a local store."""
        return Path(self.location)

    @property
    def is_local(self) -> bool:
        return True

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

    # -- keys ---------------------------------------------------------------------------------------------
    def root_exists(self) -> bool:
        """Whether the store's root exists at all (a folder, or any key under a URL)."""
        return self.local_path().is_dir()

    def get(self, key: str) -> bytes | None:
        """The bytes under `key`, or None if there are none."""
        return _run(self._get(key))

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

        return _run(gather()) if keys else []

    def set(self, key: str, data: bytes) -> None:
        """Write `key` (zarr's LocalStore writes a temporary file and renames it)."""
        _run(self.store.set(key, _buffer(data)))

    def set_if_not_exists(self, key: str, data: bytes) -> None:
        """Create `key` unless it exists (atomic on a local disk; exists-then-write on object stores)."""
        _run(self.store.set_if_not_exists(key, _buffer(data)))

    def exists(self, key: str) -> bool:
        return bool(_run(self.store.exists(key)))

    def delete(self, key: str) -> None:
        """Remove one key (no error if it is absent)."""
        try:
            _run(self.store.delete(key))
        except FileNotFoundError:
            pass

    def delete_dir(self, prefix: str) -> None:
        """Remove every key under `prefix` ("" clears the whole store)."""
        if not prefix:
            _run(self.store.clear())
            return
        _run(self.store.delete_dir(prefix.rstrip("/")))

    def list_dir(self, prefix: str) -> list[str]:
        """Names directly under `prefix` (keys and sub-prefixes), sorted."""
        from zarr.core.sync import collect_aiterator

        try:
            return sorted({n.rstrip("/") for n in collect_aiterator(self.store.list_dir(prefix.rstrip("/")))})
        except (FileNotFoundError, NotADirectoryError):
            return []

    def list_prefix(self, prefix: str) -> list[str]:
        """Every key under `prefix`, sorted."""
        from zarr.core.sync import collect_aiterator

        try:
            return sorted(collect_aiterator(self.store.list_prefix(prefix.rstrip("/"))))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def size_prefix(self, prefix: str) -> int:
        """Total bytes of the keys under `prefix` ("" for the whole store)."""
        keys = self.list_prefix(prefix) if prefix else self.list_prefix("")

        async def sizes() -> int:
            got = await asyncio.gather(*(self.store.getsize(k) for k in keys), return_exceptions=True)
            return sum(int(s) for s in got if not isinstance(s, BaseException))

        return int(_run(sizes())) if keys else 0


def as_io(location: Any, read_only: bool = False) -> StoreIO:
    """`location` as a StoreIO (a StoreIO is returned as it is, or opened for writing when asked)."""
    if isinstance(location, StoreIO):
        return location if read_only or not location.read_only else location.writable()
    return StoreIO(location, read_only=read_only)
