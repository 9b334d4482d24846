"""Writing a feature store: root attributes, compatibility checks, one case group at a time, consolidation.

Reliability rules: a case group is deleted and rewritten as a whole; its `complete: true` attribute is written
last (zarr's LocalStore replaces `zarr.json` atomically), so a reader never sees a half-written case as complete.
Consolidated metadata is removed before any write and rebuilt at the end, so it is never stale.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from maskgen.errors import MaskgenError
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

# Test hook, "CASE_ID:SECONDS": sleep after that case's arrays are written and before it is marked complete, so
# tests can kill an extraction in the middle of a case. Unset in normal use.
SLEEP_BEFORE_COMPLETE_ENV = "MASKGEN_TEST_SLEEP_BEFORE_COMPLETE"

_SLAB_BYTES = 256 * 2**20  # bound on the temporary copy made when converting a slab to the stored dtype


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Hide zarr's warnings about consolidated metadata (not in the v3 spec) and our sidecar folder."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy.*")
        yield


def check_case_id(case_id: str) -> None:
    """Case ids become zarr node names: no '/', not empty, not starting with '.' or '__'."""
    if not case_id or "/" in case_id or "\\" in case_id or case_id.startswith((".", "__")):
        raise MaskgenError(
            f"case id {case_id!r} cannot be a store group name (no '/', must not start with '.' or '__'); "
            "rename the case file"
        )


def case_dir(store_path: str | os.PathLike, case_id: str) -> Path:
    return Path(store_path) / CASES_GROUP / case_id


def fg_cache_path(store_path: str | os.PathLike, case_id: str) -> Path:
    return Path(store_path) / SIDECAR_DIR / "fg" / f"{case_id}.npz"


def read_root_doc(store_path: str | os.PathLike) -> dict[str, Any] | None:
    """The root `zarr.json` of a store (attributes and, when consolidated, every node's metadata), or None."""
    try:
        doc = json.loads((Path(store_path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def read_root_attrs(store_path: str | os.PathLike) -> dict[str, Any] | None:
    """Root attributes of a maskgen store, or None if `store_path` holds no zarr group with maskgen attributes."""
    doc = read_root_doc(store_path)
    if doc is None:
        return None
    attrs = doc.get("attributes") or {}
    if doc.get("node_type") != "group" or "format_version" not in attrs:
        return None
    return attrs


def root_attributes(
    pipeline: Any, fingerprint: dict[str, Any], layout: StoreLayout, extract_config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The root attributes of a new store (see docs/ARCHITECTURE.md)."""
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
    }


def _get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)  # type: ignore[assignment]
    return d


_COMPARED = (
    ("format_version", "store format version"),
    ("extractor.name", "extractor"),
    ("extractor.layer", "feature layer"),
    ("extractor.weights_sha256", "extractor weights (sha256)"),
    ("extractor.out_channels", "number of feature channels"),
    ("spacing_zyx", "spacing (z, y, x)"),
    ("normalization", "intensity normalisation"),
    ("layout.dtype", "feature dtype"),
    ("layout.chunks_zyx", "chunk shape"),
    ("layout.channel_chunk", "channels per chunk"),
    ("layout.codec", "codec"),
    ("layout.shards_zyx", "shard shape"),
    ("pipeline.name", "pipeline"),
    ("pipeline.classes", "label classes"),
)


def compatibility_problems(existing: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences that forbid adding cases of `new` to a store made with `existing`."""
    problems = []
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


def prepare_store(store_path: str | os.PathLike, attrs: dict[str, Any], overwrite: bool = False) -> bool:
    """Create the store (or reuse a compatible one) and drop its consolidated metadata before any case write.

    Returns True when the store was newly created. Refuses to reuse a store made with another extractor, weights,
    layer, spacing, normalisation or layout, naming the differences; `overwrite` deletes it first (only if it is
    a maskgen store or an empty folder).
    """
    import zarr

    path = Path(store_path)
    existing = read_root_attrs(path)
    if path.exists() and existing is None:
        if path.is_dir() and not any(path.iterdir()):
            pass
        else:
            raise MaskgenError(
                f"{path} exists and is not a maskgen feature store; choose another --out or remove it yourself"
            )
    if existing is not None and overwrite:
        shutil.rmtree(path)
        existing = None
    if existing is not None:
        problems = compatibility_problems(existing, attrs)
        if problems:
            raise MaskgenError(
                f"{path} was made with different settings:\n  - "
                + "\n  - ".join(problems)
                + "\nRe-run with --overwrite to rebuild it, or choose another --out."
            )
        with quiet():
            root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
            # Rewriting the root metadata without consolidation invalidates the consolidated copy.
            root.attrs.update({"extract_config": attrs.get("extract_config", {}), "consolidated": False})
            if CASES_GROUP not in root:
                root.create_group(CASES_GROUP)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet():
        root = zarr.create_group(str(path), attributes={**attrs, "consolidated": False}, overwrite=False)
        root.create_group(CASES_GROUP)
    return True


def consolidate(store_path: str | os.PathLike) -> None:
    """Write consolidated metadata (all groups, arrays and attributes in the root `zarr.json`)."""
    import zarr

    with quiet():
        root = zarr.open_group(str(store_path), mode="r+", use_consolidated=False)
        root.attrs.update({"consolidated": True})
        zarr.consolidate_metadata(str(store_path))


def read_case_attrs(store_path: str | os.PathLike, case_id: str) -> dict[str, Any] | None:
    """Attributes of a case group read from disk (None if the group is missing or its metadata unreadable)."""
    meta = case_dir(store_path, case_id) / "zarr.json"
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    return doc.get("attributes") or {}


def case_state(store_path: str | os.PathLike, case_id: str) -> str:
    """'complete', 'incomplete' (group exists but was never marked complete) or 'absent'."""
    if not case_dir(store_path, case_id).exists():
        return "absent"
    attrs = read_case_attrs(store_path, case_id)
    return "complete" if attrs is not None and attrs.get(COMPLETE_ATTR) is True else "incomplete"


def delete_case(store_path: str | os.PathLike, case_id: str) -> None:
    """Remove a case group and its cached foreground locations."""
    d = case_dir(store_path, case_id)
    if d.exists():
        shutil.rmtree(d)
    fg_cache_path(store_path, case_id).unlink(missing_ok=True)


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


def _write_slabs(arr: Any, data: np.ndarray, z_axis: int, z_step: int, convert: Any) -> None:
    """Write `data` into `arr` along the z axis in chunk-aligned slabs, converting each slab with `convert`."""
    nz = data.shape[z_axis]
    bytes_per_z = max(1, data.nbytes // max(nz, 1))
    per_slab = max(1, (_SLAB_BYTES // bytes_per_z) // z_step) * z_step
    for z0 in range(0, nz, per_slab):
        z1 = min(nz, z0 + per_slab)
        sel = (slice(None),) * z_axis + (slice(z0, z1),)
        arr[sel] = convert(data[sel])


def write_case(
    store_path: str | os.PathLike,
    case_id: str,
    *,
    image: np.ndarray,
    features: np.ndarray,
    label: np.ndarray | None,
    attrs: dict[str, Any],
    layout: StoreLayout,
) -> int:
    """Write one case group completely, then mark it complete. Returns the bytes it occupies on disk.

    image (1, Z, Y, X) float in [0, 1]; features (C, Z, Y, X) float (raw extractor output); label (Z, Y, X)
    integer or None. Non-finite values raise MaskgenError before anything is written. On any error the partial
    group is removed (a killed process leaves it unmarked; the next run deletes and redoes it).
    """
    import zarr

    check_case_id(case_id)
    if image.ndim != 4 or image.shape[0] != 1:
        raise MaskgenError(f"case {case_id}: image must have shape (1, Z, Y, X), got {image.shape}")
    if features.ndim != 4 or features.shape[1:] != image.shape[1:]:
        raise MaskgenError(
            f"case {case_id}: features {features.shape} do not match the image grid {image.shape[1:]}"
        )
    if label is not None and label.shape != image.shape[1:]:
        raise MaskgenError(f"case {case_id}: label {label.shape} does not match the image grid {image.shape[1:]}")
    for name, arr in (("image", image), ("features", features)):
        msg = _nonfinite_message(case_id, name, arr)
        if msg:
            raise MaskgenError(msg)
    if label is not None:
        if label.min(initial=0) < 0 or label.max(initial=0) > 255:
            raise MaskgenError(f"case {case_id}: label values must be within 0..255 to store as uint8")

    shape = tuple(int(s) for s in image.shape[1:])
    channels = int(features.shape[0])
    mean, std = channel_stats(features)
    scale = int8_scale(features) if layout.dtype == "int8" else None

    chunks = layout.spatial_chunks(shape)
    shards = layout.spatial_shards(shape)
    z_step = (shards or chunks)[0]
    info = {
        **attrs,
        "case_id": case_id,
        "shape_zyx": list(shape),
        "num_features": channels,
        "feature_mean": mean,
        "feature_std": std,
        "has_label": label is not None,
    }
    if scale is not None:
        info["feature_scale"] = [float(s) for s in scale]

    delete_case(store_path, case_id)
    try:
        with quiet():
            cases = zarr.open_group(str(store_path), path=CASES_GROUP, mode="r+", use_consolidated=False)
            group = cases.create_group(case_id, attributes={**info, COMPLETE_ATTR: False})

            def create(name: str, arr_shape: tuple[int, ...], arr_chunks: tuple[int, ...], dtype: str, itemsize: int):
                lead = arr_shape[: len(arr_shape) - 3]
                return group.create_array(
                    name,
                    shape=arr_shape,
                    chunks=arr_chunks,
                    shards=None if shards is None else lead + shards,
                    dtype=dtype,
                    compressors=layout.compressors(itemsize),
                    fill_value=0,
                    dimension_names=("c", "z", "y", "x")[4 - len(arr_shape) :],
                    # every chunk gets a file, even all-zero ones, so `cache verify` can spot missing files
                    config={"write_empty_chunks": True},
                )

            a_img = create(IMAGE, (1, *shape), (1, *chunks), "float16", 2)
            _write_slabs(a_img, image, 1, z_step, lambda s: s.astype(np.float16))

            feat_dtype = "int8" if scale is not None else "float16"
            cc = layout.feature_chunk_channels(channels)
            a_feat = create(FEATURES, (channels, *shape), (cc, *chunks), feat_dtype, 1 if scale is not None else 2)
            if scale is not None:
                _write_slabs(a_feat, features, 1, z_step, lambda s: quantize_int8(s, scale))
            else:
                _write_slabs(a_feat, features, 1, z_step, lambda s: s.astype(np.float16))

            if label is not None:
                a_lab = create(LABEL, shape, chunks, "uint8", 1)
                _write_slabs(a_lab, label, 0, z_step, lambda s: s.astype(np.uint8))

            _test_hook_sleep(case_id)
            group.attrs.update({COMPLETE_ATTR: True})  # LAST: the case is now visible to readers
    except BaseException:
        try:
            delete_case(store_path, case_id)
        except OSError:
            pass
        raise
    return dir_size(case_dir(store_path, case_id))


def _test_hook_sleep(case_id: str) -> None:
    hook = os.environ.get(SLEEP_BEFORE_COMPLETE_ENV)
    if hook:
        target, _, seconds = hook.rpartition(":")
        if target == case_id:
            time.sleep(float(seconds))


def dir_size(path: str | os.PathLike) -> int:
    """Total size in bytes of the files under `path`."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total
