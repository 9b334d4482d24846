"""What a training run prints: rich on stderr; every message is printed literally (no markup is read from it)."""

from __future__ import annotations

from typing import Any


def console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)  # long lines (paths) are not broken up


def say(out: Any, message: str, style: str | None = None) -> None:
    """Print `message` as it is: bracketed words such as `[layout]` or a folder `runs/[a]` are not markup."""
    out.print(message, markup=False, style=style)


def progress_bar(out: Any, enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("step"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[cps]:.1f} crops/s",
                   markup=False),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=out,
        disable=not enabled,
    )
