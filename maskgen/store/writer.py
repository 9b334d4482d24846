"""Writing a feature store: root attributes, compatibility checks, one case group at a time, consolidation.

Every write goes through the store's one zarr Store object (`maskgen.store.kv.StoreIO`), so the same code fills a
local folder or an object store. Reliability rules: a case group is deleted and rewritten as a whole; its
`complete: true` attribute is written last (zarr's LocalStore replaces `zarr.json` atomically; an object store PUT
is atomic), so a reader never sees a half-written case as complete. Consolidated metadata is removed before any
write and rebuilt at the end, so it is never stale.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import uuid
import warnings
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from maskgen.errors import MaskgenError
from maskgen.store.kv import StoreIO, as_io
from maskgen.store.layout import (
    CASES_GROUP,
    COMPLETE_ATTR,
    FEATURES,
    FORMAT_VERSION,
    IMAGE,
    LABEL,
    SIDECAR_DIR,
    StoreLayout,
    int8_scale,
    quantize_int8,
)
from maskgen.store import views as views_mod
from maskgen.store.meta import case_prefix, check_case_id, fg_key, not_a_store_problem, read_root_attrs
from maskgen.store.views import CaseView

_SLAB_BYTES = 256 * 2**20  # bound on the temporary copy made when converting a slab to the stored dtype


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Hide zarr's warnings about consolidated metadata (not in the v3 spec) and our sidecar folder."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy.*")
        yield


def root_attributes(
    pipeline: Any, fingerprint: dict[str, Any], layout: StoreLayout, extract_config: dict[str, Any] | None = None,
    views: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The root attributes of a new store (see docs/ARCHITECTURE.md); `views`: `store.views.root_views_attr` (None:
    no augmented views, and no `views` attribute)."""
    from maskgen import __version__
    from maskgen.config import to_dict

    return {
        "format_version": FORMAT_VERSION,
        "maskgen_version": __version__,
        "pipeline": to_dict(pipeline),
        "extractor": dict(fingerprint),
        "spacing_zyx": [float(s) for s in pipeline.spacing_zyx],
        "normalization": pipeline.describe_normalization(),  # every rule with its parameters, e.g. per domain
        "ct_window": [float(v) for v in pipeline.ct_window],
        "layout": layout.to_attrs(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "extract_config": extract_config or {},
        **({views_mod.VIEWS_ATTR: views} if views else {}),
    }


def _get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)  # type: ignore[assignment]
    return d


_COMPARED = (
    ("format_version", "store format version"),
    ("spacing_zyx", "spacing (z, y, x)"),
    ("normalization", "intensity normalisation"),
    ("layout.dtype", "feature dtype"),
    ("layout.chunks_zyx", "chunk shape"),
    ("layout.channel_chunk", "channels per chunk"),
    ("layout.codec", "codec"),
    ("layout.shards_zyx", "shard shape"),
    ("pipeline.name", "pipeline"),
    ("pipeline.classes", "label classes"),
    ("views", "augmented views (--views)"),
)


def compatibility_problems(
    existing: dict[str, Any], new: dict[str, Any], extractor_problems: Callable[[dict, dict], list[str]] | None = None
) -> list[str]:
    """Human-readable differences that forbid adding cases of `new` to a store made with `existing`.

    Whether two extractor fingerprints make the same features is decided by `maskgen.extract.registry`
    (`identity_problems`), passed in as `extractor_problems` (the store does not import extract); without it the
    fingerprints must be equal."""
    old_fp, new_fp = existing.get("extractor") or {}, new.get("extractor") or {}
    if extractor_problems is not None:
        problems = list(extractor_problems(old_fp, new_fp))
    else:
        problems = [] if old_fp == new_fp else [f"extractor: store has {old_fp!r}, this run has {new_fp!r}"]
    keys = list(_COMPARED)
    if new.get("normalization") == "ct" or existing.get("normalization") == "ct":
        keys.append(("ct_window", "CT window"))
    for key, what in keys:
        a, b = _get(existing, key), _get(new, key)
        if isinstance(a, float) or isinstance(b, float) or key == "spacing_zyx" or key == "ct_window":
            if a is not None and b is not None and np.allclose(np.asarray(a, float), np.asarray(b, float)):
                continue
        if a != b:
            problems.append(f"{what}: store has {a!r}, this run has {b!r}")
    return problems


def prepare_store(
    store: Any,
    attrs: dict[str, Any],
    overwrite: bool = False,
    extractor_problems: Callable[[dict, dict], list[str]] | None = None,
) -> bool:
    """Create the store (or reuse a compatible one) and drop its consolidated metadata before any case write.

    Returns True when the store was newly created. Refuses to reuse a store made with another extractor, weights,
    layer, spacing, normalisation or layout, naming the differences; `overwrite` deletes it first (only if it is
    a maskgen store or an empty location).
    """
    import zarr

    io = as_io(store)
    problem = not_a_store_problem(io)
    if problem:
        raise MaskgenError(problem)
    existing = read_root_attrs(io)
    if existing is not None and overwrite:
        clear_store(io)
        existing = None
    if existing is not None:
        problems = compatibility_problems(existing, attrs, extractor_problems)
        if problems:
            raise MaskgenError(
                f"{io} was made with different settings:\n  - "
                + "\n  - ".join(problems)
                + "\nRe-run with --overwrite to rebuild it, or choose another --out."
            )
        with quiet():
            root = zarr.open_group(io.store, mode="r+", use_consolidated=False, zarr_format=3)
            # Rewriting the root metadata without consolidation invalidates the consolidated copy.
            root.attrs.update({"extract_config": attrs.get("extract_config", {}), "consolidated": False})
            if CASES_GROUP not in root:
                root.create_group(CASES_GROUP)
        return False
    with quiet():
        root = zarr.create_group(io.store, attributes={**attrs, "consolidated": False}, overwrite=False)
        root.create_group(CASES_GROUP)
    return True


def clear_store(store: Any) -> None:
    """Delete everything in the store but the writer lock (held by the caller)."""
    io = as_io(store)
    for name in io.list_dir(""):
        if name == SIDECAR_DIR:
            io.delete_dir(f"{SIDECAR_DIR}/fg")
        elif io.exists(name):
            io.delete(name)
        else:
            io.delete_dir(name)


def consolidate(store: Any) -> None:
    """Write consolidated metadata (all groups, arrays and attributes in the root `zarr.json`)."""
    import zarr

    io = as_io(store)
    with quiet():
        root = zarr.open_group(io.store, mode="r+", use_consolidated=False, zarr_format=3)
        root.attrs.update({"consolidated": True})
        zarr.consolidate_metadata(io.store)


def delete_case(store: Any, case_id: str) -> None:
    """Remove a case group and its cached foreground locations."""
    io = as_io(store)
    io.delete_dir(case_prefix(case_id))
    io.delete(fg_key(case_id))


def update_case_attrs(store: Any, case_id: str, changes: dict[str, Any]) -> None:
    """Merge `changes` into a complete case's attributes without touching its arrays (e.g. a split re-read from the
    dataset); the caller consolidates afterwards."""
    import zarr

    io = as_io(store)
    with quiet():
        group = zarr.open_group(io.store, path=case_prefix(case_id), mode="r+", use_consolidated=False, zarr_format=3)
        group.attrs.update(changes)


def channel_stats(features: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation over the whole volume (float64 accumulation)."""
    c = features.shape[0]
    flat = features.reshape(c, -1)
    mean = flat.mean(axis=1, dtype=np.float64)
    std = flat.std(axis=1, dtype=np.float64)
    return [float(m) for m in mean], [float(s) for s in std]


def _nonfinite_message(case_id: str, name: str, arr: np.ndarray) -> str | None:
    bad = ~np.isfinite(arr)
    n = int(bad.sum())
    if n == 0:
        return None
    where = ""
    if arr.ndim == 4:
        chans = sorted({int(c) for c in np.nonzero(bad.reshape(arr.shape[0], -1).any(axis=1))[0]})
        where = f" in channel(s) {chans[:8]}{'...' if len(chans) > 8 else ''}"
    return (
        f"case {case_id}: {n} non-finite value(s) in the {name}{where}; check the input volume "
        "(constant or corrupted image) and the extractor weights"
    )


def check_case_arrays(case_id: str, image: np.ndarray, features: np.ndarray, label: np.ndarray | None,
                      features_checked: bool = False) -> None:
    """MaskgenError naming the case for arrays that cannot be stored: wrong shapes, non-finite values, labels > 255.
    `features_checked`: the caller found the features finite already (their statistics are), skip that scan."""
    check_case_id(case_id)
    if image.ndim != 4 or image.shape[0] != 1:
        raise MaskgenError(f"case {case_id}: image must have shape (1, Z, Y, X), got {image.shape}")
    if features.ndim != 4 or features.shape[1:] != image.shape[1:]:
        raise MaskgenError(
            f"case {case_id}: features {features.shape} do not match the image grid {image.shape[1:]}"
        )
    if label is not None and label.shape != image.shape[1:]:
        raise MaskgenError(f"case {case_id}: label {label.shape} does not match the image grid {image.shape[1:]}")
    for name, arr in (("image", image),) + ((("features", features),) if not features_checked else ()):
        msg = _nonfinite_message(case_id, name, arr)
        if msg:
            raise MaskgenError(msg)
    if label is not None:
        if label.min(initial=0) < 0 or label.max(initial=0) > 255:
            raise MaskgenError(f"case {case_id}: label values must be within 0..255 to store as uint8")


def case_record(
    case_id: str, attrs: dict[str, Any], features: np.ndarray, has_label: bool, layout: StoreLayout,
    stats: tuple[list[float], list[float]] | None = None, views: Sequence[CaseView] = (),
) -> dict[str, Any]:
    """The case group's attributes: the caller's `attrs` plus shape, channel statistics, (int8) scales, the records
    of augmented views (`maskgen.store.views`) and the OME-Zarr metadata that places the arrays in space
    (`maskgen.store.ome`)."""
    from maskgen.store.ome import case_ome_attrs

    mean, std = channel_stats(features) if stats is None else (list(stats[0]), list(stats[1]))
    info = {
        **attrs,
        "case_id": case_id,
        "write_id": uuid.uuid4().hex,  # new on every write: readers' chunk caches key cached chunks by it
        "shape_zyx": [int(s) for s in features.shape[1:]],
        "num_features": int(features.shape[0]),
        "feature_mean": mean,
        "feature_std": std,
        "has_label": has_label,
        "ome": case_ome_attrs([IMAGE, FEATURES] + ([LABEL] if has_label else [])
                              + views_mod.view_array_names(len(views)),
                              attrs.get("spacing_zyx") or (1.0, 1.0, 1.0), attrs.get("geometry")),
    }
    if layout.dtype == "int8":
        info["feature_scale"] = [float(s) for s in int8_scale(features)]
    if views:
        info[views_mod.VIEWS_ATTR] = [_view_record(v, layout) for v in views]
    return info


def _view_record(view: CaseView, layout: StoreLayout) -> dict[str, Any]:
    record = {**view.record, "feature_mean": [float(m) for m in view.mean],
              "feature_std": [float(s) for s in view.std]}
    if layout.dtype == "int8":
        record["feature_scale"] = [float(s) for s in int8_scale(view.features)]
    return record


def _write_slabs(arr: Any, data: np.ndarray, z_axis: int, z_step: int, convert: Any) -> None:
    """Write `data` into `arr` along the z axis in chunk-aligned slabs, converting each slab with `convert`."""
    nz = data.shape[z_axis]
    bytes_per_z = max(1, data.nbytes // max(nz, 1))
    per_slab = max(1, (_SLAB_BYTES // bytes_per_z) // z_step) * z_step
    for z0 in range(0, nz, per_slab):
        z1 = min(nz, z0 + per_slab)
        sel = (slice(None),) * z_axis + (slice(z0, z1),)
        arr[sel] = convert(data[sel])


def _create_array(group: Any, name: str, shape: tuple[int, ...], lead_chunk: tuple[int, ...], dtype: str,
                  layout: StoreLayout) -> Any:
    """One array of a case: spatial chunks (and shards) from the layout, every chunk written (even all-zero ones,
    so a missing chunk file is damage that `cache verify` and the reader can tell)."""
    spatial = shape[len(shape) - 3:]
    chunks = layout.spatial_chunks(spatial)
    shards = layout.spatial_shards(spatial)
    return group.create_array(
        name,
        shape=shape,
        chunks=lead_chunk + chunks,
        shards=None if shards is None else shape[: len(shape) - 3] + shards,
        dtype=dtype,
        compressors=layout.compressors(np.dtype(dtype).itemsize),
        fill_value=0,
        dimension_names=("c", "z", "y", "x")[4 - len(shape):],
        config={"write_empty_chunks": True},
    )


def write_arrays(group: Any, image: np.ndarray, features: np.ndarray, label: np.ndarray | None,
                 layout: StoreLayout, scale: Any = None, views: Sequence[CaseView] = (),
                 view_scales: Sequence[Any] = ()) -> None:
    """Create and fill the image, features and label arrays of a case group (and those of its augmented views:
    `image_viewK`, `features_viewK`, with `view_scales` for int8), in chunk-aligned slabs."""
    shape = tuple(int(s) for s in image.shape[1:])
    z_step = (layout.spatial_shards(shape) or layout.spatial_chunks(shape))[0]
    _write_image(group, IMAGE, image, layout, z_step)
    _write_features(group, FEATURES, features, layout, scale, z_step)
    if label is not None:
        a_lab = _create_array(group, LABEL, shape, (), "uint8", layout)
        _write_slabs(a_lab, label, 0, z_step, lambda s: s.astype(np.uint8))
    for k, view in enumerate(views, start=1):
        _write_image(group, views_mod.image_name(k), view.image, layout, z_step)
        _write_features(group, views_mod.features_name(k), view.features, layout,
                        view_scales[k - 1] if view_scales else None, z_step)


def _write_image(group: Any, name: str, image: np.ndarray, layout: StoreLayout, z_step: int) -> None:
    arr = _create_array(group, name, tuple(int(s) for s in image.shape), (1,), "float16", layout)
    _write_slabs(arr, image, 1, z_step, _as_float16)


def _write_features(group: Any, name: str, features: np.ndarray, layout: StoreLayout, scale: Any,
                    z_step: int) -> None:
    """float16 features, or int8 ones quantised with the per-channel `scale`."""
    shape = tuple(int(s) for s in features.shape)
    cc = layout.feature_chunk_channels(shape[0])
    if scale is not None:
        arr = _create_array(group, name, shape, (cc,), "int8", layout)
        _write_slabs(arr, features, 1, z_step, lambda s: quantize_int8(s, scale))
    else:
        arr = _create_array(group, name, shape, (cc,), "float16", layout)
        _write_slabs(arr, features, 1, z_step, _as_float16)


def _as_float16(s: np.ndarray) -> np.ndarray:
    """A float16 view of a slab: no copy when it is float16 already; torch's cast otherwise (measured 5-8x faster
    than NumPy's on the CPU)."""
    if s.dtype == np.float16:
        return s
    import torch

    return torch.from_numpy(np.ascontiguousarray(s)).half().numpy()


def check_readable(io: StoreIO, case_id: str, names: list[str]) -> None:
    """MaskgenError unless every array of the case opens from the store and has all its chunks (run just before
    the completion marker, so a case is never marked complete without its arrays)."""
    import zarr

    for name in names:
        try:
            arr = zarr.open_array(io.store, path=f"{case_prefix(case_id)}/{name}", mode="r", zarr_format=3)
            stored, total = int(arr.nchunks_initialized), int(arr.nchunks)
        except Exception as e:
            raise MaskgenError(f"case {case_id}: the {name} array cannot be read back after writing "
                               f"({type(e).__name__}: {e}); re-run the same command") from e
        if arr.shards is None and stored < total:
            raise MaskgenError(f"case {case_id}: the {name} array has {stored} of {total} chunks after writing "
                               "(was it deleted by another process?); re-run the same command")


def mark_complete(group: Any) -> None:
    """Write the case's completion marker: from now on readers see the case."""
    group.attrs.update({COMPLETE_ATTR: True})


def write_case(
    store: Any,
    case_id: str,
    *,
    image: np.ndarray,
    features: np.ndarray,
    label: np.ndarray | None,
    attrs: dict[str, Any],
    layout: StoreLayout,
    stats: tuple[list[float], list[float]] | None = None,
    views: Sequence[CaseView] = (),
) -> int:
    """Write one case group completely, then mark it complete. Returns the bytes it occupies in the store.

    image (1, Z, Y, X) float in [0, 1]; features (C, Z, Y, X) float (raw extractor output); label (Z, Y, X)
    integer or None; `views`: augmented views (`maskgen.store.views.CaseView`), stored as `image_viewK` /
    `features_viewK`. Non-finite values raise MaskgenError before anything is written. `stats` (per-channel mean and
    std, e.g. computed on the accelerator by `maskgen.extract.inference.extract_for_store`) replace the writer's
    pass over the features; finite stats vouch for finite features. On any error the partial group is removed (a
    killed process leaves it unmarked; the next run deletes and redoes it).
    """
    import zarr

    finite_stats = stats is not None and bool(np.isfinite(np.asarray(stats, dtype=np.float64)).all())
    check_case_arrays(case_id, image, features, label, features_checked=finite_stats)
    for k, view in enumerate(views, start=1):
        _check_view(case_id, k, view, features.shape)
    info = case_record(case_id, attrs, features, label is not None, layout, stats if finite_stats else None, views)
    scale = info.get("feature_scale")
    view_scales = [np.asarray(r["feature_scale"], dtype=np.float32) for r in info.get(views_mod.VIEWS_ATTR, ())
                   if "feature_scale" in r]
    io = as_io(store)
    delete_case(io, case_id)
    names = [IMAGE, FEATURES] + ([LABEL] if label is not None else []) + views_mod.view_array_names(len(views))
    try:
        with quiet():
            cases = zarr.open_group(io.store, path=CASES_GROUP, mode="r+", use_consolidated=False, zarr_format=3)
            group = cases.create_group(case_id, attributes={**info, COMPLETE_ATTR: False})
            write_arrays(group, image, features, label, layout,
                         None if scale is None else np.asarray(scale, dtype=np.float32), views, view_scales)
            check_readable(io, case_id, names)
            mark_complete(group)  # LAST: the case is now visible to readers
    except BaseException:
        try:
            delete_case(io, case_id)
        except OSError:
            pass
        raise
    return io.size_prefix(case_prefix(case_id))


def _check_view(case_id: str, k: int, view: CaseView, features_shape: tuple[int, ...]) -> None:
    """MaskgenError naming the case and view for a view that cannot be stored beside the clean arrays."""
    if tuple(view.features.shape) != tuple(features_shape) or tuple(view.image.shape) != (1, *features_shape[1:]):
        raise MaskgenError(f"case {case_id}: augmented view {k} has image {view.image.shape} and features "
                           f"{view.features.shape}, the clean features {tuple(features_shape)}")
    finite = bool(np.isfinite(np.asarray([view.mean, view.std], dtype=np.float64)).all())
    for name, arr in (("image", view.image),) + ((("features", view.features),) if not finite else ()):
        msg = _nonfinite_message(case_id, f"{name} of augmented view {k}", arr)
        if msg:
            raise MaskgenError(msg)


def store_size(store: Any) -> int:
    """Total size in bytes of everything in the store."""
    return as_io(store, read_only=True).size_prefix("")
