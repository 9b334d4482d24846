"""What each case of a store was made from, and what a re-run finds changed.

Every case records `inputs` in its attributes when it is written:
    {"image": {"path", "size", "mtime_ns", "sha256"}, "label": {...} | None, "channel": int | None,
     "label_map": [[raw, value], ...], "binarize_labels": bool, "normalization": {rule record of the case's domain}}
next to `domain`, `split` and `subject`. A re-run compares every complete case with the dataset as it is now
(`compare`):
- the arrays depend on the image and label files (their content), the channel, the label map, binarisation and the
  intensity rule of the case's domain: any difference makes the case stale, and `maskgen extract` re-extracts it,
  printing one line that names the difference (automatic, as `make` rebuilds an out-of-date target: a store must not
  silently keep features of an image that has changed);
- domain, split and subject do not (unless the new domain has another intensity rule): they are updated in the
  case's record without re-extraction.
A file whose size and modification time are unchanged is taken as unchanged (as make and rsync do, no read); when
either differs its sha256 decides, so a file that was only touched, copied or moved keeps its case.
Cases written before these records existed cannot be checked: the run says how many, and `--redo` re-extracts them.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

INPUTS_ATTR = "inputs"
#: Case attributes that come from the dataset listing and that the arrays do not depend on.
LISTING_FIELDS = ("domain", "split", "subject")


def sha256_of(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_record(path: str | os.PathLike, digest: str | None = None) -> dict[str, Any]:
    """{"path", "size", "mtime_ns", "sha256"} of an input file."""
    st = os.stat(path)
    return {"path": str(path), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns),
            "sha256": digest or sha256_of(path)}


def inputs_record(case: Any, pipeline: Any) -> dict[str, Any]:
    """What the arrays of `case` are made from (see the module docstring)."""
    return {
        "image": file_record(case.image),
        "label": None if case.label is None else file_record(case.label),
        **_settings(case, pipeline),
    }


def _settings(case: Any, pipeline: Any) -> dict[str, Any]:
    """The parts of the record that are not files."""
    return {
        "channel": case.channel,
        "label_map": [[int(a), int(b)] for a, b in pipeline.label_map],
        "binarize_labels": bool(pipeline.binarize_labels),
        "normalization": pipeline.intensity_rule(case.domain).to_record(),
    }


def listing_attrs(case: Any) -> dict[str, Any]:
    return {"domain": case.domain, "split": case.split, "subject": getattr(case, "subject_id", case.case_id)}


@dataclass
class Difference:
    """What differs between a complete case and the dataset now: `stale` reasons (re-extract), else `updates` to
    the case's record (no re-extraction)."""

    stale: list[str] = field(default_factory=list)
    updates: dict[str, Any] = field(default_factory=dict)
    unchecked: bool = False  # written before input records existed


def _file_change(what: str, recorded: dict[str, Any] | None, path: Any) -> tuple[str | None, dict | None]:
    """(why the file makes the case stale, or None; the refreshed record when it changed without new content)."""
    if recorded is None and path is None:
        return None, None
    if recorded is None:
        return f"a {what} file now exists ({path})", None
    if path is None:
        return f"the {what} file is no longer part of the dataset (was {recorded.get('path')})", None
    try:
        st = os.stat(path)
    except OSError as e:
        return f"the {what} file {path} cannot be read ({e.strerror})", None
    same_place = str(path) == recorded.get("path")
    if same_place and st.st_size == recorded.get("size") and st.st_mtime_ns == recorded.get("mtime_ns"):
        return None, None
    digest = sha256_of(path)
    if digest != recorded.get("sha256"):
        was = recorded.get("sha256") or ""
        return (f"the {what} file {path} changed since it was extracted (size {recorded.get('size')} -> {st.st_size} "
                f"bytes, sha256 {was[:12]} -> {digest[:12]})"), None
    return None, file_record(path, digest)


def compare(case: Any, pipeline: Any, attrs: dict[str, Any]) -> Difference:
    """How the complete case recorded as `attrs` differs from `case` of the dataset now."""
    diff = Difference()
    recorded = attrs.get(INPUTS_ATTR)
    current_listing = listing_attrs(case)
    if not isinstance(recorded, dict):
        diff.unchecked = True
        diff.updates = {k: v for k, v in current_listing.items() if attrs.get(k) != v}
        return diff
    refreshed = dict(recorded)
    for what, path in (("image", case.image), ("label", case.label)):
        why, new_record = _file_change(what, recorded.get(what), path)
        if why:
            diff.stale.append(why)
        elif new_record is not None:
            refreshed[what] = new_record
    now = _settings(case, pipeline)
    for key, what in (("channel", "image channel"), ("label_map", "[label_map]"),
                      ("binarize_labels", "binarize_labels"), ("normalization", "intensity normalisation")):
        if recorded.get(key) != now[key]:
            diff.stale.append(f"the {what} changed ({recorded.get(key)!r} -> {now[key]!r})")
    if diff.stale:
        return diff
    diff.updates = {k: v for k, v in current_listing.items() if attrs.get(k) != v}
    if refreshed != recorded:
        diff.updates[INPUTS_ATTR] = refreshed
    return diff

