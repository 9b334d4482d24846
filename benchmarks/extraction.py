"""Extraction cost: `maskgen extract` (one worker: the read / forward / write pipeline of
`maskgen.extract.run.run_pipelined`) against the bare extractor forward on the same volumes (target: at most +20%),
the profile split per stage, the disk's read + write bound (the CUDA criterion), and cases per minute with 1 and 2
dask workers.

Rounds (after one untimed warm-up case), each on the first `--cases` demo cases, the order of the two arms rotated:
- `bare`: the extractor's forward on each preprocessed volume, padded as `extract_volume` pads it, already on the
  device (inference mode, bf16 autocast on CUDA when the extractor supports it), device synchronised; summed;
- `pipeline`: `run_pipelined` on the same cases into a fresh scratch store (read + preprocess, forward + statistics
  + float16 cast, write, overlapped); wall time.
`overhead_pct` = median over rounds of pipeline / bare - 1 (wall). `cpu_overhead_pct` = the same in CPU seconds of
the process: the extra work the pipeline hides only when a core is free for it (on a saturated machine the wall
ratio tends to it). The per-stage busy seconds of the pipeline and a serial per-case split (`load_case`,
`extract_case`, `write_stage`, each timed alone, wall and process CPU time) show what bounds it.

Disk bound: bytes read per case (the input NIfTI files) and written (the case group), over the read and write
throughput of the workdir's disk measured here (a file of the case's size, written with fsync, read back after
dropping it from the page cache where allowed). On CUDA the forward is milliseconds: judge there by cases/s against
`disk_bound_cases_per_s` and against the load stage's own rate (`load_bound_cases_per_s`).

    python -m benchmarks extraction                               # MIND-SSC (the offline default)
    python -m benchmarks extraction --extractor anatomix-random   # the anatomix architecture's cost
    python -m benchmarks extraction --device cuda --extractor anatomix --weights anatomix.pth
"""

from __future__ import annotations

import os
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


class Setup:
    """The demo cases, the extractor (built once, as in a worker) and a scratch store for them."""

    def __init__(self, args: Any, n_cases: int) -> None:
        from maskgen.config import to_dict
        from maskgen.data.layouts import discover_cases
        from maskgen.data.pipeline import load_pipeline
        from maskgen.extract.registry import build_extractor
        from maskgen.extract.run import ExtractConfig, ExtractorRef, worker_extractor
        from maskgen.store import writer

        demo = common.ensure_demo(args.demo)
        self.pipeline = load_pipeline("demo")
        self.cases = discover_cases(self.pipeline, str(demo))[: n_cases + 1]
        name, weights = common.extractor_choice(args)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.extractor = build_extractor(name, weights, None, args.device, allow_download=False)
        self.fingerprint = self.extractor.fingerprint()
        cfg = ExtractConfig(dataset="demo", data_root=str(demo), extractor=name, weights=weights,
                            device=args.device, allow_download=False)
        self.layout, self.device = cfg.layout, args.device
        self.out = Path(args.workdir) / "extraction-scratch.zarr"
        shutil.rmtree(self.out, ignore_errors=True)
        writer.prepare_store(self.out, writer.root_attributes(self.pipeline, self.fingerprint, self.layout,
                                                              extract_config=to_dict(cfg)))
        self.ref = ExtractorRef(self.fingerprint, self.extractor.weights_path, args.device)
        worker_extractor(self.ref)  # built once per process, as in a worker

    def tasks(self, cases: list) -> list:
        from maskgen.extract.run import CaseTask

        return [CaseTask(str(self.out), c, self.pipeline, self.ref, self.layout) for c in cases]

    def clear(self, cases: list) -> None:
        from maskgen.store import writer

        for c in cases:
            writer.delete_case(self.out, c.case_id)


def serial_split(s: Setup, args: Any) -> list[dict[str, Any]]:
    """Each stage timed alone, case by case (the first case is an untimed warm-up)."""
    from maskgen.extract.run import extract_case, load_case, write_stage

    rows = []
    for i, task in enumerate(s.tasks(s.cases)):
        s.clear([task.case])
        (t_load, c_load), stage = _timed_cpu(lambda: load_case(task), args.device)
        bare = _bare_forward(s.extractor, stage.image, args.device)
        (t_bare, c_bare), _ = _timed_cpu(bare, args.device)
        (t_ext, c_ext), stage = _timed_cpu(lambda: extract_case(stage), args.device)
        (t_write, c_write), res = _timed_cpu(lambda: write_stage(stage), args.device)
        if not res.ok:
            raise RuntimeError(f"case {task.case.case_id} failed: {res.error}")
        if i:
            rows.append({"case_id": task.case.case_id, "shape_zyx": list(stage.image.shape[1:]), "load_s": t_load,
                         "bare_forward_s": t_bare, "extract_s": t_ext, "write_s": t_write,
                         "cpu_s": {"load": c_load, "bare_forward": c_bare, "extract": c_ext, "write": c_write},
                         "bytes_written": res.bytes_written,
                         "bytes_read": sum(os.path.getsize(p) for p in (task.case.image, task.case.label) if p)})
    return rows


def _timed_cpu(fn: Any, device: Any) -> tuple[tuple[float, float], Any]:
    """((wall seconds, CPU seconds of the whole process), result): run alone, a stage's CPU time includes its helper
    threads (zarr's I/O and codec threads), and does not grow while the process waits for a busy CPU."""
    cpu0 = time.process_time()
    wall, out = common.timed(fn, device)
    return (wall, time.process_time() - cpu0), out


def pipeline_rounds(s: Setup, args: Any, rounds: int) -> dict[str, Any]:
    """`bare` and `pipeline` arms on the same cases, interleaved round by round (order rotated)."""
    from maskgen.data.preprocess import preprocess_case
    from maskgen.extract.run import run_pipelined

    cases = s.cases[1:]
    images = [preprocess_case(c, s.pipeline).image for c in cases]
    forwards = [_bare_forward(s.extractor, im, args.device) for im in images]
    per_round = []
    for r in range(rounds):
        arms: dict[str, Any] = {}
        for arm in (("bare", "pipeline") if r % 2 == 0 else ("pipeline", "bare")):
            if arm == "bare":
                cpu0 = time.process_time()
                arms["bare_s"] = sum(common.timed(f, args.device)[0] for f in forwards)
                arms["bare_cpu_s"] = time.process_time() - cpu0
            else:
                s.clear(cases)
                results: list = []
                t0, cpu0 = time.perf_counter(), time.process_time()
                run_pipelined(s.tasks(cases), results.append)
                common.sync(args.device)
                arms["pipeline_s"] = time.perf_counter() - t0
                arms["pipeline_cpu_s"] = time.process_time() - cpu0
                bad = [x for x in results if not x.ok]
                if bad:
                    raise RuntimeError(f"pipeline failed: {bad[0].case_id}: {bad[0].error}")
                arms["stage_s"] = {k: sum(x.stage_s.get(k, 0.0) for x in results) for k in ("load", "extract", "write")}
        arms["overhead_pct"] = 100 * (arms["pipeline_s"] / arms["bare_s"] - 1)
        arms["cpu_overhead_pct"] = 100 * (arms["pipeline_cpu_s"] / arms["bare_cpu_s"] - 1)
        per_round.append(arms)
    return {"cases": len(cases), "rounds": per_round,
            "overhead_pct_median": statistics.median(r["overhead_pct"] for r in per_round),
            "cpu_overhead_pct_median": statistics.median(r["cpu_overhead_pct"] for r in per_round),
            "pipeline_s_median": statistics.median(r["pipeline_s"] for r in per_round),
            "bare_s_median": statistics.median(r["bare_s"] for r in per_round)}


def disk_throughput(workdir: str, nbytes: int, repeats: int = 3) -> dict[str, float]:
    """Write (with fsync) and read back a file of `nbytes` in the workdir: MB/s, best of `repeats`."""
    path = Path(workdir) / "extraction-disk-probe.bin"
    data = os.urandom(min(nbytes, 64 * 2**20)) * max(1, nbytes // (64 * 2**20))
    writes, reads = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        writes.append(time.perf_counter() - t0)
        with open(path, "rb") as f:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # best effort: from the disk, not RAM
            t0 = time.perf_counter()
            while f.read(2**24):
                pass
        reads.append(time.perf_counter() - t0)
    path.unlink(missing_ok=True)
    return {"bytes": len(data), "write_mb_s": len(data) / min(writes) / 1e6, "read_mb_s": len(data) / min(reads) / 1e6}


def bounds(rows: list[dict[str, Any]], disk: dict[str, float], rounds: dict[str, Any]) -> dict[str, Any]:
    read_b = statistics.mean(r["bytes_read"] for r in rows)
    write_b = statistics.mean(r["bytes_written"] for r in rows)
    disk_s = read_b / (disk["read_mb_s"] * 1e6) + write_b / (disk["write_mb_s"] * 1e6)
    achieved = rounds["cases"] / rounds["pipeline_s_median"]
    return {"bytes_read_per_case": read_b, "bytes_written_per_case": write_b,
            "disk_bound_cases_per_s": 1 / disk_s,
            "load_bound_cases_per_s": 1 / statistics.mean(r["load_s"] for r in rows),
            "write_bound_cases_per_s": 1 / statistics.mean(r["write_s"] for r in rows),
            "forward_bound_cases_per_s": 1 / statistics.mean(r["bare_forward_s"] for r in rows),
            "achieved_cases_per_s": achieved, "achieved_over_disk_bound": achieved * disk_s}


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
    return {"workers": workers, "parallel": parallel if workers > 1 else "pipeline",
            "cases": summary.cases_written, "wall_s": wall, "cases_per_min": 60 * summary.cases_written / wall,
            "stage_seconds": summary.stage_seconds, "bytes_per_voxel": summary.bytes_per_voxel,
            "gb_written": summary.gb_written}


def _split(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Shares of the serial case time (wall) and, per stage, CPU seconds over the bare forward's CPU seconds."""
    total = sum(r["load_s"] + r["extract_s"] + r["write_s"] for r in rows)
    wall = {k: 100 * sum(r[k] for r in rows) / total for k in ("load_s", "bare_forward_s", "extract_s", "write_s")}
    bare_cpu = sum(r["cpu_s"]["bare_forward"] for r in rows)
    cpu = {k: 100 * sum(r["cpu_s"][k] for r in rows) / bare_cpu for k in ("load", "extract", "write")}
    return {"share_of_serial_case_pct": wall, "cpu_over_bare_forward_cpu_pct": cpu}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = common.parser(__doc__.split("\n\n")[0], "extraction")
    ap.add_argument("--cases", type=int, default=6, help="timed cases per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved bare/pipeline rounds")
    ap.add_argument("--workers", default="1,2:threads",
                    help="whole-dataset runs: worker counts, each optionally :processes or :threads ('' to skip)")
    args = ap.parse_args(argv)
    common.setup(args)

    result: dict[str, Any] = {"settings": common.settings(args, "cases", "rounds", "workers")}
    common.say(f"extraction: {args.extractor} on {args.device}, {args.cases} cases x {args.rounds} rounds")
    s = Setup(args, args.cases)
    rows = serial_split(s, args)
    result["serial_split"] = {"cases": rows, **_split(rows),
                              "serial_over_bare_pct": 100 * (sum(r["load_s"] + r["extract_s"] + r["write_s"]
                                                                 for r in rows)
                                                             / sum(r["bare_forward_s"] for r in rows) - 1)}
    result["pipeline"] = pipeline_rounds(s, args, args.rounds)
    result["disk"] = disk_throughput(args.workdir, int(statistics.mean(r["bytes_written"] for r in rows)))
    result["bounds"] = bounds(rows, result["disk"], result["pipeline"])
    shutil.rmtree(s.out, ignore_errors=True)
    runs = [(int(w.split(":")[0]), (w.split(":") + ["processes"])[1]) for w in args.workers.split(",") if w]
    result["throughput"] = [throughput(args, w, kind) for w, kind in runs]
    result["fingerprint"] = {k: s.fingerprint.get(k) for k in ("name", "layer", "out_channels", "weights_sha256")}
    result["targets"] = [common.target("extract: pipelined time over the bare extractor forward (%)",
                                       result["pipeline"]["overhead_pct_median"], OVERHEAD_TARGET_PCT)]
    if args.profile:
        from maskgen.extract.run import run_pipelined

        cases = s.cases[1:]
        s2 = Setup(args, args.cases)
        result["profile"] = {"what": f"run_pipelined({len(cases)} cases), main thread (the forward's)",
                             "functions": common.python_profile(lambda: run_pipelined(s2.tasks(cases), lambda r: None),
                                                                top=20)}
        shutil.rmtree(s2.out, ignore_errors=True)
    return common.record("extraction", result, args.results)


if __name__ == "__main__":
    main()
