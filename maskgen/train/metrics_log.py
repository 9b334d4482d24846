"""metrics.jsonl of training and pretraining runs: one JSON object per line, appended as it goes.

Records carry a `step`; a resumed run first drops the records after the step it resumes from (`truncate_after`),
so the file reads as if the run had never stopped. A torn last line (a run killed while writing) is skipped.
`listeners` (callables) get every record appended: the run's progress display and experiment tracker.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from maskgen.atomic import write_text_atomic


class MetricsLog:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        for listener in self.listeners:
            listener(record)

    def read(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def truncate_after(self, step: int) -> list[dict[str, Any]]:
        """Drop records of steps after `step` (a resumed run redoes them), atomically; returns the records kept."""
        if not self.path.exists():
            return []
        kept = [r for r in self.read() if int(r.get("step", 0)) <= step]
        write_text_atomic(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        return kept


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete records of a metrics.jsonl (missing file: none)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
