"""Reading a feature store: complete cases, whole volumes, random crops (zero-padded), foreground locations.

`FeatureStore` reads metadata through the store's one zarr Store object (`maskgen.store.kv.StoreIO`) and array data
through a read backend (`zarr_backend` or `tensorstore_backend`); foreground locations come from `fg_cache`. It
opens lazily and pickles without handles, so it can be handed to DataLoader worker processes: each process opens the
store (and configures zarr's decode thread pool) on first use, and a forked process reopens it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskgen.data.intensity import describe_record
from maskgen.errors import MaskgenError
from maskgen.store import fg_cache
from maskgen.store.chunk_cache import CacheSettings, case_version
from maskgen.store.integrity import TRANSIENT, ArrayReadError, CorruptStoreError, has_checksum, value_problem
from maskgen.store.kv import StoreIO, as_io
from maskgen.store.layout import CASES_GROUP, COMPLETE_ATTR, FEATURES, IMAGE, LABEL, StoreLayout, dequantize_into
from maskgen.store.meta import case_folders, case_prefix, read_many_case_attrs, read_root_doc, root_attrs_of
from maskgen.store.views import VIEWS_ATTR, features_name, image_name, store_view_count
from maskgen.store.tensorstore_backend import TensorstoreBackend, tensorstore_available
from maskgen.store.zarr_backend import ZarrBackend, configure_zarr_threads  # noqa: F401 - re-exported

#: "zarr" (zarr-python; fork-safe) or "tensorstore" (optional package `maskgen[fast-store]`, reads the same Zarr v3
#: arrays in C++); "auto" (the default) picks tensorstore when it is installed. Default: $MASKGEN_STORE_BACKEND, else
#: "auto". Chosen by measurement (`python -m benchmarks read_path`, benchmarks/README.md): a 64^3 training crop of
#: the default int8 checksummed layout reads in 0.69x the time with tensorstore (0.93x for float16), interleaved per
#: crop on 2 shared cores, and the loader reaches 0.56 of the in-RAM bound (int8 with zarr-python: 0.40).
#: DataLoader workers are spawned with tensorstore (it is not fork-safe): 15-39 s start-up on the loaded machine.
BACKENDS = ("auto", "zarr", "tensorstore")
BACKEND_ENV = "MASKGEN_STORE_BACKEND"


def resolve_backend(backend: str | None) -> str:
    """'zarr' or 'tensorstore' for a requested backend (None: $MASKGEN_STORE_BACKEND or 'auto')."""
    backend = backend or os.environ.get(BACKEND_ENV) or "auto"
    if backend not in BACKENDS:
        raise MaskgenError(f"store backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "tensorstore" if tensorstore_available() else "zarr"
    if backend == "tensorstore" and not tensorstore_available():
        raise MaskgenError("store backend 'tensorstore' needs the tensorstore package: pip install tensorstore")
    return backend


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
    views: tuple[dict, ...] = ()  # records of the augmented views 1..K (`maskgen.store.views`); () without views

    @property
    def num_views(self) -> int:
        return len(self.views)

    def view_stats(self, view: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(feature_mean, feature_std) of view `view` (0: the clean features)."""
        if view == 0:
            return self.feature_mean, self.feature_std
        rec = self.views[view - 1]
        return tuple(rec["feature_mean"]), tuple(rec["feature_std"])

    def view_scale(self, view: int) -> np.ndarray | None:
        """int8 per-channel scale of the features of view `view` (None for float16 stores)."""
        scale = self.feature_scale if view == 0 else self.views[view - 1].get("feature_scale")
        return None if scale is None else np.asarray(scale, dtype=np.float32)

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
            views=tuple(dict(v) for v in attrs.get(VIEWS_ATTR) or ()),
        )


class FeatureStore:
    """A maskgen Zarr v3 feature store (see docs/ARCHITECTURE.md for the layout)."""

    def __init__(self, path: str | os.PathLike | StoreIO, read_threads: int | None = None, backend: str | None = None,
                 chunk_cache: Any = None):
        """`path`: a folder, an fsspec URL (`s3://bucket/amos.zarr`) or a StoreIO; `read_threads`: decode threads per
        process (default $MASKGEN_ZARR_THREADS or 1); `backend`: see BACKENDS; `chunk_cache`: a
        `chunk_cache.CacheSettings` for remote stores, False for none, None for $MASKGEN_CHUNK_CACHE."""
        if chunk_cache is None:
            chunk_cache = CacheSettings.from_env()
        if isinstance(path, StoreIO):
            self.io = as_io(path, read_only=True)
        else:
            self.io = StoreIO(path, read_only=True, chunk_cache=chunk_cache or None)
        #: the location for messages and records: a Path for a local store, the URL (str) for a remote one
        self.path: Path | str = self.io.local_path() if self.io.is_local else self.io.location
        doc = read_root_doc(self.io)
        attrs = root_attrs_of(doc)
        if attrs is None:
            if not self.io.root_exists():
                raise MaskgenError(f"{self.path} does not exist; create it with `maskgen extract --out {self.path}`")
            raise MaskgenError(
                f"{self.path} is not a maskgen feature store (no root zarr.json with maskgen attributes); "
                "create one with `maskgen extract`"
            )
        self.attrs: dict[str, Any] = attrs
        self._root_doc: dict[str, Any] | None = doc
        self.read_threads = read_threads
        self.backend = resolve_backend(backend)
        self.layout = StoreLayout.from_attrs(attrs.get("layout") or {})
        self._cases: dict[str, CaseInfo] | None = None
        self._reader: Any = None
        self._zarr: ZarrBackend | None = None
        self._checksummed: dict[tuple[str, str], bool] = {}
        self._pid = os.getpid()
        self._warned_fork = False
        self._used_consolidated = False

    # -- pickling and fork: no zarr/tensorstore handles across processes -------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_reader"] = None
        state["_zarr"] = None
        return state

    def _check_pid(self) -> None:
        """After a fork (DataLoader workers), reopen the zarr Store (its event loop is per process)."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            old = self.io
            self.io = StoreIO(old.location, read_only=True, chunk_cache=old.chunk_cache)
            self.io.case_versions.update(old.case_versions)
            self._zarr = None
            if self._reader is not None and self._reader.name == "zarr":
                self._reader = None

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

    @property
    def view_count(self) -> int:
        """Augmented views per train case the store was made with (`maskgen extract --views`; 0 without)."""
        return store_view_count(self.attrs)

    @property
    def num_classes(self) -> int:
        """Label values including background (K + 1), from the pipeline recorded in the store."""
        classes = (self.attrs.get("pipeline") or {}).get("classes")
        if classes is None:
            raise MaskgenError(f"{self.path}: root attributes lack pipeline.classes")
        return len(classes) + 1

    # -- cases -----------------------------------------------------------------------------------------
    def case_folders(self) -> set[str]:
        """Names of all case groups in the store, complete or not (one listing)."""
        return case_folders(self.io)

    def _load_cases(self) -> dict[str, CaseInfo]:
        """Complete cases from the consolidated metadata in the root `zarr.json` (one read) when it is present
        and lists exactly the case groups in the store; else (missing or stale) from each case group's `zarr.json`
        (fetched concurrently)."""
        on_disk = self.case_folders()
        doc = self._root_doc if self._root_doc is not None else (read_root_doc(self.io) or {})
        self._root_doc = None  # used once: refresh() and later loads read it again
        found = _consolidated_cases(doc, on_disk)
        self._used_consolidated = found is not None
        if found is None:
            found = read_many_case_attrs(self.io, sorted(on_disk))
        infos = {}
        for cid in sorted(found):
            attrs = found[cid]
            if attrs.get(COMPLETE_ATTR) is not True:
                continue
            try:
                infos[cid] = CaseInfo.from_attrs(attrs)
            except (KeyError, TypeError, ValueError):
                continue  # a complete marker with unreadable attributes: treat as incomplete
            self.io.case_versions[cid] = case_version(attrs)  # the chunk cache keys cached chunks by it
        return infos

    @property
    def used_consolidated(self) -> bool:
        """Whether the case list came from consolidated metadata (False: it was missing or stale)."""
        self.cases()
        return self._used_consolidated

    def refresh(self) -> None:
        """Forget cached metadata (e.g. after another process added cases)."""
        self._cases = None
        self._reader = None
        self._zarr = None
        self._root_doc = None

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

    # -- backends --------------------------------------------------------------------------------------
    def _zarr_backend(self) -> ZarrBackend:
        self._check_pid()
        if self._zarr is None:
            self._zarr = ZarrBackend(self.io, self.read_threads)
        return self._zarr

    def array(self, case_id: str, name: str) -> Any:
        """The zarr array `name` ("image" | "features" | "label") of a case, opened once and cached."""
        return self._zarr_backend().array(case_id, name)

    def _backend(self) -> Any:
        """The read backend of this process: tensorstore when chosen and usable here, else zarr-python."""
        self._check_pid()
        if self.backend == "tensorstore":
            if self._reader is None:
                self._reader = TensorstoreBackend(self.io, self.read_threads)
            if self._reader.usable():
                return self._reader
            if not self._warned_fork and self._reader.used_in_pid is not None:
                self._warned_fork = True
                warnings.warn(
                    f"{self.path}: this process was forked after tensorstore was used, so it reads with zarr-python "
                    "(slower); start DataLoader workers with multiprocessing_context='spawn' or 'forkserver'",
                    RuntimeWarning,
                    stacklevel=4,
                )
        return self._zarr_backend()

    def _read_into(self, case_id: str, items: list[tuple[str, tuple[Any, ...], np.ndarray, np.ndarray | None]],
                   check_floats: bool = False) -> None:
        """Read each (array name, selection, output view, int8 scale or None) of a case into its output view,
        converted on the way (dtype cast; int8 features times their per-channel scale: `dequantize_into`), and check
        the values; damage raises CorruptStoreError naming the case and array (see `maskgen.store.integrity`).

        Labels are always range-checked (cheap). Image and float features are checked for NaN/inf when `check_floats`
        (whole cases: small next to what is done with them) or when the array has no checksums; checksummed chunks
        hold exactly what the writer wrote, and the writer refuses non-finite values (crops skip the check: 15% of a
        64^3 crop's read time); int8 features cannot hold NaN."""
        try:
            got = self._backend().fetch(case_id, [(name, sel) for name, sel, _, _ in items])
        except ArrayReadError as e:
            if isinstance(e.cause, TRANSIENT):
                raise MaskgenError(f"{self.path}: cannot read case {case_id}, array {e.name}: "
                                   f"{type(e.cause).__name__}: {e.cause}") from None
            raise CorruptStoreError.of(self.path, case_id, e.name, f"{type(e.cause).__name__}: {e.cause}") from None
        for (_, _, out, scale), arr in zip(items, got):
            dequantize_into(arr, out, scale)
        for name, _, out, scale in items:
            # checksummed chunks cannot hold values the writer refused; without checksums, check floats here
            floats = name != LABEL and scale is None and (check_floats or not self._has_checksum(case_id, name))
            if floats or name == LABEL:
                problem = value_problem(name, out, self.num_classes)
                if problem:
                    raise CorruptStoreError.of(self.path, case_id, name, problem)

    def _has_checksum(self, case_id: str, name: str) -> bool:
        key = (case_id, name)
        if key not in self._checksummed:
            import json

            raw = self.io.get(f"{case_prefix(case_id)}/{name}/zarr.json")
            try:
                self._checksummed[key] = raw is not None and has_checksum(json.loads(raw))
            except ValueError:
                self._checksummed[key] = False
        return self._checksummed[key]

    # -- reading ---------------------------------------------------------------------------------------
    def read_case(self, case_id: str, dtype: Any = np.float32, features: bool = True) -> dict[str, np.ndarray | None]:
        """The whole case: image (1,Z,Y,X), features (C,Z,Y,X) dequantised, both `dtype`; label (Z,Y,X) uint8
        (None for a case stored without label). `features=False` reads only image and label (features None)."""
        info = self.case(case_id)
        out = self._outputs(info, tuple(info.shape_zyx), dtype, np.empty)
        if not features:
            out[FEATURES] = None
        scale = _scale(info)
        self._read_into(case_id, [(name, (Ellipsis,), arr, scale if name == FEATURES else None)
                                  for name, arr in out.items() if arr is not None], check_floats=True)
        return {"image": out[IMAGE], "features": out[FEATURES], "label": out[LABEL]}

    def read_crop(
        self,
        case_id: str,
        start_zyx: tuple[int, int, int] | np.ndarray,
        size_zyx: tuple[int, int, int] | np.ndarray,
        dtype: Any = np.float32,
        view: int = 0,
    ) -> dict[str, np.ndarray | None]:
        """A crop [start, start + size) of every array, reading only the chunks it touches.

        Parts of the crop outside the volume are zero (image, features and label). `dtype` is the output dtype of
        image and features; pass np.float16 to skip the CPU cast of float16 stores and cast on the device. `view`:
        0 reads the clean image and features, k >= 1 those of augmented view k (`image_viewk`, `features_viewk`).
        """
        info = self.case(case_id)
        if not 0 <= int(view) <= info.num_views:
            raise MaskgenError(f"case {case_id} of {self.path} has {info.num_views} augmented view(s), not view {view}; "
                               "extract the store with more `maskgen extract --views`")
        start = np.asarray(start_zyx, dtype=np.int64).reshape(3)
        size = np.asarray(size_zyx, dtype=np.int64).reshape(3)
        if (size <= 0).any():
            raise ValueError(f"read_crop: size_zyx must be positive, got {tuple(size_zyx)}")
        shape = np.asarray(info.shape_zyx, dtype=np.int64)
        lo = np.maximum(start, 0)
        hi = np.minimum(start + size, shape)
        inside = bool((lo == start).all() and (hi == start + size).all())
        out = self._outputs(info, tuple(int(s) for s in size), dtype, np.empty if inside else np.zeros)
        if bool((hi <= lo).any()):
            return out  # entirely outside the volume: zeros
        src = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        dst = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(lo, hi, start))
        names = {IMAGE: image_name(view), FEATURES: features_name(view), LABEL: LABEL}
        items = []
        for name, arr in out.items():
            if arr is not None:
                lead = (slice(None),) * (arr.ndim - 3)
                items.append((names[name], lead + src, arr[lead + dst],
                              info.view_scale(view) if name == FEATURES else None))
        self._read_into(case_id, items)
        return out

    @staticmethod
    def _outputs(info: CaseInfo, size: tuple[int, ...], dtype: Any, alloc: Any) -> dict[str, np.ndarray | None]:
        """Output arrays of a read: image (1, *size) and features (C, *size) of `dtype`, label uint8 (or None)."""
        return {IMAGE: alloc((1, *size), dtype=dtype), FEATURES: alloc((len(info.feature_mean), *size), dtype=dtype),
                LABEL: alloc(size, dtype=np.uint8) if info.has_label else None}

    # -- foreground locations --------------------------------------------------------------------------
    def foreground_locations(self, case_id: str, max_per_class: int = 10000, seed: int = 0) -> dict[int, np.ndarray]:
        """Up to `max_per_class` voxel coordinates (N, 3) zyx of each foreground class 1..K, sampled once.

        Cached in the store (`maskgen.store.fg_cache`); DataLoader worker processes may call this concurrently.
        Classes absent from the case map to an empty (0, 3) array.
        """
        if max_per_class < 1:
            raise ValueError(f"foreground_locations: max_per_class must be >= 1, got {max_per_class}")
        info = self.case(case_id)
        if not info.has_label:
            raise MaskgenError(f"case {case_id} of {self.path} has no label, so no foreground locations")

        def read_label() -> np.ndarray:
            label = np.empty(info.shape_zyx, dtype=np.uint8)
            self._read_into(case_id, [(LABEL, (Ellipsis,), label, None)])
            return label

        self._check_pid()
        return fg_cache.cached_locations(self.io, case_id, read_label, self.num_classes, max_per_class, seed)


def _consolidated_cases(doc: dict[str, Any], on_disk: set[str]) -> dict[str, dict[str, Any]] | None:
    """Case attributes from consolidated metadata, or None when it is absent or does not list exactly `on_disk`."""
    cons = (doc.get("consolidated_metadata") or {}).get("metadata")
    if not isinstance(cons, dict):
        return None
    prefix = CASES_GROUP + "/"
    groups = {
        k[len(prefix):]: m
        for k, m in cons.items()
        if k.startswith(prefix) and "/" not in k[len(prefix):] and (m or {}).get("node_type") == "group"
    }
    if set(groups) != on_disk:
        return None
    return {cid: dict(m.get("attributes") or {}) for cid, m in groups.items()}


def _scale(info: CaseInfo) -> np.ndarray | None:
    return None if info.feature_scale is None else np.asarray(info.feature_scale, dtype=np.float32)
