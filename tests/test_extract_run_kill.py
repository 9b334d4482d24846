"""Kill `maskgen extract` (a real subprocess) in the middle of a case, re-run it, compare with an uninterrupted run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from maskgen.data.layouts import discover_cases
from maskgen.data.pipeline import load_pipeline
from maskgen.demo.synthetic import make_synthetic_dataset
from maskgen.extract.run import ExtractConfig, run_extract
from maskgen.store import writer
from maskgen.store.reader import FeatureStore


def _command(*args: str) -> list[str]:
    exe = shutil.which("maskgen")
    if exe:
        return [exe, *args]
    return [sys.executable, "-c", "from maskgen.cli import main; main()", *args]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_case_then_rerun_equals_uninterrupted(tmp_path):
    toml = make_synthetic_dataset(tmp_path / "syn", n_cases=3, size=24) / "pipeline.toml"
    ids = [c.case_id for c in discover_cases(load_pipeline(str(toml)))]
    ref = tmp_path / "ref.zarr"
    run_extract(ExtractConfig(dataset=str(toml), out=str(ref), extractor="mind"), progress=False)

    out = tmp_path / "killed.zarr"
    args = ["extract", "--dataset", str(toml), "--out", str(out), "--extractor", "mind"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", writer.SLEEP_BEFORE_COMPLETE_ENV: f"{ids[1]}:60"}
    proc = subprocess.Popen(_command(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        second = writer.case_dir(out, ids[1])
        # one worker processes the cases in dataset order: wait until the first case is complete and the second has
        # all its arrays but no complete marker
        while not (writer.case_state(out, ids[0]) == "complete" and (second / "label" / "zarr.json").exists()
                   and any((second / "label" / "c").rglob("*"))):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "extraction did not reach the second case in time"
            time.sleep(0.1)
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    assert writer.case_state(out, ids[1]) == "incomplete"
    store = FeatureStore(out)
    complete = [c.case_id for c in store.cases()]
    assert complete == [ids[0]] and not store.used_consolidated

    done = subprocess.run(_command(*args), env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{len(ids) - len(complete)} case(s) written, {len(complete)} skipped" in done.stdout.replace("\n", " ")

    a, b = FeatureStore(ref), FeatureStore(out)
    assert b.used_consolidated
    assert [c.case_id for c in a.cases()] == [c.case_id for c in b.cases()] == sorted(ids)
    for info in a.cases():
        assert info == b.case(info.case_id)
        da, db = a.read_case(info.case_id, dtype=np.float16), b.read_case(info.case_id, dtype=np.float16)
        for key in ("image", "features", "label"):
            np.testing.assert_array_equal(da[key], db[key])
