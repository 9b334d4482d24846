"""maskgen.atomic: temp file in the same folder, renamed on success, removed on failure, normal file mode."""

from __future__ import annotations

import json
import os
import stat
import threading

import pytest

from maskgen.atomic import atomic_path, new_file_mode, write_bytes_atomic, write_text_atomic
from maskgen.config import write_json_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_success_renames_over_the_target_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "sub" / "out.nii.gz"          # parent folder is created
    with atomic_path(target, suffix=".nii.gz") as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.nii.gz.") and tmp.name.endswith(".nii.gz")
        assert tmp.exists() and not target.exists()   # nothing visible under the final name while writing
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["out.nii.gz"]


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_exception_keeps_the_old_file_and_removes_the_temp_file(tmp_path, error):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(type(error)):
        with atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise error
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_exception_before_any_write_leaves_no_target(tmp_path):
    target = tmp_path / "never.txt"
    with pytest.raises(ValueError):
        with atomic_path(target):
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


def test_mode_is_the_normal_new_file_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        paths = [
            write_text_atomic(tmp_path / "a.txt", "x"),
            write_bytes_atomic(tmp_path / "b.bin", b"x"),
        ]
        write_json_atomic(tmp_path / "c.json", {"a": 1})
        paths.append(tmp_path / "c.json")
        for p in paths:
            assert _mode(p) == 0o644, (p, oct(_mode(p)))
        os.umask(0o027)
        assert new_file_mode() == 0o640
        assert _mode(write_text_atomic(tmp_path / "d.txt", "x")) == 0o640
    finally:
        os.umask(old)
    assert new_file_mode() == 0o666 & ~_umask()


def test_text_bytes_and_json_round_trip(tmp_path):
    text = "a,b\r\nünï\n"                              # newlines kept as given, UTF-8
    assert write_text_atomic(tmp_path / "t.csv", text) == tmp_path / "t.csv"
    assert (tmp_path / "t.csv").read_bytes() == text.encode("utf-8")
    write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    write_json_atomic(tmp_path / "c.json", {"b": [1, 2], "a": None})
    raw = (tmp_path / "c.json").read_text()
    assert raw.endswith("}\n") and raw.index('"a"') < raw.index('"b"')   # sorted keys, final newline
    assert json.loads(raw) == {"a": None, "b": [1, 2]}


def test_concurrent_writers_never_expose_a_partial_file(tmp_path):
    target = tmp_path / "shared.txt"
    payloads = [str(i) * 100_000 for i in range(4)]
    seen: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            if target.exists():
                seen.append(target.read_text())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        writers = [threading.Thread(target=write_text_atomic, args=(target, p)) for p in payloads * 3]
        for w in writers:
            w.start()
        for w in writers:
            w.join()
    finally:
        stop.set()
        reader.join()
    assert target.read_text() in payloads
    assert all(s in payloads for s in seen)
    assert [p.name for p in tmp_path.iterdir()] == ["shared.txt"]
