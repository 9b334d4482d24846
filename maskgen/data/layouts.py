"""Finding a dataset's cases: data-root resolution and discovery.

`discover_cases(pipeline, data_root)` runs the pipeline's layout over the data folder, then assigns splits (from the
layout itself, or from the domain rule in `[splits]`, see `maskgen.data.splits`). The layouts are registered in
`maskgen.data.layout_registry` (generic ones in `generic_layouts`, the public datasets' in `public_layouts`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskgen.data.cases import Case, case_id_problem
from maskgen.data.generic_layouts import preview
from maskgen.data.layout_registry import LAYOUT_SPECS, layout_defaults
from maskgen.data.pipeline import Pipeline, split_rule
from maskgen.data.splits import SPLITS, assign_splits
from maskgen.errors import MaskgenError

__all__ = ["Case", "LAYOUT_SPECS", "ENV_DATA_ROOT", "resolve_data_root", "discover_cases", "discover", "Discovery",
           "id_problems", "layout_options"]

ENV_DATA_ROOT = "MASKGEN_DATA_ROOT"


# --------------------------------------------------------------------------------------------------- data root
def resolve_data_root(data_root: str | Path | None, pipeline: Pipeline) -> Path:
    """The dataset folder: `--data-root` > $MASKGEN_DATA_ROOT > the pipeline's `default_data_root` (relative paths are
    relative to the current directory). Raises a MaskgenError saying how to pass it when none is given or it is
    missing."""
    if data_root is not None and str(data_root) != "":
        source = "--data-root"
        raw = str(data_root)
    elif os.environ.get(ENV_DATA_ROOT):
        source = f"${ENV_DATA_ROOT}"
        raw = os.environ[ENV_DATA_ROOT]
    elif pipeline.default_data_root:
        source = f"default_data_root of pipeline {pipeline.name!r}"
        raw = pipeline.default_data_root
    else:
        spec = LAYOUT_SPECS[pipeline.layout]
        raise MaskgenError(
            f"no data folder given for dataset {pipeline.name!r}: pass --data-root DIR or set {ENV_DATA_ROOT}=DIR "
            f"(expected layout: {spec.expected})"
        )
    root = Path(raw).expanduser()
    if not root.exists():
        hint = pipeline.option("missing_data_hint") or ""
        raise MaskgenError(
            f"data folder {raw} ({source}) does not exist; "
            + (f"{hint}; " if hint else "")
            + f"pass --data-root DIR or set {ENV_DATA_ROOT}=DIR"
        )
    return root.resolve()


# ------------------------------------------------------------------------------------------------- discovery
def discover_cases(pipeline: Pipeline, data_root: str | Path | None = None, strict: bool = True) -> list[Case]:
    """All cases of the dataset, with domain and split, sorted by split (train, val, test) then case id.

    `data_root`: `--data-root` (None: $MASKGEN_DATA_ROOT or the pipeline default). With `strict`, duplicate case ids
    and ids unsafe as storage keys raise (all listed at once); `maskgen verify` passes strict=False and reports them.
    """
    return discover(pipeline, data_root, strict).cases


@dataclass(frozen=True)
class Discovery:
    """The cases a dataset gives (`cases`) and those its layout found but the split rule or fold left out."""

    root: Path
    cases: list[Case]
    left_out: list[Case]


def discover(pipeline: Pipeline, data_root: str | Path | None = None, strict: bool = True) -> Discovery:
    """`discover_cases` that also returns the cases left out (for `maskgen verify`)."""
    root = resolve_data_root(data_root, pipeline)
    spec = LAYOUT_SPECS[pipeline.layout]
    found = spec.discover(root, layout_options(pipeline))
    rule = split_rule(pipeline)
    if rule is not None:
        cases = assign_splits(found, rule)
    elif not spec.explicit_splits:
        raise MaskgenError(
            f"pipeline {pipeline.source or pipeline.name}: layout {pipeline.layout!r} needs a [splits] table "
            "(train = [domains...], val = [...], test = [...])"
        )
    else:
        cases = found
    if spec.unassigned == "drop":
        cases = [c for c in cases if c.split in SPLITS]
    unassigned = [c.case_id for c in cases if c.split not in SPLITS]
    if unassigned:
        raise MaskgenError(f"cases without a train/val/test split: {preview(unassigned)}; give them one in the CSV")
    if not cases:
        raise MaskgenError(
            f"no cases found for dataset {pipeline.name!r} in {root}. Expected layout: {spec.expected}"
            + ("" if rule is None else f"; [splits] uses domains {_rule_domains(rule)}")
        )
    order = {s: i for i, s in enumerate(SPLITS)}
    cases.sort(key=lambda c: (order[c.split], c.case_id))
    if strict:
        _raise_on_id_problems(cases, pipeline, root)
    kept = {(c.case_id, str(c.image), c.channel) for c in cases}
    left_out = [c for c in found if (c.case_id, str(c.image), c.channel) not in kept]
    return Discovery(root=root, cases=cases, left_out=left_out)


def _raise_on_id_problems(cases: list[Case], pipeline: Pipeline, root: Path) -> None:
    problems = id_problems(cases)
    if problems:
        raise MaskgenError(
            f"dataset {pipeline.name!r} in {root} has unusable case ids: "
            + "; ".join(problems[:20])
            + ("" if len(problems) <= 20 else f"; ... and {len(problems) - 20} more")
            + ". Rename the files (or fix the CSV), then run `maskgen verify`."
        )


def id_problems(cases: list[Case]) -> list[str]:
    """Duplicate or unsafe case ids, one sentence each."""
    out = []
    seen: dict[str, Case] = {}
    for case in cases:
        problem = case_id_problem(case.case_id)
        if problem:
            out.append(f"{problem} ({case.image})")
        if case.case_id in seen:
            out.append(f"case id {case.case_id!r} is used twice ({seen[case.case_id].image} and {case.image})")
        else:
            seen[case.case_id] = case
    return out


def layout_options(pipeline: Pipeline) -> dict[str, Any]:
    """The layout's defaults overridden by the pipeline's `[layout]` table."""
    return layout_defaults(pipeline.layout, dict(pipeline.options))


def _rule_domains(rule: dict[str, Any]) -> str:
    return ", ".join(f"{s}={list(rule['domains'][s])}" for s in SPLITS)
