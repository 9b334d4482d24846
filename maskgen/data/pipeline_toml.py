"""A `Pipeline` written back as a pipeline TOML file (`maskgen verify --save-pipeline`), e.g. to edit the pipeline that
maskgen derived from an nnU-Net v2 dataset (add a [splits] table or a domain CSV) and pass it as `--dataset FILE`.
`load_pipeline` of the written file gives the same pipeline."""

from __future__ import annotations

import json
import math
from typing import Any

from maskgen.data.pipeline import Pipeline


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"{v!r} cannot be written to a pipeline file")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} {v!r} to a pipeline file")


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() and k.isascii() else json.dumps(k)


def _table(name: str, items: list[tuple[str, str]]) -> list[str]:
    return ["", f"[{name}]"] + [f"{_key(k)} = {v}" for k, v in items] if items else []


def to_toml(p: Pipeline) -> str:
    """The pipeline as TOML text (top-level keys, then the [normalization], [label_map], [layout], [splits] tables)."""
    top = [("name", p.name), ("description", p.description), ("spacing", list(p.spacing)),
           ("crop_size", list(p.crop_size)), ("ct_window", list(p.ct_window)), ("percentiles", list(p.percentiles)),
           ("classes", list(p.classes)), ("allow_flips", p.allow_flips), ("binarize_labels", p.binarize_labels)]
    if p.default_data_root:
        top.append(("default_data_root", p.default_data_root))
    if not p.normalization_by_domain:
        top.insert(4, ("normalization", p.normalization))
    lines = [f"# Written by maskgen from {p.source or p.name} (schema: the header of any file in pipelines/)."]
    lines += [f"{k} = {_value(v)}" for k, v in top]
    if p.normalization_by_domain:
        rules = [(d, _value(r)) for d, r in p.normalization_by_domain] + [("default", _value(p.normalization))]
        lines += _table("normalization", rules)
    lines += _table("label_map", [(str(raw), str(new)) for raw, new in p.label_map])
    lines += _table("layout", [("kind", _value(p.layout))] + [(k, _value(v)) for k, v in p.options])
    splits = []
    order = {"train": 0, "val": 1, "test": 2, "proportions": 3, "seed": 4}
    for key, value in sorted(p.splits, key=lambda kv: order.get(kv[0], 9)):
        if key == "proportions":
            value = "{ " + ", ".join(f"{_key(s)} = {_value(w)}" for s, w in value) + " }"
            splits.append((key, value))
        else:
            splits.append((key, _value(value)))
    lines += _table("splits", splits)
    return "\n".join(lines) + "\n"
