"""Ctrl-C in `maskgen demo` (issue 14): a real `maskgen demo --quick` subprocess, interrupted while it trains, stops
within seconds with exit code 130 and one line, and keeps the run's last.pt for the next invocation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from _helpers import CLI_WITH_CTRL_C, after_ctrl_c
from maskgen.train.checkpoint import load_checkpoint
from maskgen.train.metrics_log import read_metrics

REPO = Path(__file__).resolve().parents[1]


def test_ctrl_c_while_the_demo_trains(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", CLI_WITH_CTRL_C, "demo", "--quick",
                             "--steps", "100000", "--extractor", "mind"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics = tmp_path / "runs" / "demo-quick" / "image-s0" / "metrics.jsonl"
    deadline = time.monotonic() + 600
    try:
        while len([r for r in read_metrics(metrics) if "loss" in r]) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the demo did not start training in time"
            time.sleep(0.2)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        stderr = after_ctrl_c(proc)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    assert elapsed < 5.0, f"took {elapsed:.1f} s to stop"
    assert "Traceback" not in stderr, stderr
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith("Interrupted at step ") and "run the same command again to continue" in last_line
    step = int(load_checkpoint(metrics.parent / "last.pt")["step"])
    assert step >= 2 and f"Interrupted at step {step} of 100000" in last_line

