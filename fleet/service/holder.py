"""Which controller holds the fleet: `<state dir>/.supervisor.json`, checked against the OS.

The controller writes {"pid", "create_time", "version", "started_at", "epoch"} while it
runs and may leave the file behind when it dies, so a record only counts when its PID is
alive *and* has the recorded create time (PID reuse guard) *and* runs as our user.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

HOLDER_FILE = ".supervisor.json"
CREATE_TIME_TOLERANCE = 1.0  # seconds: a persisted create_time moves with wall-clock steps


@dataclass(frozen=True)
class ControllerHolder:
    pid: int
    create_time: float
    version: str
    started_at: float | str | None
    epoch: int | None
    alive: bool  # the PID runs and is this very process (create time and user match)

    def as_json(self) -> dict:
        return {
            "pid": self.pid, "create_time": self.create_time, "version": self.version,
            "started_at": self.started_at, "epoch": self.epoch, "alive": self.alive,
        }



def read_holder(state_dir: str, user: str | None = None) -> ControllerHolder | None:
    """The recorded controller, or None when there is no readable record.

    `user` is the account the controller must run as (default: ours)."""
    path = os.path.join(state_dir, HOLDER_FILE)
    try:
        with open(path, "rb") as fh:
            raw = json.loads(fh.read(64 * 1024).decode("utf-8"))
        pid = int(raw["pid"])
        create_time = float(raw.get("create_time") or 0.0)
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    epoch = raw.get("epoch")
    return ControllerHolder(
        pid=pid, create_time=create_time, version=str(raw.get("version", "")),
        started_at=raw.get("started_at"), epoch=epoch if isinstance(epoch, int) else None,
        alive=process_matches(pid, create_time, user),
    )


def process_matches(pid: int, create_time: float, user: str | None = None) -> bool:
    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            if create_time and abs(proc.create_time() - create_time) > CREATE_TIME_TOLERANCE:
                return False
            return _same_user(proc.username(), user or psutil.Process().username())
    except (psutil.Error, OSError):
        return False


def _same_user(a: str, b: str) -> bool:
    if "\\" in a or "\\" in b:  # Windows: DOMAIN\\user, case-insensitive
        return a.lower() == b.lower()
    return a == b


def wait_for_new_holder(
    state_dir: str, previous: ControllerHolder | None, deadline: float,
    owned: Callable[[int], bool | None] = lambda pid: None, poll: float = 0.05, user: str | None = None,
) -> ControllerHolder | None:
    """Wait until a live controller that is not `previous` holds the fleet (and, where the
    service manager can say, is the process it started). None at the deadline."""
    while True:
        holder = read_holder(state_dir, user)
        replaced = previous is None or not previous.alive or not holder_is(holder, previous)
        if holder is not None and holder.alive and replaced and owned(holder.pid) is not False:
            return holder
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll)


def holder_is(a: ControllerHolder | None, b: ControllerHolder) -> bool:
    return a is not None and a.pid == b.pid and abs(a.create_time - b.create_time) <= CREATE_TIME_TOLERANCE


def stop_controller(holder: ControllerHolder, timeout: float = 30.0) -> bool:
    """Ask one verified controller process to exit (it leaves every gateway running).

    SIGTERM on POSIX, which the controller handles by releasing the fleet and exiting 0;
    on Windows psutil's terminate() is TerminateProcess, which is safe for the same reason
    a crash is: gateways run detached and the next controller adopts them.
    """
    try:
        proc = psutil.Process(holder.pid)
        if abs(proc.create_time() - holder.create_time) > CREATE_TIME_TOLERANCE:
            return True  # that controller is already gone; the PID belongs to someone else
        proc.terminate()
        proc.wait(timeout)
        return True
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return False
