"""Measure feature-store layouts on real extractor output: bytes per voxel, write time, random-crop reads/s.

Source volume: the demo dataset's first case when `--demo DIR` is given (an nnU-Net-style folder made by
`maskgen demo-data`), else the MNI152 T1 template shipped with nilearn at 1 mm (real anatomy with an air
margin, label = dominant tissue). Features come from a real extractor (`--extractor mind` by default).
Every layout is written with maskgen's own writer (`maskgen.store.writer.write_case`) and read back with
`FeatureStore.read_crop`, exactly as `maskgen extract` and training do.

    python benchmarks/store_layout.py                       # all layouts, crops 64^3 and 128^3
    python benchmarks/store_layout.py --configs f16-c32-none,f16-c64-none --zarr-threads 2

Appends one JSON line per layout to benchmarks/results.jsonl (command, git revision, machine, versions). Reads are
crops/s (median over repeats, rounds interleaved across layouts, warm page cache): `sample_f32` = image + features +
label as float32 (FeatureStore.read_crop default), `sample_f16` = the same without the CPU cast (cast on the device),
`features_only` = the feature array alone in its stored dtype.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # `python benchmarks/store_layout.py` as well as `python -m benchmarks ...`
    sys.path.insert(0, str(HERE.parent))

from benchmarks import common  # noqa: E402  (provenance of every record: command, git rev, machine, versions, load)

RESULTS = common.RESULTS

# name -> StoreLayout kwargs
CONFIGS: dict[str, dict] = {
    # float16, uncompressed: chunk edge, balanced (default) vs plain chunks, per-channel chunks
    "f16-c32-none": dict(dtype="float16", chunks_zyx=(32, 32, 32), codec="none"),
    "f16-c32u-none": dict(dtype="float16", chunks_zyx=(32, 32, 32), codec="none", balance=False),
    "f16-c48-none": dict(dtype="float16", chunks_zyx=(48, 48, 48), codec="none"),
    "f16-c64-none": dict(dtype="float16", chunks_zyx=(64, 64, 64), codec="none"),
    "f16-c64u-none": dict(dtype="float16", chunks_zyx=(64, 64, 64), codec="none", balance=False),
    "f16-ch1-c64-none": dict(dtype="float16", chunks_zyx=(64, 64, 64), channel_chunk=1, codec="none"),
    # float16, compressed
    "f16-c32-lz4": dict(dtype="float16", chunks_zyx=(32, 32, 32), codec="blosc-lz4"),
    "f16-c64-lz4": dict(dtype="float16", chunks_zyx=(64, 64, 64), codec="blosc-lz4"),
    "f16-c32-bzstd": dict(dtype="float16", chunks_zyx=(32, 32, 32), codec="blosc-zstd"),
    "f16-c64-bzstd": dict(dtype="float16", chunks_zyx=(64, 64, 64), codec="blosc-zstd"),
    # sharding (many chunks per file)
    "f16-shard128-c32-none": dict(dtype="float16", chunks_zyx=(32, 32, 32), shards_zyx=(128, 128, 128), codec="none"),
    "f16-shard128-c32-lz4": dict(
        dtype="float16", chunks_zyx=(32, 32, 32), shards_zyx=(128, 128, 128), codec="blosc-lz4"
    ),
    # int8 + per-channel scale
    "i8-c32-none": dict(dtype="int8", chunks_zyx=(32, 32, 32), codec="none"),
    "i8-c64-none": dict(dtype="int8", chunks_zyx=(64, 64, 64), codec="none"),
    "i8-c64-lz4": dict(dtype="int8", chunks_zyx=(64, 64, 64), codec="blosc-lz4"),
    "i8-c32-bzstd": dict(dtype="int8", chunks_zyx=(32, 32, 32), codec="blosc-zstd"),
}


def load_source(demo: str | None, extractor_name: str) -> tuple[dict, str]:
    """image (1,Z,Y,X), features (C,Z,Y,X), label (Z,Y,X) of one real volume, and a description."""
    import torch

    from maskgen.extract.inference import extract_volume
    from maskgen.extract.registry import build_extractor

    torch.set_num_threads(1)
    if demo:
        from maskgen.data.layouts import discover_cases
        from maskgen.data.pipeline import load_pipeline
        from maskgen.data.preprocess import preprocess_case

        pipe = load_pipeline("demo")
        case = discover_cases(pipe, Path(demo))[0]
        pre = preprocess_case(case, pipe)
        image, label, what = pre.image, pre.label, f"demo case {case.case_id} ({demo})"
    else:
        from maskgen.demo.template import load_template

        t = load_template(1)
        margin = 12  # air around the brain, as in a head scan
        xyz = np.pad(t.t1, margin)
        tissue = np.argmax(np.stack([1 - t.mask, t.csf, t.gm, t.wm]), axis=0).astype(np.uint8)
        image = np.ascontiguousarray(xyz[None].transpose(0, 3, 2, 1))
        label = np.ascontiguousarray(np.pad(tissue, margin).transpose(2, 1, 0))
        what = "MNI152 2009a T1 template (nilearn), 1 mm, 12-voxel air margin"
    extractor = build_extractor(extractor_name)
    feats = extract_volume(extractor, image.astype(np.float32), threshold_voxels=None)
    desc = f"{what}; {extractor.name} features"
    return {"image": image.astype(np.float32), "features": feats, "label": label}, desc


def _rate(read, starts: list[tuple[int, int, int]], crop: int) -> float:
    t0 = time.perf_counter()
    for st in starts:
        read(st, crop)
    return len(starts) / (time.perf_counter() - t0)


def _starts(shape_zyx, crop: int, n: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    return [tuple(int(rng.integers(0, s - crop + 1)) for s in shape_zyx) for _ in range(n)]


def write_config(name: str, kwargs: dict, data: dict, workdir: Path) -> dict:
    """Write one case with maskgen's writer; bytes and write time."""
    from maskgen.store import meta, writer
    from maskgen.store.layout import FEATURES, StoreLayout

    layout = StoreLayout(**kwargs)
    path = workdir / f"{name}.zarr"
    shutil.rmtree(path, ignore_errors=True)
    fp = {"name": "benchmark", "layer": "final", "weights_sha256": None, "out_channels": data["features"].shape[0]}
    attrs = {"format_version": 1, "extractor": fp, "layout": layout.to_attrs(),
             "pipeline": {"name": "benchmark", "classes": ["csf", "gm", "wm"]}, "spacing_zyx": [1.0, 1.0, 1.0]}
    writer.prepare_store(path, attrs)
    t0 = time.perf_counter()
    total = writer.write_case(path, "case", image=data["image"], features=data["features"], label=data["label"],
                              attrs={"domain": "t1", "split": "train"}, layout=layout)
    write_s = time.perf_counter() - t0
    c, z, y, x = data["features"].shape
    voxels = z * y * x
    feat_bytes = writer.as_io(path).size_prefix(f"{meta.case_prefix('case')}/{FEATURES}")
    raw_itemsize = 1 if layout.dtype == "int8" else 2
    return {
        "config": name,
        "path": path,
        "layout": layout.to_attrs(),
        "chunks_used": list(layout.spatial_chunks((z, y, x))),
        "write_s": round(write_s, 3),
        "bytes_per_voxel": round(total / voxels, 3),
        "feature_bytes_per_value": round(feat_bytes / (voxels * c), 4),
        "feature_compression_ratio": round(voxels * c * raw_itemsize / feat_bytes, 3),
    }


def readers(path: Path, backends: list[str]) -> dict:
    """The reads that are timed: a full training sample (float32 / float16 output) and the feature array alone,
    with zarr-python (keys without prefix) and optionally tensorstore (keys prefixed `ts_`)."""
    from maskgen.store.layout import FEATURES
    from maskgen.store.reader import FeatureStore

    out = {}
    for backend in backends:
        store = FeatureStore(path, backend=backend)
        pre = "" if backend == "zarr" else "ts_"
        out[pre + "sample_f32_per_s"] = lambda st, k, s=store: s.read_crop("case", st, (k, k, k))
        out[pre + "sample_f16_per_s"] = lambda st, k, s=store: s.read_crop("case", st, (k, k, k), dtype=np.float16)
        if backend == "zarr":
            feat = store.array("case", FEATURES)
            out["features_only_per_s"] = lambda st, k: feat[:, st[0]:st[0] + k, st[1]:st[1] + k, st[2]:st[2] + k]
    return out


def baseline_readers(data: dict, workdir: Path) -> dict:
    feats = data["features"].astype(np.float16)
    path = workdir / "features.npy"
    np.save(path, feats)
    mm = np.load(path, mmap_mode="r")
    return {
        "numpy_ram_features_per_s": lambda st, k: np.array(feats[:, st[0]:st[0]+k, st[1]:st[1]+k, st[2]:st[2]+k]),
        "npy_memmap_features_per_s": lambda st, k: np.array(mm[:, st[0]:st[0]+k, st[1]:st[1]+k, st[2]:st[2]+k]),
    }


def measure(all_readers: dict[str, dict], shape, crops: list[int], n: int, repeats: int, seed: int) -> dict:
    """Median crops/s per (config, reader, crop). Rounds are interleaved across configs, so a change in machine
    load (the CPU may be shared) affects every config alike."""
    rng = np.random.default_rng(seed)
    rates: dict = {}
    for _ in range(repeats):
        for crop in crops:
            starts = _starts(shape, crop, n, rng)  # the same crops for every config in this round
            for name, reads in all_readers.items():
                for what, read in reads.items():
                    rates.setdefault(name, {}).setdefault(str(crop), {}).setdefault(what, []).append(
                        _rate(read, starts, crop))
    return {name: {crop: {what: round(float(statistics.median(v)), 2) for what, v in d.items()}
                   for crop, d in per.items()} for name, per in rates.items()}


def _summary(name: str, res: dict) -> str:
    """One human-readable line: sizes, write time, samples/s as f32/f16/features-only (zarr) and ts f32/f16."""
    reads = []
    for crop, v in res["reads"].items():
        text = f"{crop}^3: {v['sample_f32_per_s']:.1f}/{v['sample_f16_per_s']:.1f}/{v['features_only_per_s']:.1f}"
        if "ts_sample_f32_per_s" in v:
            text += f" ts {v['ts_sample_f32_per_s']:.1f}/{v['ts_sample_f16_per_s']:.1f}"
        reads.append(text)
    return (f"{name:22s} B/voxel {res['bytes_per_voxel']:7.3f}  feat B/value {res['feature_bytes_per_value']:.3f}  "
            f"ratio {res['feature_compression_ratio']:.2f}  write {res['write_s']:5.2f}s  " + "  ".join(reads))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names: " + ", ".join(CONFIGS))
    ap.add_argument("--crops", default="64,128", help="crop edge lengths to read (voxels)")
    ap.add_argument("--n", type=int, default=40, help="random crops per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--zarr-threads", type=int, default=1, help="zarr decode thread pool size")
    ap.add_argument("--extractor", default="mind")
    ap.add_argument("--demo", default=None, help="demo dataset folder (from `maskgen demo-data`); else MNI template")
    ap.add_argument("--workdir", default=None, help="where to write the temporary stores (default: a temp dir)")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--backends", default="zarr", help="comma-separated: zarr, tensorstore (optional package)")
    args = ap.parse_args(argv)

    import zarr

    zarr.config.set({"threading.max_workers": max(1, args.zarr_threads)})
    names = [c for c in args.configs.split(",") if c]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
    crops = [int(c) for c in args.crops.split(",")]
    data, desc = load_source(args.demo, args.extractor)
    shared = {
        "source": desc,
        "volume_czyx": list(data["features"].shape),
        "zarr_threads": args.zarr_threads,
        "backends": args.backends,
        "crops_per_repeat": args.n,
        "repeats": args.repeats,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="maskgen-layout-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        written = {name: write_config(name, CONFIGS[name], data, workdir) for name in names}
        backends = [b for b in args.backends.split(",") if b]
        all_readers = {name: readers(w["path"], backends) for name, w in written.items()}
        if not args.no_baselines:
            all_readers["baseline"] = baseline_readers(data, workdir)
        reads = measure(all_readers, data["features"].shape[1:], crops, args.n, args.repeats, seed=0)
        lines = []
        if not args.no_baselines:
            lines.append({**shared, "config": "baseline", "reads": reads["baseline"]})
            common.say("baseline " + json.dumps(reads["baseline"]))
        for name, res in written.items():
            res = {k: v for k, v in res.items() if k != "path"}
            res["reads"] = reads[name]
            lines.append({**shared, **res})
            common.say(_summary(name, res))
        for line in lines:
            common.record("store_layout", line, args.results)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
