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


def _read(run: Any, case_id: str) -> dict[str, Any]:
    """What `evaluate_run` reads for a case (`LoadedRun.read_case`; the whole case in trees before it existed)."""
    return run.read_case(case_id) if hasattr(run, "read_case") else run.store.read_case(case_id)


def overhead_split(runs: dict[str, Path], split: str, overlap: float, device: str, cases: int,
                   repeats: int) -> dict[str, Any]:
    """Where MaskGen's extra time per case goes, interleaved on the first `cases` cases of `split`: the store read
    (`read_*`), the sliding-window inference (`segment_*`, `LoadedRun.segment`) and the bare network on the same
    windows (`network_*`: the window batches `segment` feeds the model, as random tensors already on the device,
    no data path), so that the wider first convolution (network_maskgen / network_erm) is told apart from the data
    path (reading features, per-window normalisation, window gathering: segment minus network)."""
    import torch

    from maskgen.evaluate.runs import labelled_cases, open_run
    from maskgen.train.inference import autocast

    loaded = {n: open_run(p, "last", device) for n, p in runs.items()}
    infos = labelled_cases(loaded["erm"].store, split)[:cases]
    data = {n: [_read(r, c.case_id) for c in infos] for n, r in loaded.items()}
    shapes: dict[str, list[tuple[int, ...]]] = {}
    for n, r in loaded.items():  # the window batches segment() feeds the model, recorded once
        seen: list[tuple[int, ...]] = []
        r.segment(data[n][0]["image"], data[n][0]["features"], r.stats(infos[0]), overlap,
                  model=lambda z, seen=seen, m=r.model: (seen.append(tuple(z.shape)), m(z))[1])
        shapes[n] = seen
    windows = {n: [torch.rand(s, device=loaded[n].device) for s in sorted(set(v))] for n, v in shapes.items()}
    by_shape = {n: {tuple(w.shape): w for w in ws} for n, ws in windows.items()}

    def network(n: str) -> Callable[[int], Any]:
        r = loaded[n]

        def run(_round: int) -> None:
            with torch.no_grad(), autocast(r.device):
                for s in shapes[n]:
                    r.model(by_shape[n][s])
        return run

    def case(n: str, what: str) -> Callable[[int], Any]:
        r = loaded[n]
        if what == "read":
            return lambda k: _read(r, infos[k % len(infos)].case_id)
        return lambda k: r.segment(data[n][k % len(infos)]["image"], data[n][k % len(infos)]["features"],
                                   r.stats(infos[k % len(infos)]), overlap)

    fns = {f"{what}_{n}": case(n, what) for what in ("read", "segment") for n in loaded}
    fns.update({f"network_{n}": network(n) for n in loaded})
    times = common.interleaved(fns, repeats, 1, loaded["erm"].device)
    pct = {what: 100 * (common.paired_ratio(times[f"{what}_maskgen"], times[f"{what}_erm"]) - 1)
           for what in ("read", "segment", "network")}
    med = {k: statistics.median(v) for k, v in times.items()}
    extra = med["segment_maskgen"] - med["segment_erm"]
    wider = med["network_maskgen"] - med["network_erm"]
    return {"cases": [c.case_id for c in infos], "windows_per_case": sum(s[0] for s in shapes["erm"]),
            "window_batch_shapes": {n: sorted(set(v)) for n, v in shapes.items()},
            "seconds": {k: common.stats(v) for k, v in times.items()}, "maskgen_over_erm_pct": pct,
            "segment_extra_s": extra, "of_which_network_s": wider, "of_which_data_path_s": extra - wider,
            "data_path_pct_of_erm_segment": 100 * (extra - wider) / med["segment_erm"]}


def extractor_seconds(run_dir: Path, inputs: Path, device: str, weights: str | None, repeats: int = 2
                      ) -> dict[str, Any]:
    """Seconds of the run's extractor (`features_for`, what `predict_files` runs per file) on each preprocessed
    input, the median of `repeats` per file."""
    from maskgen.data.preprocess import preprocess_image_file
    from maskgen.evaluate.predict import input_files
    from maskgen.evaluate.runs import features_for, open_run, run_extractor

    run = open_run(run_dir, "last", device)
    extractor = run_extractor(run, weights)
    per_file = []
    for path in input_files(inputs):
        image = preprocess_image_file(path, run.store.pipeline).image
        features_for(run, extractor, image)  # warm-up (first call: allocations, lazy imports)
        per_file.append(statistics.median(common.timed(lambda: features_for(run, extractor, image), device)[0]
                                          for _ in range(repeats)))
    return {"per_file_s": per_file, "median_s": statistics.median(per_file)}


def with_extractor_share(predict: dict[str, Any], extractor: dict[str, Any]) -> dict[str, Any]:
    """The predict record with the extractor's seconds, its share of MaskGen's time per case and the overhead over
    ERM without it (the network's wider input and the data path only)."""
    erm, mg, ext = (predict["per_case"]["erm"]["median_s"], predict["per_case"]["maskgen"]["median_s"],
                    extractor["median_s"])
    return {**predict, "extractor": extractor, "extractor_share_of_maskgen_pct": 100 * ext / mg,
            "overhead_without_extractor_pct": 100 * ((mg - ext) / erm - 1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = common.parser(__doc__.split("\n\n")[0], "inference")
    ts.add_model_args(ap)
    ap.add_argument("--split", default="test", help="split evaluated (demo: val 4 cases, test 12)")
    ap.add_argument("--predict-files", type=int, default=6, help="NIfTI files for the predict measurement (0: skip)")
    ap.add_argument("--rounds", type=int, default=1, help="timed rounds (each: every case of both variants)")
    ap.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (the paper's validation: 0.5)")
    ap.add_argument("--train-steps", type=int, default=2, help="training steps of the two runs (cost only)")
    ap.add_argument("--split-cases", type=int, default=3,
                    help="cases of the overhead split (read / segment / bare network; 0: skip)")
    ap.add_argument("--split-repeats", type=int, default=6, help="interleaved rounds of the overhead split")
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
            weights = common.extractor_choice(args)[1]
            result["predict"] = with_extractor_share(
                measure("predict", runs, inputs=inputs, weights=weights, **where),
                extractor_seconds(runs["maskgen"], inputs, args.device, weights))
        else:
            common.say(f"inference: predict_files skipped: the store's NIfTI inputs are not under --demo {args.demo}")
        shutil.rmtree(inputs, ignore_errors=True)
    if args.split_cases > 0:
        common.say("inference: overhead split")
        result["split"] = overhead_split(runs, args.split, args.overlap, args.device, args.split_cases,
                                         args.split_repeats)
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
        data = _read(run, info.case_id)
        result["profile"] = {"what": f"LoadedRun.segment({info.case_id}), MaskGen",
                             "ops": common.torch_profile(lambda: run.segment(data["image"], data["features"],
                                                                             run.stats(info), args.overlap),
                                                         args.device, top=15, by_shape=True)}
    for p in runs.values():
        shutil.rmtree(p, ignore_errors=True)
    return common.record("inference", result, args.results)


if __name__ == "__main__":
    main()
