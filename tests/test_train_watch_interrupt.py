"""Ctrl-C in `maskgen train` (issue 14): a real subprocess with a loader worker gets SIGINT as a terminal sends it
(to the whole process group); it stops at once with exit code 130 and one line, last.pt holds the last whole step,
no worker is left behind, and --resume continues from there."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _helpers import cli_subprocess, ctrl_c, synthetic_store
from maskgen.cli import app
from maskgen.train.checkpoint import load_checkpoint
from maskgen.train.metrics_log import read_metrics

runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return synthetic_store(tmp_path_factory.getbasetemp() / "train-tiny-store")  # shared with test_train_*.py


def _steps(out: Path) -> list[int]:
    return [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


def _train_args(store: Path, out: Path) -> list[str]:
    return ["train", "--features", str(store), "--out", str(out), "--steps", "100000", "--batch-size", "2",
            "--channels", "4", "--depth", "2", "--val-every", "0", "--num-workers", "1", "--log-interval", "1000"]


def _wait_for_steps(proc: subprocess.Popen, out: Path, n: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while len(_steps(out)) < n:
        if proc.poll() is not None:
            raise AssertionError(f"train exited early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError("train logged no steps in time")  # cli_subprocess kills the group
        time.sleep(0.1)


def test_ctrl_c_stops_within_seconds_keeps_last_pt_and_resume_continues(store, tmp_path):
    out = tmp_path / "run"
    with cli_subprocess(_train_args(store, out)) as proc:
        _wait_for_steps(proc, out, 3)
        stderr, elapsed = ctrl_c(proc)  # a terminal's Ctrl-C: the main process and its loader worker
    assert proc.returncode == 130, stderr
    assert elapsed < 5.0, f"took {elapsed:.1f} s to stop"
    assert _group_gone(proc.pid, within=10.0), "a process of the run (loader worker) is still running"
    message = stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr, stderr
    ckpt = load_checkpoint(out / "last.pt")
    step = int(ckpt["step"])
    logged = _steps(out)
    assert step >= 3 and step in (logged[-1], logged[-1] + 1), (step, logged)
    assert message == (f"Interrupted at step {step} of 100000: {out / 'last.pt'} is at step {step}. "
                       "Continue with the same command plus --resume."), message
    assert not list(out.glob("*.tmp*")) and not list(out.glob(".*"))  # no temporary file left

    result = runner.invoke(app, ["train", "--features", str(store), "--out", str(out), "--resume", "--quiet",
                                 "--stop-at", str(step + 2)])
    assert result.exit_code == 0, result.output
    assert int(load_checkpoint(out / "last.pt")["step"]) == step + 2
    assert _steps(out) == list(range(1, step + 3))  # the steps continue where the checkpoint was



def _group_gone(pgid: int, within: float) -> bool:
    """No process of the group left (the loader worker, multiprocessing's resource tracker) within `within` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _model_and_optimizer():
    import torch

    model = torch.nn.Linear(3, 1)
    return model, torch.optim.AdamW(model.parameters(), lr=0.1)


@pytest.fixture()
def python_ctrl_c():
    """Python's own Ctrl-C handler during the test (pytest may run as a background job, with SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_during_the_update_is_raised_after_it_and_a_dropped_one_at_the_next_batch(python_ctrl_c):
    import torch

    from maskgen.train.interrupt import InterruptGuard

    model, opt = _model_and_optimizer()
    model(torch.ones(2, 3)).sum().backward()
    before = model.weight.detach().clone()

    def ctrl_c_in_the_middle(*_args):
        os.kill(os.getpid(), signal.SIGINT)   # a real signal, delivered while the update runs
        time.sleep(0.05)

    with pytest.raises(KeyboardInterrupt), InterruptGuard(opt) as guard:
        hook = opt.register_step_pre_hook(ctrl_c_in_the_middle)  # after the guard's: inside the update
        opt.step()
    hook.remove()
    assert guard.updates == 1 and guard.consistent and guard.rng is not None
    assert not torch.equal(model.weight, before)  # the update was completed, not cut in half
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Python's handler is back

    class Finalised:
        def __del__(self):
            guard._on_sigint(signal.SIGINT, None)   # raised inside a finaliser: Python prints and drops it

    with InterruptGuard(opt) as guard:
        Finalised()
        with pytest.raises(KeyboardInterrupt):
            with guard.held():  # the loop's next batch
                pass
