"""Frozen configuration dataclasses <-> JSON-safe dicts, saved into every store and checkpoint."""

from __future__ import annotations

import dataclasses
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
