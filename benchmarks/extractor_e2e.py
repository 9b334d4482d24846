"""End to end on the demo: ERM vs MaskGen with MIND-SSC vs MaskGen with a maskgen-pretrained extractor.

Uses exactly the schedule of `maskgen demo` (`maskgen.demo.run.DemoSettings()`: steps, crop, UNet, lr, mask rate,
validation) and the same sweep code (`maskgen.evaluate.sweep.run_sweep`), on two feature stores of the demo data
(MIND-SSC, and the given weights through `--extractor anatomix --weights`). Variants: ERM (image only) and MaskGen
(image + MIND) on the MIND store, MaskGen (image + pretrained features) on the other, each for every seed.
Reported per method and test contrast: the mean over seeds of the per-seed mean Dice over the test subjects,
and its standard error over seeds. Everything resumes (finished runs are skipped).

    python benchmarks/extractor_e2e.py --demo /tmp/demo-data --weights maskgen/extract/weights/<file>.pt \
        --work /tmp/e2e --seeds 0,1,2

Appends one record to benchmarks/results.jsonl (benchmark `extractor_e2e`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from benchmarks import common  # noqa: E402


def seed_stats(rows: list[dict], method: str, domain: str) -> dict[str, float]:
    """Mean and s.e. over seeds of the per-seed mean Dice of `method` on the test cases of `domain`."""
    values = [r["dice"] for r in rows if r["method"] == method and r["domain"] == domain and r["split"] == "test"]
    mean = float(np.mean(values)) if values else float("nan")
    se = float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
    return {"mean": round(mean, 4), "se": round(se, 4), "seeds": len(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True, help="folder written by `maskgen demo-data`")
    parser.add_argument("--weights", type=Path, default=None, help="maskgen-pretrained weights to compare")
    parser.add_argument("--stores", default="mind,pretrained", help="which parts to run: mind (ERM + MaskGen with "
                        "MIND-SSC) and/or pretrained (MaskGen with --weights); finished runs are reused")
    parser.add_argument("--work", type=Path, required=True, help="folder for the stores and sweeps")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--layer", default="final", choices=("final", "penultimate"))
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    from maskgen.data.pipeline import load_pipeline
    from maskgen.demo.run import DemoSettings
    from maskgen.evaluate.sweep import Variant, collect_results, run_sweep, write_results
    from maskgen.extract.run import ExtractConfig, run_extract

    seeds = tuple(int(s) for s in args.seeds.split(","))
    parts = [p.strip() for p in args.stores.split(",") if p.strip()]
    if "pretrained" in parts and args.weights is None:
        parser.error("--weights is required for the 'pretrained' part")
    settings = DemoSettings(data_dir=str(args.demo), seeds=seeds)
    pipeline = str(load_pipeline("demo").source)
    t0 = time.perf_counter()
    stores = {"mind": args.work / "mind.zarr", "pretrained": args.work / "pretrained.zarr"}
    if "mind" in parts:
        run_extract(ExtractConfig(dataset=pipeline, data_root=str(args.demo), out=str(stores["mind"]),
                                  extractor="mind", allow_download=False))
    if "pretrained" in parts:
        run_extract(ExtractConfig(dataset=pipeline, data_root=str(args.demo), out=str(stores["pretrained"]),
                                  extractor="anatomix", weights=str(args.weights), layer=args.layer,
                                  allow_download=False))
    train_options = settings.train_options()      # exactly `maskgen demo`'s training options
    plans = {
        "mind": [Variant("maskgen", "image", 0.0, 0.0, s) for s in seeds]
        + [Variant("maskgen", "both", settings.mask_rate, 0.0, s) for s in seeds],
        "pretrained": [Variant("maskgen", "both", settings.mask_rate, 0.0, s) for s in seeds],
    }
    results: dict[str, dict] = {}
    for store, variants in plans.items():
        if store not in parts:
            continue
        out = args.work / f"sweep-{store}"
        run_sweep(stores[store], out, variants, train_options, splits=("test",), log=common.say)
        write_results(out, variants, ("test",))
        table = collect_results(out, variants, ("test",))
        for method in table.methods:
            name = "ERM (image only)" if method == "Image only" else f"MaskGen + {store}"
            results[name] = {d: seed_stats(table.rows, method, d) for d in ("t1", "t2", "flair")}
    for name, cells in results.items():
        common.say(f"{name:>24}  " + "  ".join(f"{d} {c['mean']:.3f} ({c['se']:.3f})" for d, c in cells.items()))
    line = {"weights": str(args.weights) if args.weights else None, "parts": parts, "layer": args.layer, "seeds": list(seeds),
            "schedule": {k: v for k, v in asdict(settings).items() if k not in ("data_dir", "store", "out")},
            "results": results, "seconds": round(time.perf_counter() - t0, 1),
            "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0)}
    if args.no_record:
        print(line)
    else:
        common.record("extractor_e2e", line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
