"""Summaries and integrity checks of a feature store (`maskgen cache info` / `maskgen cache verify`)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from maskgen.store.layout import FEATURES, IMAGE, LABEL
from maskgen.store.reader import FeatureStore
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

    @property
    def bytes_per_voxel(self) -> float:
        return self.size_bytes / self.voxels if self.voxels else 0.0


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
    )


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


def verify_case(store: FeatureStore, case_id: str) -> list[str]:
    """Problems of one complete case (empty list if it is fine): shapes, dtypes, chunk files, finite values."""
    info = store.case(case_id)
    problems: list[str] = []
    c = store.num_features
    z, y, x = info.shape_zyx
    feat_dtype = "int8" if store.layout.dtype == "int8" else "float16"
    for what, values in (("feature_mean", info.feature_mean), ("feature_std", info.feature_std)):
        if len(values) != c or not np.isfinite(values).all():
            problems.append(f"{what} must hold {c} finite values, has {len(values)}")
    if feat_dtype == "int8" and (info.feature_scale is None or len(info.feature_scale) != c):
        problems.append(f"int8 features need feature_scale with {c} values")
    expected = [(IMAGE, (1, z, y, x), "float16"), (FEATURES, (c, z, y, x), feat_dtype)]
    if info.has_label:
        expected.append((LABEL, (z, y, x), "uint8"))
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
    num_classes = store.num_classes
    step = max(1, _VERIFY_SLAB_BYTES // max(1, 4 * (c + 1) * y * x))
    try:
        for z0 in range(0, z, step):
            sl = slice(z0, min(z, z0 + step))
            for name in (IMAGE, FEATURES):
                block = arrays[name][:, sl]
                bad = block.size - int(np.isfinite(block).sum()) if block.dtype.kind == "f" else 0
                if bad:
                    problems.append(f"{name} has {bad} non-finite value(s) in z {sl.start}..{sl.stop - 1}")
            if info.has_label:
                top = int(arrays[LABEL][sl].max(initial=0))
                if top >= num_classes:
                    problems.append(f"label has value {top} but the pipeline has {num_classes - 1} classes")
    except Exception as e:  # truncated or corrupted chunk files
        problems.append(f"data cannot be read ({type(e).__name__}: {e})")
    return problems


def verify_store(
    path: str | os.PathLike, on_case: Callable[[str, list[str]], None] | None = None
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
    return VerifyReport(path=store.path, checked=len(cases), problems=tuple(problems), incomplete=incomplete)
