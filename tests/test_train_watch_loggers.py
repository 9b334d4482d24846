"""`maskgen train --logger tensorboard|mlflow` (issue 14): real tiny runs, read back with the libraries' own readers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _helpers import synthetic_store
from maskgen.cli import app
from maskgen.train.metrics_log import read_metrics

runner = CliRunner()
TINY = ["--steps", "4", "--batch-size", "2", "--channels", "4", "--depth", "2", "--val-every", "2",
        "--num-workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return synthetic_store(tmp_path_factory.getbasetemp() / "train-tiny-store")  # shared with test_train_*.py


def _train(store: Path, out: Path, *extra: str) -> None:
    result = runner.invoke(app, ["train", "--features", str(store), "--out", str(out), *TINY, *extra])
    assert result.exit_code == 0, result.output


def _expected(out: Path) -> tuple[dict[str, list[tuple[int, float]]], list[str]]:
    """{metric: [(step, value)]} of metrics.jsonl as the trackers name them, and the classes scored."""
    want: dict[str, list[tuple[int, float]]] = {}
    classes = ["class1", "class2"]
    for r in read_metrics(out / "metrics.jsonl"):
        for key in ("loss", "lr", "crops_per_s", "data_s", "val_dice", "val_cases"):
            if r.get(key) is not None:
                want.setdefault(key, []).append((r["step"], float(r[key])))
        for name, v in zip(classes, r.get("val_dice_per_class") or []):
            if v is not None:
                want.setdefault(f"val_dice_per_class/{name}", []).append((r["step"], float(v)))
    return want, classes


def test_tensorboard_event_files_hold_the_metrics_the_dice_per_class_and_the_config(store, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    out = tmp_path / "tb"
    _train(store, out, "--logger", "tensorboard")
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    want, _ = _expected(out)
    assert any(k.startswith("val_dice_per_class/") for k in want) and [s for s, _ in want["loss"]] == [1, 2, 3, 4]
    assert set(acc.Tags()["scalars"]) == set(want)
    for key, points in want.items():
        got = [(e.step, e.value) for e in acc.Scalars(key)]
        assert [s for s, _ in got] == [s for s, _ in points], key
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6), key
    # the config: as hparams (TensorBoard's HParams tab) and as text
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = {k: v for k, v in start.session_start_info.hparams.items()}
    config = json.loads((out / "config.json").read_text())
    assert hparams["mask_rate"].number_value == pytest.approx(config["mask_rate"])
    assert hparams["inputs"].string_value == config["inputs"] and hparams["steps"].number_value == 4
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"crop_zyx"' in text and '"train_cases"' in text


def test_mlflow_file_store_in_the_run_folder_and_a_resumed_run_continues_its_mlflow_run(store, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    out = tmp_path / "ml"
    _train(store, out, "--logger", "mlflow", "--stop-at", "2")
    result = runner.invoke(app, ["train", "--features", str(store), "--out", str(out), "--resume", "--quiet",
                                 "--logger", "mlflow"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("maskgen")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, "the resumed run continues its MLflow run"
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "ml"
    assert run.data.tags["maskgen.run_dir"] == str(out.absolute())
    want, _ = _expected(out)
    assert any(k.startswith("val_dice_per_class/") for k in want)
    for key, points in want.items():
        got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert [s for s, _ in got] == [s for s, _ in points], key
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6), key
    config = json.loads((out / "config.json").read_text())
    assert float(run.data.params["mask_rate"]) == config["mask_rate"] and run.data.params["inputs"] == "both"
    assert json.loads(run.data.params["crop_zyx"]) == config["crop_zyx"]
    local = client.download_artifacts(run.info.run_id, "config.json", str(tmp_path))
    assert json.loads(Path(local).read_text())["train_cases"] == config["train_cases"]


def test_mlflow_tracking_uri_from_the_environment(store, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    elsewhere = (tmp_path / "shared-mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "ablations")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out = tmp_path / "env"
    _train(store, out, "--logger", "mlflow")
    assert not (out / "mlruns").exists()
    client = MlflowClient(tracking_uri=elsewhere)
    runs = client.search_runs([client.get_experiment_by_name("ablations").experiment_id])
    assert len(runs) == 1 and len(client.get_metric_history(runs[0].info.run_id, "loss")) == 4


@pytest.mark.parametrize("kind,package,extra", [("tensorboard", "tensorboard", "tensorboard"),
                                                ("mlflow", "mlflow", "mlflow")])
def test_a_missing_extra_is_one_line_with_the_pip_command_before_anything_is_written(store, tmp_path, monkeypatch,
                                                                                      kind, package, extra):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed: `import package` fails
    out = tmp_path / "r"
    result = runner.invoke(app, ["train", "--features", str(store), "--out", str(out), *TINY, "--logger", kind])
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert "\n" not in line and f"--logger {kind} needs the {package} package" in line
    assert f"pip install 'maskgen[{extra}]'" in line
    assert not out.exists()


def test_an_unknown_logger_is_refused(store, tmp_path):
    result = runner.invoke(app, ["train", "--features", str(store), "--out", str(tmp_path / "r"), *TINY,
                                 "--logger", "wandb"])
    assert result.exit_code == 1 and "--logger 'wandb' must be one of none, tensorboard, mlflow" in result.stderr
    assert not (tmp_path / "r").exists()
