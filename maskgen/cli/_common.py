"""Shared CLI helpers: turning MaskgenError into a clear message and exit code 1. Keep imports light."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import typer

from maskgen.errors import MaskgenError


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print an error message to stderr (rich, red) and return the typer.Exit to raise."""
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]Error:[/] {message}")
    return typer.Exit(code)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for command bodies: MaskgenError -> message on stderr + exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MaskgenError as e:
            raise fail(str(e)) from None
        except KeyboardInterrupt:
            print("Interrupted. Finished work is kept: re-run the same command to continue "
                  "(`maskgen train` and `maskgen pretrain`: add --resume).", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper
