"""The supervisor lock: exactly one controller per state directory.

The kernel lock (fleet.platform.exclusive_lock) is the truth; who holds it lives in a sidecar file, which
the lock file of an earlier release (truncated by its lock library on every attempt) could not hold."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from fleet import __version__
from fleet.platform.exclusive_lock import ExclusiveLock, LockUnsupported, lock_free
from fleet.store.fence import FileId, fd_id, file_id, remove_if_same
from fleet.store.files import read_json, write_json_atomic
from fleet.store.layout import StateDir


@dataclass(frozen=True)
class Holder:
    """The controller that holds the supervisor lock, as the sidecar file names it."""
    pid: int
    create_time: float
    version: str
    started_at: float
    epoch: int
    start_ticks: int | None = None  # as ProcessInfo has them; absent in files written before they were kept

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        return f"pid {self.pid} (hermes-fleet {self.version}) since {since}, epoch {self.epoch}"


class LockHeld(Exception):
    def __init__(self, holder: Holder | None):
        self.holder = holder
        who = holder.describe() if holder else "a process that has not written its identity yet"
        super().__init__(f"another controller is running: {who}")


def read_holder(state: StateDir) -> Holder | None:
    data = read_json(state.holder)
    if not isinstance(data, dict):
        return None
    try:
        return Holder(int(data["pid"]), float(data["create_time"]), str(data["version"]),
                      float(data["started_at"]), int(data["epoch"]), _optional_int(data.get("start_ticks")))
    except (KeyError, TypeError, ValueError):
        return None


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


class SupervisorLock:
    """The lock one controller holds on its state directory for its life, and the holder file naming it."""

    def __init__(self, state: StateDir):
        self.state = state
        self._lock = ExclusiveLock(str(state.lock))
        self.identity: FileId | None = None  # the lock file this process holds the lock on
        self._holder_id: FileId | None = None  # the holder file this process wrote

    def acquire(self) -> None:
        try:
            fd = self._lock.try_acquire()
        except LockUnsupported as exc:  # network mounts
            raise OSError(f"the state directory {self.state.root} does not support file locks ({exc.strerror}); "
                          f"use a local directory") from None
        if fd is None:
            raise LockHeld(read_holder(self.state))
        # The descriptor is what the lock is on; the name may already lead elsewhere.
        self.identity = fd_id(fd)

    def publish(self, epoch: int, create_time: float, start_ticks: int | None) -> Holder:
        holder = Holder(os.getpid(), create_time, __version__, time.time(), epoch, start_ticks)
        write_json_atomic(self.state.holder, holder.__dict__)
        self._holder_id = file_id(self.state.holder)
        return holder

    def release(self) -> None:
        holder = read_holder(self.state)
        if holder and holder.pid == os.getpid():
            remove_if_same(self.state.holder, self._holder_id)
        self._lock.release()


def lock_is_free(state: StateDir) -> bool:
    return lock_free(str(state.lock))
