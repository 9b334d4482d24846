"""Shared pieces of the benchmarks: recording results, the demo data and stores they run on, timing, profiles.

Every result is one JSON object, printed on stdout as one line and appended to `benchmarks/results.jsonl` with the
exact command, the git revision, the machine (CPU model, cores, GPU), the library versions, the load average at the
start (the CPUs here are shared: read absolute times with it) and a timestamp. The keys match the other writers of
that file (`store_layout.py`, `augment_placement.py`): `benchmark`, `command`, `git_rev`, `machine`, `versions`,
`time`.

Timing rules: synchronise the device before reading the clock (`sync`), interleave the variants being compared
(`interleaved`: ABCABC..., the order rotated every round) so that drift of a shared machine cancels, report medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results.jsonl"
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "maskgen-bench"
DEFAULT_DEMO = Path(tempfile.gettempdir()) / "bench-demo"
#: `--extractor` choices. `anatomix-random` is the default anatomix architecture with random weights: the same
#: cost as the pretrained network (timing only; its features carry no anatomy, so Dice figures are meaningless).
EXTRACTORS = ("mind", "anatomix", "auto", "anatomix-random")

_COMMAND: str | None = None  # set by `python -m benchmarks` so records show the command the user typed


# -- provenance ---------------------------------------------------------------------------------------------------
def set_command(argv: Sequence[str]) -> None:
    global _COMMAND
    _COMMAND = " ".join(shlex.quote(a) for a in argv)


def command_line() -> str:
    if _COMMAND is not None:
        return _COMMAND
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return " ".join(shlex.quote(a) for a in ["python", "-m", spec.name, *sys.argv[1:]])
    return " ".join(shlex.quote(a) for a in ["python", *sys.argv])


def git_rev() -> str:
    """Short revision of the working tree, `+dirty` when it has uncommitted changes."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") or "unknown"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = None
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count()
    return {"node": platform.node(), "cpu": cpu, "cpus": cpus, "gpu": gpu, "python": platform.python_version()}


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("torch", "zarr", "monai", "numcodecs", "numpy", "dask", "tensorstore"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


_LOAD_AT_START = load_average()


def record(benchmark: str, result: dict[str, Any], results: str | os.PathLike | None = None) -> dict[str, Any]:
    """Print `result` as one JSON line and append it, with provenance, to `results` (default results.jsonl)."""
    line = {
        "benchmark": benchmark,
        "command": command_line(),
        "git_rev": git_rev(),
        "machine": machine(),
        "versions": versions(),
        "load_average_start": _LOAD_AT_START,
        "load_average_end": load_average(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **result,
    }
    text = json.dumps(line, sort_keys=True, default=_json_default)
    print(text, flush=True)
    path = Path(results) if results else RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(text + "\n")
    return line


def _json_default(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, (set, tuple)):
        return list(v)
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def say(message: str) -> None:
    """Progress notes go to stderr so that stdout holds only the JSON lines."""
    print(message, file=sys.stderr, flush=True)


# -- arguments ----------------------------------------------------------------------------------------------------
def parser(description: str, name: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark shares (`name`: the benchmark, for the usage line)."""
    ap = argparse.ArgumentParser(prog=f"python -m benchmarks {name}", description=description,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device for the networks")
    ap.add_argument("--extractor", default="mind", choices=EXTRACTORS,
                    help="feature extractor of the store (anatomix-random: anatomix architecture, random weights)")
    ap.add_argument("--weights", default=None, help="anatomix weights file (for --extractor anatomix)")
    ap.add_argument("--demo", default=str(DEFAULT_DEMO), help="demo dataset folder (built if missing)")
    ap.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help="where stores and scratch runs are kept")
    ap.add_argument("--store", default=None, help="an existing feature store to use instead of the demo store")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads of the main process [default: 1 on --device cpu (the cores are "
                         "shared: oversubscribed threads made steps 4x slower and noisy), torch's own on cuda]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clock", default="wall", choices=tuple(CLOCKS),
                    help="wall time, or this process's CPU time (in-process CPU work on a shared machine; not cuda)")
    ap.add_argument("--profile", action="store_true", help="add a profile of the slowest variant to the record")
    ap.add_argument("--results", default=str(RESULTS), help="JSON-lines file the record is appended to")
    return ap


def setup(args: argparse.Namespace) -> None:
    import torch

    threads = args.threads or (1 if args.device == "cpu" else None)
    if threads:
        torch.set_num_threads(int(threads))
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: PyTorch sees no CUDA device here")
    if getattr(args, "clock", "wall") == "cpu" and args.device != "cpu":
        raise SystemExit("--clock cpu measures CPU work; use the wall clock with --device cuda")
    set_clock(getattr(args, "clock", "wall"))
    Path(args.workdir).mkdir(parents=True, exist_ok=True)


def settings(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The options that shape a measurement, for the record."""
    import torch

    base = {"device": args.device, "extractor": args.extractor, "torch_threads": torch.get_num_threads(),
            "clock": _CLOCK[0]}
    return {**base, **{n: getattr(args, n) for n in names}}


# -- data and stores ------------------------------------------------------------------------------------------------
def ensure_demo(path: str | os.PathLike, subjects: int = 12, seed: int = 0) -> Path:
    """The demo dataset (`maskgen demo-data`), generated once; a complete folder with the same config is reused."""
    from maskgen.demo.dataset import DemoConfig, generate_demo_dataset

    summary = generate_demo_dataset(path, DemoConfig(subjects=subjects, seed=seed))
    if not getattr(summary, "reused", False):
        say(f"built the demo dataset in {path}")
    return Path(path)


def extractor_choice(args: argparse.Namespace) -> tuple[str, str | None]:
    """(`--extractor` for maskgen, weights path) for the benchmark's `--extractor`/`--weights`."""
    if args.extractor != "anatomix-random":
        return args.extractor, args.weights
    from maskgen.extract.anatomix import AnatomixUNet
    from maskgen.extract.weights import save_anatomix_checkpoint

    path = Path(args.workdir) / "anatomix-random-seed0.pt"
    if not path.is_file():
        with fork_rng(0):
            net = AnatomixUNet()
        save_anatomix_checkpoint(net, path)
    return "anatomix", str(path)


@contextlib.contextmanager
def fork_rng(seed: int) -> Iterator[None]:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def store_path(args: argparse.Namespace, dtype: str = "float16", codec: str = "none", tag: str = "") -> Path:
    """Where the demo store of this extractor and layout lives (maskgen's default chunks, named in the path so that
    a change of the default makes a new store instead of a refusal)."""
    from maskgen.store.layout import DEFAULT_LAYOUT

    chunks = "x".join(str(c) for c in DEFAULT_LAYOUT.chunks_zyx)
    return Path(args.workdir) / f"demo-{args.extractor}-{dtype}-{codec}-c{chunks}{tag}.zarr"


def ensure_store(
    args: argparse.Namespace, dtype: str = "float16", codec: str = "none", out: str | os.PathLike | None = None,
    workers: int = 1,
) -> Path:
    """The demo data extracted with `--extractor` into `out` (default: in the workdir), or `--store` if given.

    `maskgen extract` skips complete cases, so this is instant once the store exists.
    """
    if args.store and out is None and dtype == "float16" and codec == "none":
        return Path(args.store)
    from maskgen.extract.run import ExtractConfig, run_extract

    demo = ensure_demo(args.demo)
    path = Path(out) if out is not None else store_path(args, dtype, codec)
    name, weights = extractor_choice(args)
    cfg = ExtractConfig(dataset="demo", data_root=str(demo), out=str(path), extractor=name, weights=weights,
                        dtype=dtype, codec=codec, device=args.device, workers=workers, allow_download=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = run_extract(cfg, progress=False)
    if summary.cases_written:
        say(f"extracted {summary.cases_written} case(s) into {path} in {summary.seconds:.1f} s")
    return path


# -- timing -------------------------------------------------------------------------------------------------------
#: The clock of `timed`, `interleaved` and `lockstep`: wall time, or with `--clock cpu` the CPU time of this process
#: (all its threads). On these shared CPUs other jobs stretch wall times by 2-7x and unevenly; a one-thread process's
#: CPU time counts only its own work. Waiting (I/O, other processes such as DataLoader workers) is not counted, so
#: `cpu` suits in-process CPU work only; CUDA timings are always wall time.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_CLOCK = ["wall"]


def set_clock(name: str) -> None:
    if name not in CLOCKS:
        raise ValueError(f"unknown clock {name!r}; choose from {', '.join(CLOCKS)}")
    _CLOCK[0] = name


def clock() -> float:
    return CLOCKS[_CLOCK[0]]()


def sync(device: Any) -> None:
    """Wait for queued device work, so that the clock measures it."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: Any = "cpu") -> tuple[float, Any]:
    sync(device)
    t = clock()
    out = fn()
    sync(device)
    return clock() - t, out


def interleaved(
    fns: dict[str, Callable[[int], Any]], repeats: int, warmup: int = 1, device: Any = "cpu", rotate: bool = True,
    deadline: float | None = None, min_repeats: int = 2,
) -> dict[str, list[float]]:
    """Seconds of each call of each function, rounds interleaved (A B C, B C A, ... when `rotate`).

    Each function receives the round index (so it can pick that round's input). The first `warmup` rounds are run
    but not kept. `deadline` (a `time.monotonic()` value): no new round starts after it once `min_repeats` rounds
    are timed and another round (as long as the last one) would end after it.
    """
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    last = 0.0
    for r in range(warmup + repeats):
        if deadline is not None and r >= warmup + min_repeats and time.monotonic() + last > deadline:
            break
        t_round = time.monotonic()
        shift = r % len(names) if rotate else 0
        for name in names[shift:] + names[:shift]:
            dt, _ = timed(lambda: fns[name](r), device)
            if r >= warmup:
                times[name].append(dt)
        last = time.monotonic() - t_round
    return times


def lockstep(
    calls: dict[str, Callable[[Callable[[int, int, str], None]], Any]], device: Any = "cpu"
) -> dict[str, dict[str, float]]:
    """Seconds per item of functions that report `progress(i, n, item)` after each item, run in lockstep.

    Each function runs in its own thread, but only one thread works at a time: after its item k, a function waits
    until every other one has done its item k. So item k of every function is timed within seconds of the others,
    and the per-item ratios cancel the drift of a shared machine even when whole calls take minutes. The first
    item of each function includes its set-up (loading a run, opening the store).
    """
    import threading

    names = list(calls)
    cond = threading.Condition()
    state: dict[str, Any] = {"turn": 0, "t": clock()}
    done: set[int] = set()
    times: dict[str, dict[str, float]] = {n: {} for n in names}
    errors: dict[str, BaseException] = {}

    def advance(k: int) -> None:  # under cond
        for j in list(range(k + 1, len(names))) + list(range(0, k + 1)):
            if j not in done:
                state["turn"] = j
                break
        else:
            state["turn"] = -1
        cond.notify_all()

    def worker(k: int, name: str) -> None:
        def progress(_i: int, _n: int, item: str) -> None:
            sync(device)
            with cond:
                times[name][item] = clock() - state["t"]
                advance(k)
                cond.wait_for(lambda: state["turn"] == k)
                state["t"] = clock()

        with cond:
            cond.wait_for(lambda: state["turn"] == k)
            state["t"] = clock()
        try:
            calls[name](progress)
        except BaseException as e:  # re-raised in the caller
            errors[name] = e
        finally:
            with cond:
                done.add(k)
                advance(k)

    threads = [threading.Thread(target=worker, args=(k, n), daemon=True) for k, n in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        name, err = next(iter(errors.items()))
        raise RuntimeError(f"{name} failed in lockstep timing: {err}") from err
    return times


def stats(times: Sequence[float]) -> dict[str, Any]:
    """Median, quartiles, min and count of a list of seconds."""
    xs = sorted(times)
    if not xs:
        return {"n": 0}
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return {"median_s": statistics.median(xs), "q1_s": q[0], "q3_s": q[2], "min_s": xs[0], "n": len(xs)}


def ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """median(a) / median(b)."""
    return statistics.median(a) / statistics.median(b)


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median of the per-round ratios a[i] / b[i]: robust to slow drift of a shared machine."""
    return statistics.median(x / y for x, y in zip(a, b))


def target(name: str, value: float, limit: float, lower_is_better: bool = True, note: str = "") -> dict[str, Any]:
    met = value <= limit if lower_is_better else value >= limit
    out = {"name": name, "value": value, "limit": limit, "met": bool(met)}
    if note:
        out["note"] = note
    return out


# -- profiles -----------------------------------------------------------------------------------------------------
def torch_profile(
    fn: Callable[[], Any], device: Any = "cpu", top: int = 15, by_shape: bool = False
) -> list[dict[str, Any]]:
    """Operators taking the most self time over one call of `fn` (torch.profiler; CPU and CUDA); `by_shape`: one
    row per operator and input shapes (tells the first convolution of a network from the others)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    cuda = torch.device(device).type == "cuda"
    if cuda:
        activities.append(ProfilerActivity.CUDA)
    sync(device)
    with profile(activities=activities, record_shapes=by_shape) as prof:
        fn()
        sync(device)
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    events = prof.key_averages(group_by_input_shape=by_shape)
    rows = sorted(events, key=lambda e: getattr(e, key, 0.0), reverse=True)[:top]
    total = sum(getattr(e, key, 0.0) for e in events) or 1.0
    out = []
    for e in rows:
        row = {"op": e.key, "calls": e.count, "self_ms": round(getattr(e, key, 0.0) / 1000, 3),
               "self_pct": round(100 * getattr(e, key, 0.0) / total, 1)}
        if by_shape:
            row["input_shapes"] = str(e.input_shapes)[:120]
        out.append(row)
    return out


def python_profile(fn: Callable[[], Any], top: int = 15) -> list[dict[str, Any]]:
    """Python functions with the most cumulative time over one call of `fn` (cProfile), for I/O-bound paths."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    try:
        fn()
    finally:
        prof.disable()
    st = pstats.Stats(prof)
    rows = []
    total = max((v[3] for v in st.stats.values()), default=1.0) or 1.0  # type: ignore[attr-defined]
    for (filename, line, func), (cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{_short_path(filename)}:{line}({func})", "calls": nc,
                     "tottime_s": round(tt, 4), "cumtime_s": round(ct, 4), "cum_pct": round(100 * ct / total, 1)})
    rows.sort(key=lambda r: r["tottime_s"], reverse=True)
    return rows[:top]


def _short_path(filename: str) -> str:
    for marker in ("site-packages/", "/work/main/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename
