"""Inference cost: seconds per case for MaskGen vs ERM (the paper: +8.0%, Table 14, which includes the foundation
model's forward pass).

Two trained runs of the same UNet (ERM: image only; MaskGen: image + features, view masking) are made with a few
steps (weights do not change the cost). Then, case by case in lockstep:
- `evaluate`: `maskgen.evaluate.evaluate.evaluate_run` on `--split` (what `maskgen evaluate` runs): per case, read
  image (+ features) from the store, sliding-window inference, Dice. Features come from the cache, so MaskGen's
  extra cost is only its wider input.
- `predict`: `maskgen.evaluate.predict.predict_files` on NIfTI files (what `maskgen predict` runs on new images):
  per file, preprocess, for MaskGen run the frozen extractor, sliding-window inference, resample back, write. This is
  the deployment cost the paper's +8% describes.
Per-case seconds come from each function's own progress callback, the two variants run in lockstep case by case
(`common.lockstep`) so that the shared machine's drift cancels in the per-case ratios; the overhead is the median
per-case ratio. The first case of each call (it includes loading the run) is reported apart.

    python -m benchmarks inference
    python -m benchmarks inference --device cuda --channels 20 --depth 5 --split test
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from benchmarks import train_step as ts

PAPER_OVERHEAD_PCT = 8.0


def train_runs(args: Any, store_path: Path) -> dict[str, Path]:
    """ERM and MaskGen runs of `--train-steps` steps (validation only at the end), in the workdir."""
    from maskgen.train.loop import train

    base = ts.base_config(args, store_path).replace(steps=args.train_steps, val_every=0)
    runs = {}
    for name, cfg in (("erm", ts.variant_config("erm", base, 0.0)),
                      ("maskgen", ts.variant_config("cached", base, args.mask_rate))):
        out = Path(args.workdir) / f"inference-{name}"
        runs[name] = train(cfg.replace(out=str(out)), overwrite=True, progress=False)
    return runs


def measure(kind: str, runs: dict[str, Path], *, split: str, overlap: float, device: str, workdir: str | Path,
            rounds: int = 1, inputs: Path | None = None, weights: str | None = None,
            deadline: float | None = None) -> dict[str, Any]:
    """Per-case seconds of ERM and MaskGen run in lockstep (case k of one, then case k of the other), `rounds`
    rounds (the order swapped each round); with a `deadline` (`time.monotonic()`), no round starts that would end
    after it (once one round is done)."""
    from maskgen.evaluate.evaluate import evaluate_run
    from maskgen.evaluate.predict import predict_files

    def call(name: str) -> Callable[[Callable[[int, int, str], None]], Any]:
        if kind == "evaluate":
            return lambda cb: evaluate_run(runs[name], split, "last", overlap, device, progress=cb, write=False)
        out = Path(workdir) / f"inference-predict-{name}"
        return lambda cb: predict_files(runs[name], inputs, out, "last", overlap, device, weights=weights,
                                        progress=cb)

    names = list(runs)
    rounds_done: list[dict[str, dict[str, float]]] = []
    last = 0.0
    for r in range(rounds):
        if deadline is not None and r >= 1 and time.monotonic() + last > deadline:
            break
        t0 = time.monotonic()
        order = names if r % 2 == 0 else names[::-1]
        rounds_done.append(common.lockstep({n: call(n) for n in order}, device))
        last = time.monotonic() - t0
    for n in names:
        shutil.rmtree(Path(workdir) / f"inference-predict-{n}", ignore_errors=True)
    return summarize(rounds_done, names)


def summarize(rounds: list[dict[str, dict[str, float]]], names: list[str]) -> dict[str, Any]:
    """Per-case statistics and the MaskGen overhead (median of per-case ratios) of lockstep rounds; the first item
    of each call (it includes loading the run and, first of all, lazy imports) is reported apart."""
    items = list(rounds[0][names[0]])
    steady = items[1:]
    flat = {n: [rnd[n][c] for rnd in rounds for c in steady] for n in names}
    ratios = [rnd["maskgen"][c] / rnd["erm"][c] for rnd in rounds for c in steady]
    return {
        "per_case": {n: common.stats(flat[n]) for n in names},
        "first_case_s": {n: [rnd[n][items[0]] for rnd in rounds] for n in names},
        "cases": len(items),
        "timed_pairs": len(ratios),
        "rounds": len(rounds),
        "maskgen_overhead_pct": 100 * (statistics.median(ratios) - 1) if ratios else None,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = common.parser(__doc__.split("\n\n")[0], "inference")
    ts.add_model_args(ap)
    ap.add_argument("--split", default="test", help="split evaluated (demo: val 4 cases, test 12)")
    ap.add_argument("--predict-files", type=int, default=6, help="NIfTI files for the predict measurement (0: skip)")
    ap.add_argument("--rounds", type=int, default=1, help="timed rounds (each: every case of both variants)")
    ap.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (the paper's validation: 0.5)")
    ap.add_argument("--train-steps", type=int, default=2, help="training steps of the two runs (cost only)")
    args = ap.parse_args(argv)
    common.setup(args)

    from maskgen.store.reader import FeatureStore

    store = FeatureStore(common.ensure_store(args))
    common.say(f"inference: training two {args.train_steps}-step runs on {store.path}")
    runs = train_runs(args, store.path)
    result: dict[str, Any] = {"settings": {**common.settings(args, "split", "rounds", "overlap", "batch", "channels",
                                                              "depth", "mask_rate"), "store": str(store.path)},
                              "paper_overhead_pct": PAPER_OVERHEAD_PCT}
    common.say("inference: evaluate_run")
    where = {"split": args.split, "overlap": args.overlap, "device": args.device, "workdir": args.workdir,
             "rounds": args.rounds}
    result["evaluate"] = measure("evaluate", runs, **where)
    if args.predict_files > 0:
        inputs = Path(args.workdir) / "inference-inputs"
        shutil.rmtree(inputs, ignore_errors=True)
        inputs.mkdir(parents=True)
        for c in store.cases(split=args.split)[: args.predict_files]:
            src = (Path(args.demo) / "imagesTr" / f"{c.case_id}_0000.nii.gz").resolve()
            if src.is_file():
                (inputs / src.name).symlink_to(src)
        if any(inputs.iterdir()):
            common.say("inference: predict_files")
            result["predict"] = measure("predict", runs, inputs=inputs, weights=common.extractor_choice(args)[1],
                                        **where)
        else:
            common.say(f"inference: predict_files skipped: the store's NIfTI inputs are not under --demo {args.demo}")
        shutil.rmtree(inputs, ignore_errors=True)
    result["targets"] = [common.target("evaluate: MaskGen over ERM per case (%) [paper: +8.0]",
                                       result["evaluate"]["maskgen_overhead_pct"], PAPER_OVERHEAD_PCT)]
    if "predict" in result:
        result["targets"].append(common.target("predict (with the extractor): MaskGen over ERM per case (%) "
                                               "[paper: +8.0]", result["predict"]["maskgen_overhead_pct"],
                                               PAPER_OVERHEAD_PCT))
    if args.profile:
        from maskgen.evaluate.runs import open_run

        run = open_run(runs["maskgen"], "last", args.device)
        info = store.cases(split=args.split)[0]
        data = store.read_case(info.case_id)
        result["profile"] = {"what": f"LoadedRun.segment({info.case_id}), MaskGen",
                             "ops": common.torch_profile(lambda: run.segment(data["image"], data["features"],
                                                                             run.stats(info), args.overlap),
                                                         args.device)}
    for p in runs.values():
        shutil.rmtree(p, ignore_errors=True)
    return common.record("inference", result, args.results)


if __name__ == "__main__":
    main()
