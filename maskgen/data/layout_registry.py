"""The layout registry: layout kind -> `LayoutSpec` (how it finds cases, its options and their defaults).

`maskgen.data.pipeline` checks a pipeline's `[layout]` table against it; `maskgen.data.layouts` runs the discovery.
Neither this module nor the layouts it lists import the pipeline module, so the two never import each other.
"""

from __future__ import annotations

from typing import Any

from maskgen.data import generic_layouts, nnunet_v2, public_layouts
from maskgen.data.cases import LayoutSpec
from maskgen.errors import MaskgenError

LAYOUT_SPECS: dict[str, LayoutSpec] = {**generic_layouts.SPECS, **nnunet_v2.SPECS, **public_layouts.SPECS}
LAYOUTS: tuple[str, ...] = tuple(LAYOUT_SPECS)
_KINDS = {tuple: "a list", bool: "true or false", int: "an integer", str: "a string"}


def layout_defaults(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """The layout's defaults overridden by `options` (a pipeline's `[layout]` table without `kind`)."""
    return {**LAYOUT_SPECS[kind].defaults, **options}


def _type_ok(value: Any, expected: type) -> bool:
    if expected is tuple:
        return isinstance(value, tuple)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def check_layout_options(kind: str, options: dict[str, Any], where: str) -> None:
    """Reject unknown `[layout]` keys, missing required ones and values of the wrong type; `where` names the table."""
    spec = LAYOUT_SPECS[kind]
    allowed = set(spec.defaults) | {"missing_data_hint"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise MaskgenError(f"{where}: unknown key(s) {unknown} for layout {kind!r}; allowed: {sorted(allowed)}")
    for key in spec.required:
        if not options.get(key):
            raise MaskgenError(f"{where}: layout {kind!r} needs `{key} = ...`")
    for key, value in options.items():
        expected = type(spec.defaults.get(key, ""))
        if not _type_ok(value, expected):
            raise MaskgenError(f"{where}: {key} = {value!r} must be {_KINDS.get(expected, str(expected))}")
    if kind in ("pandg", "pattern"):
        public_layouts.check_patterns(layout_defaults(kind, options), where)
