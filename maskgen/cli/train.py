"""CLI commands of the 'train' stage (light module: heavy imports go inside command bodies)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main app."""
