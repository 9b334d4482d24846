"""The CPU thread policy (maskgen/threads.py): cores from affinity and the cgroup quota, minus workers; --threads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from maskgen import threads
from maskgen.errors import OptionError


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Every test leaves torch (one thread, conftest) and the policy as it found them."""
    before = torch.get_num_threads()
    yield
    threads.reset()
    torch.set_num_threads(before)


def _cgroup(tmp_path: Path, files: dict[str, str], proc: str = "0::/\n") -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc_file = tmp_path / "proc-self-cgroup"
    proc_file.write_text(proc)
    return root, proc_file


@pytest.mark.parametrize("text, expected", [
    ("max 100000\n", None),
    ("150000 100000\n", 1.5),
    ("200000 100000\n", 2.0),
    ("50000 100000\n", 0.5),
    ("garbage\n", None),
])
def test_cgroup_v2_cpu_max(tmp_path, text, expected):
    root, proc = _cgroup(tmp_path, {"cpu.max": text})
    assert threads.cgroup_cpu_quota(root, proc) == expected


@pytest.mark.parametrize("quota, period, expected", [("-1", "100000", None), ("300000", "100000", 3.0),
                                                     ("25000", "50000", 0.5)])
@pytest.mark.parametrize("folder", ["cpu", "cpu,cpuacct", "."])
def test_cgroup_v1_cfs_quota(tmp_path, folder, quota, period, expected):
    root, proc = _cgroup(tmp_path, {f"{folder}/cpu.cfs_quota_us": quota, f"{folder}/cpu.cfs_period_us": period})
    assert threads.cgroup_cpu_quota(root, proc) == expected


def test_cgroup_of_the_process_and_its_ancestors(tmp_path):
    """The limit may sit on the process's own cgroup (named in /proc/self/cgroup) or on any ancestor: the smallest
    one holds."""
    files = {"cpu.max": "max 100000", "user.slice/cpu.max": "300000 100000",
             "user.slice/job.scope/cpu.max": "max 100000", "other.slice/cpu.max": "50000 100000"}
    root, proc = _cgroup(tmp_path, files, proc="0::/user.slice/job.scope\n")
    assert threads.cgroup_cpu_quota(root, proc) == 3.0
    v1 = {"cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000",
          "cpu,cpuacct/slurm/job1/cpu.cfs_quota_us": "200000", "cpu,cpuacct/slurm/job1/cpu.cfs_period_us": "100000"}
    root, proc = _cgroup(tmp_path / "v1", v1, proc="12:cpu,cpuacct:/slurm/job1\n3:memory:/slurm/job1\n")
    assert threads.cgroup_cpu_quota(root, proc) == 2.0


def test_no_cgroup_files(tmp_path):
    assert threads.cgroup_cpu_quota(tmp_path / "absent", tmp_path / "absent-proc") is None


def test_available_cpus_affinity_and_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    root, proc = _cgroup(tmp_path, {"cpu.max": "max 100000"})
    assert threads.available_cpus(root, proc) == 8
    root, proc = _cgroup(tmp_path / "q", {"cpu.max": "250000 100000"})
    assert threads.available_cpus(root, proc) == 2   # 2.5 CPUs of quota: 2 threads (rounded down)
    root, proc = _cgroup(tmp_path / "small", {"cpu.max": "20000 100000"})
    assert threads.available_cpus(root, proc) == 1   # at least one
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    root, proc = _cgroup(tmp_path / "big", {"cpu.max": "800000 100000"})
    assert threads.available_cpus(root, proc) == 1   # pinned to one core: the quota does not add cores


def test_choose_threads_precedence():
    assert threads.choose_threads(1, None, env={}, cpus=2) == threads.ThreadChoice(1, "auto", 2, 1)
    assert threads.choose_threads(0, None, env={}, cpus=2).threads == 2
    assert threads.choose_threads(4, None, env={}, cpus=2).threads == 1      # never below one
    assert threads.choose_threads(0, None, env={}, cpus=8, parallel=3).threads == 2
    assert threads.choose_threads(1, None, env={"OMP_NUM_THREADS": "3"}, cpus=2) == threads.ThreadChoice(
        3, "OMP_NUM_THREADS", 2, 1)
    assert threads.choose_threads(1, None, env={"OMP_NUM_THREADS": "0"}, cpus=4).source == "auto"   # invalid: ignored
    assert threads.choose_threads(1, None, env={"OMP_NUM_THREADS": "x"}, cpus=4).source == "auto"
    assert threads.choose_threads(1, 5, env={"OMP_NUM_THREADS": "3"}, cpus=2) == threads.ThreadChoice(
        5, "--threads", 2, 1)


@pytest.mark.parametrize("bad", [0, -2, True, 1.5, "2"])
def test_requested_threads_checked(bad):
    with pytest.raises(OptionError) as e:
        threads.choose_threads(0, bad, env={}, cpus=2)
    assert e.value.field == "threads" and ">= 1" in str(e.value)


def test_configure_sets_torch_and_reconfigure_follows_workers(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cpus", lambda *a: 3)
    assert threads.reconfigure(1) is None and torch.get_num_threads() == 1    # no policy: nothing changes
    threads.configure(None, 0)
    assert torch.get_num_threads() == 3
    threads.reconfigure(2)
    assert torch.get_num_threads() == 1
    assert threads.current() == {"threads": 1, "interop_threads": torch.get_num_interop_threads(),
                                 "threads_source": "auto", "cpus": 3, "workers": 2}
    threads.configure(2, 0)
    threads.reconfigure(2)
    assert torch.get_num_threads() == 2 and threads.current()["threads_source"] == "--threads"
    assert threads.worker_threads(3) == 2


def test_interop_threads_are_set_once_and_guarded(monkeypatch):
    """torch refuses set_num_interop_threads after parallel work started: the policy keeps the pool, no error."""
    calls = []

    def refuse(n):
        calls.append(n)
        raise RuntimeError("Error: cannot set number of interop threads after parallel work has started")

    monkeypatch.setattr(torch, "set_num_interop_threads", refuse)
    monkeypatch.setitem(threads._policy, "interop", None)
    threads.apply_threads(threads.ThreadChoice(1, "auto", 2, 1))
    threads.apply_threads(threads.ThreadChoice(1, "auto", 2, 1))
    assert calls == [1] and threads._policy["interop"] == torch.get_num_interop_threads()
