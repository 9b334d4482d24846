"""Where should the spatial augmentation run: per sample with MONAI in the CPU loader workers, or batched on the
training device (one `affine_grid` + `grid_sample` over all channels of the batch)?

Measures, for a crop of `--crop`^3 voxels with 1 image + `--channels` feature channels + label:
- cpu_monai_spatial: `maskgen.train.augment.apply_spatial` (MONAI `Affined`) per sample with the random affine forced
  on (p = 1), and the expected cost per sample at the paper's p = 0.33;
- cpu_monai_intensity: the seven intensity transforms (p = 1) on the image channel, and expected at p = 0.33;
- batched_spatial: `maskgen.train.spatial_device.augment_spatial_batch` on a batch of `--batch` crops, every sample
  resampled, on each device of `--devices` (CPU: one thread, as a loader worker has);
- train_step: one UNet training step (forward, Dice+CE, backward, AdamW) at `--unet-channels/--unet-depth` on each
  device, the time budget the loader has to fill;
- loader (with `--store PATH`): `TrainBatches.batch` crops/s from a real store in one process, with the spatial
  transform on the CPU and without it (device path).

    python benchmarks/augment_placement.py --crop 64 --batch 2
    python benchmarks/augment_placement.py --crop 128 --batch 2 --devices cpu,cuda --unet-depth 5

Appends one JSON line per measurement to benchmarks/results.jsonl (command, git revision, machine, versions).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results.jsonl"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import common as provenance  # noqa: E402  (command, git rev, machine, versions: shared format)


def _timeit(fn, repeats: int, sync=None) -> dict:
    fn()  # warm-up
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t)
    return {"median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times), "repeats": repeats}


def smooth_crop(crop: int, channels: int, seed: int = 0) -> dict:
    """A realistic-looking sample: smooth image in [0, 1], smooth feature channels, a 3-class label."""
    import torch
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.random((crop,) * 3, dtype=np.float32), 3)
    image = (image - image.min()) / (image.max() - image.min())
    feats = ndimage.gaussian_filter(rng.standard_normal((channels,) + (crop,) * 3, dtype=np.float32), (0, 2, 2, 2))
    label = np.digitize(image, [0.4, 0.6]).astype(np.uint8)
    return {
        "image": torch.from_numpy(image[None].copy()),
        "features": torch.from_numpy(feats),
        "label": torch.from_numpy(label[None].copy()),
    }


def bench_cpu_monai(crop: int, channels: int, repeats: int, prob: float) -> list[dict]:
    import torch

    from maskgen.train.augment import Augmenter, IntensityParams, SpatialParams, apply_spatial

    torch.set_num_threads(1)
    data = smooth_crop(crop, channels)
    affine = SpatialParams(affine=True, rotate=(0.3, -0.2, 0.5), shear=(0.1, -0.1, 0.05), scale=(1.1, 0.9, 1.05))
    flip = SpatialParams(flip_axis=1, rot90_k=1)
    t_aff = _timeit(lambda: apply_spatial(data, affine), repeats)
    t_flip = _timeit(lambda: apply_spatial(data, flip), repeats)
    aug = Augmenter(prob=1.0)
    every = IntensityParams(tuple(range(1, 8)))
    t_int = _timeit(lambda: aug.apply_intensity({"image": data["image"]}, every), repeats)
    # expected per sample at `prob`: the affine fires with prob; flips/rot90 alone (exact copies) otherwise
    p_flip_only = (1 - prob) * (1 - (1 - prob) ** 2)
    expected_spatial = prob * t_aff["median_ms"] + p_flip_only * t_flip["median_ms"]
    return [
        {"measure": "cpu_monai_spatial", "device": "cpu", "threads": 1, "affine_p1": t_aff, "flip_rot90": t_flip,
         "expected_ms_per_sample": expected_spatial, "prob": prob},
        {"measure": "cpu_monai_intensity", "device": "cpu", "threads": 1, "all_seven_p1": t_int,
         "expected_ms_per_sample": prob * t_int["median_ms"], "prob": prob},
    ]


def bench_batched(crop: int, channels: int, batch: int, repeats: int, device: str) -> dict:
    import torch

    from maskgen.train.augment import SpatialParams
    from maskgen.train.spatial_device import augment_spatial_batch, pack_spatial

    if device == "cpu":
        torch.set_num_threads(1)
    dev = torch.device(device)
    samples = [smooth_crop(crop, channels, seed=b) for b in range(batch)]
    image = torch.stack([s["image"] for s in samples]).to(dev)
    feats = torch.stack([s["features"] for s in samples]).to(dev).half()
    label = torch.stack([s["label"] for s in samples]).to(dev)
    params = [SpatialParams(affine=True, rotate=(0.3, -0.2, 0.5), shear=(0.1, -0.1, 0.05), scale=(1.1, 0.9, 1.05))
              for _ in range(batch)]
    spatial = {k: v.to(dev) for k, v in pack_spatial(params, (crop,) * 3).items()}
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    t = _timeit(lambda: augment_spatial_batch(image, feats.float(), label, spatial), repeats, sync)
    return {"measure": "batched_spatial", "device": device, "threads": torch.get_num_threads(), "batch": batch,
            "all_resampled": t, "ms_per_sample": t["median_ms"] / batch}


def bench_train_step(crop: int, channels: int, batch: int, repeats: int, device: str, width: int, depth: int,
                     num_classes: int = 4) -> dict:
    import torch
    from monai.losses import DiceCELoss

    from maskgen.train.inference import autocast
    from maskgen.train.masking import view_mask
    from maskgen.train.unet import UNet, count_parameters

    dev = torch.device(device)
    torch.manual_seed(0)
    model = UNet(1 + channels, num_classes, width, depth).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-4)
    loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True)
    z = torch.randn(batch, 1 + channels, crop, crop, crop, device=dev)
    y = torch.randint(0, num_classes, (batch, 1, crop, crop, crop), device=dev)

    def step():
        with autocast(dev):
            logits = model(view_mask(z, 0.5))
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    t = _timeit(step, repeats, sync)
    return {"measure": "train_step", "device": device, "threads": torch.get_num_threads(), "batch": batch,
            "unet_channels": width, "unet_depth": depth, "params": count_parameters(model), "step": t,
            "crops_per_s": 1000 * batch / t["median_ms"]}


def bench_loader(store_path: str, crop: int, batch: int, repeats: int) -> list[dict]:
    import torch

    from maskgen.store.reader import FeatureStore
    from maskgen.train.loader import LoaderSpec, TrainBatches

    torch.set_num_threads(1)
    store = FeatureStore(store_path)
    ids = tuple(c.case_id for c in store.cases(split="train"))
    out = []
    for on_cpu in (True, False):
        spec = LoaderSpec(case_ids=ids, crop_zyx=(crop,) * 3, batch_size=batch, seed=0, fg_fraction=1 / 3,
                          aug_prob=0.33, allow_flips=bool(store.pipeline.allow_flips), spatial_on_cpu=on_cpu,
                          read_features=True, volume_stats=False)
        ds = TrainBatches(store, spec, 0, 10**9)
        steps = iter(range(10**9))
        n_batches = max(3, repeats)
        ds.batch(next(steps))  # warm-up (foreground cache, zarr handles)
        t = time.perf_counter()
        for _ in range(n_batches):
            ds.batch(next(steps))
        dt = time.perf_counter() - t
        out.append({"measure": "loader", "device": "cpu", "spatial_on_cpu": on_cpu, "store": str(store_path),
                    "batch": batch, "batches": n_batches, "crops_per_s": n_batches * batch / dt,
                    "num_features": store.num_features})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--crop", type=int, default=64, help="crop side in voxels")
    ap.add_argument("--channels", type=int, default=16, help="feature channels (anatomix: 16)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prob", type=float, default=0.33, help="augmentation probability for the expected costs")
    ap.add_argument("--devices", default="cpu,cuda", help="devices for the batched path and the train step")
    ap.add_argument("--step-devices", default=None, help="devices for the train step [default: --devices]")
    ap.add_argument("--unet-channels", type=int, default=20)
    ap.add_argument("--unet-depth", type=int, default=5)
    ap.add_argument("--no-train-step", action="store_true", help="skip the UNet step timing")
    ap.add_argument("--no-cpu-monai", action="store_true", help="skip the per-sample MONAI timings")
    ap.add_argument("--store", default=None, help="a feature store for the loader measurement")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args()

    import torch

    def usable(text: str) -> list[str]:
        return [d for d in text.split(",") if d and (d != "cuda" or torch.cuda.is_available())]

    devices = usable(args.devices)
    step_devices = usable(args.step_devices if args.step_devices is not None else args.devices)
    torch.backends.cudnn.benchmark = True  # fixed crop size, as in training
    common = {
        "benchmark": "augment_placement",
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "git_rev": provenance.git_rev(),
        "machine": provenance.machine(),
        "versions": provenance.versions(),
        "crop": args.crop,
        "channels": args.channels,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    lines = []
    if not args.no_cpu_monai:
        lines += bench_cpu_monai(args.crop, args.channels, args.repeats, args.prob)
    for dev in devices:
        lines.append(bench_batched(args.crop, args.channels, args.batch, args.repeats, dev))
        if not args.no_train_step and dev in step_devices:
            threads = torch.get_num_threads()
            if dev == "cpu":
                torch.set_num_threads(os.cpu_count() or 1)
            lines.append(bench_train_step(args.crop, args.channels, args.batch, max(2, args.repeats // 2), dev,
                                          args.unet_channels, args.unet_depth))
            torch.set_num_threads(threads)
    if args.store:
        lines += bench_loader(args.store, args.crop, args.batch, args.repeats)
    with open(args.results, "a") as f:
        for line in lines:
            f.write(json.dumps({**common, **line}, sort_keys=True) + "\n")
    for line in lines:
        print(json.dumps(line, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
