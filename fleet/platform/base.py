"""The one small interface behind which every OS difference lives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping, Protocol

# psutil's create time is derived from the boot time and only good to ~10 ms; start ticks, where the platform
# has them, need no tolerance.
CREATE_TIME_TOLERANCE = 0.05


@dataclass(frozen=True)
class ProcessInfo:
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


class SignalRefused(PermissionError):
    """The last line of defence: a signal this controller must never send, whatever a record says."""


class Platform(Protocol):
    name: str  # linux | macos | windows | posix

    def process_info(self, pid: int) -> ProcessInfo | None: ...
    def process_environ(self, pid: int) -> dict[str, str] | None: ...
    def iter_processes(self) -> Iterator[ProcessInfo]: ...
    def current_uid(self) -> int | None: ...
    def spawn_detached(self, argv: list[str], env: dict[str, str], cwd: str, log_path: str) -> int: ...
    def spawn_daemon(self, argv: list[str], log_fd: int) -> int: ...  # a process that is nobody's child
    def never_signal(self, pid: int) -> str | None: ...  # why `pid` must never be signalled, or None
    def child_environ(self, pid: int) -> dict[str, str] | None: ...  # env of a child we spawned and still hold
    def request_stop(self, pid: int) -> None: ...  # raises SignalRefused when never_signal(pid) says so
    # Kills `pid` and those descendants that carry every `markers` entry in their environment or share the
    # root's own session, process group or service scope; raises SignalRefused for a protected root.
    def kill_tree(self, pid: int, markers: Mapping[str, str]) -> None: ...
    def kill_process(self, pid: int) -> None: ...  # that process only
    def process_group(self, pid: int) -> tuple[int | None, int | None]: ...  # (pgid, sid) or (None, None)
    def lock_is_held(self, path: str) -> bool: ...
    def reap(self, pid: int) -> tuple[bool, int | None]: ...  # (exited, code) for our own children
    def exit_waiter(self, pid: int) -> int | None: ...  # fd readable at exit, or None (then poll)
    def drain_epoch(self) -> str: ...  # Hermes' drain-request epoch; "" turns its check off
