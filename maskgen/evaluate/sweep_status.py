"""Progress of a whole sweep: how many variants are done, running and failed, and where each one runs.

`SweepStatus` is told when a variant starts, finishes or fails (and, on a cluster, which variants the workers are
running right now). On every change it rewrites `<out>/sweep-status.json` (atomically; readable while the sweep runs,
e.g. from another machine) and, when enabled, prints one line to stderr:
`sweep: 3/8 done, 2 running, 0 failed, 3 waiting`. Plain lines rather than a live bar, so that it can share the
terminal with the training progress bar of a serial sweep and stays readable in log files.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence


class SweepStatus:
    def __init__(self, out_dir: Path, names: Sequence[str], enabled: bool = True):
        self.path = Path(out_dir) / "sweep-status.json"
        self.names = list(names)
        self.enabled = enabled
        self.done: dict[str, Any] = {}          # name -> VariantOutcome
        self.running: dict[str, str] = {}       # name -> where it runs (worker address, "here")
        self.failed: dict[str, str] = {}        # name -> error
        self.attempts: dict[str, int] = {}      # name -> times started (a lost worker's variant starts again)
        self._last_line = ""
        self._t0 = time.time()

    def __enter__(self) -> "SweepStatus":
        self._changed()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.running.clear()
        self._changed()

    # -- events -------------------------------------------------------------------------------------------------
    def started(self, name: str, where: str) -> None:
        self.attempts[name] = self.attempts.get(name, 0) + 1
        self.running[name] = where
        self.failed.pop(name, None)
        self._changed()

    def set_running(self, running: dict[str, str]) -> None:
        """The variants running now (a cluster's view); newly seen ones count as started."""
        for name, where in running.items():
            if self.running.get(name) != where and name not in self.done:
                self.attempts[name] = self.attempts.get(name, 0) + 1
        changed = running != self.running
        self.running = {n: w for n, w in running.items() if n not in self.done}
        if changed:
            self._changed()

    def finished(self, outcome: Any) -> None:
        self.done[outcome.name] = outcome
        self.running.pop(outcome.name, None)
        self.failed.pop(outcome.name, None)
        self._changed()

    def failed_with(self, name: str, error: str) -> None:
        self.failed[name] = error
        self.running.pop(name, None)
        self._changed()

    # -- views --------------------------------------------------------------------------------------------------
    @property
    def waiting(self) -> list[str]:
        return [n for n in self.names if n not in self.done and n not in self.running and n not in self.failed]

    def line(self) -> str:
        return (f"sweep: {len(self.done)}/{len(self.names)} done, {len(self.running)} running, "
                f"{len(self.failed)} failed, {len(self.waiting)} waiting")

    def summary(self) -> dict[str, list[str]]:
        """{"trained" (trained or continued now), "resumed" (continued from a last.pt), "skipped" (finished earlier),
        "evaluated", "failed"}: variant names in sweep order."""
        action = {n: o.action for n, o in self.done.items()}
        pick = lambda *acts: [n for n in self.names if action.get(n) in acts]  # noqa: E731
        return {"trained": pick("trained", "resumed"), "resumed": pick("resumed"), "skipped": pick("skipped"),
                "evaluated": pick("trained", "resumed"), "failed": [n for n in self.names if n in self.failed]}

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": len(self.names),
            "done": {n: {"action": o.action, "from_step": o.from_step, "seconds": o.seconds, "where": o.where}
                     for n, o in self.done.items()},
            "running": dict(self.running),
            "failed": dict(self.failed),
            "waiting": self.waiting,
            "attempts": dict(self.attempts),
            "elapsed_s": round(time.time() - self._t0, 1),
        }

    def _changed(self) -> None:
        from maskgen.config import write_json_atomic

        write_json_atomic(self.path, self.as_dict())
        line = self.line()
        if self.enabled and line != self._last_line:
            from rich.console import Console

            Console(stderr=True, highlight=False).print(line)
        self._last_line = line
