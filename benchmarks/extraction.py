"""Extraction cost: seconds per case of `maskgen extract` against the bare extractor forward on the same volume
(overhead of reading, preprocessing and writing; target: at most 20%), and cases per minute with 1 and 2 dask
workers (`maskgen.extract.run.run_extract`, fresh stores).

Per case, interleaved case by case on the first `--cases` demo cases (after one untimed warm-up case):
- `bare_forward`: the extractor's forward on the preprocessed volume, padded as `extract_volume` pads it, already
  on the device (inference mode, bf16 autocast on CUDA when the extractor supports it), device synchronised;
- `extract_volume`: `maskgen.extract.inference.extract_volume` (adds host<->device copies, padding, NumPy output);
- `preprocess`: `maskgen.data.preprocess.preprocess_case` (NIfTI read, RAS reorientation, resampling, scaling);
- `case`: `maskgen.extract.run.process_case`, the function every dask task runs (preprocess + extract + write
  of image, features and label + completion marker), into a scratch store.
`write_and_rest` = case - preprocess - extract_volume.

    python -m benchmarks extraction                               # MIND-SSC (the offline default)
    python -m benchmarks extraction --extractor anatomix-random   # the anatomix architecture's cost
    python -m benchmarks extraction --device cuda --extractor anatomix --weights anatomix.pth
"""

from __future__ import annotations

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

OVERHEAD_TARGET_PCT = 20.0


def _bare_forward(extractor: Any, image: Any, device: Any) -> Any:
    """A callable running just the network on the padded volume (inputs on the device beforehand)."""
    import contextlib

    import numpy as np
    import torch

    from maskgen.extract.inference import pad_to_multiple

    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(device)
    padded, _ = pad_to_multiple(x, extractor.size_multiple, extractor.min_size)
    use_amp = torch.device(device).type == "cuda" and extractor.supports_autocast
    amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()

    def run() -> Any:
        with torch.inference_mode(), amp:
            return extractor(padded)

    return run


def per_case(args: Any, n_cases: int) -> dict[str, Any]:
    from maskgen.config import to_dict
    from maskgen.data.layouts import discover_cases
    from maskgen.data.pipeline import load_pipeline
    from maskgen.data.preprocess import preprocess_case
    from maskgen.extract.inference import extract_volume
    from maskgen.extract.registry import build_extractor
    from maskgen.extract.run import CaseTask, ExtractConfig, ExtractorRef, process_case, worker_extractor
    from maskgen.store import writer

    demo = common.ensure_demo(args.demo)
    pipeline = load_pipeline("demo")
    cases = discover_cases(pipeline, str(demo))[: n_cases + 1]
    name, weights = common.extractor_choice(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extractor = build_extractor(name, weights, None, args.device, allow_download=False)
    fingerprint = extractor.fingerprint()
    cfg = ExtractConfig(dataset="demo", data_root=str(demo), extractor=name, weights=weights, device=args.device,
                        allow_download=False)
    out = Path(args.workdir) / "extraction-per-case.zarr"
    shutil.rmtree(out, ignore_errors=True)
    writer.prepare_store(out, writer.root_attributes(pipeline, fingerprint, cfg.layout, extract_config=to_dict(cfg)))
    ref = ExtractorRef(fingerprint, extractor.weights_path, args.device)
    worker_extractor(ref)  # built once per process, as in a dask worker
    rows = []
    for i, case in enumerate(cases):
        task = CaseTask(str(out), case, pipeline, ref, cfg.layout)
        t_pre, pre = common.timed(lambda: preprocess_case(case, pipeline))
        bare = _bare_forward(extractor, pre.image, args.device)
        t_bare, _ = common.timed(bare, args.device)
        t_vol, _ = common.timed(lambda: extract_volume(extractor, pre.image, device=args.device), args.device)
        writer.delete_case(out, case.case_id)
        t_case, res = common.timed(lambda: process_case(task), args.device)
        if not res.ok:
            raise RuntimeError(f"case {case.case_id} failed: {res.error}")
        if i == 0:
            continue  # warm-up: first NIfTI read, first allocations, lazy imports
        rows.append({"case_id": case.case_id, "shape_zyx": list(pre.image.shape[1:]), "preprocess_s": t_pre,
                     "bare_forward_s": t_bare, "extract_volume_s": t_vol, "case_s": t_case,
                     "write_and_rest_s": t_case - t_pre - t_vol, "bytes_written": res.bytes_written})
    shutil.rmtree(out, ignore_errors=True)
    med = {k: statistics.median(r[k] for r in rows)
           for k in ("preprocess_s", "bare_forward_s", "extract_volume_s", "case_s", "write_and_rest_s")}
    total_case = sum(r["case_s"] for r in rows)
    total_bare = sum(r["bare_forward_s"] for r in rows)
    return {
        "cases": rows,
        "median": med,
        "overhead_pct_median": 100 * statistics.median(r["case_s"] / r["bare_forward_s"] - 1 for r in rows),
        "overhead_pct_total": 100 * (total_case / total_bare - 1),
        "share_of_case_pct": {k: 100 * sum(r[k] for r in rows) / total_case
                              for k in ("preprocess_s", "bare_forward_s", "extract_volume_s", "write_and_rest_s")},
        "fingerprint": {k: fingerprint.get(k) for k in ("name", "layer", "out_channels", "weights_sha256")},
    }


def throughput(args: Any, workers: int, parallel: str) -> dict[str, Any]:
    """A whole `run_extract` of the demo data into a fresh store with `workers` local dask workers (`parallel`:
    processes, spawned and each building its extractor, or threads); the wall time includes that start-up."""
    from maskgen.extract.run import ExtractConfig, run_extract

    demo = common.ensure_demo(args.demo)
    name, weights = common.extractor_choice(args)
    out = Path(args.workdir) / f"extraction-w{workers}-{parallel}.zarr"
    shutil.rmtree(out, ignore_errors=True)
    cfg = ExtractConfig(dataset="demo", data_root=str(demo), out=str(out), extractor=name, weights=weights,
                        device=args.device, workers=workers, parallel=parallel, allow_download=False)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = run_extract(cfg, progress=False)
    wall = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return {"workers": workers, "parallel": parallel if workers > 1 else "synchronous",
            "cases": summary.cases_written, "wall_s": wall, "cases_per_min": 60 * summary.cases_written / wall,
            "bytes_per_voxel": summary.bytes_per_voxel, "gb_written": summary.gb_written}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = common.parser(__doc__.split("\n\n")[0], "extraction")
    ap.add_argument("--cases", type=int, default=6, help="timed cases of the per-case measurement")
    ap.add_argument("--workers", default="1,2,2:threads",
                    help="throughput runs: worker counts, each optionally :processes (default) or :threads "
                         "('' to skip)")
    args = ap.parse_args(argv)
    common.setup(args)

    result: dict[str, Any] = {"settings": common.settings(args, "cases", "workers")}
    common.say(f"extraction: {args.extractor} on {args.device}, {args.cases} timed cases")
    result["per_case"] = per_case(args, args.cases)
    runs = [(int(w.split(":")[0]), (w.split(":") + ["processes"])[1]) for w in args.workers.split(",") if w]
    result["throughput"] = [throughput(args, w, kind) for w, kind in runs]
    one = [r for r in result["throughput"] if r["workers"] == 1]
    if one:
        for r in result["throughput"]:
            r["speedup_vs_1"] = r["cases_per_min"] / one[0]["cases_per_min"]
    result["targets"] = [common.target("extract: per-case time over the bare extractor forward (%)",
                                       result["per_case"]["overhead_pct_total"], OVERHEAD_TARGET_PCT)]
    if args.profile:
        from maskgen.data.layouts import discover_cases
        from maskgen.data.pipeline import load_pipeline
        from maskgen.config import to_dict
        from maskgen.extract.run import CaseTask, ExtractConfig, ExtractorRef, process_case
        from maskgen.store import writer

        pipeline = load_pipeline("demo")
        case = discover_cases(pipeline, args.demo)[1]
        name, weights = common.extractor_choice(args)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from maskgen.extract.registry import build_extractor

            ex = build_extractor(name, weights, None, args.device, allow_download=False)
            fp = ex.fingerprint()
        cfg = ExtractConfig(dataset="demo", data_root=args.demo, extractor=name, weights=weights, device=args.device)
        out = Path(args.workdir) / "extraction-profile.zarr"
        shutil.rmtree(out, ignore_errors=True)
        writer.prepare_store(out, writer.root_attributes(pipeline, fp, cfg.layout, extract_config=to_dict(cfg)))
        task = CaseTask(str(out), case, pipeline, ExtractorRef(fp, ex.weights_path, args.device), cfg.layout)
        process_case(task)
        writer.delete_case(out, case.case_id)
        result["profile"] = {"what": f"process_case({case.case_id})",
                             "functions": common.python_profile(lambda: process_case(task), top=20)}
        shutil.rmtree(out, ignore_errors=True)
    return common.record("extraction", result, args.results)


if __name__ == "__main__":
    main()
