"""`maskgen sweep --scheduler`: a 4-variant tiny sweep on a dask LocalCluster of 2 CPU worker processes gives the
serial sweep's results.csv (same seeds), and a worker killed in the middle of a variant loses nothing: the scheduler
hands the task to a worker again, which continues the variant from its last.pt."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from typer.testing import CliRunner

from _helpers import synthetic_store
from maskgen.cli import app

runner = CliRunner()

GRID = ["--inputs", "image,both", "--mask-rate", "0.25,0.5,0.75", "--seeds", "0"]   # image-s0, both-mr25/50/75-s0
TINY = ["--steps", "6", "--batch-size", "2", "--channels", "4", "--depth", "2", "--crop-size", "16,16,16",
        "--val-every", "2", "--splits", "test", "--num-workers", "0", "--device", "cpu", "--quiet"]
NAMES = ["image-s0", "both-mr25-s0", "both-mr50-s0", "both-mr75-s0"]


def _sweep(store, out, *extra):
    return runner.invoke(app, [str(a) for a in ["sweep", "--features", store, "--out", out, *GRID, *TINY, *extra]])


def _kill_a_worker_mid_variant(client, out, deadline):
    """SIGKILL the worker process that runs a variant which has written last.pt but not its evaluation yet;
    returns that variant's name (None if every variant finished first)."""
    while time.time() < deadline:
        for worker, keys in client.processing().items():
            for key in keys:
                name = str(key).split("-", 3)[-1]  # maskgen-sweep-<token>-<variant>
                run = out / name
                if (run / "last.pt").is_file() and not (run / "eval-test.json").is_file():
                    pid = client.run(os.getpid, workers=[worker])[worker]
                    os.kill(pid, signal.SIGKILL)
                    return name
        if (out / "sweep-status.json").is_file() and len(json.loads((out / "sweep-status.json").read_text())
                                                        .get("done", {})) == len(NAMES):
            return None
        time.sleep(0.02)
    return None


def test_cluster_sweep_equals_the_serial_sweep_and_survives_a_killed_worker(tmp_path):
    from distributed import Client, LocalCluster

    store = synthetic_store(tmp_path / "data", n_cases=4, size=16)
    res = _sweep(store, tmp_path / "serial")
    assert res.exit_code == 0, res.output
    out = tmp_path / "cluster"
    # every worker declares a GPU, so every task asks for one (one variant per worker at a time); training is on CPU
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, resources={"GPU": 1},
                      dashboard_address=None) as cluster, Client(cluster) as client:
        done = {}
        sweep = threading.Thread(target=lambda: done.update(res=_sweep(store, out, "--scheduler",
                                                                       cluster.scheduler_address)))
        sweep.start()
        killed = _kill_a_worker_mid_variant(client, out, time.time() + 120)
        sweep.join(timeout=240)
        assert not sweep.is_alive()
    res = done["res"]
    assert res.exit_code == 0, res.output
    assert "each variant asks for one GPU" in " ".join(res.output.split())
    assert killed is not None, "every variant finished before a worker could be killed"
    status = json.loads((out / "sweep-status.json").read_text())
    assert sorted(status["done"]) == sorted(NAMES) and status["failed"] == {} and status["running"] == {}
    # the killed variant was run again from its last checkpoint, not from scratch, and trained each step once
    assert status["done"][killed]["action"] == "resumed" and status["done"][killed]["from_step"] >= 2
    steps = [r["step"] for r in map(json.loads, (out / killed / "metrics.jsonl").read_text().splitlines())
             if "loss" in r]
    assert steps == list(range(1, 7))
    assert (out / "results.csv").read_text() == (tmp_path / "serial" / "results.csv").read_text()
    # a second invocation finds everything done and trains nothing
    res = _sweep(store, tmp_path / "serial")
    assert res.exit_code == 0 and res.output.count("finished earlier, skipped") == len(NAMES)


def test_tasks_ask_for_a_gpu_only_where_workers_declare_one():
    from maskgen.evaluate.sweep_cluster import gpu_resources

    class FakeClient:
        def __init__(self, resources):
            self.info = {"workers": {f"tcp://w{i}": {"resources": r} for i, r in enumerate(resources)}}

        def scheduler_info(self):
            return self.info

    assert gpu_resources(FakeClient([{}, {}])) is None                  # CPU-only workers: no restriction
    assert gpu_resources(FakeClient([{}, {"GPU": 1}])) == {"GPU": 1}    # one GPU per variant
    assert gpu_resources(FakeClient([])) is None


def test_sweep_status_counts(tmp_path):
    from maskgen.evaluate.sweep import VariantOutcome
    from maskgen.evaluate.sweep_status import SweepStatus

    with SweepStatus(tmp_path, ["a", "b", "c"], enabled=False) as status:
        status.set_running({"a": "tcp://w1", "b": "tcp://w2"})
        assert status.line() == "sweep: 0/3 done, 2 running, 0 failed, 1 waiting"
        status.finished(VariantOutcome("a", "trained", 0, 1.0, "w1"))
        status.failed_with("b", "MaskgenError: boom")
        doc = json.loads((tmp_path / "sweep-status.json").read_text())
        assert doc["running"] == {} and doc["failed"] == {"b": "MaskgenError: boom"} and doc["waiting"] == ["c"]
        status.set_running({"b": "tcp://w1"})  # b is tried again
        assert status.attempts == {"a": 1, "b": 2} and "b" in status.running
    assert status.summary() == {"trained": ["a"], "resumed": [], "skipped": [], "evaluated": ["a"], "failed": ["b"]}
    assert status.line() == "sweep: 1/3 done, 0 running, 1 failed, 1 waiting"
