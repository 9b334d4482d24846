"""How `--help` renders (applied once, when `maskgen.cli` is imported; keep imports light).

- Boolean flags show no value type: typer 0.29's rich help prints `--resume <bool>` although `--resume` takes no value;
  flags (and the built-in `--help`) get an empty type column instead.
- Float defaults print readably: a computed default such as 1/3 shows as 0.333, not 0.3333333333333333.
- Help texts are shown literally: typer renders them as rich markup, where `[default: none]` or `[splits]` would be
  taken as a style tag and vanish; `escape_markup(app)` escapes every option's and command's help text once.
"""

from __future__ import annotations

import inspect
from typing import Any

import typer

_PATCHED = "_maskgen_help"


def readable_default(value: Any) -> Any:
    """A float default with a long representation (a computed value) rounded to 3 significant digits."""
    if isinstance(value, float) and len(repr(value)) > 8:
        return float(f"{value:.3g}")
    return value


def install() -> None:
    """Patch typer's option rendering (idempotent; a typer without these hooks is left alone)."""
    try:
        from typer.core import TyperOption
    except ImportError:  # pragma: no cover - older typer
        return
    if getattr(TyperOption, _PATCHED, False):
        return
    if hasattr(TyperOption, "display_type_rich"):
        display_type = TyperOption.display_type_rich

        def display_type_rich(self: Any, ctx: Any) -> Any:
            if getattr(self, "is_flag", False) or getattr(self, "count", False):
                return None
            return display_type(self, ctx)

        TyperOption.display_type_rich = display_type_rich
    if hasattr(TyperOption, "_get_default_string"):
        default_string = TyperOption._get_default_string

        def _get_default_string(self: Any, *, default_value: Any, **kwargs: Any) -> str:
            return default_string(self, default_value=readable_default(default_value), **kwargs)

        TyperOption._get_default_string = _get_default_string
    setattr(TyperOption, _PATCHED, True)


def _commands(app: typer.Typer) -> list[Any]:
    """The CommandInfo of every command of `app` and of its sub-apps (cache, analyze)."""
    out = list(app.registered_commands)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            out += _commands(group.typer_instance)
    return out


def escape_markup(app: typer.Typer) -> None:
    """Escape rich markup in the help text of every option, argument and command of `app` (call once)."""
    from rich.markup import escape

    for command in _commands(app):
        callback = command.callback
        if callback is None or getattr(callback, _PATCHED, False):
            continue
        for param in inspect.signature(callback).parameters.values():
            info = param.default
            if isinstance(info, typer.models.ParameterInfo) and info.help:
                info.help = escape(info.help)
        if command.help:
            command.help = escape(command.help)
        if callback.__doc__:
            callback.__doc__ = escape(callback.__doc__)
        setattr(callback, _PATCHED, True)
