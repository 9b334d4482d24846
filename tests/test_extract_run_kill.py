"""Kill `maskgen extract` (a real subprocess) in the middle of a case, re-run it, compare with an uninterrupted run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from maskgen.data.layouts import discover_cases
from maskgen.data.pipeline import load_pipeline
from maskgen.demo.synthetic import make_synthetic_dataset
from maskgen.extract.run import ExtractConfig, run_extract
from maskgen.store import meta
from maskgen.store.reader import FeatureStore


# The subprocess runs the real CLI with one test-only change: the writer's completion step sleeps for one case, after
# every array of that case is written (injected here, from the test; production code has no hook for it).
_SLOW_COMPLETE = """
import sys, time
from maskgen.store import writer
target = sys.argv.pop(1)
real = writer.mark_complete
def slow(group):
    if group.attrs.get("case_id") == target:
        print("ARRAYS WRITTEN", target, file=sys.stderr, flush=True)
        time.sleep(600)
    real(group)
writer.mark_complete = slow
from maskgen.cli import main
sys.argv[0] = "maskgen"
main()
"""


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
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_COMPLETE, ids[1], *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # one worker processes the cases in dataset order: the first case is complete when the second one's arrays
        # are all written and its completion marker is not
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("ARRAYS WRITTEN"):
                break
        assert lines and lines[-1].startswith("ARRAYS WRITTEN"), "".join(lines)
        assert all(FeatureStore(out).array(ids[1], name).nchunks_initialized > 0 for name in ("image", "label"))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    assert meta.case_state(out, ids[1]) == "incomplete"
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
