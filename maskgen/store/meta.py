"""Metadata of a feature store read through its zarr Store: root attributes, case groups, case states, key names.

Everything here reads small JSON documents by key (`StoreIO.get`), so it works the same on a local folder and on an
object store, and never opens array data.
"""

from __future__ import annotations

import json
from typing import Any

from maskgen.errors import MaskgenError
from maskgen.store.kv import StoreIO, as_io
from maskgen.store.layout import CASES_GROUP, COMPLETE_ATTR, SIDECAR_DIR

ZARR_JSON = "zarr.json"


def case_prefix(case_id: str) -> str:
    """The key prefix of a case group (`cases/<case_id>`)."""
    return f"{CASES_GROUP}/{case_id}"


def fg_key(case_id: str) -> str:
    """Key of a case's cached foreground locations (beside the arrays, not a zarr node)."""
    return f"{SIDECAR_DIR}/fg/{case_id}.npz"


def check_case_id(case_id: str) -> None:
    """Case ids become zarr node names: MaskgenError for ids `maskgen.data.cases.case_id_problem` refuses (path
    separators, '..', leading '.' or '__', names the store uses itself such as `zarr.json` or `c`)."""
    from maskgen.data.cases import case_id_problem

    problem = case_id_problem(case_id)
    if problem:
        raise MaskgenError(f"{problem}: case ids become store group names; rename the case file")


def _json(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def read_root_doc(store: Any) -> dict[str, Any] | None:
    """The root `zarr.json` of a store (attributes and, when consolidated, every node's metadata), or None."""
    return _json(as_io(store, read_only=True).get(ZARR_JSON))


def root_attrs_of(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """Maskgen root attributes in a root `zarr.json` document, or None if it is not a maskgen store's."""
    if doc is None:
        return None
    attrs = doc.get("attributes") or {}
    if doc.get("node_type") != "group" or "format_version" not in attrs:
        return None
    return attrs


def read_root_attrs(store: Any) -> dict[str, Any] | None:
    """Root attributes of a maskgen store, or None if the location holds no zarr group with maskgen attributes."""
    return root_attrs_of(read_root_doc(store))


def not_a_store_problem(store: Any) -> str | None:
    """A message when the location holds something other than a maskgen store (None: a store, empty or absent)."""
    io = as_io(store, read_only=True)
    if read_root_attrs(io) is not None:
        return None
    if [n for n in io.list_dir("") if n != SIDECAR_DIR]:
        return f"{io} exists and is not a maskgen feature store; choose another --out or remove it yourself"
    return None


def case_attrs_of(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if doc is None else (doc.get("attributes") or {})


def read_case_attrs(store: Any, case_id: str) -> dict[str, Any] | None:
    """Attributes of a case group (None if the group is missing or its metadata unreadable)."""
    return case_attrs_of(_json(as_io(store, read_only=True).get(f"{case_prefix(case_id)}/{ZARR_JSON}")))


def read_many_case_attrs(io: StoreIO, case_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Attributes of several case groups, fetched concurrently; unreadable ones are left out."""
    raws = io.get_many(f"{case_prefix(cid)}/{ZARR_JSON}" for cid in case_ids)
    out = {}
    for cid, raw in zip(case_ids, raws):
        attrs = case_attrs_of(_json(raw))
        if attrs is not None:
            out[cid] = attrs
    return out


def case_folders(store: Any) -> set[str]:
    """Names of all case groups in the store, complete or not (one listing)."""
    names = as_io(store, read_only=True).list_dir(CASES_GROUP)
    return {n for n in names if n != ZARR_JSON and not n.startswith(".")}


def case_state(store: Any, case_id: str) -> str:
    """'complete', 'incomplete' (something is stored under the case but it was never marked complete) or 'absent'."""
    io = as_io(store, read_only=True)
    attrs = read_case_attrs(io, case_id)
    if attrs is None:
        return "incomplete" if io.list_dir(case_prefix(case_id)) else "absent"
    return "complete" if attrs.get(COMPLETE_ATTR) is True else "incomplete"
