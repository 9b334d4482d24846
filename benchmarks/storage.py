"""Storage cost of the feature cache, and what int8 features cost in Dice.

1. `layouts`: for every feature dtype x codec that `maskgen extract` offers (`--dtype`, `--codec`, default chunks),
   the same demo cases (one per domain and split by default) written with maskgen's writer
   (`maskgen.store.writer.write_case`, exactly what `maskgen extract` writes): bytes per voxel on disk for the
   whole case (image + all feature channels + label) and for the features alone, write seconds, and random training
   crops per second read back through `FeatureStore.read_crop` (rounds interleaved across layouts).
2. `checksums`: the same cases written with and without the per-chunk CRC32C (zarr's `crc32c` codec, maskgen's
   default since issue 12), float16 and int8, uncompressed: random crops/s read back through `read_crop` (zarr-python
   and, when installed, tensorstore), rounds interleaved, and the ratio with / without checksum.
3. `dice`: the demo data extracted as float16 and as int8 (per-channel scale), one training run on each with the
   same short schedule and seed, each evaluated on `--eval-split` (`maskgen.evaluate.evaluate.evaluate_run`). The
   float16 run is also evaluated on the int8 store, which isolates the quantisation at inference from the
   divergence of two training runs. Also the quantisation error of the features themselves.

    python -m benchmarks storage
    python -m benchmarks storage --parts checksums --read-rounds 5
    python -m benchmarks storage --steps 2000 --channels 20 --depth 5 --device cuda    # a meaningful Dice
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from benchmarks import train_step as ts


def sample_cases(args: Any, n: int) -> list[Any]:
    """Up to `n` demo cases, cycling over (split, domain) groups so that every contrast is represented."""
    from maskgen.data.layouts import discover_cases
    from maskgen.data.pipeline import load_pipeline

    cases = discover_cases(load_pipeline("demo"), str(common.ensure_demo(args.demo)))
    groups: dict[tuple[str, str], list[Any]] = {}
    for c in cases:
        groups.setdefault((c.split, c.domain), []).append(c)
    out: list[Any] = []
    while len(out) < min(n, len(cases)):
        for g in groups.values():
            if g and len(out) < n:
                out.append(g.pop(0))
    return out


def layouts(args: Any) -> list[dict[str, Any]]:
    import numpy as np

    from maskgen.config import to_dict
    from maskgen.data.pipeline import load_pipeline
    from maskgen.data.preprocess import preprocess_case
    from maskgen.extract.inference import extract_volume
    from maskgen.extract.registry import build_extractor
    from maskgen.store import meta, writer
    from maskgen.store.layout import CODECS, DEFAULT_LAYOUT, FEATURE_DTYPES
    from maskgen.store.reader import FeatureStore

    pipeline = load_pipeline("demo")
    name, weights = common.extractor_choice(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extractor = build_extractor(name, weights, "final", args.device, allow_download=False)
    fp = extractor.fingerprint()
    data = []
    for case in sample_cases(args, args.cases):
        pre = preprocess_case(case, pipeline)
        feats = extract_volume(extractor, pre.image, device=args.device)
        data.append((case, pre, feats))
    voxels = sum(int(np.prod(pre.image.shape[1:])) for _, pre, _ in data)
    rows, stores = [], {}
    for dtype in FEATURE_DTYPES:
        for codec in CODECS:
            layout = dataclasses.replace(DEFAULT_LAYOUT, dtype=dtype, codec=codec)
            path = Path(args.workdir) / f"storage-{dtype}-{codec}.zarr"
            shutil.rmtree(path, ignore_errors=True)
            writer.prepare_store(path, writer.root_attributes(pipeline, fp, layout, extract_config={}))
            t0 = time.perf_counter()
            for case, pre, feats in data:
                attrs = {"domain": case.domain, "split": case.split, "geometry": to_dict(pre.geometry),
                         "spacing_zyx": [float(s) for s in pre.spacing_zyx]}
                writer.write_case(path, case.case_id, image=pre.image, features=feats, label=pre.label, attrs=attrs,
                                  layout=layout)
            write_s = time.perf_counter() - t0
            writer.consolidate(path)
            feat_bytes = sum(writer.as_io(path).size_prefix(f"{meta.case_prefix(c.case_id)}/features") for c, _, _ in data)
            total = sum(writer.as_io(path).size_prefix(meta.case_prefix(c.case_id)) for c, _, _ in data)
            channels = int(data[0][2].shape[0])
            rows.append({"dtype": dtype, "codec": codec, "chunks_zyx": list(layout.chunks_zyx),
                         "bytes_per_voxel": total / voxels, "feature_bytes_per_voxel": feat_bytes / voxels,
                         "feature_bytes_per_value": feat_bytes / voxels / channels,
                         "write_s": write_s,
                         "default": dtype == DEFAULT_LAYOUT.dtype and codec == DEFAULT_LAYOUT.codec})
            stores[(dtype, codec)] = FeatureStore(path)
    # random crops of the pipeline's crop size, rounds interleaved across layouts
    rng = np.random.default_rng(args.seed)
    crop = tuple(int(c) for c in pipeline.crop_zyx)
    picks = []
    for _ in range(args.crops):
        case, pre, _ = data[int(rng.integers(len(data)))]
        shape = pre.image.shape[1:]
        picks.append((case.case_id, tuple(int(rng.integers(0, max(1, s - c + 1))) for s, c in zip(shape, crop))))
    rates: dict[tuple[str, str], list[float]] = {k: [] for k in stores}
    for r in range(args.read_rounds + 1):
        keys = list(stores)
        keys = keys[r % len(keys):] + keys[: r % len(keys)]
        for k in keys:
            t0 = time.perf_counter()
            for cid, start in picks:
                stores[k].read_crop(cid, start, crop)
            if r:  # the first round warms the page cache and opens the arrays
                rates[k].append(len(picks) / (time.perf_counter() - t0))
    for row in rows:
        row["crops_per_s"] = statistics.median(rates[(row["dtype"], row["codec"])])
        row["crop_zyx"] = list(crop)
        shutil.rmtree(Path(args.workdir) / f"storage-{row['dtype']}-{row['codec']}.zarr", ignore_errors=True)
    common.say("storage: " + ", ".join(f"{r['dtype']}/{r['codec']} {r['bytes_per_voxel']:.2f} B/vox "
                                       f"{r['crops_per_s']:.1f} crops/s" for r in rows))
    return rows


def _write_store(path: Path, pipeline: Any, fp: dict[str, Any], layout: Any, data: list[Any]) -> float:
    from maskgen.config import to_dict
    from maskgen.store import writer

    shutil.rmtree(path, ignore_errors=True)
    writer.prepare_store(path, writer.root_attributes(pipeline, fp, layout, extract_config={}))
    t0 = time.perf_counter()
    for case, pre, feats in data:
        attrs = {"domain": case.domain, "split": case.split, "geometry": to_dict(pre.geometry),
                 "spacing_zyx": [float(s) for s in pre.spacing_zyx]}
        writer.write_case(path, case.case_id, image=pre.image, features=feats, label=pre.label, attrs=attrs,
                          layout=layout)
    seconds = time.perf_counter() - t0
    writer.consolidate(path)
    return seconds


def _extracted(args: Any) -> tuple[Any, dict[str, Any], list[Any]]:
    """(pipeline, extractor fingerprint, [(case, preprocessed, features)]) for `--cases` demo cases."""
    from maskgen.data.pipeline import load_pipeline
    from maskgen.data.preprocess import preprocess_case
    from maskgen.extract.inference import extract_volume
    from maskgen.extract.registry import build_extractor

    pipeline = load_pipeline("demo")
    name, weights = common.extractor_choice(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extractor = build_extractor(name, weights, "final", args.device, allow_download=False)
    data = []
    for case in sample_cases(args, args.cases):
        pre = preprocess_case(case, pipeline)
        data.append((case, pre, extract_volume(extractor, pre.image, device=args.device)))
    return pipeline, extractor.fingerprint(), data


def _crop_rates(args: Any, stores: dict[Any, Any], data: list[Any], crop: tuple[int, ...]) -> dict[Any, list[float]]:
    """Crops/s of the same random crops from each store, rounds interleaved (the first round is a warm-up)."""
    import numpy as np

    rng = np.random.default_rng(args.seed)
    picks = []
    for _ in range(args.crops):
        case, pre, _ = data[int(rng.integers(len(data)))]
        shape = pre.image.shape[1:]
        picks.append((case.case_id, tuple(int(rng.integers(0, max(1, s - c + 1))) for s, c in zip(shape, crop))))
    rates: dict[Any, list[float]] = {k: [] for k in stores}
    for r in range(args.read_rounds + 1):
        keys = list(stores)
        keys = keys[r % len(keys):] + keys[: r % len(keys)]
        for k in keys:
            t0 = time.perf_counter()
            for cid, start in picks:
                stores[k].read_crop(cid, start, crop)
            if r:
                rates[k].append(len(picks) / (time.perf_counter() - t0))
    return rates


def checksums(args: Any) -> list[dict[str, Any]]:
    """Read cost of the per-chunk CRC32C: crops/s with and without it, per dtype and read backend."""
    from maskgen.store.layout import DEFAULT_LAYOUT
    from maskgen.store.reader import FeatureStore
    from maskgen.store.tensorstore_backend import tensorstore_available

    pipeline, fp, data = _extracted(args)
    crop = tuple(int(c) for c in pipeline.crop_zyx)
    backends = ("zarr", "tensorstore") if tensorstore_available() else ("zarr",)
    stores, paths = {}, []
    for dtype in ("float16", "int8"):
        for checksum in ("crc32c", "none"):
            layout = dataclasses.replace(DEFAULT_LAYOUT, dtype=dtype, codec="none", checksum=checksum,
                                         chunks_zyx=tuple(pipeline_chunks(pipeline)))
            path = Path(args.workdir) / f"storage-crc-{dtype}-{checksum}.zarr"
            _write_store(path, pipeline, fp, layout, data)
            paths.append(path)
            for backend in backends:
                stores[(dtype, checksum, backend)] = FeatureStore(path, backend=backend)
    rates = _crop_rates(args, stores, data, crop)
    rows = []
    for dtype in ("float16", "int8"):
        for backend in backends:
            with_crc, without = rates[(dtype, "crc32c", backend)], rates[(dtype, "none", backend)]
            rows.append({"dtype": dtype, "backend": backend, "crop_zyx": list(crop),
                         "crops_per_s_crc32c": statistics.median(with_crc),
                         "crops_per_s_none": statistics.median(without),
                         "ratio_crc32c_over_none": common.paired_ratio(with_crc, without)})
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    common.say("checksums: " + ", ".join(f"{r['dtype']}/{r['backend']} crc32c/none {r['ratio_crc32c_over_none']:.3f}"
                                         for r in rows))
    return rows


def pipeline_chunks(pipeline: Any) -> tuple[int, int, int]:
    from maskgen.store.layout import chunks_for_crop

    return chunks_for_crop(pipeline.crop_zyx)


def quantisation_error(f16: Any, i8: Any, split: str) -> dict[str, Any]:
    """Relative RMS error of int8 features against float16 ones, per channel, over the split's cases."""
    import numpy as np

    err, ref = None, None
    for info in f16.cases(split=split):
        a = f16.read_case(info.case_id)["features"].astype(np.float64)
        b = i8.read_case(info.case_id)["features"].astype(np.float64)
        c = a.shape[0]
        e = ((a - b) ** 2).reshape(c, -1).sum(1)
        v = ((a - a.reshape(c, -1).mean(1)[:, None, None, None]) ** 2).reshape(c, -1).sum(1)
        err = e if err is None else err + e
        ref = v if ref is None else ref + v
    rel = np.sqrt(err / np.maximum(ref, 1e-30))
    return {"relative_rmse_per_channel": [float(x) for x in rel], "relative_rmse_max": float(rel.max()),
            "relative_rmse_mean": float(rel.mean()), "split": split}


def dice(args: Any) -> dict[str, Any]:
    from maskgen.evaluate.evaluate import evaluate_run
    from maskgen.evaluate.metrics import mean_se
    from maskgen.store.reader import FeatureStore
    from maskgen.train.loop import train

    stores = {"float16": common.ensure_store(args), "int8": common.ensure_store(args, dtype="int8")}
    out: dict[str, Any] = {"quantisation": quantisation_error(FeatureStore(stores["float16"]),
                                                              FeatureStore(stores["int8"]), args.eval_split)}
    runs, seconds = {}, {}
    for dtype, path in stores.items():
        base = ts.base_config(args, path)
        cfg = ts.variant_config("cached", base, args.mask_rate).replace(
            steps=args.steps, val_every=0, out=str(Path(args.workdir) / f"storage-run-{dtype}"))
        t0 = time.perf_counter()
        runs[dtype] = train(cfg, overwrite=True, progress=False)
        seconds[dtype] = time.perf_counter() - t0
    evals = {
        "float16": evaluate_run(runs["float16"], args.eval_split, "last", 0.5, args.device, write=False),
        "int8": evaluate_run(runs["int8"], args.eval_split, "last", 0.5, args.device, write=False),
        "float16_run_on_int8": evaluate_run(runs["float16"], args.eval_split, "last", 0.5, args.device,
                                            features=stores["int8"], write=False),
    }

    def summary(ev: Any) -> dict[str, Any]:
        return {"dice": ev.overall.overall.as_dict(),
                "by_domain": {d: s.overall.as_dict() for d, s in ev.by_domain.items()}}

    def paired(a: Any, b: Any) -> dict[str, Any]:
        ma = {c.case_id: c.mean for c in a.cases}
        st = mean_se(c.mean - ma[c.case_id] for c in b.cases)
        return st.as_dict()

    out.update({
        "runs": {k: {"train_s": seconds[k], "store": str(stores[k])} for k in runs},
        "eval": {k: summary(v) for k, v in evals.items()},
        "dice_diff_int8_minus_float16": paired(evals["float16"], evals["int8"]),
        "dice_diff_same_model_int8_minus_float16": paired(evals["float16"], evals["float16_run_on_int8"]),
        "eval_split": args.eval_split, "steps": args.steps,
    })
    for p in runs.values():
        shutil.rmtree(p, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = common.parser(__doc__.split("\n\n")[0], "storage")
    ts.add_model_args(ap)
    ap.add_argument("--cases", type=int, default=6, help="demo cases written per layout")
    ap.add_argument("--crops", type=int, default=20, help="random crops read per round and layout")
    ap.add_argument("--read-rounds", type=int, default=2, help="timed read rounds (after one warm-up round)")
    ap.add_argument("--steps", type=int, default=40, help="training steps of each Dice run (0: skip the Dice part)")
    ap.add_argument("--eval-split", default="test", help="split the Dice runs are evaluated on")
    ap.add_argument("--parts", default="layouts,checksums,dice", help="parts to run: layouts, checksums, dice")
    args = ap.parse_args(argv)
    common.setup(args)

    result: dict[str, Any] = {"settings": common.settings(args, "cases", "crops", "steps", "eval_split", "batch",
                                                          "channels", "depth", "mask_rate")}
    parts = set(args.parts.split(","))
    if "layouts" in parts:
        common.say(f"storage: layouts on {args.cases} cases")
        result["layouts"] = layouts(args)
    if "checksums" in parts:
        common.say(f"storage: checksum read cost on {args.cases} cases")
        result["checksums"] = checksums(args)
    if args.steps > 0 and "dice" in parts:
        common.say(f"storage: float16 vs int8 runs of {args.steps} steps")
        result["dice"] = dice(args)
    result["targets"] = []  # issue 6 sets no target here: the figures inform the choice of --dtype / --codec
    return common.record("storage", result, args.results)


if __name__ == "__main__":
    main()
