"""Loader throughput: training crops per second delivered (read + decode + augment + collate) at the pipeline's crop
size with 0, 1, 2 and the automatic number of DataLoader workers, against the in-RAM upper bound (the same crops
sliced from NumPy arrays in memory) and against the training step rate. Target (issue 6): the loader is never the
bottleneck at the default settings.

Measured with maskgen's own loader (`maskgen.train.loader.make_loader` / `TrainBatches`, the MaskGen cached mode:
image + features + label). Parts:
- `loader`: crops/s through `make_loader` for each worker count, after the first batch (worker start-up reported
  separately); the same steps (hence the same crops) for every worker count.
- `in_ram`: the same crop positions sliced from arrays in memory and collated (no decode, no augmentation), and
  with the augmentation (`ram_augmented`): how much of the loader's time is the store and how much augmentation.
- `breakdown`: one process, per crop: store read (`FeatureStore.read_crop`), augmentation, collate.
- `train_step`: the cached MaskGen step on a ready batch (as `train_step.py` measures it) -> crops/s the step
  consumes; `headroom` = loader crops/s at the default worker count / that rate (< 1: the loader is the bottleneck).
- `train_loop`: the real `maskgen.train.loop.train` for a few steps at default settings; the share of each step
  spent waiting for the next batch (`data_s` of metrics.jsonl), the direct answer on this machine.

    python -m benchmarks loader
    python -m benchmarks loader --device cuda --workers 0,1,2,4,8 --batch 4 --crop 128
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from benchmarks import train_step as ts


def loader_rate(trainer: Any, start: int, batches: int, num_workers: int, prefetch: int = 2) -> dict[str, Any]:
    """Steady-state crops/s through make_loader over `batches` batches.

    Not timed: the first batch (reported: worker start-up), then enough batches for every worker to have started and
    for the prefetched backlog (`prefetch` batches per worker) to be used up, so the rate is the workers' production
    rate rather than a burst from their queues."""
    skip = 1 + (prefetch + 1) * num_workers
    t0 = time.perf_counter()
    it = iter(trainer.loader(start - skip, start + batches, num_workers))  # timed: the steps start..start+batches
    next(it)
    first = time.perf_counter() - t0
    for _ in range(skip - 1):
        next(it)
    t1 = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t1
    del it
    return {"num_workers": num_workers, "crops_per_s": batches * trainer.spec.batch_size / dt,
            "first_batch_s": first, "batches": batches, "untimed_batches": skip}


def in_ram(trainer: Any, start: int, batches: int, augment: bool) -> dict[str, Any]:
    """The same crops sliced from whole cases held in memory (float32, as the store returns them), collated."""
    import numpy as np
    import torch

    from maskgen.train.loader import TrainBatches
    from maskgen.train.sampling import sample_rng

    ds = TrainBatches(trainer.store, trainer.spec, start, start + batches)
    cases = {cid: trainer.store.read_case(cid) for cid in trainer.spec.case_ids}
    crop = trainer.spec.crop_zyx

    def crop_of(case: dict[str, Any], start_zyx: tuple[int, ...], lead: bool) -> np.ndarray:
        arr = case
        shape = arr.shape[1:] if lead else arr.shape
        lo = [max(0, s) for s in start_zyx]
        hi = [min(n, s + c) for n, s, c in zip(shape, start_zyx, crop)]
        out = np.zeros(((arr.shape[0],) if lead else ()) + tuple(crop), dtype=arr.dtype)
        dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start_zyx))
        src = tuple(slice(a, b) for a, b in zip(lo, hi))
        if lead:
            out[(slice(None), *dst)] = arr[(slice(None), *src)]
        else:
            out[dst] = arr[src]
        return out

    t0 = time.perf_counter()
    for step in range(start, start + batches):
        samples = []
        for slot in range(trainer.spec.batch_size):
            rng = sample_rng(trainer.spec.seed, step, slot)
            choice = ds.sampler.sample(rng)
            case = cases[choice.case_id]
            data = {"image": torch.from_numpy(crop_of(case["image"], choice.start_zyx, True)),
                    "features": torch.from_numpy(crop_of(case["features"], choice.start_zyx, True)),
                    "label": torch.from_numpy(crop_of(case["label"], choice.start_zyx, False)[None])}
            if augment:
                params = ds.augmenter.sample(rng)
                data = ds.augmenter.apply(data, params, spatial=trainer.spec.spatial_on_cpu)
            samples.append(data)
        _ = {k: torch.stack([s[k] for s in samples]) for k in ("image", "features", "label")}
    dt = time.perf_counter() - t0
    return {"crops_per_s": batches * trainer.spec.batch_size / dt, "batches": batches}


def breakdown(trainer: Any, start: int, crops: int) -> dict[str, Any]:
    """Median seconds per crop of each stage of `TrainBatches.sample`, in one process."""
    import numpy as np
    import torch

    from maskgen.train.loader import TrainBatches
    from maskgen.train.sampling import sample_rng

    ds = TrainBatches(trainer.store, trainer.spec, start, start + crops)
    feat_dtype = np.float32 if trainer.spec.spatial_on_cpu else np.float16
    parts: dict[str, list[float]] = {"sample_position": [], "store_read": [], "to_tensor": [], "augment": []}
    samples = []
    for i in range(crops):
        rng = sample_rng(trainer.spec.seed, start + i, 0)
        t0 = time.perf_counter()
        choice = ds.sampler.sample(rng)
        t1 = time.perf_counter()
        crop = trainer.store.read_crop(choice.case_id, choice.start_zyx, trainer.spec.crop_zyx, dtype=feat_dtype)
        t2 = time.perf_counter()
        data = {"image": torch.from_numpy(np.ascontiguousarray(crop["image"], dtype=np.float32)),
                "label": torch.from_numpy(np.ascontiguousarray(crop["label"])[None]),
                "features": torch.from_numpy(np.ascontiguousarray(crop["features"]))}
        t3 = time.perf_counter()
        params = ds.augmenter.sample(rng)
        data = ds.augmenter.apply(data, params, spatial=trainer.spec.spatial_on_cpu)
        t4 = time.perf_counter()
        for k, a, b in (("sample_position", t0, t1), ("store_read", t1, t2), ("to_tensor", t2, t3),
                        ("augment", t3, t4)):
            parts[k].append(b - a)
        samples.append(data)
    t0 = time.perf_counter()
    for i in range(0, len(samples) - 1, 2):
        _ = {k: torch.stack([samples[i][k], samples[i + 1][k]]) for k in ("image", "features", "label")}
    collate = (time.perf_counter() - t0) / max(1, len(samples) // 2) / 2
    out = {k: {"median_ms": 1000 * statistics.median(v), "mean_ms": 1000 * statistics.mean(v)}
           for k, v in parts.items()}
    out["collate"] = {"median_ms": 1000 * collate, "mean_ms": 1000 * collate}
    out["crops"] = crops
    return out


def train_loop(args: Any, store_path: Path, steps: int) -> dict[str, Any]:
    """The real training loop for `steps` steps at default settings (no validation): share of time waiting for data."""
    from maskgen.train.config import TrainConfig
    from maskgen.train.loop import train

    run = Path(args.workdir) / "loader-train-run"
    crop = (args.crop,) * 3 if args.crop else None
    cfg = TrainConfig(features=str(store_path), out=str(run), steps=10**6, val_every=0, batch_size=args.batch,
                      channels=args.channels, depth=args.depth, crop_zyx=crop, device=args.device, seed=args.seed,
                      aug_device=args.aug_device, mask_rate=args.mask_rate)
    t0 = time.perf_counter()
    train(cfg, overwrite=True, stop_at=steps, progress=False)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "data_s" in r][1:]  # the first step waits for the workers to start
    shutil.rmtree(run, ignore_errors=True)
    data = [r["data_s"] for r in rows]
    step = [r["step_s"] if "step_s" in r else args.batch / r["crops_per_s"] for r in rows]
    return {"steps_timed": len(rows), "wall_s": wall, "data_wait_median_s": statistics.median(data),
            "step_median_s": statistics.median(step), "data_wait_fraction": sum(data) / sum(step)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = common.parser(__doc__.split("\n\n")[0], "loader")
    ts.add_model_args(ap)
    ap.add_argument("--workers", default="0,1,2,auto", help="worker counts to measure (auto: maskgen's default)")
    ap.add_argument("--batches", type=int, default=10, help="timed batches per measurement")
    ap.add_argument("--step-repeats", type=int, default=4, help="timed training steps for the step rate")
    ap.add_argument("--loop-steps", type=int, default=6, help="steps of the real training loop (0: skip)")
    args = ap.parse_args(argv)
    common.setup(args)

    from maskgen.store.reader import FeatureStore
    from maskgen.train.placement import resolve_device, resolve_num_workers

    store = FeatureStore(common.ensure_store(args))
    trainer = ts.build_trainer("cached", ts.variant_config("cached", ts.base_config(args, store.path),
                                                           args.mask_rate), store)
    auto = resolve_num_workers(None, resolve_device(args.device))
    counts = list(dict.fromkeys(auto if w == "auto" else int(w) for w in args.workers.split(",") if w))
    common.say(f"loader: crop {trainer.cfg.crop_zyx}, batch {args.batch}, workers {counts} (auto = {auto}), "
               f"spatial aug on {trainer.aug_device}, store backend {getattr(store, 'backend', 'zarr')}")
    start = 20_000
    result: dict[str, Any] = {
        "settings": {**common.settings(args, "batch", "batches", "mask_rate"), "crop_zyx": list(trainer.cfg.crop_zyx),
                     "aug_device": trainer.aug_device, "default_num_workers": auto, "store": str(store.path),
                     "store_backend": getattr(store, "backend", "zarr"), "num_features": int(store.num_features)},
    }
    # the same crops (steps start..start+batches) for every measurement
    result["in_ram"] = in_ram(trainer, start, args.batches, augment=False)
    result["ram_augmented"] = in_ram(trainer, start, args.batches, augment=True)
    result["loader"] = [loader_rate(trainer, start, args.batches, w) for w in counts]
    result["breakdown"] = breakdown(trainer, start, 2 * args.batches)

    batches = trainer.batches(0, 2)
    times = common.interleaved({"cached": lambda r: trainer.step(batches[r % 2], r)}, args.step_repeats, 1,
                               trainer.device)["cached"]
    step_s = statistics.median(times)
    need = args.batch / step_s
    default = next(x for x in result["loader"] if x["num_workers"] == auto)
    result["train_step"] = {**common.stats(times), "crops_per_s_consumed": need}
    result["headroom_at_default_workers"] = default["crops_per_s"] / need
    result["loader_vs_ram"] = {str(x["num_workers"]): x["crops_per_s"] / result["in_ram"]["crops_per_s"]
                               for x in result["loader"]}
    targets = [common.target("loader crops/s / step crops/s at default workers (>= 1: not the bottleneck)",
                             result["headroom_at_default_workers"], 1.0, lower_is_better=False,
                             note="the loader measured alone; the workers share the CPU with the step in training")]
    if args.loop_steps > 0:
        result["train_loop"] = train_loop(args, store.path, args.loop_steps)
        targets.append(common.target("train loop: share of step time waiting for data",
                                     result["train_loop"]["data_wait_fraction"], 0.05))
    result["targets"] = targets
    if args.profile:
        result["profile"] = {"what": "TrainBatches.batch, one process",
                             "functions": common.python_profile(lambda: [trainer.batches(start + i, 1)
                                                                         for i in range(4)])}
    return common.record("loader", result, args.results)


if __name__ == "__main__":
    main()
