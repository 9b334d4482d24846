"""Frozen configuration dataclasses <-> JSON-safe dicts, saved into every store and checkpoint."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar

from maskgen.atomic import write_text_atomic

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-safe dict of a (possibly nested) dataclass: tuples become lists, paths strings."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return conv(cfg)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a frozen dataclass from `to_dict` output; lists become tuples where the field is a tuple.

    Unknown keys raise, so a config written by a newer maskgen is not silently misread.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints.get(name), value)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any) -> Any:
    if value is None or hint is None:
        return value
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        for arg in typing.get_args(hint):
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value)
            except (TypeError, ValueError):
                continue
        return value
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value)
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        return tuple(_coerce(a, v) for a, v in zip(args, value))
    if hint is Path and isinstance(value, str):
        return Path(value)
    return value


def config_diff(old: Any, new: Any, ignore: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:
    """The fields whose values differ between two configs, as {field: (old value, new value)} in field order.

    `old` and `new` are config dataclasses or their `to_dict` form (e.g. a config read back from JSON); values are
    compared in that JSON-safe form, so a tuple equals the list it was saved as. A field present on one side only
    compares as None on the other. Fields in `ignore` are skipped. The one comparison used by resume checks and
    existing-run checks (train, sweep, pretrain).
    """
    a, b = _as_dict(old), _as_dict(new)
    skip = set(ignore)
    names = list(a) + [k for k in b if k not in a]
    return {k: (a.get(k), b.get(k)) for k in names if k not in skip and a.get(k) != b.get(k)}


def format_diff(diff: dict[str, tuple[Any, Any]], old: str = "was", new: str = "now") -> str:
    """`config_diff` output as text: "lr: saved 0.001, now 0.5; steps: saved 10, now 20" (old="saved", new="now")."""
    return "; ".join(f"{k}: {old} {a!r}, {new} {b!r}" for k, (a, b) in diff.items())


def _as_dict(cfg: Any) -> dict[str, Any]:
    return to_dict(cfg) if not isinstance(cfg, dict) else to_dict(dict(cfg))


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON (indented, sorted keys, final newline) atomically: see `maskgen.atomic.atomic_path`."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


# Sizes (crop size, chunks, spacing, ...) on the command line and in the Python API are written x,y,z, the order of the
# pipelines and the paper (Table 16); arrays are (z, y, x). `parse_size` is the one place that converts.
SIZE_FORMAT = "N (cubic) or X,Y,Z"


def parse_size(value: Any, field: str, *, kind: type = int, cubic: bool = False, example: str | None = None) -> tuple:
    """A size written `N` (cubic) or `X,Y,Z` (also "XxYxZ", an int/float or a sequence of 1 or 3 numbers) -> the
    (z, y, x) tuple of positive `kind` values. `cubic`: the three sides must be equal. Raises
    `OptionError(field, value, problem)`, which the CLI shows with the option's flag (`--crop-size '64,64'` ...)."""
    from maskgen.errors import OptionError

    example = example or ("64" if cubic else "64 or 96,96,64")
    what = "integer" if kind is int else "number"
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace("x", ",").replace("X", ",").split(",")]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        parts = [value]
    else:
        parts = list(value) if isinstance(value, (list, tuple)) else [None]
    try:
        sides = tuple(_size_number(p, kind) for p in parts)
    except (TypeError, ValueError):
        sides = ()
    if len(sides) == 1:
        sides = sides * 3
    if len(sides) != 3 or min(sides) <= 0:
        shape = f"one positive {what} N" if cubic else f"{SIZE_FORMAT} (positive {what}s, x,y,z order)"
        raise OptionError(field, value, f"is not a size: give {shape}, e.g. {example}.")
    if cubic and len(set(sides)) != 1:
        raise OptionError(field, value, f"must be cubic: give one {what} N, e.g. {example}.")
    return sides[::-1]


def _size_number(part: Any, kind: type) -> Any:
    if isinstance(part, bool) or part is None or part == "":
        raise ValueError(part)
    number = kind(part)
    if kind is int and float(part) != number:
        raise ValueError(part)
    return number


def xyz_text(size_zyx: tuple) -> str:
    """A (z, y, x) size as the command line writes it: "x,y,z" (e.g. 64,64,32)."""
    return ",".join(f"{v:g}" if isinstance(v, float) else str(int(v)) for v in tuple(size_zyx)[::-1])


class CallableModule(types.ModuleType):
    """A stage package that is also its Python API function, so `from maskgen import train` gives a callable while
    `import maskgen.train.loop` keeps working (the package and the function share the name).

    A package opts in with `__api__ = "maskgen.train.api:train"` and `sys.modules[__name__].__class__ =
    CallableModule`; calling the package imports that function (lazily: the API module imports the stage's modules,
    which import the package) and calls it."""

    def _api(self) -> Any:
        import importlib

        module, _, name = self.__api__.partition(":")
        return getattr(importlib.import_module(module), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._api()(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self._api())
