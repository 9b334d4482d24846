"""Shared CLI helpers: turning MaskgenError into a clear message and exit code 1. Keep imports light."""

from __future__ import annotations

import functools
import inspect
import sys
from typing import Any, Callable, Mapping

import typer

from maskgen.errors import MaskgenError, OptionError, show_value

#: config field -> (command parameter, how its value is written on the command line), for fields whose option has
#: another name or format than the field (e.g. `crop_zyx` is `--crop-size x,y,z`).
FieldAliases = Mapping[str, tuple[str, Callable[[Any], str] | None]]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print an error message to stderr (rich, red; the message itself is printed literally, so bracketed words
    such as `[label_map]` survive) and return the typer.Exit to raise."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]Error:[/] {escape(message)}")
    return typer.Exit(code)


def option_flags(fn: Callable[..., Any]) -> dict[str, str]:
    """{parameter name: its long flag} of a typer command function (`mask_rate` -> `--mask-rate`)."""
    out = {}
    for name, param in inspect.signature(fn).parameters.items():
        decls = getattr(param.default, "param_decls", None) or ()
        longs = [d for d in decls if isinstance(d, str) and d.startswith("--")]
        if longs:
            out[name] = longs[0]
    return out


def render_option_error(error: OptionError, flags: Mapping[str, str], aliases: FieldAliases | None = None) -> str:
    """An OptionError in the words of a command line: each field named by its flag (the field name itself when the
    command has no such option), the value as it would be typed."""
    aliases = aliases or {}

    def name(field: str) -> str:
        param = aliases[field][0] if field in aliases else field
        return flags.get(param, field)

    def show(field: str, value: Any) -> str:
        fmt = aliases[field][1] if field in aliases else None
        return fmt(value) if fmt is not None else show_value(value)

    return error.render(name, show)


def handle_errors(fn: Callable[..., Any] | None = None, *, fields: FieldAliases | None = None) -> Any:
    """Decorator for command bodies: MaskgenError -> message on stderr + exit code 1 (no traceback).

    An `OptionError` (a config's check of one field) is shown with the command's flag for that field: options map to
    fields by name (`--mask-rate` <-> `mask_rate`); `fields` lists the others (`{"crop_zyx": ("crop_size", fmt)}`).
    Use as `@handle_errors` or `@handle_errors(fields=...)`.
    """
    if fn is None:
        return lambda f: handle_errors(f, fields=fields)
    flags = option_flags(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OptionError as e:
            raise fail(render_option_error(e, flags, fields)) from None
        except MaskgenError as e:
            raise fail(str(e)) from None
        except KeyboardInterrupt as e:  # one line: the command's own message when it raised one
            print(str(e) or "Interrupted. Finished work is kept: re-run the same command to continue "
                  "(`maskgen train` and `maskgen pretrain`: add --resume).", file=sys.stderr, flush=True)
            raise typer.Exit(130) from None

    return wrapper


THREADS_HELP = ("CPU threads of torch's operations, >= 1 (default: $OMP_NUM_THREADS if set, else the cores this "
                "process may use, by affinity and cgroup quota, minus its worker processes).")


def threads_option(**kwargs: Any) -> Any:
    """The `--threads N` option every command that computes shares (maskgen.threads has the policy)."""
    return typer.Option(None, "--threads", help=THREADS_HELP, show_default=False, **kwargs)


def use_threads(threads: int | None, workers: int = 0) -> None:
    """Apply the thread policy at the start of a command body (before any parallel work): --threads, else
    OMP_NUM_THREADS, else the available cores minus `workers`. Stages that start workers later re-apply it."""
    from maskgen.threads import configure

    configure(threads, workers)


def size_option(default: Any, flag: str, *, help: str, cubic: bool = False, example: str | None = None,
                **kwargs: Any) -> Any:
    """A size option, `N` (cubic) or `X,Y,Z` in x,y,z order (`maskgen.config.parse_size`, the one parser of every
    size): the command receives the (z, y, x) tuple (None when unset); a malformed value is a usage error (exit 2)
    naming the flag and the value. Declare the parameter as `Optional[str]` (what the shell passes)."""
    from maskgen.config import parse_size

    def callback(value: Any) -> Any:
        if value is None:
            return None
        try:
            return parse_size(value, flag, cubic=cubic, example=example)
        except OptionError as e:
            raise typer.BadParameter(f"{show_value(e.value)} {e.problem}") from None

    shape = "N" if cubic else "N|X,Y,Z"
    return typer.Option(default, flag, callback=callback, metavar=shape, help=help, **kwargs)
