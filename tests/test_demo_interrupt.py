"""Ctrl-C in `maskgen demo` (issue 14): a real `maskgen demo --quick` subprocess, interrupted while it trains, stops
within seconds with exit code 130 and one line, and keeps the run's last.pt for the next invocation."""

from __future__ import annotations

import time

from _helpers import cli_subprocess, ctrl_c
from maskgen.train.checkpoint import load_checkpoint
from maskgen.train.metrics_log import read_metrics


def test_ctrl_c_while_the_demo_trains(tmp_path):
    metrics = tmp_path / "runs" / "demo-quick" / "image-s0" / "metrics.jsonl"
    deadline = time.monotonic() + 600
    with cli_subprocess(["demo", "--quick", "--steps", "100000", "--extractor", "mind"], cwd=tmp_path) as proc:
        while len([r for r in read_metrics(metrics) if "loss" in r]) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the demo did not start training in time"
            time.sleep(0.2)
        stderr, elapsed = ctrl_c(proc)
    assert proc.returncode == 130, stderr
    assert elapsed < 5.0, f"took {elapsed:.1f} s to stop"
    assert "Traceback" not in stderr, stderr
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith("Interrupted at step ") and "run the same command again to continue" in last_line
    step = int(load_checkpoint(metrics.parent / "last.pt")["step"])
    assert step >= 2 and f"Interrupted at step {step} of 100000" in last_line

