"""Training step time, same UNet, crop and batch: ERM (image only) vs MaskGen from the cache vs MaskGen with online
features (the frozen extractor run every step on the augmented crop, `maskgen train --online-features`).

Target (issue 6): the cached path costs at most +5% over ERM; the paper's on-the-fly method costs +25.8%
(Table 13, RTX 6000 Ada, BraTS).

Two measurements, both with maskgen's own training pieces (`maskgen.train.step.train_step`, `TrainBatches`,
`make_loader`, `build_online_extractor`), not a re-implementation:
- `compute`: one optimisation step on a ready batch (the batches are built beforehand by the real loader code and,
  on CUDA, pinned), variants interleaved round by round (ABC, BCA, CAB, ...), the device synchronised around every
  step. This is the cost the GPU sees when the loader keeps up.
- `end_to_end`: steps through the real DataLoader (default number of workers) and `train_step`, in blocks of
  steps interleaved across variants; includes waiting for data, so it shows whether the loader keeps up.
- references (interleaved with `compute`): a bare UNet step on a fixed input already on the device, with 1 and
  1+C input channels, in the layout PyTorch picks and in channels_last_3d. They split the cached overhead into the
  data path (feature transfer, per-crop normalisation, view masking: `cached` vs `unet_both`), the wider first
  convolution (`unet_both` vs `unet_image`, also with both networks in channels_last_3d), and show what the
  memory layout of the network's weights is worth on the CPU (`channels_last_speedup_*`).

    python -m benchmarks train_step                                 # CPU, crop = the demo pipeline's (64^3)
    python -m benchmarks train_step --device cuda --channels 20 --depth 5 --crop 128 --batch 4
    python -m benchmarks train_step --extractor anatomix-random    # online cost of the anatomix architecture
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common

VARIANTS = ("erm", "cached", "online")
PAPER_ONLINE_OVERHEAD_PCT = 25.8
CACHED_OVERHEAD_TARGET_PCT = 5.0


@dataclass
class Trainer:
    """Everything `maskgen.train.setup.setup` builds for one run, exposed so a benchmark can drive single steps."""

    name: str
    cfg: Any
    store: Any
    device: Any
    aug_device: str
    model: Any
    optimizer: Any
    loss_fn: Any
    extractor: Any
    spec: Any

    def step(self, batch: dict[str, Any], step: int) -> float:
        from maskgen.train.step import train_step

        return train_step(self.model, self.optimizer, self.loss_fn, batch, self.cfg, step, self.device,
                           self.aug_device, self.extractor)

    def batches(self, start: int, count: int) -> list[dict[str, Any]]:
        """`count` collated batches built in this process by the real loader code, pinned on CUDA."""
        from maskgen.train.loader import TrainBatches

        ds = TrainBatches(self.store, self.spec, start, start + count)
        out = [ds.batch(s) for s in range(start, start + count)]
        if self.device.type == "cuda":
            out = [_pin(b) for b in out]
        return out

    def loader(self, start: int, end: int, num_workers: int) -> Any:
        from maskgen.train.loader import make_loader

        return make_loader(self.store, self.spec, start, end, num_workers, pin_memory=self.device.type == "cuda")


def _pin(batch: dict[str, Any]) -> dict[str, Any]:
    import torch

    def pin(v: Any) -> Any:
        if torch.is_tensor(v):
            return v.pin_memory()
        if isinstance(v, dict):
            return {k: pin(x) for k, x in v.items()}
        return v

    return {k: pin(v) for k, v in batch.items()}


def variant_config(name: str, base: Any, mask_rate: float) -> Any:
    if name == "erm":
        return base.replace(inputs="image", mask_rate=0.0, online_features=False)
    if name == "cached":
        return base.replace(inputs="both", mask_rate=mask_rate, online_features=False)
    if name == "online":
        return base.replace(inputs="both", mask_rate=mask_rate, online_features=True)
    raise ValueError(f"unknown variant {name!r}; choose from {VARIANTS}")


def build_trainer(name: str, cfg: Any, store: Any) -> Trainer:
    """The model, optimiser, loss, loader spec and (online) extractor exactly as `train()` sets them up."""
    import torch

    from maskgen.train.online import build_online_extractor
    from maskgen.train.placement import resolve_aug_device, resolve_device
    from maskgen.train.setup import build_model, loader_spec, resolve_config
    from maskgen.train.step import make_loss

    cfg = resolve_config(cfg, store)
    device = resolve_device(cfg.device)
    aug_device = resolve_aug_device(cfg.aug_device, device)
    pipeline = store.pipeline
    # the train loop's own model (kind, width, depth), seeded: the same initial weights for every variant
    model = build_model(cfg, int(store.num_features), int(pipeline.num_classes), device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = make_loss()
    extractor = build_online_extractor(store, cfg, device) if cfg.online_features else None
    spec = loader_spec(cfg, bool(pipeline.allow_flips), aug_device)
    return Trainer(name, cfg, store, device, aug_device, model, optimizer, loss_fn, extractor, spec)


def base_config(args: Any, store_path: Path) -> Any:
    from maskgen.train.config import TrainConfig

    crop = (args.crop,) * 3 if args.crop else None
    return TrainConfig(
        features=str(store_path), out=str(Path(args.workdir) / "scratch-run"), batch_size=args.batch,
        channels=args.channels, depth=args.depth, crop_zyx=crop, device=args.device, seed=args.seed,
        steps=10**6, aug_device=args.aug_device, extractor_weights=common.extractor_choice(args)[1],
    )


def add_model_args(ap: Any) -> None:
    ap.add_argument("--crop", type=int, default=None, help="crop side (voxels) [default: the pipeline's crop]")
    ap.add_argument("--batch", type=int, default=2, help="crops per step")
    ap.add_argument("--channels", type=int, default=8, help="UNet base width (paper: 20)")
    ap.add_argument("--depth", type=int, default=4, help="UNet max-pool levels (paper: 5)")
    ap.add_argument("--mask-rate", type=float, default=0.5)
    ap.add_argument("--aug-device", default="auto", choices=("auto", "cpu", "device"))


def reference_step(t: Trainer, batch: dict[str, Any], channels_last: bool) -> Any:
    """A bare UNet step (forward, Dice+CE, backward, AdamW) on a fixed input already on the device, with the
    variant's number of input channels, on a copy of its model: what the network costs with no data path at all.

    `cached - erm` minus `unet_both - unet_image` is the overhead of maskgen's cached data path itself (feature
    transfer, per-crop normalisation, view masking); `unet_both / unet_image` is intrinsic to a wider input.
    `channels_last`: model and input in torch.channels_last_3d, the layout PyTorch's CPU convolutions pick by
    themselves for a multi-channel input but not for a one-channel one (see README)."""
    import copy

    import torch

    from maskgen.train.inference import autocast

    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = copy.deepcopy(t.model).to(memory_format=fmt)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.cfg.lr, weight_decay=t.cfg.weight_decay)
    g = torch.Generator().manual_seed(0)
    z = torch.rand((batch["image"].shape[0], model.in_channels, *batch["image"].shape[2:]), generator=g)
    z = z.to(t.device).contiguous(memory_format=fmt)
    label = batch["label"].to(t.device).long()

    def step(_r: int) -> None:
        with autocast(t.device):
            logits = model(z)
        loss = t.loss_fn(logits.float(), label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


REFERENCES = {  # name: (variant whose model is copied, channels_last)
    "unet_image": ("erm", False), "unet_both": ("cached", False),
    "unet_image_cl": ("erm", True), "unet_both_cl": ("cached", True),
}


def measure_compute(
    trainers: dict[str, Any], repeats: int, warmup: int, n_batches: int, references: bool
) -> dict[str, list[float]]:
    """Seconds per `train_step` on prebuilt batches, interleaved across variants (and the bare-UNet references)."""
    batches = {n: t.batches(0, n_batches) for n, t in trainers.items()}
    device = next(iter(trainers.values())).device

    def runner(name: str):
        t = trainers[name]
        return lambda r: t.step(batches[name][r % n_batches], r)

    fns = {n: runner(n) for n in trainers}
    if references:
        for ref, (n, cl) in REFERENCES.items():
            if n in trainers:
                fns[ref] = reference_step(trainers[n], batches[n][0], cl)
    return common.interleaved(fns, repeats, warmup, device)


def measure_end_to_end(trainers: dict[str, Any], rounds: int, steps: int, num_workers: int) -> dict[str, Any]:
    """Seconds per step and per wait for data through the real DataLoader, blocks of `steps` interleaved."""
    per_step: dict[str, list[float]] = {n: [] for n in trainers}
    data_wait: dict[str, list[float]] = {n: [] for n in trainers}
    names = list(trainers)
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t = trainers[name]
            start = 10_000 + r * (steps + 1)  # other crops than the compute measurement, the same for each variant
            it = iter(t.loader(start, start + steps + 1, num_workers))
            t.step(next(it), start)  # worker start-up and the first batch are not timed
            common.sync(t.device)
            for s in range(start + 1, start + 1 + steps):
                t0 = time.perf_counter()
                batch = next(it)
                t1 = time.perf_counter()
                t.step(batch, s)
                common.sync(t.device)
                t2 = time.perf_counter()
                per_step[name].append(t2 - t0)
                data_wait[name].append(t1 - t0)
            del it
    return {"per_step": per_step, "data_wait": data_wait}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = common.parser(__doc__.split("\n\n")[0], "train_step")
    add_model_args(ap)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    ap.add_argument("--repeats", type=int, default=10, help="timed rounds of the compute measurement")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    ap.add_argument("--batches", type=int, default=6, help="distinct prebuilt batches cycled through")
    ap.add_argument("--e2e-rounds", type=int, default=2, help="rounds of the end-to-end measurement (0: skip)")
    ap.add_argument("--e2e-steps", type=int, default=5, help="timed steps per variant and round")
    ap.add_argument("--no-references", action="store_true",
                    help="skip the bare-UNet reference steps (1 vs 1+C input channels, no data path)")
    ap.add_argument("--num-workers", type=int, default=None, help="loader workers [default: maskgen's automatic]")
    args = ap.parse_args(argv)
    common.setup(args)

    from maskgen.store.reader import FeatureStore
    from maskgen.train.placement import resolve_device, resolve_num_workers
    from maskgen.train.unet import count_parameters

    names = [v for v in args.variants.split(",") if v]
    store = FeatureStore(common.ensure_store(args))
    base = base_config(args, store.path)
    trainers = {n: build_trainer(n, variant_config(n, base, args.mask_rate), store) for n in names}
    first = next(iter(trainers.values()))
    num_workers = resolve_num_workers(args.num_workers, resolve_device(args.device))
    common.say(f"train_step: variants {names}, crop {first.cfg.crop_zyx}, batch {args.batch}, "
               f"UNet {args.channels}/{args.depth}, {args.device}, spatial aug on {first.aug_device}")

    compute = measure_compute(trainers, args.repeats, args.warmup, args.batches, not args.no_references)
    result: dict[str, Any] = {
        "settings": {**common.settings(args, "batch", "channels", "depth", "mask_rate", "repeats", "warmup"),
                     "crop_zyx": list(first.cfg.crop_zyx), "aug_device": first.aug_device,
                     "num_features": int(store.num_features), "store": str(store.path),
                     "unet_params": {n: count_parameters(t.model) for n, t in trainers.items()}},
        "compute": {n: common.stats(v) for n, v in compute.items()},
    }
    targets = []
    if "erm" in compute:
        for n in names:
            if n == "erm":
                continue
            pct = 100 * (common.paired_ratio(compute[n], compute["erm"]) - 1)
            result["compute"][n]["overhead_vs_erm_pct"] = round(pct, 2)
        pr = common.paired_ratio
        split: dict[str, float] = {}
        if "unet_image" in compute and "unet_both" in compute:
            split["data_path_cached_vs_bare_unet"] = 100 * (pr(compute["cached"], compute["unet_both"]) - 1)
            split["data_path_erm_vs_bare_unet"] = 100 * (pr(compute["erm"], compute["unet_image"]) - 1)
            split["wider_input"] = 100 * (pr(compute["unet_both"], compute["unet_image"]) - 1)
        if "unet_image_cl" in compute and "unet_both_cl" in compute:
            split["wider_input_channels_last"] = 100 * (pr(compute["unet_both_cl"], compute["unet_image_cl"]) - 1)
            split["channels_last_speedup_image"] = 100 * (1 - pr(compute["unet_image_cl"], compute["unet_image"]))
            split["channels_last_speedup_both"] = 100 * (1 - pr(compute["unet_both_cl"], compute["unet_both"]))
        if split:
            result["overhead_split_pct"] = {k: round(v, 2) for k, v in split.items()}
        if "cached" in compute:
            targets.append(common.target("train step: cached over ERM (%), as the product runs them",
                                         result["compute"]["cached"]["overhead_vs_erm_pct"],
                                         CACHED_OVERHEAD_TARGET_PCT))
            if "data_path_cached_vs_bare_unet" in split:
                targets.append(common.target(
                    "train step: the cached data path alone over the bare network of the same width (%)",
                    round(split["data_path_cached_vs_bare_unet"], 2), CACHED_OVERHEAD_TARGET_PCT,
                    note="feature transfer, per-crop normalisation and view masking; the rest of the overhead over "
                         "ERM is the wider first convolution, intrinsic to MaskGen's 1+C input"))
        if "online" in compute:
            result["paper_online_overhead_pct"] = PAPER_ONLINE_OVERHEAD_PCT
    if args.e2e_rounds > 0:
        e2e = measure_end_to_end(trainers, args.e2e_rounds, args.e2e_steps, num_workers)
        result["end_to_end"] = {
            n: {**common.stats(e2e["per_step"][n]),
                "data_wait_median_s": statistics.median(e2e["data_wait"][n]),
                "data_wait_fraction": sum(e2e["data_wait"][n]) / sum(e2e["per_step"][n])}
            for n in names
        }
        result["end_to_end_num_workers"] = num_workers
        if "erm" in names:
            for n in names:
                if n != "erm":
                    pct = 100 * (common.ratio(e2e["per_step"][n], e2e["per_step"]["erm"]) - 1)
                    result["end_to_end"][n]["overhead_vs_erm_pct"] = round(pct, 2)
    result["targets"] = targets
    if args.profile:
        # the variant the target is about (cached), else the slowest; and ERM beside it, operators split by shape
        shown = "cached" if "cached" in names else max(names, key=lambda n: result["compute"][n]["median_s"])
        for key, name in (("profile", shown), ("profile_erm", "erm")):
            if name not in trainers or (key == "profile_erm" and shown == "erm"):
                continue
            t = trainers[name]
            batch = t.batches(0, 1)[0]
            result[key] = {"variant": name, "ops": common.torch_profile(lambda: t.step(batch, 0), t.device,
                                                                         top=12, by_shape=True)}
    return common.record("train_step", result, args.results)


if __name__ == "__main__":
    main()
