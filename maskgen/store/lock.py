"""The writer lock: one process at a time fills a store.

The lock is an object in the store itself (`.maskgen/lock.json`, written through the store's zarr Store), so it works
on a local disk and on an object store alike. It records who holds it (user, host, pid, command, a random token)
and a heartbeat that a background thread refreshes every `heartbeat_s`. Taking it:
- absent: create it if absent and read it back: the process whose token is there holds it. The create is atomic on a
  local disk (exclusive create) and on S3 (a conditional PUT with `If-None-Match: *`: of two writers exactly one
  succeeds, the other gets 412); on other object stores it is check-then-write, so the taker waits `settle_s` (1 s)
  before the read-back, letting a racing writer's PUT land first;
- held by a live process: refuse with who holds it (`StoreLocked`), or with `wait=True` poll until it is free;
- stale (no heartbeat for `stale_after_s`, or its pid is gone on this host): take it over, saying so.
A holder whose lock was taken over (it stalled for longer than `stale_after_s`) notices at its next heartbeat; `check()`
then raises, and the writer stops before marking another case complete.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Callable

from maskgen.errors import MaskgenError
from maskgen.store.kv import StoreIO, as_io
from maskgen.store.layout import SIDECAR_DIR

LOCK_KEY = f"{SIDECAR_DIR}/lock.json"
HEARTBEAT_S = 10.0
STALE_AFTER_S = 120.0
POLL_S = 1.0


class StoreLocked(MaskgenError):
    """Another live process holds the store's writer lock."""


@dataclass(frozen=True)
class LockRecord:
    token: str
    user: str
    host: str
    pid: int
    command: str
    started: float
    heartbeat: float

    @classmethod
    def mine(cls) -> "LockRecord":
        now = time.time()
        try:
            user = getpass.getuser()
        except Exception:  # no user name in some containers
            user = str(os.getuid()) if hasattr(os, "getuid") else "?"
        return cls(token=uuid.uuid4().hex, user=user, host=socket.gethostname(), pid=os.getpid(),
                   command=" ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300],
                   started=now, heartbeat=now)

    def describe(self, now: float | None = None) -> str:
        age = (now or time.time()) - self.heartbeat
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return (f"{self.user}@{self.host} pid {self.pid} (`{self.command}`, since {started}, "
                f"last heartbeat {age:.0f} s ago)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


class WriterLock:
    """The writer lock of one store; use `with WriterLock(store).held(wait=...)`."""

    def __init__(self, store: Any, *, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S,
                 settle_s: float | None = None, poll_s: float = POLL_S,
                 on_message: Callable[[str], None] | None = None):
        if not 0 < heartbeat_s < stale_after_s:
            raise ValueError(f"WriterLock: need 0 < heartbeat_s ({heartbeat_s}) < stale_after_s ({stale_after_s})")
        self.io: StoreIO = as_io(store)
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.settle_s = (0.0 if self.io.atomic_create else 1.0) if settle_s is None else settle_s
        self.poll_s = poll_s
        self.on_message = on_message or (lambda message: None)
        self.record: LockRecord | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the record in the store ---------------------------------------------------------------------------
    def read(self) -> LockRecord | None:
        raw = self.io.get(LOCK_KEY)
        if raw is None:
            return None
        try:
            return LockRecord(**json.loads(raw))
        except (ValueError, TypeError):
            return LockRecord(token="?", user="?", host="?", pid=-1, command="(unreadable lock)", started=0.0,
                              heartbeat=0.0)  # damaged: stale at once

    def _write(self, record: LockRecord, create: bool) -> None:
        data = json.dumps(asdict(record)).encode()
        if create:
            self.io.set_if_not_exists(LOCK_KEY, data)
        else:
            self.io.set(LOCK_KEY, data)

    def stale_reason(self, record: LockRecord, now: float | None = None) -> str | None:
        """Why `record` may be taken over (None: its holder is alive)."""
        age = (now or time.time()) - record.heartbeat
        if age > self.stale_after_s:
            return f"no heartbeat for {age:.0f} s (> {self.stale_after_s:.0f} s)"
        if record.host == socket.gethostname() and not _pid_alive(record.pid):
            return f"process {record.pid} on this host is gone"
        return None

    # -- taking and giving back ----------------------------------------------------------------------------
    def _try_take(self) -> LockRecord | None:
        """One attempt; returns the record that blocks us (None: we hold the lock now)."""
        current = self.read()
        if current is not None:
            reason = self.stale_reason(current)
            if reason is None:
                return current
            if self.read() == current:  # still the same stale record: remove it
                self.io.delete(LOCK_KEY)
                self.on_message(f"took over the writer lock of {self.io}: {current.describe()}: {reason}")
        mine = LockRecord.mine()
        self._write(mine, create=True)
        if self.settle_s:
            time.sleep(self.settle_s)
        now_there = self.read()
        if now_there is not None and now_there.token == mine.token:
            self.record = mine
            return None
        return now_there or current

    def acquire(self, wait: bool = False, timeout: float | None = None) -> None:
        """Take the lock, or raise StoreLocked naming its holder (with `wait`, poll until it is free)."""
        t0 = time.monotonic()
        told = False
        while True:
            blocker = self._try_take()
            if blocker is None:
                break
            if not wait or (timeout is not None and time.monotonic() - t0 > timeout):
                raise StoreLocked(
                    f"{self.io} is being written by {blocker.describe()}; wait for it to finish, or re-run with "
                    f"--wait to start when it does (a lock without heartbeat for {self.stale_after_s:.0f} s, or of a "
                    "process gone from this host, is taken over)"
                )
            if not told:
                told = True
                self.on_message(f"waiting for the writer lock of {self.io}, held by {blocker.describe()}")
            time.sleep(self.poll_s)
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="maskgen-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                current = self.read()
                if self.record is None or current is None or current.token != self.record.token:
                    self.lost = "taken over by " + (current.describe() if current else "nobody (removed)")
                    return
                self.record = LockRecord(**{**asdict(self.record), "heartbeat": time.time()})
                self._write(self.record, create=False)
            except Exception as e:  # an unreachable store: report at the next check
                self.lost = f"heartbeat failed: {type(e).__name__}: {e}"
                return

    def check(self) -> None:
        """Raise MaskgenError if this process no longer holds the lock (call before marking work complete)."""
        if self.lost:
            raise MaskgenError(f"the writer lock of {self.io} was lost ({self.lost}); another process may be "
                               "writing it: stop both and re-run one `maskgen extract`")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.record is not None:
            try:
                current = self.read()
                if current is not None and current.token == self.record.token:
                    self.io.delete(LOCK_KEY)
            finally:
                self.record = None

    def held(self, wait: bool = False, timeout: float | None = None) -> "WriterLock":
        self._wait, self._timeout = wait, timeout
        return self

    def __enter__(self) -> "WriterLock":
        self.acquire(getattr(self, "_wait", False), getattr(self, "_timeout", None))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
