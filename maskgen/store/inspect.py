"""Summaries and integrity checks of a feature store (`maskgen cache info` / `maskgen cache verify`)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from maskgen.store.integrity import value_problem
from maskgen.store.layout import FEATURES, IMAGE, LABEL
from maskgen.store.reader import FeatureStore
from maskgen.store.views import features_name, image_name, view_array_names
from maskgen.store.writer import store_size

_VERIFY_SLAB_BYTES = 128 * 2**20


@dataclass(frozen=True)
class StoreInfo:
    path: Path
    format_version: int | None
    maskgen_version: str | None
    created: str | None
    pipeline: str | None
    extractor: dict[str, Any]
    layout: dict[str, Any]
    spacing_zyx: tuple[float, ...]
    normalization: str | None
    normalization_by_domain: dict[str, str]  # domain -> the rule(s) its cases got, from the case records
    num_features: int | None
    cases: int
    by_split: dict[str, int]
    by_domain: dict[str, int]
    by_split_domain: dict[tuple[str, str], int]
    incomplete: tuple[str, ...]
    size_bytes: int
    voxels: int
    consolidated: bool
    views: dict[str, Any] | None = None          # the root `views` settings (count, prob, seed, transforms, splits)
    view_cases: tuple[tuple[str, tuple[dict, ...]], ...] = ()   # (case id, view records) of the cases with views
    view_bytes: int = 0                           # bytes of every view array (image_viewK + features_viewK)
    view_voxels: int = 0                          # voxels of one view summed over the cases with views

    @property
    def bytes_per_voxel(self) -> float:
        return self.size_bytes / self.voxels if self.voxels else 0.0

    @property
    def bytes_per_view(self) -> float:
        """Mean bytes of one augmented view (image + features) of one case."""
        n = sum(len(v) for _, v in self.view_cases)
        return self.view_bytes / n if n else 0.0

    @property
    def view_bytes_per_voxel(self) -> float:
        """Bytes per voxel of one view (compare with `bytes_per_voxel`, which counts every array)."""
        n = len(self.view_cases[0][1]) if self.view_cases else 0
        return self.view_bytes / (n * self.view_voxels) if n and self.view_voxels else 0.0


def store_info(path: str | os.PathLike) -> StoreInfo:
    """What `maskgen cache info` prints: cases per split and domain, extractor, layout, size on disk."""
    store = FeatureStore(path)
    cases = store.cases()
    attrs = store.attrs
    incomplete = tuple(sorted(store.case_folders() - {c.case_id for c in cases}))
    n_features = (store.extractor or {}).get("out_channels")
    return StoreInfo(
        path=store.path,
        format_version=attrs.get("format_version"),
        maskgen_version=attrs.get("maskgen_version"),
        created=attrs.get("created"),
        pipeline=(attrs.get("pipeline") or {}).get("name"),
        extractor=store.extractor,
        layout=dict(attrs.get("layout") or {}),
        spacing_zyx=tuple(float(s) for s in attrs.get("spacing_zyx") or ()),
        normalization=attrs.get("normalization"),
        normalization_by_domain=_rules_by_domain(cases),
        num_features=None if n_features is None else int(n_features),
        cases=len(cases),
        by_split=dict(sorted(Counter(c.split for c in cases).items())),
        by_domain=dict(sorted(Counter(c.domain for c in cases).items())),
        by_split_domain=dict(sorted(Counter((c.split, c.domain) for c in cases).items())),
        incomplete=incomplete,
        size_bytes=store_size(store.io),
        voxels=sum(int(np.prod(c.shape_zyx)) for c in cases),
        consolidated=store.used_consolidated,
        **_view_info(store, cases),
    )


def _view_info(store: FeatureStore, cases: list[Any]) -> dict[str, Any]:
    """The store's views: settings, per-case records, bytes of the view arrays (one listing per array)."""
    from maskgen.store.meta import case_prefix
    from maskgen.store.views import VIEWS_ATTR, view_array_names

    with_views = [c for c in cases if c.num_views]
    size = sum(store.io.size_prefix(f"{case_prefix(c.case_id)}/{name}")
               for c in with_views for name in view_array_names(c.num_views))
    return {"views": store.attrs.get(VIEWS_ATTR), "view_cases": tuple((c.case_id, c.views) for c in with_views),
            "view_bytes": int(size), "view_voxels": sum(int(np.prod(c.shape_zyx)) for c in with_views)}


def _rules_by_domain(cases: list[Any]) -> dict[str, str]:
    rules: dict[str, Counter] = {}
    for c in cases:
        rules.setdefault(c.domain, Counter())[c.normalization or "not recorded"] += 1
    return {d: ", ".join(f"{r} ({n})" for r, n in sorted(counts.items())) for d, counts in sorted(rules.items())}


@dataclass(frozen=True)
class VerifyReport:
    path: Path
    checked: int
    problems: tuple[tuple[str, str], ...]  # (case_id, what is wrong)
    incomplete: tuple[str, ...]
    unchecksummed: tuple[str, ...] = ()     # cases whose chunks carry no checksum (stores made before checksums)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_array(arr: Any, name: str, shape: tuple[int, ...], dtype: str) -> list[str]:
    out = []
    if tuple(arr.shape) != shape:
        out.append(f"{name} has shape {tuple(arr.shape)}, expected {shape}")
    if str(arr.dtype) != dtype:
        out.append(f"{name} has dtype {arr.dtype}, expected {dtype}")
    if arr.shards is not None:  # zarr counts inner chunks of shards inconsistently; shards are not checked
        return out
    total, initialized = int(arr.nchunks), int(arr.nchunks_initialized)
    if initialized < total:
        out.append(f"{name} is missing {total - initialized} of {total} chunk files")
    return out


def _case_attr_problems(store: FeatureStore, info: Any) -> list[str]:
    c = store.num_features
    problems = []
    for what, values in (("feature_mean", info.feature_mean), ("feature_std", info.feature_std)):
        if len(values) != c or not np.isfinite(values).all():
            problems.append(f"{what} must hold {c} finite values, has {len(values)}")
    for k, rec in enumerate(info.views, start=1):
        for what in ("feature_mean", "feature_std") + (("feature_scale",) if store.layout.dtype == "int8" else ()):
            values = rec.get(what) or []
            if len(values) != c or not np.isfinite(values).all():
                problems.append(f"view {k}: {what} must hold {c} finite values, has {len(values)}")
    if store.layout.dtype == "int8" and (info.feature_scale is None or len(info.feature_scale) != c):
        problems.append(f"int8 features need feature_scale with {c} values")
    return problems


def _bad_chunks(arr: Any, sl: slice) -> list[str]:
    """The chunks of `arr` within z range `sl` that cannot be decoded, each with the reason."""
    import itertools

    out = []
    grid = [range(0, n, c) for n, c in zip(arr.shape, arr.chunks)]
    zaxis = arr.ndim - 3
    for corner in itertools.product(*grid):
        if not sl.start <= corner[zaxis] < sl.stop:
            continue
        sel = tuple(slice(a, a + c) for a, c in zip(corner, arr.chunks))
        try:
            arr[sel]
        except Exception as e:
            index = "/".join(str(a // c) for a, c in zip(corner, arr.chunks))
            out.append(f"chunk c/{index} cannot be read ({type(e).__name__}: {' '.join(str(e).split())})")
    return out


def _check_values(arrays: dict[str, Any], has_label: bool, num_classes: int, c: int, yx: int,
                  views: int = 0) -> list[str]:
    """Read every chunk (in z slabs) and check it decodes (checksums) and holds valid values."""
    problems: list[str] = []
    z = arrays[IMAGE].shape[1]
    step = max(1, _VERIFY_SLAB_BYTES // max(1, 4 * (c + 1) * yx))
    names = [IMAGE, FEATURES] + ([LABEL] if has_label else []) + view_array_names(views)
    for z0 in range(0, z, step):
        sl = slice(z0, min(z, z0 + step))
        for name in names:
            arr = arrays[name]
            try:
                block = arr[(slice(None),) * (arr.ndim - 3) + (sl,)]
            except Exception:
                problems += [f"{name} {p}" for p in _bad_chunks(arr, sl)] or [f"{name} cannot be read in z {sl.start}"]
                continue
            problem = value_problem(name, block, num_classes)
            if problem:
                problems.append(f"{name} has {problem} in z {sl.start}..{sl.stop - 1}")
    return problems


def verify_case(store: FeatureStore, case_id: str) -> list[str]:
    """Problems of one complete case (empty list if it is fine): attributes, shapes, dtypes, chunk files, checksums
    and values (finite image and features, labels within the classes)."""
    info = store.case(case_id)
    problems = _case_attr_problems(store, info)
    c = store.num_features
    z, y, x = info.shape_zyx
    feat_dtype = "int8" if store.layout.dtype == "int8" else "float16"
    expected = [(IMAGE, (1, z, y, x), "float16"), (FEATURES, (c, z, y, x), feat_dtype)]
    if info.has_label:
        expected.append((LABEL, (z, y, x), "uint8"))
    for k in range(1, info.num_views + 1):
        expected += [(image_name(k), (1, z, y, x), "float16"), (features_name(k), (c, z, y, x), feat_dtype)]
    arrays = {}
    for name, shape, dtype in expected:
        try:
            arrays[name] = store.array(case_id, name)
        except Exception as e:  # missing or damaged array metadata
            problems.append(f"{name} cannot be opened ({type(e).__name__}: {e})")
            continue
        problems += _check_array(arrays[name], name, shape, dtype)
    if problems:
        return problems
    return _check_values(arrays, info.has_label, store.num_classes, c, y * x, info.num_views)


def _unchecksummed(store: FeatureStore, case_ids: list[str]) -> tuple[str, ...]:
    return tuple(cid for cid in case_ids if not all(store._has_checksum(cid, n) for n in (IMAGE, FEATURES)))


def verify_store(
    path: Any, on_case: Callable[[str, list[str]], None] | None = None
) -> VerifyReport:
    """Read every complete case fully and check it; `on_case(case_id, problems)` is called after each one."""
    store = FeatureStore(path)
    cases = store.cases()
    incomplete = tuple(sorted(store.case_folders() - {c.case_id for c in cases}))
    problems: list[tuple[str, str]] = []
    for info in cases:
        found = verify_case(store, info.case_id)
        problems += [(info.case_id, p) for p in found]
        if on_case is not None:
            on_case(info.case_id, found)
    return VerifyReport(path=store.path, checked=len(cases), problems=tuple(problems), incomplete=incomplete,
                        unchecksummed=_unchecksummed(store, [c.case_id for c in cases]))
