"""`--threads` and the automatic thread count on the command line: what reaches torch, what a run records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from _helpers import synthetic_store
from maskgen import threads
from maskgen.cli import app

runner = CliRunner()
TINY = ["--steps", "2", "--batch-size", "2", "--channels", "4", "--depth", "2", "--val-every", "2", "--quiet"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return synthetic_store(tmp_path_factory.getbasetemp() / "train-tiny-store")  # shared with test_train_*.py


@pytest.fixture(autouse=True)
def _two_cpus_no_env(monkeypatch):
    """A process pinned to 2 CPUs, no cgroup quota, OMP_NUM_THREADS unset; torch and the policy restored after."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda *a: None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    yield
    threads.reset()
    torch.set_num_threads(before)


def _threads_record(run: Path) -> dict:
    """The record the run wrote before its first step (what torch used from then on)."""
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    first = [r for r in records if "threads" in r]
    assert len(first) == 1 and first[0]["step"] == 0 and records.index(first[0]) == 0, records
    return first[0]


def _train(store: Path, out: Path, *extra: str) -> dict:
    result = runner.invoke(app, ["train", "--features", str(store), "--out", str(out), *TINY, *extra])
    assert result.exit_code == 0, result.output + result.stderr
    return _threads_record(out)


def test_threads_option_wins_and_is_recorded(store, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    rec = _train(store, tmp_path / "r", "--num-workers", "0", "--threads", "1")
    assert rec["threads"] == 1 and rec["threads_source"] == "--threads"


@pytest.mark.parametrize("workers, expected", [(1, 1), (0, 2)])
def test_automatic_count_is_cores_minus_loader_workers(store, tmp_path, workers, expected):
    rec = _train(store, tmp_path / "r", "--num-workers", str(workers))
    assert rec["threads"] == expected
    assert (rec["threads_source"], rec["cpus"], rec["workers"]) == ("auto", 2, workers)


def test_omp_num_threads_of_the_user_is_respected(store, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    rec = _train(store, tmp_path / "r", "--num-workers", "1")
    assert rec["threads"] == 2 and rec["threads_source"] == "OMP_NUM_THREADS"


def test_thread_count_does_not_block_a_resume(store, tmp_path):
    out = tmp_path / "r"
    result = runner.invoke(app, ["train", "--features", str(store), "--out", str(out), *TINY, "--num-workers", "0",
                                 "--threads", "2", "--stop-at", "1"])
    assert result.exit_code == 0, result.stderr
    result = runner.invoke(app, ["train", "--features", str(store), "--out", str(out), "--resume", "--threads", "1",
                                 "--quiet"])
    assert result.exit_code == 0, result.stderr
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["threads"]) for r in records if "threads" in r] == [(0, 2), (1, 1)]
    assert "threads" not in json.loads((out / "config.json").read_text())


@pytest.mark.parametrize("command", [
    ["train", "--features", "{store}"], ["extract", "--dataset", "demo"], ["demo", "--quick"],
    ["pretrain", "--out", "{tmp}/w.pt"], ["evaluate", "{tmp}"], ["predict", "{tmp}", "-i", "{tmp}", "-o", "{tmp}/p"],
    ["sweep", "--features", "{store}", "--out", "{tmp}/s"],
])
@pytest.mark.parametrize("bad", ["0", "-1"])
def test_bad_threads_is_refused_by_every_command_naming_the_option(store, tmp_path, command, bad):
    args = [a.format(store=store, tmp=tmp_path) for a in command]
    before = sorted(tmp_path.rglob("*"))
    result = runner.invoke(app, [*args, "--threads", bad])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == f"Error: --threads {bad} must be an integer >= 1 (or leave it out: automatic)."
    assert sorted(tmp_path.rglob("*")) == before


def test_real_process_picks_the_available_cores(store, tmp_path):
    """`maskgen train` as a user runs it (no OMP_NUM_THREADS): the run records what torch used at its first step,
    the cores available to the process (this machine's affinity and cgroup quota) minus no loader worker."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    out = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-m", "maskgen", "train", "--features", str(store), "--out", str(out),
                           *TINY, "--num-workers", "0"], env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    expected = subprocess.run([sys.executable, "-c", "from maskgen.threads import available_cpus; "
                               "print(available_cpus())"], env=env, capture_output=True, text=True).stdout
    rec = _threads_record(out)
    assert (rec["threads"], rec["threads_source"], rec["cpus"]) == (int(expected), "auto", int(expected))
