"""Augmented feature views (issue 11.3): Dice and step time of online features vs cached features with 0 / K views.

On the demo data with `maskgen demo`'s schedule (`DemoSettings().train_options()` and its mask rate) and one store made
with `maskgen extract --views KMAX` (a store with K views trains with any fewer), trains per seed:
ERM (image only), MaskGen with `--online-features` (features recomputed from every augmented crop, the public code),
MaskGen on cached features with `--views 0` (clean features only) and with `--views K` for each K asked for. Each run
is evaluated on the test split (best checkpoint, as the demo): in-domain (t1) and out-of-domain (t2, flair) Dice.
Step time: the median seconds per training step of each run (metrics.jsonl), divided by ERM's; and, because runs one
after the other see different loads on shared CPUs, also an interleaved measurement (`--timing-rounds` rounds, one
step of every variant per round, the order rotated; the median of the per-round ratios to ERM).

    python -m benchmarks views --seeds 0 --views 2,4 --work /tmp/views-bench

Appends one record per finished run (`views_run`) and one summary (`views`) to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from benchmarks import common  # noqa: E402

IN_DOMAIN = ("t1",)
OUT_OF_DOMAIN = ("t2", "flair")


def variants(view_counts: list[int]) -> dict[str, dict]:
    """name -> TrainConfig options beyond the schedule."""
    out = {"erm": dict(inputs="image", mask_rate=0.0, views=0),
           "online": dict(inputs="both", online_features=True, views=0),
           "cached-v0": dict(inputs="both", views=0)}
    out.update({f"cached-v{k}": dict(inputs="both", views=k) for k in view_counts})
    return out


def train_and_score(store: Path, run_dir: Path, options: dict) -> dict:
    """Train (or reuse a finished run) and evaluate on the test split; Dice per domain and seconds per step."""
    from maskgen.evaluate.evaluate import evaluate_run, load_eval
    from maskgen.train.config import TrainConfig
    from maskgen.train.loop import train

    eval_file = run_dir / "eval-test.json"
    t0 = time.perf_counter()
    if not eval_file.is_file():
        train(TrainConfig(features=str(store), out=str(run_dir), **options), overwrite=True, progress=False)
        evaluate_run(run_dir, split="test", checkpoint="best")
    result = load_eval(eval_file)
    dice = {d: round(float(s.overall.mean), 4) for d, s in result.by_domain.items()}
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_s = train_seconds([options["batch_size"] / r["crops_per_s"] for r in records if "crops_per_s" in r],
                            options["val_every"])
    return {"dice": dice, "in_domain": _mean(dice, IN_DOMAIN), "out_of_domain": _mean(dice, OUT_OF_DOMAIN),
            "step_s": round(train_s / options["steps"], 4), "seconds": round(time.perf_counter() - t0, 1)}


def train_seconds(step_times: list[float], val_every: int) -> float:
    """Seconds spent in training steps (validation excluded) from metrics.jsonl's per-step figures. Before the fix
    in train/loop.py those figures were cumulative since the last validation: a segment that never decreases is
    such a sum (its last value is the segment's time); per-step figures are summed."""
    total = 0.0
    seg = val_every or len(step_times)
    for i in range(0, len(step_times), seg):
        part = step_times[i:i + seg]
        cumulative = len(part) > 5 and all(b >= a for a, b in zip(part, part[1:]))
        total += part[-1] if cumulative else sum(part)
    return total


def _mean(dice: dict, domains: tuple[str, ...]) -> float:
    vals = [dice[d] for d in domains if d in dice]
    return round(sum(vals) / len(vals), 4) if vals else float("nan")


def interleaved_step_times(store: Path, work: Path, plans: dict[str, dict], rounds: int) -> dict[str, float]:
    """Median per-round ratio of each variant's step time to ERM's, steps interleaved (rotated order)."""
    from maskgen.train.config import TrainConfig
    from maskgen.train.setup import setup, start
    from maskgen.train.step import train_step

    runs = {}
    for name, options in plans.items():
        cfg = TrainConfig(features=str(store), out=str(work / "timing" / name), **options)
        run = setup(cfg, overwrite=True)
        runs[name] = (run, iter(start(run)))

    def stepper(name: str):
        run, batches = runs[name]

        def one(_r: int) -> None:
            batch = next(batches)
            train_step(run.model, run.optimizer, run.loss_fn, batch, run.cfg, int(batch["step"]), run.device,
                       run.aug_device, run.extractor)
        return one

    times = common.interleaved({n: stepper(n) for n in plans}, repeats=rounds, warmup=2)
    return {n: round(common.paired_ratio(times[n], times["erm"]), 3) for n in plans} | {
        f"{n}_median_s": round(statistics.median(times[n]), 4) for n in plans}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, default=Path(common.DEFAULT_WORKDIR) / "views-demo-data")
    ap.add_argument("--work", type=Path, default=Path(common.DEFAULT_WORKDIR) / "views")
    ap.add_argument("--extractor", default="auto", help="the store's extractor (auto: as `maskgen demo`)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--views", default="2,4", help="view counts K compared with 0 views and online features")
    ap.add_argument("--timing-rounds", type=int, default=20, help="interleaved timing rounds (0: skip)")
    ap.add_argument("--quick", action="store_true", help="the geometry of `maskgen demo --quick` (4 mm data, 32^3 "
                    "crops, depth 2) with --subjects and --steps: for CPUs too loaded for the full schedule")
    ap.add_argument("--subjects", type=int, default=None, help="demo subjects [default: the schedule's]")
    ap.add_argument("--steps", type=int, default=None, help="override the schedule's steps (val every steps/2)")
    ap.add_argument("--only", default=None, help="train only these variants (comma-separated names, e.g. to share "
                    "the work between processes; no summary record); a later run without it reuses finished runs")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    counts = [int(k) for k in args.views.split(",") if k.strip()]
    settings, schedule = _schedule(args, seeds)
    store, summary, extract_s = _store(args, settings, max(counts))
    plans = {n: {**schedule, **o} for n, o in variants(counts).items()}
    rows = {}
    only = set(args.only.split(",")) if args.only else set(plans)
    for seed in seeds:
        for name, options in plans.items():
            if name not in only:
                continue
            row = train_and_score(store, args.work / f"{name}-s{seed}", {**options, "seed": seed})
            rows[(name, seed)] = row
            common.say(f"{name} seed {seed}: {row}")
            common.record("views_run", {"variant": name, "seed": seed, "options": options, **row})
    if args.only:
        return 0
    timing = interleaved_step_times(store, args.work, {n: {**o, "steps": 10_000} for n, o in plans.items()},
                                    args.timing_rounds) if args.timing_rounds else {}
    table = _table(rows, plans, seeds)
    common.record("views", {"seeds": seeds, "views": counts, "extractor": summary.extractor,
                            "schedule": {k: v for k, v in asdict(settings).items() if k not in ("data_dir", "store", "out")},
                            "train_options": schedule, "store_bytes": summary.bytes_written, "extract_s": extract_s,
                            "table": table, "interleaved_step_ratio_to_erm": timing})
    return 0


def _schedule(args: argparse.Namespace, seeds: list[int]) -> tuple:
    """(DemoSettings, the TrainConfig options every variant shares): `maskgen demo`'s, or its quick geometry."""
    from maskgen.demo.run import DemoSettings

    changes = {"data_dir": str(args.demo), "seeds": tuple(seeds)}
    if args.subjects:
        changes["subjects"] = args.subjects
    if args.steps:
        changes.update(steps=args.steps, val_every=max(1, args.steps // 2))
    settings = DemoSettings.quick(**changes) if args.quick else DemoSettings(**changes)
    return settings, {**settings.train_options(), "mask_rate": settings.mask_rate}


def _store(args: argparse.Namespace, settings: object, views: int) -> tuple:
    """The demo data of `settings` (built once) extracted with `views` augmented views (reused when complete)."""
    from maskgen.demo.console import build_demo_data
    from maskgen.demo.run import _demo_pipeline_file
    from maskgen.extract.run import ExtractConfig, run_extract

    build_demo_data(args.demo, subjects=settings.subjects, seed=0, spacing=settings.spacing, overwrite=False)
    pipeline = _demo_pipeline_file(Path(args.demo), settings)
    store = args.work / f"demo-views{views}.zarr"
    t0 = time.perf_counter()
    summary = run_extract(ExtractConfig(dataset=str(pipeline), data_root=str(args.demo), out=str(store),
                                        extractor=args.extractor, views=views, allow_download=False), progress=False)
    return store, summary, round(time.perf_counter() - t0, 1)


def _table(rows: dict, plans: dict, seeds: list[int]) -> dict[str, dict]:
    """Per variant: mean over seeds of in-domain / out-of-domain Dice and of the step-time ratio to ERM's run."""
    out = {}
    for name in plans:
        cells = [rows[(name, s)] for s in seeds]
        ratios = [rows[(name, s)]["step_s"] / rows[("erm", s)]["step_s"] for s in seeds]
        out[name] = {"in_domain": round(statistics.mean(c["in_domain"] for c in cells), 4),
                     "out_of_domain": round(statistics.mean(c["out_of_domain"] for c in cells), 4),
                     "per_domain": {d: round(statistics.mean(c["dice"].get(d, float("nan")) for c in cells), 4)
                                    for d in IN_DOMAIN + OUT_OF_DOMAIN},
                     "step_ratio_to_erm": round(statistics.mean(ratios), 3)}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
