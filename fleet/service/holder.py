"""Which controller holds the fleet, as the service managers see it: the holder file
(`fleet.store.lock`) checked against the OS, and run by the account the service runs it as.

The controller may leave the file behind when it dies, so a record only counts when its PID is
alive *and* is the process that started when the record says (PID reuse guard) *and* runs as
that user.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from fleet.platform import current_platform
from fleet.platform.controller_process import holder_process, stop_controller
from fleet.store import lock
from fleet.store.layout import StateDir


@dataclass(frozen=True)
class ControllerHolder(lock.Holder):
    """The holder file's record plus what the OS says about it now, which the store cannot ask."""
    alive: bool = False  # the PID runs and is this very process (start time and user match)
    state_dir: str = ""  # the state directory whose holder file this is

    def as_json(self) -> dict:
        return {
            "pid": self.pid, "create_time": self.create_time, "version": self.version,
            "started_at": self.started_at, "epoch": self.epoch, "alive": self.alive,
        }


def read_holder(state_dir: str, user: str | None = None) -> ControllerHolder | None:
    """The recorded controller, or None when there is no readable record.

    `user` is the account the controller must run as (default: ours)."""
    holder = lock.read_holder(StateDir(Path(state_dir)))
    if holder is None:
        return None
    return ControllerHolder(**dataclasses.asdict(holder), alive=_runs_as(holder, user), state_dir=state_dir)


def stop_holder(holder: ControllerHolder, timeout: float = 30.0) -> bool:
    """Stop the controller `holder` names (gateways keep running); True once it is gone."""
    return stop_controller(StateDir(Path(holder.state_dir)), holder, timeout)


def _runs_as(holder: lock.Holder, user: str | None) -> bool:
    if holder_process(current_platform(), holder) is None:
        return False
    try:
        return _same_user(psutil.Process(holder.pid).username(), user or psutil.Process().username())
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
    """Both records name the same controller: it writes its record once, so they are equal."""
    return a is not None and (a.pid, a.create_time, a.start_ticks) == (b.pid, b.create_time, b.start_ticks)
