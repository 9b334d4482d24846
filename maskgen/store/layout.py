"""How a feature store lays out its arrays on disk: names, dtype, chunk shape, codec, int8 quantisation.

The default layout was chosen by measurement (`benchmarks/store_layout.py`, results in `benchmarks/results.jsonl`,
MIND features of the demo data and of a 1 mm MNI152 volume): random training crops are limited by per-chunk overhead,
decoding and the dtype cast, not by the disk. So features are uncompressed (Blosc-lz4 is 1.2x (demo) to 3.1x (1 mm
volume with air) smaller but reads 1.4-3x slower), in chunks holding all channels of a spatial block sized for the
training crop (`chunks_for_crop`: 48^3 for 64^3 crops, 64^3 for 128^3 crops), balanced so the chunks tile the volume:
full-size uncompressed edge chunks cost +25% (32^3) to +100% (64^3) disk otherwise. Image and label share the spatial
chunks. Features are int8 with a per-channel scale (issue 16.3, `benchmarks/read_path.py`): half the bytes of float16,
a 64^3 training crop read in 0.58x the time (tensorstore, checksummed, interleaved per crop), and no measurable Dice
change (`benchmarks/storage.py`: +0.04 (s.e. 0.06) Dice points between runs, +0.0006 on the same model; relative RMS
error of MIND features 0.9%). Stores made with float16 features read as before.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

FORMAT_VERSION = 1
CASES_GROUP = "cases"
IMAGE = "image"
FEATURES = "features"
LABEL = "label"
COMPLETE_ATTR = "complete"
SIDECAR_DIR = ".maskgen"  # maskgen's own files inside the store folder (foreground caches); not zarr nodes

FEATURE_DTYPES = ("float16", "int8")
CODECS = ("none", "blosc-lz4", "blosc-zstd", "zstd")
CHECKSUMS = ("crc32c", "none")
INT8_MAX = 127


@dataclass(frozen=True)
class StoreLayout:
    """Dtype, chunking and codec of the arrays of every case.

    dtype: feature dtype, "int8" (default; per-channel symmetric scale saved in the case attributes) or "float16".
    chunks_zyx: largest spatial chunk shape, shared by image, features and label.
    balance: shrink each chunk edge to ceil(n / ceil(n / chunk)) so the chunks tile the volume with less than one
        voxel of padding per chunk (uncompressed edge chunks are stored full size: unbalanced 64^3 chunks cost up to
        +47% (1 mm MNI volume) to +100% (demo case) disk); otherwise chunks are only clipped to small volumes.
    channel_chunk: feature channels per chunk; 0 keeps all channels in one chunk (one read per block).
    codec: "none", "blosc-lz4", "blosc-zstd" (byte shuffle) or "zstd".
    clevel: compression level for the codecs that take one.
    shards_zyx: outer shard shape (a multiple of chunks_zyx) to store many chunks per file, or None.
    checksum: "crc32c" (zarr v3's crc32c codec: 4 bytes per chunk, checked on every read; detects truncated and
        overwritten chunks) or "none" (stores made before checksums were added read as "none").
    """

    dtype: str = "int8"
    chunks_zyx: tuple[int, int, int] = (64, 64, 64)
    balance: bool = True
    channel_chunk: int = 0
    codec: str = "none"
    clevel: int = 5
    shards_zyx: tuple[int, int, int] | None = None
    checksum: str = "crc32c"

    def __post_init__(self) -> None:
        if self.dtype not in FEATURE_DTYPES:
            raise ValueError(f"StoreLayout.dtype must be one of {FEATURE_DTYPES}, got {self.dtype!r}")
        if self.codec not in CODECS:
            raise ValueError(f"StoreLayout.codec must be one of {CODECS}, got {self.codec!r}")
        if len(self.chunks_zyx) != 3 or any(int(c) < 1 for c in self.chunks_zyx):
            raise ValueError(f"StoreLayout.chunks_zyx must be three positive ints, got {self.chunks_zyx!r}")
        if self.checksum not in CHECKSUMS:
            raise ValueError(f"StoreLayout.checksum must be one of {CHECKSUMS}, got {self.checksum!r}")
        if self.channel_chunk < 0:
            raise ValueError(f"StoreLayout.channel_chunk must be >= 0, got {self.channel_chunk!r}")
        if not 0 <= self.clevel <= 22:
            raise ValueError(f"StoreLayout.clevel must be in [0, 22], got {self.clevel!r}")
        object.__setattr__(self, "chunks_zyx", tuple(int(c) for c in self.chunks_zyx))
        if self.shards_zyx is not None:
            shards = tuple(int(s) for s in self.shards_zyx)
            if len(shards) != 3 or any(s < c or s % c for s, c in zip(shards, self.chunks_zyx)):
                raise ValueError(
                    f"StoreLayout.shards_zyx must be multiples of chunks_zyx {self.chunks_zyx}, got {self.shards_zyx!r}"
                )
            object.__setattr__(self, "shards_zyx", shards)

    # -- chunk geometry ---------------------------------------------------------------------------------
    def spatial_chunks(self, shape_zyx: tuple[int, int, int]) -> tuple[int, int, int]:
        """Chunk shape for a volume: balanced (see `balance`) or clipped to the volume; fixed when sharded."""
        if self.shards_zyx is not None:
            return self.chunks_zyx
        if self.balance:
            return tuple(  # type: ignore[return-value]
                math.ceil(int(s) / math.ceil(int(s) / c)) for c, s in zip(self.chunks_zyx, shape_zyx)
            )
        return tuple(min(c, int(s)) for c, s in zip(self.chunks_zyx, shape_zyx))  # type: ignore[return-value]

    def spatial_shards(self, shape_zyx: tuple[int, int, int]) -> tuple[int, int, int] | None:
        """Shard shape for a volume (rounded down to what the volume needs), or None without sharding."""
        if self.shards_zyx is None:
            return None
        return tuple(  # type: ignore[return-value]
            min(sh, math.ceil(int(s) / c) * c) for sh, c, s in zip(self.shards_zyx, self.chunks_zyx, shape_zyx)
        )

    def feature_chunk_channels(self, channels: int) -> int:
        return channels if self.channel_chunk == 0 else min(self.channel_chunk, channels)

    # -- codecs -----------------------------------------------------------------------------------------
    def compressors(self, itemsize: int) -> Any:
        """The `compressors=` argument for `zarr.create_array`: the codec, then the checksum (None: raw bytes)."""
        import zarr.codecs as zc

        out: list[Any] = []
        if self.codec == "zstd":
            out.append(zc.ZstdCodec(level=self.clevel))
        elif self.codec != "none":
            cname = self.codec.split("-", 1)[1]
            shuffle = "shuffle" if itemsize > 1 else "noshuffle"
            out.append(zc.BloscCodec(cname=cname, clevel=self.clevel, shuffle=shuffle, typesize=itemsize))
        if self.checksum == "crc32c":
            from maskgen.store.crc import crc32c_codec

            out.append(crc32c_codec())
        return out or None

    def to_attrs(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["chunks_zyx"] = list(self.chunks_zyx)
        d["shards_zyx"] = None if self.shards_zyx is None else list(self.shards_zyx)
        return d

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> "StoreLayout":
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in attrs.items() if k in known}
        kw.setdefault("checksum", "none")  # recorded since checksums exist; older stores have none
        if kw.get("chunks_zyx") is not None:
            kw["chunks_zyx"] = tuple(kw["chunks_zyx"])
        if kw.get("shards_zyx") is not None:
            kw["shards_zyx"] = tuple(kw["shards_zyx"])
        return cls(**kw)


DEFAULT_LAYOUT = StoreLayout()


def chunks_for_crop(crop_zyx: tuple[int, int, int]) -> tuple[int, int, int]:
    """Largest chunk edges for training crops of `crop_zyx`: 3/4 of each crop edge rounded to a multiple of 16,
    within [32, 64] (64^3 crops -> 48^3, 128^3 and larger -> 64^3).

    Measured (benchmarks/store_layout.py, float16, uncompressed): for 64^3 crops, 48^3 chunks read 10-25% more
    samples/s than 64^3 chunks with zarr-python (up to 60% with tensorstore) and 25-40% more than 32^3; for 128^3
    crops, 64^3 chunks read 13-27% more than 48^3 and 30-80% more than 32^3.
    """
    if len(crop_zyx) != 3 or min(int(c) for c in crop_zyx) < 1:
        raise ValueError(f"crop_zyx must be three positive ints, got {crop_zyx!r}")
    return tuple(int(min(64, max(32, 16 * round(0.75 * int(c) / 16)))) for c in crop_zyx)  # type: ignore[return-value]


# -- int8 quantisation ----------------------------------------------------------------------------------
def int8_scale(features: np.ndarray) -> np.ndarray:
    """Per-channel symmetric scale (float32, shape (C,)) so that round(x / scale) fits in [-127, 127]."""
    c = features.shape[0]
    amax = np.abs(features.reshape(c, -1)).max(axis=1).astype(np.float64)
    scale = amax / INT8_MAX
    scale[~(scale > 0)] = 1.0  # all-zero channel
    return scale.astype(np.float32)


def quantize_int8(features: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(C, ...) float -> int8 with the per-channel `scale` from `int8_scale`."""
    shape = (-1,) + (1,) * (features.ndim - 1)
    q = np.rint(features / np.asarray(scale, dtype=np.float32).reshape(shape))
    return np.clip(q, -INT8_MAX, INT8_MAX).astype(np.int8)


def dequantize(stored: np.ndarray, scale: np.ndarray | None, dtype: Any = np.float32) -> np.ndarray:
    """Stored features (float16 or int8 with `scale`) -> `dtype` (float32 by default)."""
    if stored.dtype == np.int8:
        if scale is None:
            raise ValueError("int8 features need their per-channel scale")
        shape = (-1,) + (1,) * (stored.ndim - 1)
        out = stored.astype(np.float32)  # NumPy float16 arithmetic is emulated and slow: scale in float32
        out *= np.asarray(scale, dtype=np.float32).reshape(shape)
        return out.astype(dtype, copy=False)
    return stored.astype(dtype, copy=False)


def dequantize_into(stored: np.ndarray, out: np.ndarray, scale: np.ndarray | None) -> None:
    """Write stored values into `out` (same shape) converted to its dtype: int8 times the per-channel `scale` (axis 0,
    computed in float32 as `dequantize` does), anything else cast. One pass, no temporary array.

    float16 -> float32 goes through torch: NumPy converts float16 element by element (measured 1.9 ms for a 290k-value
    block against 0.54 ms with torch's vectorised copy; the values are identical, float16 -> float32 is exact)."""
    if stored.dtype == np.int8:
        if scale is None:
            raise ValueError("int8 features need their per-channel scale")
        shape = (-1,) + (1,) * (stored.ndim - 1)
        np.multiply(stored, np.asarray(scale, dtype=np.float32).reshape(shape), out=out, casting="unsafe")
    elif stored.dtype == np.float16 and out.dtype == np.float32 and stored.size:
        import warnings

        import torch

        with warnings.catch_warnings():  # read-only sources (chunk buffers) are only read here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            torch.from_numpy(out).copy_(torch.from_numpy(np.asarray(stored)))
    else:
        np.copyto(out, stored, casting="unsafe")
