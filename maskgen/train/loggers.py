"""Experiment trackers of a training run (`maskgen train --logger tensorboard|mlflow`; `none` by default).

A tracker gets exactly what metrics.jsonl gets (loss, lr, crops_per_s, data_s per step; val_dice, the Dice of each
class as `val_dice_per_class/<class>` and val_cases per validation) plus the run's config, and works offline:
- tensorboard: event files in `<run>/tensorboard/` (`tensorboard --logdir <run>/tensorboard`); the config as
  hparams and as text. A resumed run purges the events after its checkpoint's step, as metrics.jsonl does.
- mlflow: a file store `<run>/mlruns` (`mlflow ui --backend-store-uri <run>/mlruns`), or the server or store of
  $MLFLOW_TRACKING_URI when set; experiment $MLFLOW_EXPERIMENT_NAME or "maskgen"; the config as params and as the
  artifact config.json. A resumed run continues its MLflow run (found by the tag `maskgen.run_dir`).
Both are optional extras (`pip install 'maskgen[tensorboard]'` / `'maskgen[mlflow]'`): `check_logger` says so in
one line before anything is written.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from maskgen.errors import MaskgenError

LOGGERS = ("none", "tensorboard", "mlflow")
_NEEDS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}  # kind -> (module, extra)


def check_logger(kind: str) -> None:
    """MaskgenError (one line, with the pip command) for an unknown kind or a tracker that is not installed."""
    if kind not in LOGGERS:
        raise MaskgenError(f"--logger {kind!r} must be one of {', '.join(LOGGERS)}.")
    if kind == "none":
        return
    module, extra = _NEEDS[kind]
    if not _installed(module):
        raise MaskgenError(f"--logger {kind} needs the {module} package: pip install 'maskgen[{extra}]' "
                           f"(or pip install {'mlflow-skinny' if kind == 'mlflow' else module}).")


def _installed(module: str) -> bool:
    """Whether `import module` would find it (without importing it: mlflow takes seconds)."""
    import importlib.util
    import sys

    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def scalars(record: dict[str, Any], classes: tuple[str, ...] | list[str]) -> dict[str, float]:
    """The numbers of a metrics.jsonl record, by name; `val_dice_per_class` becomes `val_dice_per_class/<class>`
    (classes never scored are left out)."""
    out = {}
    for key, value in record.items():
        if key == "val_dice_per_class":
            out.update({f"val_dice_per_class/{name}": float(v) for name, v in zip(classes, value) if v is not None})
        elif key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(float(value)):
                out[key] = float(value)
    return out


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config as hparams / params: scalars kept, anything else (lists, tuples, nested) as compact JSON text."""
    out = {}
    for key, value in sorted(config.items()):
        if value is None or isinstance(value, (bool, int, float, str)):
            out[key] = "None" if value is None else value
        else:
            out[key] = json.dumps(value, separators=(",", ":"))
    return out


class NoLogger:
    def log(self, step: int, values: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger(NoLogger):
    def __init__(self, run_dir: Path, config: dict[str, Any], start_step: int):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_step)
        flat = flat_config(config)
        for summary in hparams({k: v for k, v in flat.items() if len(str(v)) <= 1000}, {"val_dice": math.nan}):
            self.writer.file_writer.add_summary(summary)  # in this event file (add_hparams would make a sub-run)
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```", start_step)

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class MlflowLogger(NoLogger):
    FLUSH_AT = 900  # metrics buffered before a log_batch (at most 1000 per call)

    def __init__(self, run_dir: Path, config: dict[str, Any], resume: bool):
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").absolute().as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # offline file store (maintenance mode in 3.x)
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "maskgen"
        experiment = self.client.get_experiment_by_name(name)
        eid = experiment.experiment_id if experiment else self.client.create_experiment(name)
        tag = str(run_dir.absolute())
        earlier = self.client.search_runs([eid], filter_string=f"tags.`maskgen.run_dir` = '{_quote(tag)}'",
                                          order_by=["attributes.start_time DESC"], max_results=1) if resume else []
        if earlier:
            self.run_id = earlier[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(eid, run_name=run_dir.name, tags={"maskgen.run_dir": tag}).info.run_id
            self._params(config)
        self.client.log_dict(self.run_id, config, "config.json")
        self._buffer: list[Any] = []

    def _params(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in flat_config(config).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, step: int, values: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._buffer += [Metric(_metric_name(k), v, now, step) for k, v in values.items()]
        if len(self._buffer) >= self.FLUSH_AT or any(k.startswith("val_") for k in values):
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self.client.log_batch(self.run_id, metrics=self._buffer)
            self._buffer = []

    def close(self) -> None:
        self.flush()
        self.client.set_terminated(self.run_id)


def make_logger(kind: str, run_dir: Path, config: dict[str, Any], start_step: int) -> NoLogger:
    """The tracker of `kind` for the run folder (check_logger(kind) first); `start_step` > 0: a resumed run."""
    if kind == "tensorboard":
        return TensorBoardLogger(run_dir, config, start_step)
    if kind == "mlflow":
        return MlflowLogger(run_dir, config, resume=start_step > 0)
    return NoLogger()


def _metric_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", key)


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")
