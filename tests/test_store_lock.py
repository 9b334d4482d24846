"""The writer lock: one process fills a store at a time; a second one is told who holds it (or waits with --wait);
a stale lock is taken over. The concurrency tests start two real `maskgen extract` processes 0.3 s apart."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict

import pytest

from maskgen.demo.synthetic import make_synthetic_dataset
from maskgen.store.lock import LOCK_KEY, LockRecord, StoreLocked, WriterLock
from maskgen.store.reader import FeatureStore

N_CASES = 5  # make_synthetic_dataset(n_cases=4): two train cases, one val, two test


def _other_holder(**changes) -> LockRecord:
    return LockRecord(**{**asdict(LockRecord.mine()), "token": "other", "host": "elsewhere", "pid": 4242,
                         "user": "ann", **changes})


def _plant(path, record: LockRecord) -> None:
    (path / LOCK_KEY).parent.mkdir(parents=True, exist_ok=True)
    (path / LOCK_KEY).write_text(json.dumps(asdict(record)))


def test_second_holder_is_refused_with_the_holder_named(tmp_path):
    path = tmp_path / "s.zarr"
    with WriterLock(path) as first:
        assert first.read().token == first.record.token and first.read().pid == os.getpid()
        with pytest.raises(StoreLocked, match=rf"being written by .*@{socket.gethostname()} pid {os.getpid()}.*--wait"):
            WriterLock(path).acquire()
    assert not (path / LOCK_KEY).exists()  # released



def _eventually(predicate, timeout_s: float = 30.0):
    """The first truthy value of `predicate()`, polled every 20 ms; fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s")
        time.sleep(0.02)
    return value


def _raised(fn):
    """The exception `fn()` raises, or None."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the test inspects it
        return e
    return None


def test_heartbeat_refreshes_and_a_lost_lock_is_noticed(tmp_path):
    path = tmp_path / "s.zarr"
    lock = WriterLock(path, heartbeat_s=0.05, stale_after_s=5)
    lock.acquire()
    try:
        first = lock.read().heartbeat
        _eventually(lambda: lock.read().heartbeat > first)  # polled: a loaded machine may delay the heartbeat thread
        lock.check()
        _plant(path, _other_holder())  # someone took it over (we "stalled")
        lost = _eventually(lambda: _raised(lock.check))
        assert re.search("writer lock .* was lost .*taken over by ann@elsewhere", str(lost)), lost
    finally:
        lock.release()
    assert (path / LOCK_KEY).exists()  # not ours any more: left alone


def test_stale_locks_are_taken_over(tmp_path):
    path = tmp_path / "s.zarr"
    notes = []
    _plant(path, _other_holder(heartbeat=time.time() - 30))  # another host, no heartbeat for 30 s
    with pytest.raises(StoreLocked, match="ann@elsewhere pid 4242"):
        WriterLock(path, stale_after_s=60).acquire()
    with WriterLock(path, stale_after_s=20, on_message=notes.append) as lock:
        assert lock.read().token == lock.record.token
    assert "took over" in notes[0] and "no heartbeat for 30 s" in notes[0]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _plant(path, _other_holder(host=socket.gethostname(), pid=dead.pid))  # this host, process gone: at once
    with WriterLock(path, on_message=notes.append):
        pass
    assert f"process {dead.pid} on this host is gone" in notes[-1]


def test_waiting_holder_gets_the_lock_when_it_is_released(tmp_path):
    import threading

    path = tmp_path / "s.zarr"
    first = WriterLock(path)
    first.acquire()
    threading.Timer(0.5, first.release).start()
    notes = []
    t0 = time.monotonic()
    with WriterLock(path, poll_s=0.05, on_message=notes.append).held(wait=True):
        assert time.monotonic() - t0 >= 0.4
    assert notes and notes[0].startswith("waiting for the writer lock")


def _maskgen(*args: str) -> list[str]:
    exe = shutil.which("maskgen")
    return [exe, *args] if exe else [sys.executable, "-m", "maskgen", *args]


def _two_extracts(tmp_path, extra: list[str]) -> tuple[list[subprocess.CompletedProcess], object]:
    toml = make_synthetic_dataset(tmp_path / "syn", n_cases=4, size=32) / "pipeline.toml"
    out = tmp_path / "s.zarr"
    cmd = _maskgen("extract", "--dataset", str(toml), "--out", str(out), "--extractor", "mind", *extra)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for _ in range(2):
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        time.sleep(0.3)
    done = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return done, out


def _complete_and_valid(out) -> None:
    from maskgen.store.inspect import verify_store

    report = verify_store(out)
    assert report.ok and report.checked == N_CASES and report.incomplete == (), report
    assert not (out / LOCK_KEY).exists()
    assert FeatureStore(out).used_consolidated


def test_two_extracts_one_refused_naming_the_holder(tmp_path):
    (a, b), out = _two_extracts(tmp_path, [])
    codes = sorted([a.returncode, b.returncode])
    assert codes == [0, 1], (a.stderr, b.stderr)
    winner, loser = (a, b) if a.returncode == 0 else (b, a)
    message = " ".join(loser.stderr.split())
    assert "is being written by" in message and "--wait" in message and "Traceback" not in loser.stderr
    assert f"{N_CASES} case(s) written" in " ".join(winner.stdout.split())
    _complete_and_valid(out)


def test_two_extracts_with_wait_both_succeed(tmp_path):
    (a, b), out = _two_extracts(tmp_path, ["--wait"])
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    outputs = [" ".join(p.stdout.split()) for p in (a, b)]
    assert sorted(f"{N_CASES} case(s) written" in o for o in outputs) == [False, True], outputs
    assert any(f"0 case(s) written, {N_CASES} skipped" in o for o in outputs), outputs
    assert any("waiting for the writer lock" in " ".join(p.stderr.split()) for p in (a, b))
    _complete_and_valid(out)
