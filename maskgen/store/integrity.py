"""Damage to a complete case: how the reader and `cache verify` detect it and how it is reported.

Four kinds of damage are detected: a chunk that is truncated, missing, holds NaN/inf, or holds finite garbage.
- Every chunk of a case is written (even all-zero ones), so a missing chunk key is damage: the reader's zarr Store is
  wrapped in `StrictChunks`, which raises instead of letting zarr fill the chunk with the fill value (tensorstore:
  `fill_missing_data_reads: false`).
- Chunks of stores made since checksums were added end with a CRC32C (zarr v3's `crc32c` codec): a truncated chunk or
  one overwritten with anything else fails its checksum when decoded.
- Decoded values are checked where they are used: image and features finite, labels within the pipeline's classes
  (`check_values`), so a value written through zarr itself (checksum valid) is caught as well.
The reader raises `CorruptStoreError`: one line naming the store, the case and the array, and the repair.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from maskgen.errors import MaskgenError


def repair_advice(store: str, case_id: str) -> str:
    return (f"run `maskgen cache verify {store}` to list the damaged cases, then re-extract this one with "
            f"`maskgen extract --redo {case_id}` (same --dataset and --out)")


class CorruptStoreError(MaskgenError):
    """A complete case whose stored data is damaged. Its message is one line that names the store, case and array.

    DataLoader workers re-raise exceptions in the main process as `type(e)(text with the worker's traceback)`; the
    constructor recognises that text and keeps only the original one-line message.
    """

    def __init__(self, message: str):
        marker = f"{type(self).__module__}.{type(self).__qualname__}: "
        if message.startswith("Caught ") and marker in message:
            message = message.rsplit(marker, 1)[1].strip().splitlines()[0]
        super().__init__(message)

    @classmethod
    def of(cls, store: Any, case_id: str, array: str, what: str) -> "CorruptStoreError":
        what = " ".join(str(what).split())  # one line
        return cls(f"{store}: case {case_id}, array {array} is damaged ({what}); {repair_advice(str(store), case_id)}")


class ArrayReadError(Exception):
    """A read backend could not read array `name` of a case; `cause` is what went wrong."""

    def __init__(self, name: str, cause: BaseException):
        super().__init__(f"{name}: {type(cause).__name__}: {cause}")
        self.name = name
        self.cause = cause


#: errors that say nothing about the data (network, permissions): reported as such, not as damage
TRANSIENT = (ConnectionError, TimeoutError, PermissionError)


class MissingChunkError(OSError):
    """A chunk key of a complete case has no data."""


def is_chunk_key(key: str) -> bool:
    """Keys of chunk (or shard) data: `<array path>/c/<i>/<j>/...` (metadata keys end in `zarr.json`)."""
    return "/c/" in key and not key.endswith("zarr.json")


def strict_chunks(store: Any) -> Any:
    """`store` wrapped so that reading a missing chunk raises MissingChunkError (see module docstring)."""
    from zarr.storage import WrapperStore

    class StrictChunks(WrapperStore):  # type: ignore[type-arg]
        async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
            buf = await self._store.get(key, prototype, byte_range)
            if buf is None and is_chunk_key(key):
                raise MissingChunkError(f"chunk {key} is missing")
            return buf

        async def get_partial_values(self, prototype: Any, key_ranges: Any) -> Any:
            key_ranges = list(key_ranges)
            got = await self._store.get_partial_values(prototype, key_ranges)
            for (key, _), buf in zip(key_ranges, got):
                if buf is None and is_chunk_key(key):
                    raise MissingChunkError(f"chunk {key} is missing")
            return got

    return StrictChunks(store)


def float16_nonfinite(arr: np.ndarray) -> int:
    """Number of NaN/inf values of a float16 array (exponent bits all set; 3x faster than np.isfinite here)."""
    bits = arr.view(np.uint16)
    return int(np.count_nonzero((bits & 0x7C00) == 0x7C00))


def value_problem(name: str, arr: np.ndarray, num_classes: int | None) -> str | None:
    """What is wrong with decoded values of array `name` (None if nothing): non-finite floats, labels out of range."""
    if arr.dtype == np.float16:
        bad = float16_nonfinite(arr)
        if bad:
            return f"{bad} non-finite value(s)"
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            return f"{int(arr.size - np.isfinite(arr).sum())} non-finite value(s)"
    elif name == "label" and num_classes is not None and arr.size:
        top = int(arr.max())
        if top >= num_classes:
            return f"value {top} but the pipeline has {num_classes - 1} classes"
    return None


def has_checksum(array_metadata: dict[str, Any]) -> bool:
    """Whether an array's zarr.json lists the crc32c codec (directly or inside a sharding codec)."""
    def walk(codecs: Any) -> bool:
        for c in codecs or ():
            if not isinstance(c, dict):
                continue
            if c.get("name") == "crc32c":
                return True
            if walk((c.get("configuration") or {}).get("codecs")):
                return True
        return False

    return walk(array_metadata.get("codecs"))
