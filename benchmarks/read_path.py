"""The loader's store read path (issue 16.3): feature dtype x read backend x chunk checksum, against the in-RAM bound.

1. `reads`: `--cases` demo cases written by maskgen's writer in each (dtype, checksum) of float16/int8 x crc32c/none
   (default chunks for the pipeline's crop, no codec), read through `FeatureStore.read_crop` exactly as a loader
   worker reads a training crop (image, features and label, float32 out, made contiguous) with each backend
   (zarr-python, tensorstore), and the same crops sliced from float32 arrays held in RAM (`ram`). Interleaved per
   crop: crop i is read by every variant in turn (the order rotated) before crop i + 1, for `--rounds` rounds, so
   the drift of a shared machine falls on all variants alike. Ratios are medians over (round, crop) of per-crop time
   ratios; `per_round` gives each round's median ratio to show their spread.
2. `loader`: the real loader (`make_loader`: sampling, CPU augmentation, collate; forked workers with zarr, spawned
   with tensorstore) for the old default (float16, zarr) and the candidates, at 0 / 1 / 2 workers, against the same
   crops sliced from RAM with and without the augmentation; peak RSS (VmHWM) and PSS of every worker process.
3. `quantisation`: relative RMS error of int8 features against float16 ones, per channel.

    python -m benchmarks read_path --cases 6 --crops 20 --rounds 5
    python -m benchmarks read_path --extractor anatomix-random --parts reads,quantisation
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from benchmarks import loader as loader_bench
from benchmarks import storage
from benchmarks import train_step as ts

DTYPES = ("float16", "int8")
CHECKSUMS = ("crc32c", "none")


def write_stores(args: Any) -> tuple[Any, list[Any], dict[tuple[str, str], Path]]:
    """(pipeline, data, {(dtype, checksum): store path}) for `--cases` demo cases."""
    from maskgen.store.layout import DEFAULT_LAYOUT, chunks_for_crop

    pipeline, fp, data = storage._extracted(args)
    paths = {}
    for dtype in DTYPES:
        for checksum in CHECKSUMS:
            layout = dataclasses.replace(DEFAULT_LAYOUT, dtype=dtype, codec="none", checksum=checksum,
                                         chunks_zyx=chunks_for_crop(pipeline.crop_zyx))
            path = Path(args.workdir) / f"read-path-{args.extractor}-{dtype}-{checksum}.zarr"
            storage._write_store(path, pipeline, fp, layout, data)
            paths[(dtype, checksum)] = path
    return pipeline, data, paths


def loader_read(store: Any) -> Callable[[str, tuple[int, ...], tuple[int, ...]], Any]:
    """What `TrainBatches.sample` does with the store on the CPU path: read_crop (float32) made contiguous."""
    import numpy as np

    def read(cid: str, start: tuple[int, ...], crop: tuple[int, ...]) -> Any:
        c = store.read_crop(cid, start, crop, dtype=np.float32)
        return (np.ascontiguousarray(c["image"], dtype=np.float32), np.ascontiguousarray(c["label"])[None],
                np.ascontiguousarray(c["features"]))
    return read


def ram_read(store: Any) -> Callable[[str, tuple[int, ...], tuple[int, ...]], Any]:
    """The same crops sliced (zero-padded) from the cases held in RAM as float32: the bound of any store."""
    import numpy as np

    cases = {c.case_id: store.read_case(c.case_id) for c in store.cases()}

    def crop_of(arr: Any, start: tuple[int, ...], crop: tuple[int, ...], lead: bool) -> Any:
        shape = arr.shape[1:] if lead else arr.shape
        lo = [max(0, s) for s in start]
        hi = [min(n, s + c) for n, s, c in zip(shape, start, crop)]
        out = np.zeros(((arr.shape[0],) if lead else ()) + tuple(crop), dtype=arr.dtype)
        dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))
        src = tuple(slice(a, b) for a, b in zip(lo, hi))
        out[((slice(None),) if lead else ()) + dst] = arr[((slice(None),) if lead else ()) + src]
        return out

    def read(cid: str, start: tuple[int, ...], crop: tuple[int, ...]) -> Any:
        case = cases[cid]
        return (crop_of(case["image"], start, crop, True), crop_of(case["label"], start, crop, False)[None],
                crop_of(case["features"], start, crop, True))
    return read


def per_crop_times(fns: dict[str, Callable[..., Any]], picks: list[Any], crop: tuple[int, ...], rounds: int
                   ) -> dict[str, list[list[float]]]:
    """Seconds of every variant for every crop of every round (one untimed warm-up round first)."""
    names = list(fns)
    times: dict[str, list[list[float]]] = {n: [] for n in names}
    for r in range(rounds + 1):
        row: dict[str, list[float]] = {n: [] for n in names}
        for i, (cid, start) in enumerate(picks):
            k = (r * len(picks) + i) % len(names)
            for name in names[k:] + names[:k]:
                t0 = time.perf_counter()
                fns[name](cid, start, crop)
                row[name].append(time.perf_counter() - t0)
        if r:
            for n in names:
                times[n].append(row[n])
    return times


def _ratio(a: list[list[float]], b: list[list[float]]) -> dict[str, Any]:
    """Median over (round, crop) of a/b, and each round's median."""
    flat = [x / y for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    rounds = [statistics.median(x / y for x, y in zip(ra, rb)) for ra, rb in zip(a, b)]
    return {"median": statistics.median(flat), "per_round": rounds}


def reads(args: Any) -> dict[str, Any]:
    from maskgen.store.reader import FeatureStore
    from maskgen.store.tensorstore_backend import tensorstore_available

    pipeline, data, paths = write_stores(args)
    crop = (args.crop,) * 3 if args.crop else tuple(int(c) for c in pipeline.crop_zyx)
    backends = ("zarr", "tensorstore") if tensorstore_available() else ("zarr",)
    fns: dict[str, Callable[..., Any]] = {"ram": ram_read(FeatureStore(paths[("float16", "none")]))}
    for (dtype, checksum), path in paths.items():
        for backend in backends:
            fns[f"{dtype}/{checksum}/{backend}"] = loader_read(FeatureStore(path, backend=backend))
    from benchmarks.remote import crop_picks

    picks = crop_picks(FeatureStore(paths[("float16", "none")]), args.crops, crop, args.seed)
    common.say(f"read_path: {len(fns)} variants x {len(picks)} crops of {crop} x {args.rounds} rounds")
    times = per_crop_times(fns, picks, crop, args.rounds)
    ram = times["ram"]
    out: dict[str, Any] = {
        "crop_zyx": list(crop), "cases": len(data), "crops": len(picks), "rounds": args.rounds,
        "median_ms": {n: 1000 * statistics.median(x for r in t for x in r) for n, t in times.items()},
        "fraction_of_ram": {n: 1 / _ratio(t, ram)["median"] for n, t in times.items() if n != "ram"},
        "crc32c_over_none": {f"{d}/{b}": _ratio(times[f"{d}/crc32c/{b}"], times[f"{d}/none/{b}"])
                             for d in DTYPES for b in backends},
        "int8_over_float16": {f"{c}/{b}": _ratio(times[f"int8/{c}/{b}"], times[f"float16/{c}/{b}"])
                              for c in CHECKSUMS for b in backends},
    }
    if "tensorstore" in backends:
        out["tensorstore_over_zarr"] = {f"{d}/{c}": _ratio(times[f"{d}/{c}/tensorstore"], times[f"{d}/{c}/zarr"])
                                        for d in DTYPES for c in CHECKSUMS}
    out["crops_per_s"] = {n: 1000 / ms for n, ms in out["median_ms"].items()}
    if not args.keep:
        for path in paths.values():
            shutil.rmtree(path, ignore_errors=True)
    return out


def worker_memory(it: Any) -> list[dict[str, float]]:
    """Peak RSS (VmHWM) and current PSS in MiB of each worker process of a live DataLoader iterator."""
    out = []
    for w in getattr(it, "_workers", []):
        row: dict[str, float] = {"pid": w.pid}
        try:
            for line in Path(f"/proc/{w.pid}/status").read_text().splitlines():
                if line.startswith(("VmHWM", "VmRSS")):
                    row[line.split(":")[0]] = int(line.split()[1]) / 1024
            for line in Path(f"/proc/{w.pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    row["Pss"] = int(line.split()[1]) / 1024
        except OSError:
            pass
        out.append(row)
    return out


def loader_rates(args: Any, trainer: Any, workers: list[int], start: int) -> list[dict[str, Any]]:
    """crops/s through make_loader per worker count (as loader.loader_rate), with the workers' memory."""
    rows = []
    for n in workers:
        skip = 1 + 3 * n
        it = iter(trainer.loader(start - skip, start + args.batches, n))
        t0 = time.perf_counter()
        next(it)
        first = time.perf_counter() - t0
        for _ in range(skip - 1):
            next(it)
        t1 = time.perf_counter()
        for _ in range(args.batches):
            next(it)
        dt = time.perf_counter() - t1
        rows.append({"num_workers": n, "crops_per_s": args.batches * trainer.spec.batch_size / dt,
                     "first_batch_s": first, "workers_mib": worker_memory(it)})
        del it
    return rows


def loader(args: Any) -> dict[str, Any]:
    """The real loader per candidate (dtype, backend) on full demo stores, against the in-RAM bound."""
    from maskgen.store.reader import FeatureStore

    workers = [int(w) for w in args.workers.split(",") if w]
    out: dict[str, Any] = {}
    start = 20_000
    for spec in args.candidates.split(","):
        dtype, backend = spec.split("/")
        path = common.ensure_store(args, dtype=dtype)
        store = FeatureStore(path, backend=backend)
        trainer = ts.build_trainer("cached", ts.variant_config("cached", ts.base_config(args, path), args.mask_rate),
                                   store)
        row: dict[str, Any] = {"loader": loader_rates(args, trainer, workers, start)}
        if not out:  # the bound: the same crops from RAM (store-independent)
            out["in_ram"] = loader_bench.in_ram(trainer, start, args.batches, augment=False)
            out["ram_augmented"] = loader_bench.in_ram(trainer, start, args.batches, augment=True)
            out["aug_device"] = trainer.aug_device
        for r in row["loader"]:
            r["fraction_of_ram_augmented"] = r["crops_per_s"] / out["ram_augmented"]["crops_per_s"]
            r["fraction_of_ram"] = r["crops_per_s"] / out["in_ram"]["crops_per_s"]
        out[spec] = row
        common.say(f"loader {spec}: " + ", ".join(f"{r['num_workers']}w {r['crops_per_s']:.1f}/s"
                                                  for r in row["loader"]))
    return out


def quantisation(args: Any) -> dict[str, Any]:
    from maskgen.store.reader import FeatureStore

    f16, i8 = FeatureStore(common.ensure_store(args)), FeatureStore(common.ensure_store(args, dtype="int8"))
    return storage.quantisation_error(f16, i8, "test")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = common.parser(__doc__.split("\n\n")[0], "read_path")
    ts.add_model_args(ap)
    ap.add_argument("--cases", type=int, default=6, help="demo cases written per store (reads part)")
    ap.add_argument("--crops", type=int, default=20, help="random crops per round")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up round)")
    ap.add_argument("--batches", type=int, default=10, help="timed batches per loader measurement")
    ap.add_argument("--workers", default="0,1,2", help="loader worker counts")
    ap.add_argument("--candidates", default="float16/zarr,int8/tensorstore,int8/zarr,float16/tensorstore",
                    help="dtype/backend pairs for the loader part (full demo stores)")
    ap.add_argument("--parts", default="reads,loader,quantisation")
    ap.add_argument("--keep", action="store_true", help="keep the stores of the reads part")
    args = ap.parse_args(argv)
    common.setup(args)
    os.environ.setdefault("MASKGEN_ZARR_THREADS", "1")
    parts = set(args.parts.split(","))
    result: dict[str, Any] = {"settings": common.settings(args, "cases", "crops", "rounds", "batches", "batch",
                                                          "workers", "candidates")}
    if "reads" in parts:
        result["reads"] = reads(args)
    if "loader" in parts:
        result["loader"] = loader(args)
    if "quantisation" in parts:
        result["quantisation"] = quantisation(args)
    return common.record("read_path", result, args.results)


if __name__ == "__main__":
    main()
