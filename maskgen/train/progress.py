"""What a training run shows while it runs: messages and the progress on stderr (`maskgen.progress`: a live bar on
a terminal, plain lines every --log-interval seconds elsewhere) and the experiment tracker (`--logger`), both fed
with the records the run appends to metrics.jsonl. Every message is printed literally (no markup is read from it)."""

from __future__ import annotations

from typing import Any

from maskgen.config import to_dict
from maskgen.progress import Progress, stderr_console
from maskgen.train.loggers import NoLogger, make_logger, scalars


def console() -> Any:
    return stderr_console()


def say(out: Any, message: str, style: str | None = None) -> None:
    """Print `message` as it is: bracketed words such as `[layout]` or a folder `runs/[a]` are not markup."""
    out.print(message, markup=False, style=style)


def describe_step(fields: dict[str, Any]) -> str:
    if "loss" not in fields:
        return ""
    return f"loss {fields['loss']:.4f}  lr {fields['lr']:.2e}  {fields['cps']:.1f} crops/s"


class Watch:
    """The progress display and the tracker of a `maskgen.train.setup.Run`, listening to its metrics.jsonl while
    the `with` block runs: step records move the progress, validation records print a line; the tracker gets the
    numbers of every record. `enabled=False` (--quiet) silences the display, not the tracker. Only the process of
    rank 0 shows and logs anything (data-parallel runs, `run.dist`)."""

    def __init__(self, run: Any, enabled: bool = True, interval: float | None = None, logger: str = "none"):
        main = bool(getattr(getattr(run, "dist", None), "is_main", True))
        enabled, logger = enabled and main, logger if main else "none"
        self.run, self.kind = run, logger
        self.progress = Progress("train", run.cfg.steps, run.step, describe=describe_step, enabled=enabled,
                                 interval=interval, console=console())
        self.tracker: Any = NoLogger()
        self.classes = tuple(run.store.pipeline.classes)
        self._cps: float | None = None

    def __enter__(self) -> "Watch":
        config = {**to_dict(self.run.cfg), "history": list(self.run.history)}
        self.tracker = make_logger(self.kind, self.run.dir, config, self.run.step)
        self.run.log.listeners.append(self.record)
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.run.log.listeners.remove(self.record)
        try:
            self.progress.__exit__(*exc)
        finally:
            self.tracker.close()

    def record(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        self.tracker.log(step, scalars(record, self.classes))
        if "loss" in record:
            cps = float(record.get("crops_per_s", 0.0))
            self._cps = cps if self._cps is None else 0.9 * self._cps + 0.1 * cps
            self.progress.update(step, loss=record["loss"], lr=record["lr"], cps=self._cps)
        elif record.get("val_dice") is not None:
            self.progress.print(f"step {step}: val Dice {record['val_dice']:.4f} over {record.get('val_cases')} cases")
