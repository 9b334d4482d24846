"""Progress of long loops (train, pretrain, extract, demo data) on stderr: a live rich bar on a terminal, plain
lines at a steady rate everywhere else.

A live bar written to a file or a pipe (SLURM, `| tee`, CI) shows up once, at the end. So unless both stdout and
stderr are terminals, `Progress` prints one plain line every `interval` seconds, and always at the first and the
last update of the loop:

    train step 120/4000 (3%) loss 0.4123  lr 1.98e-04  12.3 crops/s  elapsed 0:01:23  ETA 0:44:47

`MASKGEN_PROGRESS=bar|lines` forces a mode; the interval comes from the command's `--log-interval`, else
`MASKGEN_LOG_INTERVAL`, else 30 s. Messages are printed literally (no rich markup is read from them).
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Callable

from maskgen.errors import MaskgenError

DEFAULT_INTERVAL_S = 30.0
MODE_ENV = "MASKGEN_PROGRESS"
INTERVAL_ENV = "MASKGEN_LOG_INTERVAL"


def stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)  # long lines (paths) are not broken up


def live_bar_wanted(console: Any) -> bool:
    """A live bar only when a person watches a terminal: stdout and the console's stream are both terminals
    (`MASKGEN_PROGRESS=bar|lines` overrides)."""
    forced = os.environ.get(MODE_ENV, "").strip().lower()
    if forced in ("bar", "lines"):
        return forced == "bar"
    if forced:
        raise MaskgenError(f"{MODE_ENV}={forced!r} must be 'bar' or 'lines' (or unset: bar on a terminal).")
    stdout_tty = bool(getattr(sys.stdout, "isatty", lambda: False)())
    return stdout_tty and bool(console.is_terminal)


def log_interval(seconds: float | None = None) -> float:
    """Seconds between progress lines: `seconds` (the command's --log-interval), else $MASKGEN_LOG_INTERVAL, else
    30. Must be > 0."""
    if seconds is None:
        text = os.environ.get(INTERVAL_ENV, "").strip()
        try:
            seconds = float(text) if text else DEFAULT_INTERVAL_S
        except ValueError:
            raise MaskgenError(f"{INTERVAL_ENV}={text!r} is not a number of seconds (e.g. 30).") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise MaskgenError(f"--log-interval {seconds:g} must be a positive number of seconds (e.g. 30).")
    return float(seconds)


def duration(seconds: float) -> str:
    """`1:02:03` (h:mm:ss); `-:--:--` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """`completed` of `total` units (steps, cases, subjects): a rich bar on a terminal, else plain lines.

    `describe(fields) -> str` renders the loop's own fields (loss, lr, ...) given to `update`, in the bar and in
    the lines alike; `rate="min"` also shows units per minute (`"s"`: per second, None: not shown). Disabled: no
    output at all (`--quiet`)."""

    def __init__(self, label: str, total: int, completed: int = 0, *, unit: str = "step",
                 describe: Callable[[dict[str, Any]], str] | None = None, rate: str | None = None,
                 enabled: bool = True, interval: float | None = None, console: Any = None,
                 clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.completed, self.unit = label, int(total), int(completed), unit
        self.describe, self.rate, self.enabled = describe, rate, enabled
        self.console = console if console is not None else stderr_console()
        self.interval = log_interval(interval)
        self.live = enabled and live_bar_wanted(self.console)
        self.fields: dict[str, Any] = {}
        self._clock = clock
        self._start = (int(completed), clock())
        self._first: tuple[int, float] | None = None   # (completed, time) at the first update
        self._printed: int | None = None      # `completed` of the last plain line
        self._next_line = 0.0
        self._bar: Any = None

    # -- the loop's side ----------------------------------------------------------------------------------------
    def __enter__(self) -> "Progress":
        if self.live:
            self._bar = _rich_bar(self.console, self.unit, self.rate)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total, completed=self.completed, text="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None
        elif self.enabled and self._printed != self.completed and self.completed > self._start[0]:
            self._line()  # the last step of this invocation (finished, stopped early or interrupted)

    def update(self, completed: int | None = None, advance: int = 0, **fields: Any) -> None:
        self.completed = (self.completed if completed is None else int(completed)) + int(advance)
        self.fields.update(fields)
        if self._first is None:
            self._first = (self.completed, self._clock())
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, text=self._text())
            return
        now = self._clock()
        if self._printed is None or now >= self._next_line or self.completed >= self.total:
            self._line()

    def print(self, message: str, style: str | None = None) -> None:
        """A message line (above the live bar on a terminal), printed literally."""
        if self.enabled:
            self.console.print(message, markup=False, highlight=False, style=style)

    # -- what is shown ------------------------------------------------------------------------------------------
    def _text(self) -> str:
        return self.describe(self.fields) if self.describe is not None else ""

    def line(self) -> str:
        """The plain progress line for the current state."""
        now = self._clock()
        elapsed = now - self._start[1]
        done0, t0 = self._first or (self.completed, now)  # the rate from the first update on (not the start-up)
        per_s = (self.completed - done0) / (now - t0) if now > t0 and self.completed > done0 else math.nan
        left = (self.total - self.completed) / per_s if per_s > 0 else math.nan
        pct = 100.0 * self.completed / self.total if self.total else 100.0
        parts = [f"{self.label} {self.unit} {self.completed}/{self.total} ({pct:.0f}%)", self._text()]
        if self.rate and math.isfinite(per_s):
            parts.append(f"{per_s * (60 if self.rate == 'min' else 1):.1f} {self.unit}s/{self.rate}")
        parts.append(f"elapsed {duration(elapsed)}  ETA {duration(left if self.completed < self.total else 0)}")
        return "  ".join(p for p in parts if p)

    def _line(self) -> None:
        self.console.print(self.line(), markup=False, highlight=False)
        self._printed = self.completed
        self._next_line = self._clock() + self.interval


def _rich_bar(console: Any, unit: str, rate: str | None) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.speed  # rich's estimate over the recent updates
            if not speed or rate is None:
                return Text(f"-- {unit}s/{rate}" if rate else "", style="progress.data.speed")
            return Text(f"{speed * (60 if rate == 'min' else 1):.1f} {unit}s/{rate}", style="progress.data.speed")

    columns = [TextColumn("{task.description}", markup=False, style="bold"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[text]}", markup=False)]
    columns += [Rate()] if rate else []
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    return RichProgress(*columns, console=console)
