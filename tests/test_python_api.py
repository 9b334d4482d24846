"""The Python API: `from maskgen import extract, train, evaluate, predict` gives documented callables while the stage
packages stay importable, `import maskgen` stays light, and the example of docs/python-api.md runs (issue 14)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "python-api.md"


def _python(code: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_api_names_then_submodules_in_a_fresh_process():
    result = _python("""
        import inspect, sys
        import maskgen
        heavy = ("torch", "zarr", "monai", "numpy", "nibabel")
        assert not [m for m in heavy if m in sys.modules], "import maskgen must stay light"
        from maskgen import evaluate, extract, predict, train
        assert not [m for m in heavy if m in sys.modules], "the API names must be light too"
        for fn in (extract, train, evaluate, predict):
            assert callable(fn)
        assert list(inspect.signature(train).parameters)[:2] == ["features", "out"]
        assert list(inspect.signature(extract).parameters)[:2] == ["dataset", "out"]
        assert list(inspect.signature(evaluate).parameters)[:2] == ["run", "split"]
        assert list(inspect.signature(predict).parameters)[:3] == ["run", "input", "out"]
        import maskgen.train.api, maskgen.extract.api, maskgen.evaluate.api
        for f in (maskgen.train.api.train, maskgen.extract.api.extract, maskgen.evaluate.api.evaluate,
                  maskgen.evaluate.api.predict):
            assert f.__doc__ and "Args:" in f.__doc__, f
        import maskgen.train.loop
        from maskgen.train.config import TrainConfig
        from maskgen.extract.run import ExtractConfig
        import maskgen.evaluate.predict
        assert maskgen.train is train and callable(maskgen.train) and callable(train)
        assert maskgen.train.loop.train is not train and maskgen.predict is predict
        from maskgen.errors import MaskgenError
        for call in (lambda: train("no/such/store.zarr", steps=2),
                     lambda: train("no/such/store.zarr", crop_size=16, crop_zyx=(16, 16, 16)),
                     lambda: train("no/such/store.zarr", crop_size="16,16"),
                     lambda: extract("no-such-dataset-name"),
                     lambda: evaluate("no/such/run"),
                     lambda: predict("no/such/run", "no/such/input.nii.gz", "out")):
            try:
                call()
            except MaskgenError as e:
                print("refused:", str(e).splitlines()[0])
            else:
                raise AssertionError("expected a MaskgenError")
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
    assert "features no/such/store.zarr does not exist" in result.stdout
    assert "give the crop once" in result.stdout and "crop_size '16,16' is not a size" in result.stdout
    assert result.stdout.count("refused:") == 6


def test_submodules_then_api_names_in_a_fresh_process():
    result = _python("""
        import maskgen.train.loop, maskgen.extract.run, maskgen.evaluate.evaluate
        from maskgen import evaluate, extract, predict, train
        import maskgen
        assert callable(train) and callable(extract) and callable(evaluate) and callable(predict)
        assert train is maskgen.train and hasattr(train, "loop") and hasattr(extract, "run")
        from maskgen.train.loop import train as loop_train
        assert loop_train.__module__ == "maskgen.train.loop"
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def documented_example() -> str:
    """The last ```python block of docs/python-api.md: the example the doc promises runs."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks and "from maskgen import evaluate, extract, predict, train" in blocks[-1]
    return blocks[-1]


def test_documented_example_runs_on_tiny_data(tmp_path):
    import nibabel as nib

    result = _python(documented_example(), cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "7 cases -> api-demo/demo.zarr" in out
    assert re.search(r"test flair: Dice x100 \d+\.\d", out) and "test t1: Dice x100" in out
    work = tmp_path / "api-demo"
    assert (work / "run" / "best.pt").is_file() and (work / "run" / "eval-test.json").is_file()
    assert (work / "run" / "summary-test.json").is_file()
    (label,) = list((work / "predictions").glob("*.nii.gz"))
    assert f"{work.name}/predictions/{label.name} normalised by minmax" in out
    flair = work / "data" / "imagesTr" / label.name.replace(".nii.gz", "_0000.nii.gz")
    assert nib.load(label).shape == nib.load(flair).shape
    assert set(map(int, set(nib.load(label).get_fdata().ravel()))) <= {0, 1, 2, 3}
