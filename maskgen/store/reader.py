"""Reading a feature store: complete cases, whole volumes, random crops (zero-padded), foreground locations.

`FeatureStore` opens lazily and pickles without its zarr handles, so it can be handed to DataLoader worker
processes: each process opens the store (and configures zarr's decode thread pool) on first use.
"""

from __future__ import annotations

import os
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskgen.atomic import atomic_path
from maskgen.data.intensity import describe_record
from maskgen.errors import MaskgenError
from maskgen.store.layout import (
    CASES_GROUP,
    COMPLETE_ATTR,
    FEATURES,
    IMAGE,
    LABEL,
    StoreLayout,
    dequantize,
)
from maskgen.store.writer import fg_cache_path, read_case_attrs, read_root_attrs, read_root_doc

# zarr-python decodes chunks in a thread pool created on the first read. Measured on 2 cores
# (benchmarks/store_layout.py), one decode thread per process is as fast as more for uncompressed
# float16 crops; parallelism comes from DataLoader worker processes instead.
READ_THREADS_ENV = "MASKGEN_ZARR_THREADS"
DEFAULT_READ_THREADS = 1
#: "zarr" (zarr-python; default, fork-safe) or "tensorstore" (optional package, reads the same Zarr v3 arrays in
#: C++); "auto" picks tensorstore when it is installed. Default: $MASKGEN_STORE_BACKEND, else "zarr".
#: Measured (benchmarks/results.jsonl, 2 shared cores): tensorstore reads 64^3 training samples 1.4-2.2x faster, and
#: 128^3 samples no faster (0.8-1.0x), so zarr-python stays the default.
BACKENDS = ("auto", "zarr", "tensorstore")
BACKEND_ENV = "MASKGEN_STORE_BACKEND"


# pid of the process that first used tensorstore. Its thread pools do not survive fork(): a forked child of that
# process (a DataLoader worker started with "fork") must not touch tensorstore, even through a fresh context.
_TS_USED_BY_PID: int | None = None


def tensorstore_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorstore") is not None


def resolve_backend(backend: str | None) -> str:
    """'zarr' or 'tensorstore' for a requested backend (None: $MASKGEN_STORE_BACKEND or 'zarr')."""
    backend = backend or os.environ.get(BACKEND_ENV) or "zarr"
    if backend not in BACKENDS:
        raise MaskgenError(f"store backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "tensorstore" if tensorstore_available() else "zarr"
    if backend == "tensorstore" and not tensorstore_available():
        raise MaskgenError("store backend 'tensorstore' needs the tensorstore package: pip install tensorstore")
    return backend


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


@dataclass(frozen=True)
class CaseInfo:
    case_id: str
    domain: str
    split: str
    shape_zyx: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    geometry: dict
    feature_mean: tuple[float, ...]
    feature_std: tuple[float, ...]
    feature_scale: tuple[float, ...] | None = None  # int8 stores only
    has_label: bool = True
    normalization: str = ""  # the intensity rule the case got, e.g. "ct [-1024, 1024]" ("" in older stores)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> "CaseInfo":
        scale = attrs.get("feature_scale")
        return cls(
            case_id=str(attrs["case_id"]),
            domain=str(attrs.get("domain", "")),
            split=str(attrs.get("split", "")),
            shape_zyx=tuple(int(s) for s in attrs["shape_zyx"]),  # type: ignore[arg-type]
            spacing_zyx=tuple(float(s) for s in attrs.get("spacing_zyx", (1.0, 1.0, 1.0))),  # type: ignore[arg-type]
            geometry=dict(attrs.get("geometry") or {}),
            feature_mean=tuple(float(v) for v in attrs["feature_mean"]),
            feature_std=tuple(float(v) for v in attrs["feature_std"]),
            feature_scale=None if scale is None else tuple(float(v) for v in scale),
            has_label=bool(attrs.get("has_label", True)),
            normalization=describe_record(attrs.get("normalization")),
        )


class FeatureStore:
    """A maskgen Zarr v3 feature store (see docs/ARCHITECTURE.md for the layout)."""

    def __init__(self, path: str | os.PathLike, read_threads: int | None = None, backend: str | None = None):
        """`read_threads`: decode threads per process (default $MASKGEN_ZARR_THREADS or 1); `backend`: see BACKENDS."""
        self.path = Path(path)
        attrs = read_root_attrs(self.path)
        if attrs is None:
            if not self.path.exists():
                raise MaskgenError(f"{self.path} does not exist; create it with `maskgen extract --out {self.path}`")
            raise MaskgenError(
                f"{self.path} is not a maskgen feature store (no root zarr.json with maskgen attributes); "
                "create one with `maskgen extract`"
            )
        self.attrs: dict[str, Any] = attrs
        self.read_threads = read_threads
        self.backend = resolve_backend(backend)
        self.layout = StoreLayout.from_attrs(attrs.get("layout") or {})
        self._root: Any = None
        self._cases: dict[str, CaseInfo] | None = None
        self._arrays: dict[tuple[str, str], Any] = {}
        self._ts_arrays: dict[tuple[str, str], Any] = {}
        self._ts_context: Any = None
        self._pid = os.getpid()
        self._warned_fork = False
        self._used_consolidated = False

    # -- pickling: no zarr/tensorstore handles across processes ----------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_root"] = None
        state["_arrays"] = {}
        state["_ts_arrays"] = {}
        state["_ts_context"] = None
        return state

    def _check_pid(self) -> None:
        """After a fork (DataLoader workers), reopen: tensorstore's thread pools do not survive it."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._root = None
            self._arrays = {}
            self._ts_arrays = {}
            self._ts_context = None

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r})"

    # -- root-level properties -------------------------------------------------------------------------
    @property
    def extractor(self) -> dict[str, Any]:
        return dict(self.attrs.get("extractor") or {})

    @property
    def num_features(self) -> int:
        n = self.extractor.get("out_channels")
        if n is None:
            infos = self.cases()
            if not infos:
                raise MaskgenError(f"{self.path}: no complete case and no extractor out_channels recorded")
            return len(infos[0].feature_mean)
        return int(n)

    @property
    def pipeline(self) -> Any:
        from maskgen.config import from_dict
        from maskgen.data.pipeline import Pipeline

        return from_dict(Pipeline, self.attrs["pipeline"])

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.attrs["spacing_zyx"])  # type: ignore[return-value]

    # -- opening ---------------------------------------------------------------------------------------
    def _open_root(self) -> Any:
        """A read-only zarr LocalStore of the store folder (arrays are opened from it one by one)."""
        if self._root is None:
            from zarr.storage import LocalStore

            configure_zarr_threads(self.read_threads)
            self._root = LocalStore(str(self.path), read_only=True)
        return self._root

    def case_folders(self) -> set[str]:
        """Names of all case groups on disk, complete or not (one directory listing)."""
        d = self.path / CASES_GROUP
        if not d.is_dir():
            return set()
        return {e.name for e in os.scandir(d) if e.is_dir() and not e.name.startswith(".")}

    def _load_cases(self) -> dict[str, CaseInfo]:
        """Complete cases from the consolidated metadata in the root `zarr.json` (one file read) when it is present
        and lists exactly the case folders on disk; else (missing or stale) from each case group's `zarr.json`."""
        on_disk = self.case_folders()
        doc = read_root_doc(self.path) or {}
        cons = (doc.get("consolidated_metadata") or {}).get("metadata")
        found: dict[str, dict[str, Any]] | None = None
        if isinstance(cons, dict):
            prefix = CASES_GROUP + "/"
            groups = {
                k[len(prefix) :]: m
                for k, m in cons.items()
                if k.startswith(prefix) and "/" not in k[len(prefix) :] and (m or {}).get("node_type") == "group"
            }
            if set(groups) == on_disk:
                found = {cid: dict(m.get("attributes") or {}) for cid, m in groups.items()}
        self._used_consolidated = found is not None
        if found is None:
            found = {}
            for cid in on_disk:
                attrs = read_case_attrs(self.path, cid)
                if attrs is not None:
                    found[cid] = attrs
        infos = {}
        for cid in sorted(found):
            attrs = found[cid]
            if attrs.get(COMPLETE_ATTR) is not True:
                continue
            try:
                infos[cid] = CaseInfo.from_attrs(attrs)
            except (KeyError, TypeError, ValueError):
                continue  # a complete marker with unreadable attributes: treat as incomplete
        return infos

    @property
    def used_consolidated(self) -> bool:
        """Whether the case list came from consolidated metadata (False: it was missing or stale)."""
        self.cases()
        return self._used_consolidated

    def refresh(self) -> None:
        """Forget cached metadata (e.g. after another process added cases)."""
        self._root = None
        self._cases = None
        self._arrays = {}

    def cases(self, split: str | None = None, domain: str | None = None) -> list[CaseInfo]:
        """Complete cases (sorted by id), optionally only those of one split and/or domain."""
        if self._cases is None:
            self._cases = self._load_cases()
        out = list(self._cases.values())
        if split is not None:
            out = [c for c in out if c.split == split]
        if domain is not None:
            out = [c for c in out if c.domain == domain]
        return out

    def case(self, case_id: str) -> CaseInfo:
        self.cases()
        assert self._cases is not None
        try:
            return self._cases[case_id]
        except KeyError:
            raise MaskgenError(
                f"case {case_id!r} is not a complete case of {self.path}; complete cases: "
                f"{', '.join(list(self._cases)[:10])}{'...' if len(self._cases) > 10 else ''}"
            ) from None

    def __len__(self) -> int:
        return len(self.cases())

    def __contains__(self, case_id: object) -> bool:
        self.cases()
        assert self._cases is not None
        return case_id in self._cases

    def array(self, case_id: str, name: str) -> Any:
        """The zarr array `name` ("image" | "features" | "label") of a case, opened once and cached."""
        self._check_pid()
        key = (case_id, name)
        arr = self._arrays.get(key)
        if arr is None:
            import zarr

            arr = zarr.open_array(self._open_root(), path=f"{CASES_GROUP}/{case_id}/{name}", mode="r")
            self._arrays[key] = arr
        return arr

    def _ts_array(self, case_id: str, name: str) -> Any:
        key = (case_id, name)
        arr = self._ts_arrays.get(key)
        if arr is None:
            import tensorstore as ts

            if self._ts_context is None:
                threads = self.read_threads or int(os.environ.get(READ_THREADS_ENV, DEFAULT_READ_THREADS))
                self._ts_context = ts.Context({
                    "cache_pool": {"total_bytes_limit": 0},
                    "data_copy_concurrency": {"limit": max(1, threads)},
                    "file_io_concurrency": {"limit": max(2, threads)},
                })
            path = str(self.path / CASES_GROUP / case_id / name)
            spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": path}}
            arr = ts.open(spec, read=True, open=True, context=self._ts_context).result()
            self._ts_arrays[key] = arr
        return arr

    def _use_tensorstore(self) -> bool:
        global _TS_USED_BY_PID
        if self.backend != "tensorstore":
            return False
        if _TS_USED_BY_PID is None:
            _TS_USED_BY_PID = os.getpid()
        elif _TS_USED_BY_PID != os.getpid():  # forked after tensorstore was used: zarr-python is fork-safe
            if not self._warned_fork:
                self._warned_fork = True
                warnings.warn(
                    f"{self.path}: this process was forked after tensorstore was used, so it reads with zarr-python "
                    "(slower); start DataLoader workers with multiprocessing_context='spawn' or 'forkserver'",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return False
        return True

    def _fetch(self, case_id: str, requests: list[tuple[str, tuple[slice, ...]]]) -> list[np.ndarray]:
        """Read several (array name, selection) pairs of a case; tensorstore issues them concurrently."""
        self._check_pid()
        if self._use_tensorstore():
            futures = [self._ts_array(case_id, name)[sel].read() for name, sel in requests]
            return [np.asarray(f.result()) for f in futures]
        return [self.array(case_id, name)[sel] for name, sel in requests]

    # -- reading ---------------------------------------------------------------------------------------
    def read_case(self, case_id: str, dtype: Any = np.float32) -> dict[str, np.ndarray | None]:
        """The whole case: image (1,Z,Y,X), features (C,Z,Y,X) dequantised, both `dtype`; label (Z,Y,X) uint8
        (None for a case stored without label)."""
        info = self.case(case_id)
        names = [IMAGE, FEATURES] + ([LABEL] if info.has_label else [])
        got = self._fetch(case_id, [(n, (Ellipsis,)) for n in names])
        image = got[0].astype(dtype, copy=False)
        feats = dequantize(got[1], _scale(info), dtype)
        label = got[2] if info.has_label else None
        return {"image": image, "features": feats, "label": label}

    def read_crop(
        self,
        case_id: str,
        start_zyx: tuple[int, int, int] | np.ndarray,
        size_zyx: tuple[int, int, int] | np.ndarray,
        dtype: Any = np.float32,
    ) -> dict[str, np.ndarray | None]:
        """A crop [start, start + size) of every array, reading only the chunks it touches.

        Parts of the crop outside the volume are zero (image, features and label). `dtype` is the output dtype of
        image and features; pass np.float16 to skip the CPU cast of float16 stores and cast on the device.
        """
        info = self.case(case_id)
        start = np.asarray(start_zyx, dtype=np.int64).reshape(3)
        size = np.asarray(size_zyx, dtype=np.int64).reshape(3)
        if (size <= 0).any():
            raise ValueError(f"read_crop: size_zyx must be positive, got {tuple(size_zyx)}")
        shape = np.asarray(info.shape_zyx, dtype=np.int64)
        lo = np.maximum(start, 0)
        hi = np.minimum(start + size, shape)
        inside = bool((lo == start).all() and (hi == start + size).all())
        src = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        dst = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(lo, hi, start))
        empty = bool((hi <= lo).any())
        size_t = tuple(int(s) for s in size)
        c = len(info.feature_mean)
        names = [IMAGE, FEATURES] + ([LABEL] if info.has_label else [])
        leads = {IMAGE: (1,), FEATURES: (c,), LABEL: ()}
        got = [] if empty else self._fetch(case_id, [(n, (slice(None),) * len(leads[n]) + src) for n in names])
        scale = _scale(info)
        convert = {
            IMAGE: (dtype, lambda a: a.astype(dtype, copy=False)),
            FEATURES: (dtype, lambda a: dequantize(a, scale, dtype)),
            LABEL: (np.uint8, lambda a: a),
        }
        out: dict[str, np.ndarray | None] = {LABEL: None}
        for i, name in enumerate(names):
            out_dtype, conv = convert[name]
            if inside:
                out[name] = conv(got[i])
                continue
            arr = np.zeros(leads[name] + size_t, dtype=out_dtype)
            if not empty:
                arr[(slice(None),) * len(leads[name]) + dst] = conv(got[i])
            out[name] = arr
        return {"image": out[IMAGE], "features": out[FEATURES], "label": out[LABEL]}

    # -- foreground locations --------------------------------------------------------------------------
    def foreground_locations(self, case_id: str, max_per_class: int = 10000, seed: int = 0) -> dict[int, np.ndarray]:
        """Up to `max_per_class` voxel coordinates (N, 3) zyx of each foreground class 1..K, sampled once.

        Cached in `<store>/.maskgen/fg/<case_id>.npz` (written to a temporary file then renamed, so DataLoader
        worker processes may call this concurrently: each computes the same result and the last rename wins).
        Classes absent from the case map to an empty (0, 3) array.
        """
        if max_per_class < 1:
            raise ValueError(f"foreground_locations: max_per_class must be >= 1, got {max_per_class}")
        info = self.case(case_id)
        if not info.has_label:
            raise MaskgenError(f"case {case_id} of {self.path} has no label, so no foreground locations")
        num_classes = self.num_classes
        path = fg_cache_path(self.path, case_id)
        cached = _load_fg(path, max_per_class, seed, num_classes)
        if cached is not None:
            return cached
        (label,) = self._fetch(case_id, [(LABEL, (Ellipsis,))])
        rng = np.random.default_rng(seed)
        locs: dict[int, np.ndarray] = {}
        for k in range(1, num_classes):
            idx = np.flatnonzero(label == k)
            if idx.size > max_per_class:
                idx = np.sort(rng.choice(idx, size=max_per_class, replace=False))
            locs[k] = np.stack(np.unravel_index(idx, label.shape), axis=1).astype(np.int32).reshape(-1, 3)
        _save_fg(path, locs, max_per_class, seed, num_classes)
        return locs

    @property
    def num_classes(self) -> int:
        """Label values including background (K + 1), from the pipeline recorded in the store."""
        classes = (self.attrs.get("pipeline") or {}).get("classes")
        if classes is None:
            raise MaskgenError(f"{self.path}: root attributes lack pipeline.classes")
        return len(classes) + 1


def _scale(info: CaseInfo) -> np.ndarray | None:
    return None if info.feature_scale is None else np.asarray(info.feature_scale, dtype=np.float32)


def _load_fg(path: Path, max_per_class: int, seed: int, num_classes: int) -> dict[int, np.ndarray] | None:
    try:
        with np.load(path) as z:
            if (int(z["max_per_class"]), int(z["seed"]), int(z["num_classes"])) != (max_per_class, seed, num_classes):
                return None
            return {k: z[f"class_{k}"] for k in range(1, num_classes)}
    except (OSError, KeyError, ValueError, EOFError):
        return None


def _save_fg(path: Path, locs: dict[int, np.ndarray], max_per_class: int, seed: int, num_classes: int) -> None:
    stack = ExitStack()
    try:
        tmp = stack.enter_context(atomic_path(path, suffix=".npz.tmp"))
    except OSError:
        return  # read-only store: the locations are still returned, just not cached
    with stack, open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
        np.savez(
            f,
            max_per_class=max_per_class,
            seed=seed,
            num_classes=num_classes,
            **{f"class_{k}": v for k, v in locs.items()},
        )
