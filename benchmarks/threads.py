"""CPU threads (issue 16.4, issue 14): torch intra-op threads against the cores that are really free.

Two measurements, each on an idle machine and on one loaded by a second `maskgen train` (the demo's CPU training:
48^3 crops, batch 2, width 8, depth 3, automatic threads and loader workers), started by this script:

- `step`: one 48^3 training step (maskgen's `optimise` on a ready batch of image + 16 MIND feature channels) with 1
  and with 2 intra-op threads, interleaved round by round; ratios 2 threads / 1 thread and loaded / idle, in one run.
- `demo`: the wall time of the full `maskgen demo` (data, extraction, ERM and MaskGen training, evaluation) from
  scratch in a fresh folder, with the thread policy it picks by itself (OMP_NUM_THREADS unset) and optionally with
  `--threads N` (`--demo-threads auto,2`). Each run once: ~6-15 minutes each on 2 cores.

The machine is shared, so "idle" means "without our second training run": the load average at the start and end of
every measurement is recorded with it.

    python -m benchmarks threads                                  # step, then demo idle and loaded
    python -m benchmarks threads --parts step --repeats 8
    python -m benchmarks threads --parts demo --demo-threads auto,2
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common

QUICK_TRAIN = ["--channels", "8", "--depth", "2", "--crop-size", "32,32,32", "--batch-size", "2"]
DEMO_STORE = {False: "demo.zarr", True: "demo-quick.zarr"}
DEMO_TRAIN = ["--channels", "8", "--depth", "3", "--crop-size", "48,48,48", "--batch-size", "2", "--lr", "1e-3"]


def _env(threads_env: bool = False) -> dict[str, str]:
    """The environment of maskgen subprocesses: this checkout's code; OMP_NUM_THREADS removed (the automatic policy
    is what is measured) unless `threads_env`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(common.ROOT), *filter(None, [env.get("PYTHONPATH")])])
    if not threads_env:
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.pop(key, None)
    return env


@contextlib.contextmanager
def background_train(store: Path, workdir: Path, on: bool = True, quick: bool = False) -> Iterator[dict[str, Any] | None]:
    """A second `maskgen train` on `store` running for the duration (the load); nothing when not `on`."""
    if not on:
        yield None
        return
    out = workdir / f"load-run-{os.getpid()}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "maskgen", "train", "--features", str(store), "--out", str(out), "--steps",
           "1000000", "--val-every", "0", "--quiet", *(QUICK_TRAIN if quick else DEMO_TRAIN)]
    log = open(workdir / "load-run.log", "w")
    proc = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=_die_with_parent)
    info: dict[str, Any] = {"command": " ".join(cmd[1:])}
    try:
        _wait_for_steps(out / "metrics.jsonl", proc, 3)
        yield info
    finally:
        info["steps_done"] = _steps(out / "metrics.jsonl")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
        shutil.rmtree(out, ignore_errors=True)


def _die_with_parent() -> None:
    """In the load's process: SIGTERM when this script dies (Linux), so that no load outlives the benchmark."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _steps(metrics: Path) -> int:
    if not metrics.exists():
        return 0
    steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines() if '"loss"' in line]
    return max(steps, default=0)


def _wait_for_steps(metrics: Path, proc: subprocess.Popen, n: int, timeout: float = 600.0) -> None:
    """Until the load's training has done `n` steps (it is really loading the CPUs then)."""
    t_end = time.monotonic() + timeout
    while _steps(metrics) < n:
        if proc.poll() is not None:
            raise SystemExit(f"the load `maskgen train` exited with {proc.returncode}; see its log")
        if time.monotonic() > t_end:
            raise SystemExit("the load `maskgen train` did not start stepping in time")
        time.sleep(1.0)


def step_times(args: Any, repeats: int) -> dict[str, list[float]]:
    """Seconds per 48^3 training step with 1 and 2 intra-op threads, interleaved."""
    import torch

    from maskgen.train.step import make_loss, optimise
    from maskgen.train.unet import UNet

    torch.manual_seed(args.seed)
    model = UNet(17, 4, 8, 3).place(torch.device("cpu")).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = make_loss()
    z = torch.rand(2, 17, 48, 48, 48)
    label = torch.randint(0, 4, (2, 1, 48, 48, 48))

    def with_threads(n: int) -> Any:
        def run(_r: int) -> float:
            torch.set_num_threads(n)
            return optimise(model, optimizer, loss_fn, z, label, 1e-3, torch.device("cpu"))
        return run

    times = common.interleaved({"1": with_threads(1), "2": with_threads(2)}, repeats=repeats, warmup=1)
    torch.set_num_threads(1)
    return times


def measure_steps(args: Any, store: Path, workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for phase in ("idle", "loaded"):
        with background_train(store, workdir, on=phase == "loaded", quick=args.demo_quick) as load:
            load_start = common.load_average()
            times = step_times(args, args.repeats)
            out[phase] = {"load_average_start": load_start, "load_average_end": common.load_average(),
                          "step_s": {k: common.stats(v) for k, v in times.items()},
                          "ratio_2_over_1_threads": round(common.paired_ratio(times["2"], times["1"]), 3),
                          **({"load": load} if load else {})}
            common.say(f"step {phase}: 1 thread {statistics.median(times['1']):.2f} s, 2 threads "
                       f"{statistics.median(times['2']):.2f} s")
    for n in ("1", "2"):
        out[f"ratio_loaded_over_idle_{n}_thread"] = round(
            out["loaded"]["step_s"][n]["median_s"] / out["idle"]["step_s"][n]["median_s"], 3)
    return out


def run_demo(workdir: Path, tag: str, threads: str, quick: bool = False) -> dict[str, Any]:
    """`maskgen demo` from scratch in a fresh folder; wall time, load averages, the threads its runs used."""
    folder = workdir / f"demo-{tag}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    cmd = [sys.executable, "-m", "maskgen", "demo", *(["--quick"] if quick else []),
           *([] if threads == "auto" else ["--threads", threads])]
    load_start, t0 = common.load_average(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=folder, env=_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    (folder / "demo.log").write_text(proc.stdout + proc.stderr)
    runs = {}
    for metrics in sorted((folder / "runs").glob("*/*/metrics.jsonl")):
        first = next((json.loads(x) for x in metrics.read_text().splitlines() if '"threads"' in x), {})
        runs[metrics.parent.name] = {k: first.get(k) for k in ("threads", "threads_source", "cpus", "workers")}
    return {"command": " ".join(["maskgen", *cmd[3:]]), "returncode": proc.returncode, "wall_s": round(seconds, 1),
            "load_average_start": load_start, "load_average_end": common.load_average(), "threads_of_runs": runs,
            "tail": (proc.stdout + proc.stderr)[-600:] if proc.returncode else None}


def demo_phase(args: Any, workdir: Path, phase: str, load_store: Path | None) -> dict[str, Any]:
    """The demo once per --demo-threads variant, idle or loaded (the load trains on `load_store`)."""
    out: dict[str, Any] = {}
    for threads in args.demo_threads.split(","):
        with background_train(load_store, workdir, on=phase == "loaded", quick=args.demo_quick) as load:
            out[f"{phase}_{threads}"] = {**run_demo(workdir, f"{phase}-{threads}", threads, args.demo_quick),
                                         **({"load": load} if load else {})}
        common.say(f"demo {phase} ({threads}): {out[f'{phase}_{threads}']['wall_s']} s")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__.split("\n")[0], "threads")
    ap.add_argument("--parts", default="step,demo", help="step and/or demo")
    ap.add_argument("--repeats", type=int, default=6, help="timed rounds of the step (1 and 2 threads each)")
    ap.add_argument("--demo-threads", default="auto", help="demo variants: auto and/or thread counts, e.g. auto,2")
    ap.add_argument("--demo-quick", action="store_true", help="`maskgen demo --quick` (a check of this script)")
    args = ap.parse_args(argv)
    common.setup(args)
    from maskgen.threads import available_cpus

    workdir, parts = Path(args.workdir), set(args.parts.split(","))
    base = {"available_cpus": available_cpus(), "affinity": len(os.sched_getaffinity(0)),
            "load_train": " ".join(["maskgen train", *DEMO_TRAIN])}
    first = args.demo_threads.split(",")[0]
    store = Path(args.store) if args.store else None
    if "demo" in parts:  # idle first: it leaves a store for the loads; the loaded demo last (the longest)
        idle = demo_phase(args, workdir, "idle", None)
        common.record("threads", {**common.settings(args, "demo_threads", "demo_quick"), **base, "demo": idle},
                      args.results)
        store = store or workdir / f"demo-idle-{first}" / "cache" / DEMO_STORE[args.demo_quick]
    if "step" in parts:
        step = measure_steps(args, store or common.ensure_store(args), workdir)
        common.record("threads", {**common.settings(args, "repeats"), **base, "step": step}, args.results)
    if "demo" in parts:
        loaded = demo_phase(args, workdir, "loaded", store)
        ratios = {f"ratio_loaded_over_idle_{t}": round(loaded[f"loaded_{t}"]["wall_s"] / idle[f"idle_{t}"]["wall_s"], 3)
                  for t in args.demo_threads.split(",")}
        common.record("threads", {**common.settings(args, "demo_threads", "demo_quick"), **base,
                                  "demo": {**idle, **loaded, **ratios}}, args.results)

if __name__ == "__main__":
    common.set_command(sys.argv)
    main()
