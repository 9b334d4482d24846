"""Amortisation: the wall time of a 4-variant sweep (view-masking rates 0, 0.25, 0.5, 0.75 on image + features)
trained and evaluated from one feature cache, against the same 4 runs with `--online-features` (the frozen
extractor run on every augmented crop, as the paper's code does).

Both arms call `maskgen.evaluate.sweep.run_sweep` with the same train options (the online arm adds
`online_features=True`), one variant at a time, the arms alternating variant by variant (cached, online, online,
cached, ...) so that the shared machine's drift cancels. The cached arm also pays for building its cache: a fresh
`maskgen extract` (`run_extract`, 1 worker) of the demo data is timed and added. (maskgen's online mode still reads
images and labels from a store; that store is not charged to the online arm, which favours it.)

Reported: both totals, their ratio, the per-variant mean difference, the number of variants after which the
cache has paid for itself (extraction time / per-variant saving), and, since a variant's fixed costs (validation,
evaluation, loader start-up) are the same in both arms, the saving per training step and the steps per variant at
which a 4-variant sweep repays the cache.

    python -m benchmarks amortisation
    python -m benchmarks amortisation --steps 200 --extractor anatomix-random
"""

from __future__ import annotations

import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common

MASK_RATES = (0.0, 0.25, 0.5, 0.75)


def extract_fresh(args: Any) -> tuple[Path, float]:
    from maskgen.extract.run import ExtractConfig, run_extract

    demo = common.ensure_demo(args.demo)
    name, weights = common.extractor_choice(args)
    out = Path(args.workdir) / "amortisation-cache.zarr"
    shutil.rmtree(out, ignore_errors=True)
    cfg = ExtractConfig(dataset="demo", data_root=str(demo), out=str(out), extractor=name, weights=weights,
                        device=args.device, workers=1, allow_download=False)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_extract(cfg, progress=False)
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = common.parser(__doc__.split("\n\n")[0], "amortisation")
    ap.add_argument("--steps", type=int, default=10, help="training steps per variant")
    ap.add_argument("--crop", type=int, default=None, help="crop side (voxels) [default: the pipeline's crop]")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--splits", default="val", help="splits each variant is evaluated on (comma-separated)")
    args = ap.parse_args(argv)
    common.setup(args)

    from maskgen.evaluate.sweep import plan_variants, run_sweep

    store, extract_s = extract_fresh(args)
    common.say(f"amortisation: cache built in {extract_s:.1f} s; 4 variants x 2 arms of {args.steps} steps")
    variants, _ = plan_variants(MASK_RATES, ["both"], [args.seed])
    options = {"steps": args.steps, "val_every": 0, "batch_size": args.batch, "channels": args.channels,
               "depth": args.depth, "device": args.device,
               "crop_zyx": (args.crop,) * 3 if args.crop else None,
               "extractor_weights": common.extractor_choice(args)[1]}
    splits = tuple(s for s in args.splits.split(",") if s)
    arms = {"cached": dict(options), "online": {**options, "online_features": True}}
    seconds: dict[str, list[float]] = {a: [] for a in arms}
    for i, v in enumerate(variants):
        order = list(arms) if i % 2 == 0 else list(arms)[::-1]
        for arm in order:
            out = Path(args.workdir) / f"amortisation-{arm}"
            t0 = time.perf_counter()
            run_sweep(store, out, [v], arms[arm], splits=splits, progress=False)
            seconds[arm].append(time.perf_counter() - t0)
            common.say(f"  {v.name} {arm}: {seconds[arm][-1]:.1f} s")
    cached_total = extract_s + sum(seconds["cached"])
    online_total = sum(seconds["online"])
    saving = (online_total - sum(seconds["cached"])) / len(variants)
    result: dict[str, Any] = {
        "settings": {**common.settings(args, "steps", "batch", "channels", "depth", "splits"),
                     "variants": [v.name for v in variants]},
        "extract_s": extract_s,
        "sweep_cached_s": seconds["cached"],
        "sweep_online_s": seconds["online"],
        "cached_total_s": cached_total,
        "online_total_s": online_total,
        "online_over_cached_total": online_total / cached_total,
        "saving_per_variant_s": saving,
        "break_even_variants": extract_s / saving if saving > 0 else None,
        # the fixed costs of a variant (validation, evaluation, loader start) are the same in both arms, so the
        # saving grows with the steps: per step, and the steps per variant at which 4 variants repay the cache
        "saving_per_step_s": saving / args.steps,
        "break_even_steps_per_variant_4_variants": (extract_s / (len(variants) * saving / args.steps)
                                                    if saving > 0 else None),
    }
    result["targets"] = [common.target("4-variant sweep: cached total (with extraction) / online total",
                                       cached_total / online_total, 1.0)]
    for arm in arms:
        shutil.rmtree(Path(args.workdir) / f"amortisation-{arm}", ignore_errors=True)
    shutil.rmtree(store, ignore_errors=True)
    return common.record("amortisation", result, args.results)


if __name__ == "__main__":
    main()
