"""The exception types that the CLI turns into a clear message and a non-zero exit code."""

from __future__ import annotations

import re
from typing import Any, Callable

_REF = re.compile(r"\{([a-z][a-z0-9_]*)\}")


class MaskgenError(Exception):
    """A problem the user can fix: the message names the file or case and says how to fix it."""


class OptionError(MaskgenError):
    """A bad value of a configuration FIELD, raised by a config's `__post_init__` (each option is checked there once).

    Configs speak of fields; the CLI speaks of flags. The message is `<name> <value> <problem>`: `str(e)` names the
    field (`mask_rate 1.5 is out of range ...`), the CLI's error handler names the flag of the command that was run
    (`--mask-rate 1.5 is out of range ...`, `maskgen.cli._common`). `problem` may refer to other fields as
    `{field}` (e.g. "or a smaller {depth}"); they are rendered the same way.
    """

    def __init__(self, field: str, value: Any, problem: str):
        self.field, self.value, self.problem = field, value, problem
        super().__init__(self.render())

    def render(self, name: Callable[[str], str] | None = None, show: Callable[[str, Any], str] | None = None) -> str:
        """The message with each field written by `name(field)` and the value by `show(field, value)`
        (defaults: the field name and `repr` for strings, `str` otherwise)."""
        name = name or (lambda f: f)
        shown = show(self.field, self.value) if show else show_value(self.value)
        problem = _REF.sub(lambda m: name(m.group(1)), self.problem)
        return f"{name(self.field)} {shown} {problem}"


def show_value(value: Any) -> str:
    """How a value appears in a message: strings quoted, everything else as `str`."""
    return repr(value) if isinstance(value, str) else str(value)
