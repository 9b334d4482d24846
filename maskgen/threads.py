"""How many CPU threads torch uses for one operation (intra-op), chosen from the cores this process may really use.

On a shared or containerised machine `os.cpu_count()` overstates the cores: the process may be pinned to fewer
(affinity, `taskset`, SLURM) or throttled by a cgroup CPU quota (docker `--cpus`, Kubernetes limits). OpenMP threads
beyond the cores that are really free spin against each other and against the loader workers (measured on 2 busy
cores: a 48^3 training step 2-3x slower with 2 threads than with 1, `benchmarks/threads.py`).

Precedence (the first that is set wins), recorded as `source`:
1. `--threads N` of the command (`requested`; N >= 1);
2. the `OMP_NUM_THREADS` environment variable, when it is a positive integer (the user's explicit choice, as
   torch itself reads it);
3. automatic: `available_cpus()` minus the worker processes of the stage (loader workers: each of them runs one
   torch thread, `maskgen.train.loader`), at least 1.

The CLI calls `configure(requested, workers)` once at the start of a command (before any parallel work, so that the
inter-op pool can still be sized too); stages that learn their worker count later (training: the loader workers;
evaluation: none) call `reconfigure(workers)`, which re-applies the same policy and does nothing when no command
configured threads (library use keeps whatever the caller set). `current()` is the record saved with a run.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from maskgen.errors import OptionError

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class ThreadChoice:
    threads: int        # intra-op threads of torch
    source: str         # "--threads" | "OMP_NUM_THREADS" | "auto"
    cpus: int           # available_cpus() when it was chosen
    workers: int        # worker processes of the stage it was chosen for


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _v2_quota(folder: Path) -> float | None:
    """CPUs allowed by a cgroup v2 `cpu.max` ("QUOTA PERIOD" or "max PERIOD") in `folder`; None: no limit."""
    text = _read(folder / "cpu.max")
    if not text:
        return None
    parts = text.split()
    try:
        if parts[0] == "max":
            return None
        quota, period = int(parts[0]), int(parts[1]) if len(parts) > 1 else 100_000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(folder: Path) -> float | None:
    """CPUs allowed by cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us` in `folder` (quota -1: no limit)."""
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    try:
        q, p = int(quota or ""), int(period or "")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _own_paths(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """This process's cgroup path (v2 `0::PATH`) and cpu controller path (v1 `N:cpu,cpuacct:PATH`) from
    /proc/self/cgroup; None where absent."""
    v2 = v1 = None
    for line in (_read(proc_cgroup) or "").splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        if fields[0] == "0" and fields[1] == "":
            v2 = fields[2]
        elif "cpu" in fields[1].split(","):
            v1 = fields[2]
    return v2, v1


def _with_ancestors(base: Path, own: str | None) -> list[Path]:
    """`base`, and the folders of the own cgroup path under it and of its ancestors (a limit on any of them holds)."""
    folders = [base]
    parts = [p for p in (own or "").split("/") if p]
    folders += [base.joinpath(*parts[:i]) for i in range(1, len(parts) + 1)]
    return folders


def cgroup_cpu_quota(root: Path | str = CGROUP_ROOT, proc_cgroup: Path | str = PROC_SELF_CGROUP) -> float | None:
    """The CPU quota (in CPUs, e.g. 1.5) of this process's cgroup, v2 (`root/cpu.max`) or v1
    (`root/cpu/cpu.cfs_quota_us`, `root/cpu,cpuacct/...`, or the files directly in `root`); the smallest limit
    found on the own cgroup or its ancestors; None when there is none (or no cgroup file system)."""
    root = Path(root)
    v2_path, v1_path = _own_paths(Path(proc_cgroup))
    limits = [_v2_quota(f) for f in _with_ancestors(root, v2_path)]
    for base in (root, root / "cpu", root / "cpu,cpuacct"):
        limits += [_v1_quota(f) for f in _with_ancestors(base, v1_path)]
    found = [q for q in limits if q is not None]
    return min(found) if found else None


def affinity_cpus() -> int:
    """CPUs this process may run on (its affinity mask; `os.cpu_count()` where the OS has no affinity call)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def available_cpus(root: Path | str = CGROUP_ROOT, proc_cgroup: Path | str = PROC_SELF_CGROUP) -> int:
    """Cores this process can really use: the affinity mask, capped by the cgroup CPU quota rounded down (a quota
    of 1.5 CPUs gives 1: a second busy thread would be throttled), at least 1."""
    cpus = affinity_cpus()
    quota = cgroup_cpu_quota(root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return cpus


def check_threads(requested: Any) -> int | None:
    """`requested` (--threads) as an int >= 1, or None; an OptionError on the field `threads` otherwise."""
    if requested is None:
        return None
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise OptionError("threads", requested, "must be an integer >= 1 (or leave it out: automatic).")
    return requested


def env_threads(env: Mapping[str, str] | None = None) -> int | None:
    """OMP_NUM_THREADS as a positive integer, or None (unset, empty, or not a positive integer: ignored)."""
    text = (os.environ if env is None else env).get("OMP_NUM_THREADS", "").strip()
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value >= 1 else None


def choose_threads(workers: int, requested: int | None = None, env: Mapping[str, str] | None = None,
                   cpus: int | None = None, parallel: int = 1) -> ThreadChoice:
    """The intra-op thread count for a stage with `workers` worker processes (see the module doc's precedence);
    `parallel`: operations that run at once and share the remaining cores (extraction's --workers threads)."""
    requested = check_threads(requested)
    workers, parallel = max(0, int(workers)), max(1, int(parallel))
    cpus = available_cpus() if cpus is None else int(cpus)
    if requested is not None:
        return ThreadChoice(requested, "--threads", cpus, workers)
    from_env = env_threads(env)
    if from_env is not None:
        return ThreadChoice(from_env, "OMP_NUM_THREADS", cpus, workers)
    return ThreadChoice(max(1, (cpus - workers) // parallel), "auto", cpus, workers)


_policy: dict[str, Any] = {"configured": False, "requested": None, "current": None, "interop": None}


def apply_threads(choice: ThreadChoice) -> ThreadChoice:
    """Set torch's intra-op threads to `choice.threads`; size the inter-op pool once too, where torch still allows
    it (it must happen before any parallel work; later calls keep the pool as it is)."""
    import torch

    torch.set_num_threads(choice.threads)
    if _policy["interop"] is None:
        try:
            torch.set_num_interop_threads(choice.threads)
            _policy["interop"] = choice.threads
        except RuntimeError:  # parallel work has started (or it was set before): the pool keeps its size
            _policy["interop"] = torch.get_num_interop_threads()
    _policy["current"] = choice
    return choice


def configure(requested: int | None = None, workers: int = 0) -> ThreadChoice:
    """A command's thread policy: remember `requested` (--threads) and apply the choice for `workers`."""
    choice = choose_threads(workers, requested)
    _policy.update(configured=True, requested=requested)
    return apply_threads(choice)


def reconfigure(workers: int, parallel: int = 1) -> ThreadChoice | None:
    """Re-apply the command's policy for a stage with `workers` worker processes (and `parallel` operations at
    once); None (and nothing changes) when no command configured threads."""
    if not _policy["configured"]:
        return None
    return apply_threads(choose_threads(workers, _policy["requested"], parallel=parallel))


def worker_threads(parallel: int) -> int:
    """Torch threads for each of `parallel` worker processes that share the cores (extraction --parallel processes):
    --threads (or OMP_NUM_THREADS) as given, else the available cores divided among them."""
    return choose_threads(0, _policy["requested"], parallel=parallel).threads


def one_thread_worker_init(worker_id: int) -> None:  # noqa: ARG001 - DataLoader's worker_init_fn signature
    """worker_init_fn of DataLoader workers: one torch thread each (the parallelism is the worker processes)."""
    import torch

    torch.set_num_threads(1)


def current() -> dict[str, Any]:
    """What torch uses now, for a run's records: {"threads", "interop_threads", and, when a command chose it,
    "threads_source", "cpus", "workers"}."""
    import torch

    record: dict[str, Any] = {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads()}
    choice = _policy["current"]
    if choice is not None and choice.threads == record["threads"]:
        info = asdict(choice)
        record.update(threads_source=info["source"], cpus=info["cpus"], workers=info["workers"])
    return record


def reset() -> None:
    """Forget the command's policy (tests; a library caller that wants its own settings back)."""
    _policy.update(configured=False, requested=None, current=None)
