"""The controller a state directory's holder file names, checked against the OS: whether that PID still is
it, and stopping it. One rule for `status`, `hermes-fleet controller stop` and every service manager."""

from __future__ import annotations

import time

from fleet.platform import current_platform
from fleet.platform.base import Platform, ProcessInfo, wait_until_exited
from fleet.store.layout import StateDir
from fleet.store.lock import Holder, lock_is_free


def holder_process(platform: Platform, holder: Holder) -> ProcessInfo | None:
    """The live process the holder file names, or None when that PID no longer is that controller (gone, a
    zombie, or reused by a process that started at another time)."""
    if holder.pid <= 0:
        return None
    info = platform.process_info(holder.pid)
    if info is None or not info.alive or not info.started_as(holder.start_ticks, holder.create_time):
        return None
    return info


def running_holder(state: StateDir, platform: Platform, holder: Holder | None) -> ProcessInfo | None:
    """The controller that runs for this state directory, when the holder file names it: a live process that still
    is that controller, and the lock is held."""
    info = holder_process(platform, holder) if holder is not None else None
    return info if info is not None and not lock_is_free(state) else None


def holder_runs(state: StateDir, platform: Platform, holder: Holder | None) -> bool:
    return running_holder(state, platform, holder) is not None


def stop_controller(state: StateDir, holder: Holder, timeout: float = 30.0, platform: Platform | None = None) -> bool:
    """Ask the controller `holder` names to exit (it leaves every gateway running) and wait up to `timeout`
    seconds for it to go. True once it is gone (or its PID belongs to another process), False if it still runs.
    How it is asked is the platform's (Platform.stop_controller_process)."""
    platform = platform or current_platform()
    info = holder_process(platform, holder)
    if info is None:
        return True  # that controller is already gone; the PID belongs to someone else
    platform.stop_controller_process(state, info, timeout)
    # Not psutil's wait(): that waits for a zombie to be reaped by a parent that is not us, while a zombie has
    # already released everything. The exit watch wakes at the exit itself (a zombie included).
    return not wait_until_exited(platform, [info], time.monotonic() + timeout, poll=0.02)
