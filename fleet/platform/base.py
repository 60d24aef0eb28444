"""The one small interface behind which every OS difference lives."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from fleet.store.fence import FileId
    from fleet.store.layout import StateDir

# psutil's create time is derived from the boot time and only good to ~10 ms; start ticks, where the platform
# has them, need no tolerance.
CREATE_TIME_TOLERANCE = 0.05


@dataclass(frozen=True)
class ProcessInfo:
    """What the platform knows of one process: its pid and start time, its owner, command line and status."""
    pid: int
    start_ticks: int | None  # Linux: /proc/<pid>/stat field 22 (immune to clock steps); else create_time*100
    create_time: float  # epoch seconds (psutil)
    uid: int | None
    username: str | None
    cmdline: tuple[str, ...]
    status: str  # psutil status string: running, sleeping, zombie, stopped, ...
    ppid: int | None = None

    @property
    def alive(self) -> bool:
        return self.status not in ("zombie", "dead")

    def started_as(self, start_ticks: int | None, create_time: float) -> bool:
        """Whether this is the process written down as started then, not a reused PID: start ticks where both
        have them (Linux: immune to clock steps), else the create time."""
        if start_ticks is not None and self.start_ticks is not None:
            return start_ticks == self.start_ticks
        return abs(create_time - self.create_time) < CREATE_TIME_TOLERANCE


@dataclass(frozen=True)
class ProcessStart:
    """A process's pid and when it started, read before anything else of it: what a dead gateway left behind can
    only be younger than it, so most processes need no more. `info` is the whole of it where the platform reads
    that at once anyway."""
    pid: int
    start_ticks: int | None
    create_time: float
    info: ProcessInfo | None = None


class SignalRefused(PermissionError):
    """The last line of defence: a signal this controller must never send, whatever a record says."""


def refuse_protected(platform: Platform, pid: int) -> None:
    """SignalRefused when `platform.never_signal(pid)` says why: the first step of every method that signals."""
    refusal = platform.never_signal(pid)
    if refusal:
        raise SignalRefused(f"refused to signal pid {pid}: {refusal}")


class ExitWatch(Protocol):
    """Wakes the controller's wait the moment a watched gateway exits: one selectable descriptor for all of
    them (an epoll of pidfds, a kqueue, a socket fed by handle waiters), so the wait stays one select()."""

    def fileno(self) -> int: ...  # readable once a watched process exited; -1 when nothing can be watched
    # Watch exactly `pids` from now on; returns those no waiter covers (already gone, not openable): the
    # controller polls for them instead.
    def watch(self, pids: frozenset[int]) -> frozenset[int]: ...
    def exited(self) -> frozenset[int]: ...  # the watched PIDs seen exiting since the last call; clears fileno()
    def close(self) -> None: ...


class WakeChannel(Protocol):
    """The controller's end of the CLI-to-controller channel: hints that the store changed (and "stop"),
    usable only by the controller's own user. The CLI's end is fleet.platform.wake.send_wake."""

    path: str  # the file in the state directory that names the channel
    identity: FileId | None  # that file as this controller made it (the fence holds it), None without one

    def fileno(self) -> int: ...  # readable when a message arrived; -1 without a channel (then poll the store)
    def drain(self) -> set[str]: ...  # the messages received since the last call
    def close(self) -> None: ...


class Platform(Protocol):
    """Every OS difference the controller, the executor and the observer meet. An implementation per OS
    (linux, macos, windows, and plain posix), all checked by tests/test_platform_contract.py."""

    name: str  # linux | macos | windows | posix

    # identity
    def process_info(self, pid: int) -> ProcessInfo | None: ...
    def process_environ(self, pid: int) -> dict[str, str] | None: ...
    def iter_processes(self) -> Iterator[ProcessInfo]: ...  # this user's processes
    def process_starts(self) -> Iterator[ProcessStart]: ...  # this user's processes' starts (maybe others' too)
    def current_uid(self) -> int | None: ...
    def child_environ(self, pid: int) -> dict[str, str] | None: ...  # env of a child we spawned and still hold
    def process_group(self, pid: int) -> tuple[int | None, int | None]: ...  # (pgid, sid) or (None, None)
    def lock_is_held(self, path: str) -> bool: ...  # a Hermes gateway.lock held by a live process
    def drain_epoch(self) -> str: ...  # Hermes' drain-request epoch; "" turns its check off
    # The program a command's first word names, as starting it would find it (that path, or the first on PATH;
    # Windows adds PATHEXT's extensions), or None.
    def find_executable(self, name: str) -> str | None: ...

    # spawn and exits
    def spawn_detached(self, argv: list[str], env: dict[str, str], cwd: str, log_path: str) -> int: ...
    # A process that is nobody's child, its output to `log_fd`, its input from `stdin_fd` (else nothing).
    def spawn_daemon(self, argv: list[str], log_fd: int, stdin_fd: int | None = None) -> int: ...
    # `argv` as spawn_detached should run it for a gateway: in its own service scope where the OS has them
    # (`unit_name` unique per spawn; the scope's stop waits `stop_timeout` before it kills), else unchanged.
    def scoped_command(self, unit_name: str, argv: list[str], *, stop_timeout: float) -> list[str]: ...
    def reap(self, pid: int) -> tuple[bool, int | None]: ...  # (exited, code) for our own children
    # What the spawn of `pid` had to settle for, in words (Windows: started inside the controller's job object,
    # which forbids breakaway), or None when it got every protection the OS offers.
    def spawn_caveat(self, pid: int) -> str | None: ...
    def exit_watch(self) -> ExitWatch: ...

    # stopping gateways: never_signal is the last line of defence, whatever a record or an observer said
    def never_signal(self, pid: int) -> str | None: ...  # why `pid` must never be signalled, or None
    # The graceful stop after the planned-stop marker is written (SIGTERM on POSIX, or SIGINT with `interrupt`;
    # nothing more on Windows, where the marker is the only stop a detached gateway can see); raises
    # SignalRefused per never_signal.
    def request_stop(self, pid: int, *, interrupt: bool = False) -> None: ...
    # Kills `pid` and those descendants that carry every `markers` entry in their environment or share the
    # root's own session, process group or service scope; raises SignalRefused for a protected root.
    def kill_tree(self, pid: int, markers: Mapping[str, str]) -> None: ...
    def kill_process(self, pid: int) -> None: ...  # that process only

    # the controller itself
    def open_wake_channel(self, state: StateDir) -> WakeChannel: ...
    def on_stop_request(self, handler: Callable[[], None]) -> None: ...  # the OS's ways to ask a process to stop
    # Ask the controller `info` describes to leave (it keeps every gateway running); where the OS has no stop request
    # the controller can catch, end it after half of `timeout` (as safe as a crash: the next controller adopts).
    # Nothing once that PID is no longer it.
    def stop_controller_process(self, state: StateDir, info: ProcessInfo, timeout: float) -> None: ...


def still_runs(platform: Platform, info: ProcessInfo) -> bool:
    """The process `info` describes is still there, not a zombie, and its PID not taken by another process."""
    now = platform.process_info(info.pid)
    return now is not None and now.alive and now.started_as(info.start_ticks, info.create_time)


def wait_until_exited(platform: Platform, infos: Sequence[ProcessInfo], deadline: float,
                      poll: float = 0.05) -> list[ProcessInfo]:
    """Until every process `infos` describes has exited (or its PID belongs to another process), or the monotonic
    `deadline` passes; returns those still running. One exit watch covers them all and each exit is taken as it
    comes: a `down` of 100 gateways looked at every survivor after each exit (10,000 looks), competing for the
    CPU with the gateways' own exits. What no watch covers is looked at every `poll` seconds."""
    import select

    watch = platform.exit_watch()
    try:
        fd = watch.fileno()
        pids = frozenset(info.pid for info in infos)
        polled = set(pids) if fd < 0 else set(watch.watch(pids))
        # Looked at once the watch is armed: a process gone before (its PID maybe another's by now) is dropped here,
        # so a watch never waits on a PID's next owner.
        left = {info.pid: info for info in infos if still_runs(platform, info)}
        polled &= set(left)
        while True:
            for pid in [pid for pid in polled if not still_runs(platform, left[pid])]:
                polled.discard(pid)
                del left[pid]
            timeout = deadline - time.monotonic()
            if not left or timeout <= 0:
                return list(left.values())
            wait = min(timeout, poll) if polled else timeout
            if fd < 0:
                time.sleep(wait)
                continue
            select.select([fd], [], [], wait)
            for pid in watch.exited():
                left.pop(pid, None)
    finally:
        watch.close()
